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
//! herald_lsp::run_stdio().expect("the language server ran");
//! ```
//!
//! Only LSP messages may be written to stdout while serving; log to stderr.

pub mod analysis;
pub mod lexer;
pub mod outline;
pub mod project;
mod server;
pub mod stdlib;
pub mod text;

pub use server::Backend;

use tokio::io::{AsyncRead, AsyncWrite};
use tower_lsp::{LspService, Server};

/// Serve one client over any byte streams (a socket, or an in-memory pipe in tests) until it
/// sends `exit` or closes its input.
pub async fn serve<I, O>(input: I, output: O)
where
    I: AsyncRead + Unpin,
    O: AsyncWrite,
{
    let (service, socket) = LspService::new(Backend::new);
    Server::new(input, output, socket).serve(service).await;
}

/// Serve one client over this process's stdin and stdout. Needs a tokio runtime with the
/// blocking pool (any runtime built by `tokio::runtime::Builder`).
pub async fn serve_stdio() {
    serve(tokio::io::stdin(), tokio::io::stdout()).await;
}

/// Build a tokio runtime and [`serve_stdio`] on it, for synchronous callers such as the
/// `herald lsp` subcommand.
pub fn run_stdio() -> std::io::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve_stdio());
    Ok(())
}
