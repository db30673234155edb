//! How a session ends, and the input tap that makes it end on `exit`.
//!
//! tower-lsp 0.20's `Server::serve` only returns once its input reaches end of file: after the
//! `exit` notification it keeps reading, and a message that arrives after `exit` makes it stop
//! reading without ever returning. [`ExitTap`] sits between the real input and tower-lsp. It
//! passes bytes through unchanged while following the LSP framing (a header section with
//! `Content-Length`, then that many bytes of JSON body), notes the `method` of every message,
//! and once the whole `exit` message has been passed on it reports end of file, so `serve`
//! returns normally. Nothing after `exit` is passed on.
//!
//! What it buffers is bounded: a header section longer than [`MAX_HEADER`] bytes or a declared
//! body longer than [`MAX_BODY`] bytes ends the session (reported as end of file) instead of
//! being read, and a body is only ever buffered as far as its bytes have actually arrived.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use serde::Deserialize;
use tokio::io::{AsyncRead, ReadBuf};

/// How a language-server session ended, as returned by [`serve`](crate::serve).
///
/// The LSP specification asks the server to exit with status 0 when `shutdown` was received
/// before `exit`, and 1 otherwise; [`SessionEnd::is_clean`] tells which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionEnd {
    /// The client sent `exit`; serving stopped right after it, without waiting for the input
    /// to close.
    Exited {
        /// Whether a `shutdown` request came before `exit`.
        after_shutdown: bool,
    },
    /// The input ended without `exit`: it was closed, or it stopped being readable as LSP
    /// messages (broken framing, a header section or body over the size limits, a body that
    /// is not JSON-RPC).
    InputClosed {
        /// Whether a `shutdown` request had been received before the input ended.
        after_shutdown: bool,
    },
}

impl SessionEnd {
    /// Whether the session ended as the specification asks: `shutdown` was received first
    /// (the process should then exit with status 0, and with 1 otherwise).
    pub fn is_clean(&self) -> bool {
        match *self {
            SessionEnd::Exited { after_shutdown } | SessionEnd::InputClosed { after_shutdown } => {
                after_shutdown
            }
        }
    }
}

/// The longest header section read, in bytes; a longer one ends the session.
pub(crate) const MAX_HEADER: usize = 8 * 1024;

/// The largest `Content-Length` accepted, in bytes; a larger one ends the session.
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;

/// Body buffers that grew past this are released after use rather than kept for the next
/// message.
const KEEP_CAPACITY: usize = 1024 * 1024;

/// Where the framing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a header section; `len` bytes of it so far, `content_length` the last valid
    /// `Content-Length` seen in it.
    Header {
        len: usize,
        content_length: Option<usize>,
    },
    /// Reading a body of `len` bytes.
    Body { len: usize },
    /// The whole `exit` message went through.
    Exited,
    /// The input is not readable as LSP any more (or was closed).
    Stopped,
}

/// The LSP framing followed byte by byte, with what was seen so far.
#[derive(Debug)]
pub(crate) struct Framing {
    state: State,
    /// The header line being read (without its line feed).
    line: Vec<u8>,
    /// The body being read.
    body: Vec<u8>,
    shutdown_seen: bool,
}

/// The only part of a message the tap looks at (other fields are skipped unread).
#[derive(Deserialize)]
struct Probe {
    method: Option<String>,
}

impl Framing {
    pub(crate) fn new() -> Framing {
        Framing {
            state: State::Header {
                len: 0,
                content_length: None,
            },
            line: Vec::new(),
            body: Vec::new(),
            shutdown_seen: false,
        }
    }

    /// Whether no more input may be passed on (after `exit`, or once the framing broke).
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, State::Exited | State::Stopped)
    }

    /// Whether the `exit` message went through.
    pub(crate) fn exited(&self) -> bool {
        self.state == State::Exited
    }

    /// Note that the input was closed.
    pub(crate) fn close(&mut self) {
        if !self.is_done() {
            self.stop();
        }
    }

    fn stop(&mut self) {
        self.state = State::Stopped;
        self.line = Vec::new();
        self.body = Vec::new();
    }

    /// Follow `bytes`, the next bytes of input, and return how many of them (a prefix) may be
    /// passed on: all of them, unless the `exit` message or a framing error ends within them.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            match self.state {
                State::Exited | State::Stopped => break,
                State::Header {
                    len,
                    content_length,
                } => {
                    let rest = &bytes[at..];
                    let room = MAX_HEADER - len;
                    let (take, line_end) = match rest.iter().position(|&b| b == b'\n') {
                        Some(i) if i < room => (i + 1, true),
                        _ => (rest.len().min(room), false),
                    };
                    if !line_end && take == room {
                        // The header section does not end within the limit.
                        self.stop();
                        return at + take;
                    }
                    at += take;
                    if !line_end {
                        self.line.extend_from_slice(&rest[..take]);
                        self.state = State::Header {
                            len: len + take,
                            content_length,
                        };
                        continue;
                    }
                    self.line.extend_from_slice(&rest[..take - 1]);
                    self.state = Framing::header_line(&self.line, len + take, content_length);
                    self.line.clear();
                    if self.state == State::Stopped {
                        self.stop();
                        return at;
                    }
                    if self.state == (State::Body { len: 0 }) {
                        self.end_of_body();
                    }
                }
                State::Body { len } => {
                    let take = (len - self.body.len()).min(bytes.len() - at);
                    self.body.extend_from_slice(&bytes[at..at + take]);
                    at += take;
                    if self.body.len() == len {
                        self.end_of_body();
                    }
                }
            }
        }
        at
    }

    /// The state after one header line (`line`, without its line ending) that brings the
    /// header section to `len` bytes.
    fn header_line(line: &[u8], len: usize, content_length: Option<usize>) -> State {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return match content_length {
                Some(len) => State::Body { len },
                None => State::Stopped,
            };
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return State::Stopped;
        };
        let name = line[..colon].trim_ascii();
        let content_length = if name.eq_ignore_ascii_case(b"content-length") {
            let value = std::str::from_utf8(line[colon + 1..].trim_ascii())
                .ok()
                .and_then(|v| v.parse::<usize>().ok());
            match value {
                Some(v) if v <= MAX_BODY => Some(v),
                _ => return State::Stopped,
            }
        } else {
            content_length
        };
        State::Header {
            len,
            content_length,
        }
    }

    /// A whole body went through: look at its method, then expect the next header section.
    fn end_of_body(&mut self) {
        // A body that is not a JSON object is left to tower-lsp to reject.
        let method = serde_json::from_slice::<Probe>(&self.body)
            .ok()
            .and_then(|p| p.method);
        if self.body.capacity() > KEEP_CAPACITY {
            self.body = Vec::new();
        } else {
            self.body.clear();
        }
        match method.as_deref() {
            Some("exit") => {
                self.stop();
                self.state = State::Exited;
            }
            Some("shutdown") => {
                self.shutdown_seen = true;
                self.state = Framing::new().state;
            }
            _ => self.state = Framing::new().state,
        }
    }

    /// How the session ended, given what went through.
    pub(crate) fn session_end(&self) -> SessionEnd {
        let after_shutdown = self.shutdown_seen;
        if self.exited() {
            SessionEnd::Exited { after_shutdown }
        } else {
            SessionEnd::InputClosed { after_shutdown }
        }
    }
}

/// An [`AsyncRead`] that passes `inner` through unchanged up to the end of the `exit` message
/// and then reports end of file (see the module documentation).
#[derive(Debug)]
pub(crate) struct ExitTap<R> {
    inner: R,
    framing: Framing,
}

impl<R> ExitTap<R> {
    pub(crate) fn new(inner: R) -> ExitTap<R> {
        ExitTap {
            inner,
            framing: Framing::new(),
        }
    }

    /// How the session ended, from what went through so far.
    pub(crate) fn session_end(&self) -> SessionEnd {
        self.framing.session_end()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ExitTap<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.framing.is_done() || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if read.is_empty() {
            this.framing.close();
            return Poll::Ready(Ok(()));
        }
        let keep = this.framing.feed(read);
        buf.set_filled(before + keep);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(body: &str) -> Vec<u8> {
        format!("Content-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    }

    const INITIALIZE: &str =
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{}}}"#;
    const SHUTDOWN: &str = r#"{"jsonrpc":"2.0","id":2,"method":"shutdown"}"#;
    const EXIT: &str = r#"{"jsonrpc":"2.0","method":"exit"}"#;

    /// Serves its chunks one per read, then reports end of file.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut chunk) = self.0.pop_front() {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    self.0.push_front(chunk.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn read_all(chunks: Vec<Vec<u8>>) -> (Vec<u8>, SessionEnd) {
        let mut tap = ExitTap::new(Chunks(chunks.into()));
        let mut out = Vec::new();
        tap.read_to_end(&mut out).await.unwrap();
        (out, tap.session_end())
    }

    #[tokio::test]
    async fn messages_split_byte_by_byte_pass_through_unchanged_and_exit_ends_the_input() {
        let mut input = [frame(INITIALIZE), frame(SHUTDOWN), frame(EXIT)].concat();
        let expected = input.clone();
        input.extend_from_slice(&frame(INITIALIZE));
        let bytes = input.iter().map(|&b| vec![b]).collect();
        let (out, end) = read_all(bytes).await;
        assert_eq!(out, expected);
        assert_eq!(
            end,
            SessionEnd::Exited {
                after_shutdown: true
            }
        );
    }

    #[tokio::test]
    async fn nothing_after_exit_in_the_same_read_is_passed_on() {
        let exit = [frame(INITIALIZE), frame(EXIT)].concat();
        let input = [exit.clone(), frame(SHUTDOWN), b"garbage".to_vec()].concat();
        let (out, end) = read_all(vec![input]).await;
        assert_eq!(out, exit);
        assert_eq!(
            end,
            SessionEnd::Exited {
                after_shutdown: false
            }
        );
    }

    #[tokio::test]
    async fn lf_line_endings_extra_headers_and_non_ascii_bodies_are_followed() {
        let body =
            r#"{"jsonrpc":"2.0","method":"textDocument/didOpen","params":{"text":"Zoë 😀"}}"#;
        let input = [
            format!(
                "Content-Type: application/vscode-jsonrpc; charset=utf-8\ncontent-length:{}  \n\n{body}",
                body.len()
            )
            .into_bytes(),
            frame(SHUTDOWN),
            frame(""),
            frame(EXIT),
        ]
        .concat();
        let (out, end) = read_all(vec![input.clone()]).await;
        assert_eq!(out, input);
        assert!(end.is_clean());
        assert!(matches!(end, SessionEnd::Exited { .. }));
    }

    #[tokio::test]
    async fn input_closed_without_exit_is_reported_with_whether_shutdown_came() {
        let (out, end) = read_all(vec![frame(INITIALIZE), frame(SHUTDOWN)]).await;
        assert_eq!(out, [frame(INITIALIZE), frame(SHUTDOWN)].concat());
        assert_eq!(
            end,
            SessionEnd::InputClosed {
                after_shutdown: true
            }
        );
        let (_, end) = read_all(vec![frame(INITIALIZE)]).await;
        assert_eq!(
            end,
            SessionEnd::InputClosed {
                after_shutdown: false
            }
        );
    }

    #[tokio::test]
    async fn a_huge_content_length_ends_the_input_without_allocating_it() {
        let header = b"Content-Length: 68719476736\r\n";
        let input = [&header[..], b"\r\n", &[b'x'; 4096][..]].concat();
        let (out, end) = read_all(vec![input]).await;
        // Passed on up to the line that declares too much, nothing after it.
        assert_eq!(out, header);
        assert_eq!(
            end,
            SessionEnd::InputClosed {
                after_shutdown: false
            }
        );

        let mut framing = Framing::new();
        let overflowing = b"Content-Length: 99999999999999999999999999999\r\n\r\n{}";
        framing.feed(overflowing);
        assert!(framing.is_done() && !framing.exited());
    }

    #[test]
    fn a_body_under_the_limit_is_buffered_only_as_far_as_it_arrived() {
        let mut framing = Framing::new();
        let header = format!("Content-Length: {MAX_BODY}\r\n\r\n");
        assert_eq!(framing.feed(header.as_bytes()), header.len());
        for _ in 0..16 {
            assert_eq!(framing.feed(&[b' '; 1000]), 1000);
        }
        assert!(!framing.is_done());
        assert!(
            framing.body.capacity() < 64 * 1024,
            "{}",
            framing.body.capacity()
        );
    }

    #[test]
    fn a_header_section_over_the_limit_ends_the_input() {
        let mut framing = Framing::new();
        let passed: usize = (0..MAX_HEADER)
            .map(|_| framing.feed(b"X-Filler: yes\r\n"))
            .take_while(|&n| n > 0)
            .sum();
        assert!(framing.is_done() && !framing.exited());
        assert!(passed <= MAX_HEADER, "{passed}");
        assert!(framing.line.capacity() <= MAX_HEADER);

        let mut framing = Framing::new();
        assert!(framing.feed(&vec![b'a'; 3 * MAX_HEADER]) <= MAX_HEADER);
        assert!(framing.is_done());
    }

    #[test]
    fn garbage_never_panics_and_stays_bounded() {
        // A fixed pseudo-random sequence (xorshift), cut into reads of varying sizes.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"Content-Length: 0123456789\r\n{}\"method\":exit shutdown\xff\x00";
        for _ in 0..2000 {
            let mut framing = Framing::new();
            for _ in 0..(next() % 8) {
                let n = (next() % 64) as usize;
                let chunk: Vec<u8> = (0..n)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                let kept = framing.feed(&chunk);
                assert!(kept <= chunk.len());
                assert!(framing.line.len() <= MAX_HEADER);
                assert!(framing.body.capacity() <= KEEP_CAPACITY);
            }
        }
    }

    #[test]
    fn session_end_is_clean_exactly_after_shutdown() {
        for after_shutdown in [true, false] {
            assert_eq!(
                SessionEnd::Exited { after_shutdown }.is_clean(),
                after_shutdown
            );
            assert_eq!(
                SessionEnd::InputClosed { after_shutdown }.is_clean(),
                after_shutdown
            );
        }
    }
}
