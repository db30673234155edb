//! Messages per second into one loopback SMTP server, in one run:
//!
//! * `lettre send`  — lettre's `SmtpConnection::send` in a loop on one
//!   persistent connection (body and end-of-data marker in two writes, as in
//!   Herald's previous SMTP path, minus the pool's NOOP);
//! * `plain`        — a plain client on lettre's `SmtpConnection`: `MAIL`,
//!   `RCPT`, `DATA`, then the dot-stuffed message and the marker in one write
//!   (what Python's smtplib does). This is the baseline of the ratios;
//! * `herald`       — [`SmtpClient`], Herald's pooled client, on one connection,
//!   against the server without and with `PIPELINING` advertised;
//! * `herald plugin`— the whole path: the bundled smtp-email connector
//!   rendering the MIME message in wasm and submitting it through the host;
//! * the same with 4 threads: 4 plain clients against one `SmtpClient` with
//!   `connections = 4` shared by the 4 threads.
//!
//! The server is written here (std threads, TCP_NODELAY, every command line
//! answered at once in one write) so that it is never the bottleneck. Each
//! case runs five times, interleaved, for about a second; the median is
//! printed. A ratio is the median of the five per-round ratios, each from
//! two cases measured moments apart, so that load from other processes
//! affects both sides alike. Run with
//! `cargo bench -p herald-plugin-host --bench smtp_throughput`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_plugin_host::smtp_client::SmtpClient;
use herald_plugin_host::{CallLimits, Grant, PluginHost, SendRequest, SmtpRelay};
use lettre::address::Envelope;
use lettre::transport::smtp::client::SmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Quit, Rcpt};
use lettre::transport::smtp::extension::ClientId;
use serde_json::json;

const ROUND: Duration = Duration::from_millis(1000);
const ROUNDS: usize = 5;
const THREADS: usize = 4;

/// A fast SMTP sink on 127.0.0.1; returns its port and message counter.
fn start_server(pipelining: bool) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, pipelining, &counter);
            });
        }
    });
    (port, count)
}

fn serve(stream: TcpStream, pipelining: bool, count: &AtomicUsize) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    out.write_all(b"220 bench.test ESMTP\r\n")?;
    let ehlo: &[u8] = if pipelining {
        b"250-bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
    } else {
        b"250-bench.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
    };
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let verb = line
            .get(..4)
            .map(|v| v.to_ascii_uppercase())
            .unwrap_or_default();
        match &verb[..] {
            b"EHLO" | b"HELO" => out.write_all(ehlo)?,
            b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => out.write_all(b"250 2.0.0 ok\r\n")?,
            b"DATA" => {
                out.write_all(b"354 go ahead\r\n")?;
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line)? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                }
                count.fetch_add(1, Ordering::Relaxed);
                out.write_all(b"250 2.0.0 queued\r\n")?;
            }
            b"QUIT" => {
                out.write_all(b"221 2.0.0 bye\r\n")?;
                return Ok(());
            }
            _ => out.write_all(b"502 5.5.2 unknown\r\n")?,
        }
    }
}

/// A rendered ~2 KB marketing message, CRLF line ends, one line starting with a dot.
fn message(i: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Shop News <news@shop.example>\r\nTo: ada@example.org\r\n\
         Subject: Welcome to the shop\r\nMessage-ID: <run-{i}-step-1@shop.example>\r\n\
         Date: Mon, 02 Mar 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         List-Unsubscribe: <https://shop.example/u/abc{i}>\r\n\
         Content-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n\
         Hello Ada,\r\n\r\n.this line starts with a dot\r\n"
    );
    while m.len() < 2048 {
        m.push_str("Thanks for subscribing. Here is what is new in the shop this week.\r\n");
    }
    m.into_bytes()
}

fn envelope() -> Envelope {
    Envelope::new(
        Some("news@shop.example".parse().unwrap()),
        vec!["ada@example.org".parse().unwrap()],
    )
    .unwrap()
}

fn connect(port: u16) -> SmtpConnection {
    SmtpConnection::connect(
        ("127.0.0.1", port),
        Some(Duration::from_secs(30)),
        &ClientId::Domain("bench.local".into()),
        None,
        None,
    )
    .expect("connect")
}

/// The dot-stuffed DATA payload and marker, as a plain client builds it.
fn stuffed(message: &[u8]) -> String {
    let text = std::str::from_utf8(message).unwrap();
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.split_inclusive("\r\n") {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
    }
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out.push_str(".\r\n");
    out
}

/// One message through the plain one-write client.
fn plain_send(conn: &mut SmtpConnection, env: &Envelope, message: &[u8]) {
    conn.command(Mail::new(env.from().cloned(), vec![]))
        .unwrap();
    for to in env.to() {
        conn.command(Rcpt::new(to.clone(), vec![])).unwrap();
    }
    conn.command(Data).unwrap();
    conn.command(stuffed(message)).unwrap();
}

fn relay(port: u16, connections: usize) -> SmtpRelay {
    let mut r = SmtpRelay::plain("127.0.0.1", port);
    r.connections = connections;
    r
}

/// Run `send(thread, i)` on `threads` threads for `ROUND`; messages/s.
fn rate(threads: usize, send: &(dyn Fn(usize, usize) + Sync)) -> f64 {
    let start = Instant::now();
    let total: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut n = 0;
                    while start.elapsed() < ROUND {
                        send(t, n);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

type Case<'a> = (&'a str, usize, Box<dyn Fn(usize, usize) + Sync + 'a>);

fn main() {
    let (port, count_plain) = start_server(false);
    let (port_pipe, count_pipe) = start_server(true);
    let messages: Vec<Vec<u8>> = (0..64).map(message).collect();
    let msg = |i: usize| messages[i % messages.len()].as_slice();
    let env = envelope();

    // One persistent connection per plain client (one per thread).
    let lettre_conn = std::sync::Mutex::new(connect(port));
    let plain_conns: Vec<_> = (0..THREADS)
        .map(|_| std::sync::Mutex::new(connect(port)))
        .collect();
    let herald_1 = SmtpClient::new(&relay(port, 1)).unwrap();
    let herald_1_pipe = SmtpClient::new(&relay(port_pipe, 1)).unwrap();
    let herald_n = SmtpClient::new(&relay(port, THREADS)).unwrap();
    let herald_n_pipe = SmtpClient::new(&relay(port_pipe, THREADS)).unwrap();

    let host = PluginHost::new(None).expect("host");
    let plugin = host
        .load(
            &herald_bundled::packaged_dir().join("smtp-email"),
            Grant {
                config: json!({ "from_address": "news@shop.example", "from_name": "Shop News" }),
                smtp: Some(relay(port_pipe, 1)),
                limits: CallLimits {
                    timeout: Duration::from_secs(60),
                    ..CallLimits::default()
                },
                ..Grant::default()
            },
        )
        .expect("load smtp-email");
    let request = |i: usize| SendRequest {
        idempotency_key: format!("run-{i}:step-1"),
        to: "ada@example.org".into(),
        subject: Some("Welcome to the shop".into()),
        text: Some(String::from_utf8(msg(i)[400..].to_vec()).unwrap()),
        ..Default::default()
    };

    let cases: Vec<Case> = vec![
        (
            "lettre send (2 writes)",
            1,
            Box::new(|_, i| {
                lettre_conn.lock().unwrap().send(&env, msg(i)).unwrap();
            }),
        ),
        (
            "plain (1 write)",
            1,
            Box::new(|_, i| plain_send(&mut plain_conns[0].lock().unwrap(), &env, msg(i))),
        ),
        (
            "herald",
            1,
            Box::new(|_, i| {
                herald_1.send(&env, msg(i), None).unwrap();
            }),
        ),
        (
            "herald, PIPELINING",
            1,
            Box::new(|_, i| {
                herald_1_pipe.send(&env, msg(i), None).unwrap();
            }),
        ),
        (
            "herald plugin, PIPELINING",
            1,
            Box::new(|_, i| {
                plugin.send(&request(i)).unwrap();
            }),
        ),
        (
            "plain x4",
            THREADS,
            Box::new(|t, i| plain_send(&mut plain_conns[t].lock().unwrap(), &env, msg(i))),
        ),
        (
            "herald connections=4",
            THREADS,
            Box::new(|_, i| {
                herald_n.send(&env, msg(i), None).unwrap();
            }),
        ),
        (
            "herald connections=4, PIPE",
            THREADS,
            Box::new(|_, i| {
                herald_n_pipe.send(&env, msg(i), None).unwrap();
            }),
        ),
    ];

    // Warm up every path (connections opened, instances created).
    for (_, threads, send) in &cases {
        for t in 0..*threads {
            send(t, 0);
        }
    }
    let mut rates = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        for (k, (_, threads, send)) in cases.iter().enumerate() {
            rates[k].push(rate(*threads, send.as_ref()));
        }
    }
    let median = |mut r: Vec<f64>| {
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    println!("SMTP throughput into one loopback server ({ROUNDS} x {ROUND:?} per case, median)");
    println!("{:<30} {:>7} {:>12}", "client", "threads", "messages/s");
    for ((name, threads, _), r) in cases.iter().zip(&rates) {
        println!("{name:<30} {threads:>7} {:>12.0}", median(r.clone()));
    }
    let of = |name: &str| &rates[cases.iter().position(|c| c.0 == name).unwrap()];
    let ratio = |a: &str, b: &str| median(of(a).iter().zip(of(b)).map(|(x, y)| x / y).collect());
    println!();
    println!("ratios against the plain one-write client (target >= 0.8)");
    for (herald, plain) in [
        ("herald", "plain (1 write)"),
        ("herald, PIPELINING", "plain (1 write)"),
        ("herald plugin, PIPELINING", "plain (1 write)"),
        ("herald connections=4", "plain x4"),
        ("herald connections=4, PIPE", "plain x4"),
    ] {
        println!("{herald:<30} {:>7.2}", ratio(herald, plain));
    }
    println!(
        "{:<30} {:>7.0}",
        "herald / lettre send",
        ratio("herald", "lettre send (2 writes)")
    );

    // Every connection still works and the servers got what was sent.
    for c in &plain_conns {
        let _ = c.lock().unwrap().command(Quit);
    }
    let received = count_plain.load(Ordering::Relaxed) + count_pipe.load(Ordering::Relaxed);
    println!("\nmessages received by the servers: {received}");
}
