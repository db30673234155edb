//! The HTTP server loop: every connection is bounded in time and in number.
//!
//! - A client has `header_timeout_ms` to send a request's headers; the same limit closes a
//!   keep-alive connection that stays idle (hyper's header read timeout also runs while a
//!   connection waits for its next request). A slow body is bounded by the handlers
//!   ([`super::read_limited`]).
//! - At most `max_connections` are open at once, and never more than the process's file limit
//!   leaves room for. The last `reserved_connections` of them serve only `/healthz`,
//!   `/metrics` and requests with a management bearer token, so an operator and a health check
//!   still get in while clients hold every other connection; a client that takes a reserved
//!   one has a second to send its headers. A connection beyond all of them is closed at once.
//! - Every request carries its connection's peer address (`ConnectInfo<SocketAddr>`), which
//!   the ingest rate limits count by ([`super::rate`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Time a client on a reserved connection has to send its headers: clients that take the
/// reserved connections too lose them quickly.
const RESERVED_HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections closed at once because every slot was taken (for the metrics).
pub static REFUSED_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// How many connections the server may hold, and for how long a request may take to arrive.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max: usize,
    /// Of those, the ones kept for the management API and health checks.
    pub reserved: usize,
    /// Time to send the headers (and idle time of a keep-alive connection).
    pub header_timeout: Duration,
}

impl ConnectionLimits {
    /// The limits of `[server]`, with the maximum lowered to what the process's file limit
    /// allows (raising the soft limit to the hard one first).
    pub fn from_config(server: &crate::config::ServerConfig) -> Self {
        let files = raise_file_limit();
        // Room for the store, the plugin cache, outgoing connections and the rest.
        let max = server.max_connections.min(files.saturating_sub(256)).max(8);
        ConnectionLimits {
            max,
            reserved: server.reserved_connections.min(max / 2).max(1),
            header_timeout: Duration::from_millis(server.header_timeout_ms.max(1)),
        }
    }
}

/// Raise the soft limit of open files to the hard limit; returns the limit in force.
fn raise_file_limit() -> usize {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    }
}

/// Serve `app` on `listener` until `stop` turns true, then let open connections finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let general = Arc::new(Semaphore::new(limits.max - limits.reserved));
    let reserved = Arc::new(Semaphore::new(limits.reserved));
    let restricted = app
        .clone()
        .layer(axum::middleware::from_fn(management_only));
    loop {
        let accepted = tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors or a passing error: wait a moment, do not spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (permit, router, header_timeout) = match general.clone().try_acquire_owned() {
            Ok(p) => (p, app.clone(), limits.header_timeout),
            Err(_) => match reserved.clone().try_acquire_owned() {
                // A reserved connection must say at once what it wants.
                Ok(p) => (
                    p,
                    restricted.clone(),
                    limits.header_timeout.min(RESERVED_HEADER_TIMEOUT),
                ),
                Err(_) => {
                    REFUSED_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Handlers learn the peer's address (the rate limits count by it).
            let router = tower::ServiceExt::map_request(
                router,
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    request
                },
            );
            let service = hyper_util::service::TowerToHyperService::new(router);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    // Every connection holds a permit until it is done: taking them all waits for the last.
    let _ = general
        .acquire_many((limits.max - limits.reserved) as u32)
        .await;
    let _ = reserved.acquire_many(limits.reserved as u32).await;
}

/// On a reserved connection: only health, metrics and the management API.
async fn management_only(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let path = request.uri().path();
    let management = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "));
    if path == "/healthz" || path == "/metrics" || management {
        return next.run(request).await;
    }
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        axum::Json(serde_json::json!({"error": {
            "code": "busy",
            "message": "every connection for clients is taken; retry shortly"
        }})),
    )
        .into_response()
}
