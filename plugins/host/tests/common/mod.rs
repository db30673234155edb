//! Loopback stand-in servers for the plugin tests: an HTTP server that
//! records every request and answers from a script, and a real SMTP server
//! (mailin-embedded) that keeps every message it receives. Both bind
//! 127.0.0.1 on an ephemeral port and never reach any other address.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_plugin_host::{CallLimits, Grant, LoadedPlugin, PluginHost};

/// Directory of a bundled first-party connector.
pub fn connector_dir(id: &str) -> PathBuf {
    herald_bundled::packaged_dir().join(id)
}

/// Directory of a test plugin (hostile etc.).
pub fn test_plugin_dir(id: &str) -> PathBuf {
    herald_bundled::testdata_dir().join(id)
}

/// A process-wide host (one engine, as in the daemon).
pub fn host() -> &'static PluginHost {
    use std::sync::OnceLock;
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| PluginHost::new(None).expect("engine"))
}

/// A grant for a plugin that talks to a loopback stand-in at `server`.
pub fn loopback_grant(
    server: &HttpServer,
    config: serde_json::Value,
    secrets: &[(&str, &str)],
) -> Grant {
    Grant {
        allowed_hosts: vec![server.host_port()],
        allow_private: true,
        secrets: secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        config,
        smtp: None,
        limits: CallLimits {
            // A hang guard only: a loaded machine must not fail a test by being slow.
            timeout: Duration::from_secs(120),
            ..CallLimits::default()
        },
    }
}

/// Load a bundled connector with `grant`.
pub fn load_connector(id: &str, grant: Grant) -> LoadedPlugin {
    host()
        .load(&connector_dir(id), grant)
        .unwrap_or_else(|e| panic!("loading {id}: {e}"))
}

/// One request as the stand-in server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    /// Form-encoded body as ordered pairs.
    pub fn form(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
    /// Decoded `user:password` of a Basic `Authorization` header.
    pub fn basic_auth(&self) -> Option<String> {
        use base64::Engine;
        let v = self.header("authorization")?.strip_prefix("Basic ")?;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).ok()?).ok()
    }
}

/// A gate that stand-in handlers wait at until the test opens it: a request is "in flight" for
/// exactly as long as the test says, however slow the machine. Waiting is bounded by a
/// two-minute hang guard.
#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<(bool, usize)>, std::sync::Condvar)>);

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Block until the gate opens.
    pub fn wait(&self) {
        let (lock, cv) = &*self.0;
        let mut s = lock.lock().unwrap();
        s.1 += 1;
        cv.notify_all();
        let (s, _) = cv
            .wait_timeout_while(s, Duration::from_secs(120), |s| !s.0)
            .unwrap();
        assert!(s.0, "hang guard: the gate was never opened");
    }

    /// Block until `n` handlers wait at the gate.
    pub fn wait_for_waiters(&self, n: usize) {
        let (lock, cv) = &*self.0;
        let s = lock.lock().unwrap();
        let (s, _) = cv
            .wait_timeout_while(s, Duration::from_secs(120), |s| s.1 < n)
            .unwrap();
        assert!(s.1 >= n, "hang guard: {} of {n} requests arrived", s.1);
    }

    pub fn open(&self) {
        let (lock, cv) = &*self.0;
        lock.lock().unwrap().0 = true;
        cv.notify_all();
    }

    pub fn is_open(&self) -> bool {
        self.0 .0.lock().unwrap().0
    }
}

/// A scripted reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }
    pub fn with_header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type Responder = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A recording HTTP/1.1 server on 127.0.0.1.
pub struct HttpServer {
    pub port: u16,
    requests: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    pub fn start(responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let responder: Arc<Responder> = Arc::new(responder);
        let (reqs, flag) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (reqs, responder) = (reqs.clone(), responder.clone());
                std::thread::spawn(move || handle(stream, &reqs, &*responder));
            }
        });
        HttpServer {
            port,
            requests,
            stop,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn only_request(&self) -> Recorded {
        let r = self.requests();
        assert_eq!(r.len(), 1, "expected exactly one request, got {r:#?}");
        r.into_iter().next().unwrap()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn handle(stream: TcpStream, reqs: &Mutex<Vec<Recorded>>, responder: &Responder) {
    stream.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), q.to_string()),
        None => (target.clone(), String::new()),
    };
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok();
    let rec = Recorded {
        method,
        path,
        query,
        headers,
        body,
    };
    let reply = responder(&rec);
    reqs.lock().unwrap().push(rec);
    let mut out = stream;
    let mut resp = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str("\r\n");
    resp.push_str(&reply.body);
    let _ = out.write_all(resp.as_bytes());
    let _ = out.flush();
}

/// One message received by the SMTP server.
#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

#[derive(Clone, Default)]
struct MailHandler {
    current: Mail,
    inbox: Arc<Mutex<Vec<Mail>>>,
}

impl mailin_embedded::Handler for MailHandler {
    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.current = Mail {
            from: from.to_string(),
            to: to.to_vec(),
            data: Vec::new(),
        };
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        self.inbox
            .lock()
            .unwrap()
            .push(std::mem::take(&mut self.current));
        mailin_embedded::response::OK
    }
}

/// A real SMTP server (mailin-embedded) on 127.0.0.1.
pub struct SmtpServer {
    pub port: u16,
    inbox: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpServer {
    pub fn start() -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let inbox = Arc::new(Mutex::new(Vec::new()));
        let handler = MailHandler {
            current: Mail::default(),
            inbox: inbox.clone(),
        };
        let mut server = mailin_embedded::Server::new(handler);
        server
            .with_name("mx.test")
            .with_ssl(mailin_embedded::SslConfig::None)
            .unwrap()
            .with_num_threads(2)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpServer { port, inbox }
    }

    pub fn messages(&self) -> Vec<Mail> {
        self.inbox.lock().unwrap().clone()
    }

    /// Wait (bounded) until `n` messages arrived.
    pub fn wait_for(&self, n: usize) -> Vec<Mail> {
        for _ in 0..200 {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.messages()
    }
}
