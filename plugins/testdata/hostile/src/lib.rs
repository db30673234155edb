//! A plugin that tries, one operation at a time, every way out of the sandbox.
//! Used by `plugins/host/tests/sandbox.rs`. `operation = None` behaves well,
//! so tests can check the host keeps serving after each attack.
use herald_plugin_sdk::prelude::*;

struct Hostile;

fn http_result(url: &str) -> Result<Sent, SendError> {
    let resp = http::Request::get(url).send()?;
    Ok(Sent::with_id(None).details(json!({ "status": resp.status(), "body": resp.text() })))
}

impl Plugin for Hostile {
    fn describe() -> Description {
        Description::new("hostile", env!("CARGO_PKG_VERSION"))
            .display_name("Hostile test plugin")
            .idempotent(true)
            .operation("loop", "spin forever")
            .operation("memory-bomb", "allocate without bound")
            .operation("panic", "panic")
            .operation("print", "print to stdout and stderr, then succeed")
            .operation(
                "traceback",
                "write a traceback to stderr and abort, as an uncaught Python exception does",
            )
            .operation("http", "GET payload.url")
            .operation("http-flood", "GET payload.url 100 times in one call")
            .operation("http-then-panic", "GET payload.url, then panic")
            .operation("read-file", "read payload.path from the filesystem")
            .operation("read-env", "dump the environment")
            .operation("secret-echo", "ask a server to echo a secret back")
            .operation(
                "undeclared-secret",
                "use a secret the manifest does not declare",
            )
            .operation("hmac-undeclared", "HMAC with an undeclared secret")
            .operation("tcp", "open a raw TCP socket")
            .operation("smtp", "submit mail without an SMTP grant")
            .config_schema(json!({"type": "object"}))
    }

    fn send(msg: Outbound) -> Result<Sent, SendError> {
        let p = msg.payload_json();
        let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        match msg.operation_name() {
            "" => Ok(Sent::with_id(Some(format!("ok-{}", msg.idempotency_key)))),
            "loop" => {
                let mut x: u64 = 0;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "memory-bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("hostile plugin panicked on purpose"),
            "print" => {
                println!("sending to {}", msg.to);
                eprintln!("warning: the provider is slow today");
                Ok(Sent::with_id(Some("printed".into())))
            }
            "traceback" => {
                eprintln!("Traceback (most recent call last):");
                eprintln!("  File \"app.py\", line 12, in send");
                eprintln!("    raise ValueError(\"the template has no subject\")");
                eprintln!("ValueError: the template has no subject");
                std::process::abort()
            }
            "http" => http_result(&s("url")),
            "http-then-panic" => {
                let _ = http::Request::get(&s("url")).send();
                panic!("panicked after sending a request")
            }
            "http-flood" => {
                let mut ok = 0;
                for _ in 0..100 {
                    http::Request::get(&s("url")).send()?;
                    ok += 1;
                }
                Ok(Sent::with_id(None).details(json!({ "requests": ok })))
            }
            "read-file" => match std::fs::read_to_string(s("path")) {
                Ok(content) => Ok(Sent::with_id(None).details(json!({ "content": content }))),
                Err(e) => Err(SendError::InvalidInput(format!("read failed: {e}"))),
            },
            "read-env" => {
                let env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
                Ok(Sent::with_id(None).details(json!({ "env": env })))
            }
            "secret-echo" => {
                let resp = http::Request::post(&s("url"))
                    .header("X-Token", &secret("DECLARED_SECRET"))
                    .body(format!("token={}", secret("DECLARED_SECRET")))
                    .send()?;
                Ok(Sent::with_id(None).details(json!({ "echo": resp.text(), "headers": format!("{:?}", resp.header("x-echo")) })))
            }
            "undeclared-secret" => http_result(&format!(
                "{}?k={}",
                s("url"),
                secret("OTHER_PLUGINS_SECRET")
            )),
            "hmac-undeclared" => match crypto::hmac_sha256("OTHER_PLUGINS_SECRET", b"x") {
                Ok(mac) => Ok(Sent::with_id(None).details(json!({ "mac_len": mac.len() }))),
                Err(e) => Err(SendError::Unauthorized(e)),
            },
            "tcp" => match std::net::TcpStream::connect(s("addr")) {
                Ok(_) => Ok(Sent::with_id(None).details(json!({ "connected": true }))),
                Err(e) => Err(SendError::Transient(format!("tcp failed: {e}"))),
            },
            "smtp" => {
                smtp::submit(
                    "a@example.com",
                    &["b@example.com".to_string()],
                    b"Subject: x\r\n\r\nhi\r\n",
                )?;
                Ok(Sent::with_id(None))
            }
            other => Err(SendError::InvalidInput(format!(
                "unknown operation {other}"
            ))),
        }
    }
}

export_plugin!(Hostile);
