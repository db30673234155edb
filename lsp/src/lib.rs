//! Herald's language server.
//!
//! Editors talk LSP to `herald lsp` over stdio. The server checks workflow scripts with the
//! same engine ([`herald_dsl::build_engine`]) and the same analysis
//! ([`herald_dsl::check_script`]) as `herald check`, with the project context built the same
//! way, so the editor and the CLI never disagree. On top it offers completion, hover, signature
//! help, go to definition and document symbols.
//!
//! ```no_run
//! // In a binary without a tokio runtime:
//! let end = herald_lsp::run_stdio().expect("the language server ran");
//! std::process::exit(if end.is_clean() { 0 } else { 1 });
//! ```
//!
//! Only LSP messages may be written to stdout while serving; log to stderr.

pub mod analysis;
pub mod lexer;
pub mod outline;
pub mod project;
mod server;
mod session;
pub mod stdlib;
pub mod text;

pub use server::Backend;
pub use session::SessionEnd;

use tokio::io::{AsyncRead, AsyncWrite};
use tower_lsp::{LspService, Server};

/// Serve one client over any byte streams (a socket, or an in-memory pipe in tests) until it
/// sends `exit` or its input ends, and tell how the session ended.
///
/// Serving stops as soon as the whole `exit` notification has been read, without waiting for
/// the input to close; nothing the client sends after `exit` is read. The session is
/// [clean](SessionEnd::is_clean) when a `shutdown` request came first.
pub async fn serve<I, O>(input: I, output: O) -> SessionEnd
where
    I: AsyncRead + Unpin,
    O: AsyncWrite,
{
    let mut input = session::ExitTap::new(input);
    let (service, socket) = LspService::new(Backend::new);
    Server::new(&mut input, output, socket).serve(service).await;
    input.session_end()
}

/// Serve one client over this process's stdin and stdout (see [`serve`]). Needs a tokio
/// runtime with the blocking pool (any runtime built by `tokio::runtime::Builder`).
///
/// Checks may still be running on the blocking pool when this returns; a caller that owns
/// the runtime need not wait for them (`Runtime::shutdown_background`, as [`run_stdio`]
/// does).
pub async fn serve_stdio() -> SessionEnd {
    serve(tokio::io::stdin(), tokio::io::stdout()).await
}

/// Build a tokio runtime and [`serve_stdio`] on it, for synchronous callers such as the
/// `herald lsp` subcommand; returns once the client sent `exit` (even if it keeps stdin
/// open) or closed stdin. The process should then exit with status 0 if the session
/// [is clean](SessionEnd::is_clean), and 1 otherwise.
pub fn run_stdio() -> std::io::Result<SessionEnd> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let end = runtime.block_on(serve_stdio());
    // Every response was written and flushed when `serve` returned. What may be left is
    // background work (a check on the blocking pool, a debounce timer), whose results no one
    // will read: don't wait for it.
    runtime.shutdown_background();
    Ok(end)
}
