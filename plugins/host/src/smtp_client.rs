//! The SMTP client behind the `smtp` capability: a small pool of persistent
//! connections to one operator-configured relay.
//!
//! Connections come from lettre's [`SmtpConnection`] (TCP, implicit TLS or
//! STARTTLS, AUTH PLAIN/LOGIN, timeouts), but the mail transaction is driven
//! here, because lettre's own sending path is slow on a persistent
//! connection:
//!
//! * lettre writes the message body and the end-of-data marker in two
//!   writes; the marker is then a small segment behind an unacknowledged one,
//!   which Nagle's algorithm holds back until the server's delayed ACK (about
//!   40 ms per message). Here the dot-stuffed body and the marker go out in
//!   **one** write.
//! * lettre's pool sends `NOOP` before reusing a connection. Here a pooled
//!   connection is used as is; if the server closed it while it was idle,
//!   the first reply of the transaction says so (an I/O error, end of stream
//!   or `421`) before anything was accepted, and the transaction is retried
//!   once on a fresh connection.
//! * when the server advertises `PIPELINING`, `MAIL FROM` and every
//!   `RCPT TO` go out in one write.
//!
//! After a negative reply in the middle of a transaction the connection is
//! reset with `RSET` and kept; a connection with an I/O or protocol error is
//! dropped. At most [`SmtpRelay::connections`] idle connections are kept;
//! concurrent submissions beyond them open more connections, which are
//! closed (`QUIT`) when they are not needed any more (the `smtp` capability
//! runs at most `connections` submissions at once, so through a plugin the
//! number of connections stays at that setting). A connection idle for
//! longer than [`IDLE_TIMEOUT`] is closed instead of reused.
//!
//! With a DKIM signer ([`SmtpRelay::dkim`]) each message is signed once, after its line
//! breaks are made CRLF and before the transaction starts, so the signature covers exactly
//! the bytes the relay receives (a retry on a fresh connection sends the same signed bytes).

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
use lettre::transport::smtp::client::{SmtpConnection, TlsParameters};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use lettre::transport::smtp::Error as LettreError;

use crate::dkim::DkimSigner;
use crate::types::{SmtpRelay, SmtpSecurity};

/// A pooled connection idle for longer than this is closed instead of reused
/// (servers commonly drop idle clients after a few minutes).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a submission failed, classified for the `smtp` capability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmtpSendError {
    /// The message cannot be sent to this relay as it is (it needs an
    /// extension the relay does not offer); nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// The relay refused with a permanent (5xx) reply; do not retry.
    #[error("{0}")]
    Rejected(String),
    /// Nothing was delivered: a transient (4xx) reply, or the relay refused
    /// the connection; retry later.
    #[error("{0}")]
    Transient(String),
    /// Nothing was delivered and the relay asked the client to slow down
    /// (`454`, or a `421`/`450`/`451` reply that speaks of rates or too many
    /// messages); retry later, more slowly.
    #[error("{0}")]
    Throttled(String),
    /// The outcome is unknown (for example the connection was lost after the
    /// message data was sent).
    #[error("{0}")]
    Ambiguous(String),
}

impl From<&LettreError> for SmtpSendError {
    fn from(e: &LettreError) -> Self {
        let msg = e.to_string();
        if e.is_permanent() {
            SmtpSendError::Rejected(msg)
        } else if e.is_transient() && is_throttle(e) {
            SmtpSendError::Throttled(msg)
        } else if e.is_transient() || connection_refused(e) {
            SmtpSendError::Transient(msg)
        } else {
            SmtpSendError::Ambiguous(msg)
        }
    }
}

/// The client could not be set up for a relay.
#[derive(Debug, thiserror::Error)]
#[error("smtp relay {host}: {message}")]
pub struct SmtpSetupError {
    /// The relay host.
    pub host: String,
    /// What went wrong (TLS parameters).
    pub message: String,
}

/// Pooled SMTP client for one relay. Cheap to share between threads; every
/// [`send`](SmtpClient::send) uses one connection at a time.
pub struct SmtpClient {
    host: String,
    port: u16,
    security: SmtpSecurity,
    tls: Option<TlsParameters>,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    max_idle: usize,
    /// Signs each message before DATA, when configured.
    dkim: Option<Arc<DkimSigner>>,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
}

impl fmt::Debug for SmtpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpClient")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("authenticated", &self.credentials.is_some())
            .field("timeout", &self.timeout)
            .field("connections", &self.max_idle)
            .field("dkim", &self.dkim)
            .field("idle", &self.idle_connections())
            .finish()
    }
}

/// An open, authenticated connection in no transaction.
struct Conn {
    inner: SmtpConnection,
    /// The server advertised `PIPELINING`.
    pipelining: bool,
    /// The socket's current read and write timeout.
    timeout: Duration,
}

impl Conn {
    /// Make the socket timeout at most `wanted`, and not much less: it is
    /// changed (two system calls) only when it is longer than `wanted` or
    /// shorter than three quarters of it, since every call brings a slightly
    /// different remaining budget.
    fn limit_timeout(&mut self, wanted: Duration) -> std::io::Result<()> {
        if self.timeout <= wanted && self.timeout >= wanted * 3 / 4 {
            return Ok(());
        }
        let timeout = (wanted * 7 / 8).max(Duration::from_millis(1));
        self.inner.set_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// How a transaction failed, which decides what happens to the connection.
enum Failure {
    /// Nothing was sent and the connection is intact.
    Unsupported(String),
    /// A negative reply; the connection is in sync and can be reset.
    Reply(LettreError),
    /// I/O error, end of stream or unparseable reply: the connection is unusable.
    Broken(LettreError),
    /// The first reply on a reused connection shows that the server closed it
    /// while it was idle; nothing was accepted, so the transaction can be retried.
    Stale(LettreError),
}

impl Failure {
    fn of(e: LettreError) -> Failure {
        if is_reply(&e) {
            Failure::Reply(e)
        } else {
            Failure::Broken(e)
        }
    }
}

/// The DATA phase of one message.
enum Payload {
    /// Dot-stuffed message and end-of-data marker, written in one go.
    Wire(String),
    /// A message that is not UTF-8 cannot go through `SmtpConnection::command`;
    /// it is handed to lettre's `message` (which dot-stuffs and writes the
    /// marker itself), CRLF-normalised and without its final line break.
    Bytes(Vec<u8>),
}

impl SmtpClient {
    /// A client for `relay`; no connection is opened until the first send.
    pub fn new(relay: &SmtpRelay) -> Result<SmtpClient, SmtpSetupError> {
        let tls = match relay.security {
            SmtpSecurity::None => None,
            SmtpSecurity::StartTls | SmtpSecurity::Tls => Some(
                TlsParameters::new(relay.host.clone()).map_err(|e| SmtpSetupError {
                    host: relay.host.clone(),
                    message: e.to_string(),
                })?,
            ),
        };
        Ok(SmtpClient {
            host: relay.host.clone(),
            port: relay.port,
            security: relay.security,
            tls,
            credentials: relay
                .credentials
                .as_ref()
                .map(|(u, p)| Credentials::new(u.clone(), p.clone())),
            hello: ClientId::default(),
            timeout: relay.timeout,
            max_idle: relay.connections,
            dkim: relay.dkim.clone(),
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Number of idle connections currently kept for reuse.
    pub fn idle_connections(&self) -> usize {
        self.idle_list().len()
    }

    /// Submit `message` (RFC 5322, CRLF line endings; bare CR or LF are sent
    /// as CRLF) for `envelope` and return the relay's final reply. With a DKIM
    /// signer, a message whose From is aligned with its domain goes out with a
    /// `DKIM-Signature` header in front.
    ///
    /// Every connect, read and write waits at most the relay's timeout, or
    /// `timeout` if that is shorter.
    pub fn send(
        &self,
        envelope: &Envelope,
        message: &[u8],
        timeout: Option<Duration>,
    ) -> Result<Response, SmtpSendError> {
        let timeout = timeout
            .map_or(self.timeout, |t| t.min(self.timeout))
            .max(Duration::from_millis(1));
        let signed = match &self.dkim {
            Some(signer) => {
                let normalised = crlf_line_ends(message);
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                signer
                    .sign(&normalised, now)
                    .map_err(|e| SmtpSendError::Transient(format!("DKIM signing: {e}")))?
            }
            None => None,
        };
        let message: &[u8] = signed.as_deref().unwrap_or(message);
        let payload = Payload::new(message);
        let eight_bit = !message.is_ascii();
        let mut pooled = self.checkout();
        loop {
            let (mut conn, since) = match pooled.take() {
                Some(idle) => {
                    let mut conn = idle.conn;
                    if conn.limit_timeout(timeout).is_err() {
                        continue; // cannot happen for a live socket; use a fresh one
                    }
                    (conn, Some(idle.since))
                }
                None => (
                    self.connect(timeout).map_err(|e| SmtpSendError::from(&e))?,
                    None,
                ),
            };
            match transaction(&mut conn, envelope, &payload, eight_bit, since.is_some()) {
                Ok(response) => {
                    self.checkin(conn);
                    return Ok(response);
                }
                Err(Failure::Stale(e)) => {
                    tracing::debug!(target: "herald_plugin", relay = %self.host, "pooled SMTP connection was closed by the server ({e}); retrying on a new one");
                    // Connections idle for at least as long are probably closed too.
                    if let Some(since) = since {
                        self.idle_list().retain(|i| i.since > since);
                    }
                }
                Err(Failure::Unsupported(m)) => {
                    self.checkin(conn);
                    return Err(SmtpSendError::Invalid(m));
                }
                Err(Failure::Reply(e)) => {
                    if conn.inner.command(Rset).is_ok() {
                        self.checkin(conn);
                    }
                    return Err(SmtpSendError::from(&e));
                }
                Err(Failure::Broken(e)) => return Err(SmtpSendError::from(&e)),
            }
        }
    }

    /// Open, secure and authenticate a new connection.
    fn connect(&self, timeout: Duration) -> Result<Conn, LettreError> {
        let wrapper = match self.security {
            SmtpSecurity::Tls => self.tls.as_ref(),
            SmtpSecurity::None | SmtpSecurity::StartTls => None,
        };
        let mut inner = SmtpConnection::connect(
            (self.host.as_str(), self.port),
            Some(timeout),
            &self.hello,
            wrapper,
            None,
        )?;
        if let (SmtpSecurity::StartTls, Some(tls)) = (self.security, &self.tls) {
            // Fails if the server does not offer STARTTLS: it is required.
            inner.starttls(tls, &self.hello)?;
        }
        // lettre's `ServerInfo` does not record PIPELINING; ask once per connection.
        let ehlo = inner.command(Ehlo::new(self.hello.clone()))?;
        let pipelining = ehlo.message().skip(1).any(|line| {
            line.split_whitespace()
                .next()
                .is_some_and(|kw| kw.eq_ignore_ascii_case("PIPELINING"))
        });
        if let Some(credentials) = &self.credentials {
            inner.auth(DEFAULT_MECHANISMS, credentials)?;
        }
        Ok(Conn {
            inner,
            pipelining,
            timeout,
        })
    }

    fn idle_list(&self) -> MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection, unless it idled too long.
    fn checkout(&self) -> Option<Idle> {
        let mut idle = self.idle_list();
        let last = idle.pop()?;
        if last.since.elapsed() > IDLE_TIMEOUT {
            // All others idled even longer.
            idle.clear();
            return None;
        }
        Some(last)
    }

    /// Keep `conn` for reuse, or close it if enough are kept.
    fn checkin(&self, conn: Conn) {
        let mut idle = self.idle_list();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
            return;
        }
        drop(idle);
        let mut conn = conn;
        let _ = conn.inner.quit();
    }
}

/// One mail transaction on `conn`.
fn transaction(
    conn: &mut Conn,
    envelope: &Envelope,
    payload: &Payload,
    eight_bit: bool,
    reused: bool,
) -> Result<Response, Failure> {
    let info = conn.inner.server_info();
    let mut parameters = Vec::new();
    let non_ascii = envelope
        .from()
        .into_iter()
        .chain(envelope.to())
        .any(|a| !AsRef::<str>::as_ref(a).is_ascii());
    if non_ascii {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            return Err(Failure::Unsupported(
                "the envelope has non-ASCII addresses but the relay does not support SMTPUTF8"
                    .into(),
            ));
        }
        parameters.push(MailParameter::SmtpUtfEight);
    }
    if eight_bit {
        if !info.supports_feature(Extension::EightBitMime) {
            return Err(Failure::Unsupported(
                "the message has non-ASCII bytes but the relay does not support 8BITMIME".into(),
            ));
        }
        parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let mail = Mail::new(envelope.from().cloned(), parameters);
    let first_reply = |e: LettreError| {
        if reused && closed_while_idle(&e) {
            Failure::Stale(e)
        } else {
            Failure::of(e)
        }
    };
    if conn.pipelining {
        let mut batch = mail.to_string();
        for to in envelope.to() {
            batch.push_str(&Rcpt::new(to.clone(), vec![]).to_string());
        }
        let mut refused = match conn.inner.command(batch) {
            Ok(_) => None,
            Err(e) => match first_reply(e) {
                Failure::Reply(e) => Some(e),
                other => return Err(other),
            },
        };
        // Read every RCPT reply, whatever happened, to stay in sync.
        for _ in envelope.to() {
            match conn.inner.read_response() {
                Ok(_) => {}
                Err(e) if is_reply(&e) => {
                    refused.get_or_insert(e);
                }
                Err(e) => return Err(Failure::Broken(e)),
            }
        }
        if let Some(e) = refused {
            return Err(Failure::Reply(e));
        }
    } else {
        conn.inner.command(mail).map_err(first_reply)?;
        for to in envelope.to() {
            conn.inner
                .command(Rcpt::new(to.clone(), vec![]))
                .map_err(Failure::of)?;
        }
    }
    conn.inner.command(Data).map_err(Failure::of)?;
    match payload {
        Payload::Wire(wire) => conn.inner.command(wire.as_str()),
        Payload::Bytes(bytes) => conn.inner.message(bytes),
    }
    .map_err(Failure::of)
}

impl Payload {
    fn new(message: &[u8]) -> Payload {
        let normalised = crlf_line_ends(message);
        match String::from_utf8(dot_stuff(&normalised)) {
            Ok(wire) => Payload::Wire(wire),
            Err(_) => {
                let mut bytes = normalised.into_owned();
                if bytes.ends_with(b"\r\n") {
                    bytes.truncate(bytes.len() - 2);
                }
                Payload::Bytes(bytes)
            }
        }
    }
}

/// `message` with every line break (CRLF, bare CR, bare LF) as CRLF.
fn crlf_line_ends(message: &[u8]) -> Cow<'_, [u8]> {
    let clean = message.split_inclusive(|&b| b == b'\n').all(|line| {
        let text = match line.strip_suffix(b"\n") {
            Some(l) => match l.strip_suffix(b"\r") {
                Some(l) => l,
                None => return false, // bare LF
            },
            None => line,
        };
        !text.contains(&b'\r')
    });
    if clean {
        return Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut i = 0;
    while i < message.len() {
        match message[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// The DATA payload for a CRLF-normalised message: every line starting with
/// `.` gets another `.` (RFC 5321 §4.5.2), then the end-of-data marker
/// `CRLF . CRLF`, whose first CRLF is the message's own final line break when
/// it has one (so no blank line is added).
pub(crate) fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !message.is_empty() && !message.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A negative SMTP reply (4xx/5xx), after which the connection is still in sync.
/// A transient reply that asks the client to slow down rather than report a
/// passing failure.
fn is_throttle(e: &LettreError) -> bool {
    let code = e.status().map(|c| c.to_string()).unwrap_or_default();
    if code == "454" {
        return true;
    }
    let text = e.to_string().to_ascii_lowercase();
    matches!(code.as_str(), "421" | "450" | "451")
        && ["rate", "too many", "throttl", "slow down"]
            .iter()
            .any(|w| text.contains(w))
}

fn is_reply(e: &LettreError) -> bool {
    e.is_transient() || e.is_permanent()
}

/// Whether the first reply on a reused connection shows the server closed it:
/// anything but a reply, or `421` (service closing the channel).
fn closed_while_idle(e: &LettreError) -> bool {
    match e.status() {
        Some(code) => u16::from(code) == 421,
        None => !e.is_client(),
    }
}

fn connection_refused(e: &LettreError) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
            );
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(message: &[u8]) -> String {
        String::from_utf8(dot_stuff(&crlf_line_ends(message))).unwrap()
    }

    #[test]
    fn dot_stuffing_and_end_of_data_marker() {
        assert_eq!(payload(b"a\r\nb\r\n"), "a\r\nb\r\n.\r\n");
        assert_eq!(payload(b"a\r\nb"), "a\r\nb\r\n.\r\n");
        assert_eq!(
            payload(b".a\r\n..b\r\n.\r\nc.d\r\n . e\r\n"),
            "..a\r\n...b\r\n..\r\nc.d\r\n . e\r\n.\r\n"
        );
        assert_eq!(payload(b"x\r\n.\r\n"), "x\r\n..\r\n.\r\n");
        // A message ending in a blank line keeps exactly that blank line.
        assert_eq!(payload(b"x\r\n\r\n"), "x\r\n\r\n.\r\n");
    }

    #[test]
    fn bare_line_breaks_become_crlf_before_stuffing() {
        assert_eq!(payload(b"a\n.b\r.c\r\nd"), "a\r\n..b\r\n..c\r\nd\r\n.\r\n");
        // A bare-LF "end of data" inside the message cannot end it early.
        assert_eq!(payload(b"a\n.\nb"), "a\r\n..\r\nb\r\n.\r\n");
        assert!(matches!(crlf_line_ends(b"a\r\nb"), Cow::Borrowed(_)));
        assert_eq!(payload(b"a\rb\r"), "a\r\nb\r\n.\r\n");
        assert_eq!(payload(b""), ".\r\n");
    }

    #[test]
    fn non_utf8_messages_are_handed_over_without_their_final_line_break() {
        match Payload::new(b"caf\xe9\n.x\r\n") {
            Payload::Bytes(b) => assert_eq!(b, b"caf\xe9\r\n.x"),
            Payload::Wire(w) => panic!("{w:?}"),
        }
        match Payload::new("Grüße\r\n".as_bytes()) {
            Payload::Wire(w) => assert_eq!(w, "Grüße\r\n.\r\n"),
            Payload::Bytes(b) => panic!("{b:?}"),
        }
    }
}
