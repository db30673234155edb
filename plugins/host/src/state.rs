//! Per-store state and the host side of the imported capabilities
//! (`http`, `smtp`, `crypto`, `config`, `log`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::herald::channel::{config, crypto, http, log, smtp, types};
use crate::net::{error_chain, resolve_checked_async, CheckedResolver, HostPattern, ResolveError};
use crate::smtp_client::{SmtpClient, SmtpSendError};
use crate::types::{CallLimits, SmtpRelay};

/// Capacity of the captured guest stderr (and stdout) per instance. An instance
/// whose buffers are more than half full is not returned to the pool.
pub(crate) const STDERR_CAPACITY: usize = 64 * 1024;

/// Lines of guest output logged per call and stream.
pub(crate) const LOGGED_LINES: usize = 50;
/// Bytes logged of one line of guest output.
pub(crate) const LOGGED_LINE_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Everything about a loaded plugin that host calls need; shared by all of
/// its instances.
pub(crate) struct Shared {
    pub(crate) id: String,
    pub(crate) hosts: Vec<HostPattern>,
    pub(crate) allow_private: bool,
    pub(crate) declared_secrets: HashSet<String>,
    pub(crate) secrets: HashMap<String, String>,
    pub(crate) config: serde_json::Value,
    /// Every form a secret can come back in (as is, URL-encoded, base64), with its
    /// placeholder; the longest first.
    scrub_forms: Vec<(Vec<u8>, String)>,
    pub(crate) smtp_declared: bool,
    pub(crate) smtp: Option<Arc<SmtpClient>>,
    /// Submissions running at once: one per relay connection. Calls beyond them wait for a
    /// free connection without holding a thread.
    pub(crate) smtp_slots: Arc<tokio::sync::Semaphore>,
    pub(crate) http: reqwest::Client,
    pub(crate) limits: CallLimits,
}

impl Shared {
    #[allow(clippy::too_many_arguments)] // crate-private; every field is distinct
    pub(crate) fn new(
        id: String,
        hosts: Vec<HostPattern>,
        allow_private: bool,
        declared_secrets: HashSet<String>,
        granted: &HashMap<String, String>,
        config: serde_json::Value,
        smtp_declared: bool,
        relay: Option<&SmtpRelay>,
        limits: CallLimits,
    ) -> Result<Shared, String> {
        let secrets: HashMap<String, String> = granted
            .iter()
            .filter(|(k, _)| declared_secrets.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let scrub_forms = scrub_forms(&secrets);
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver { allow_private }))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .user_agent(format!("herald-plugin/{id}"))
            // Calls running at once each keep their connection for the next call.
            .pool_max_idle_per_host(limits.max_concurrent_calls.max(1))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let smtp = match (smtp_declared, relay) {
            (true, Some(r)) => Some(Arc::new(build_smtp(r)?)),
            _ => None,
        };
        let smtp_slots = Arc::new(tokio::sync::Semaphore::new(
            relay.map_or(1, |r| r.connections.max(1)),
        ));
        Ok(Shared {
            id,
            hosts,
            allow_private,
            declared_secrets,
            secrets,
            config,
            scrub_forms,
            smtp_declared,
            smtp,
            smtp_slots,
            http,
            limits,
        })
    }

    /// Look up a secret the plugin may use, or say precisely why not.
    fn secret(&self, name: &str) -> Result<&str, String> {
        if !self.declared_secrets.contains(name) {
            return Err(format!(
                "secret `{name}` is not declared in the plugin manifest"
            ));
        }
        self.secrets
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("secret `{name}` was not supplied by the operator"))
    }

    /// Replace every `{{secret:NAME}}` in `input`.
    fn substitute(&self, input: &[u8], url_encode: bool) -> Result<Vec<u8>, String> {
        const OPEN: &[u8] = b"{{secret:";
        let mut out = Vec::with_capacity(input.len());
        let mut i = 0;
        while i < input.len() {
            if input[i..].starts_with(OPEN) {
                let start = i + OPEN.len();
                let end = input[start..]
                    .windows(2)
                    .position(|w| w == b"}}")
                    .ok_or("unterminated {{secret:…}} placeholder")?;
                let name = std::str::from_utf8(&input[start..start + end])
                    .map_err(|_| "secret name is not UTF-8")?;
                let value = self.secret(name)?;
                if url_encode {
                    out.extend(form_encode(value).as_bytes());
                } else {
                    out.extend_from_slice(value.as_bytes());
                }
                i = start + end + 2;
            } else {
                out.push(input[i]);
                i += 1;
            }
        }
        Ok(out)
    }

    fn substitute_str(&self, input: &str, url_encode: bool) -> Result<String, String> {
        String::from_utf8(self.substitute(input.as_bytes(), url_encode)?)
            .map_err(|_| "substituted value is not UTF-8".to_string())
    }

    /// Replace secret values in data flowing back to the guest by their placeholders: every
    /// form a provider may echo (as is, URL-encoded, base64), and `extra` (values derived from
    /// secrets during this call, such as a Basic authorization token).
    pub(crate) fn scrub(&self, data: &mut Vec<u8>, extra: &[(Vec<u8>, String)]) {
        for (needle, placeholder) in extra.iter().chain(&self.scrub_forms) {
            replace_all(data, needle, placeholder.as_bytes());
        }
    }

    /// [`Shared::scrub`] for text.
    pub(crate) fn scrub_text(&self, text: String, extra: &[(Vec<u8>, String)]) -> String {
        let mut bytes = text.into_bytes();
        self.scrub(&mut bytes, extra);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn host_allowed(&self, host: &str, port: u16) -> bool {
        self.hosts.iter().any(|p| p.matches(host, port))
    }
}

/// The forms each secret may come back in, longest first (so a longer form is replaced
/// before a shorter one inside it).
fn scrub_forms(secrets: &HashMap<String, String>) -> Vec<(Vec<u8>, String)> {
    use base64::Engine as _;
    let mut forms = Vec::new();
    for (name, value) in secrets {
        if value.len() < 4 {
            continue;
        }
        let placeholder = format!("{{{{secret:{name}}}}}");
        let form = form_encode(value);
        let candidates = [
            value.clone(),
            form.clone(),
            form.replace('+', "%20"),
            base64::engine::general_purpose::STANDARD.encode(value),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value),
        ];
        for c in candidates {
            if !forms
                .iter()
                .any(|(n, _): &(Vec<u8>, String)| n == c.as_bytes())
            {
                forms.push((c.into_bytes(), placeholder.clone()));
            }
        }
    }
    forms.sort_by_key(|f| std::cmp::Reverse(f.0.len()));
    forms
}

/// Replace every occurrence of `needle` in `data`.
fn replace_all(data: &mut Vec<u8>, needle: &[u8], with: &[u8]) {
    if needle.is_empty() || !data.windows(needle.len()).any(|w| w == needle) {
        return;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    *data = out;
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn build_smtp(r: &SmtpRelay) -> Result<SmtpClient, String> {
    SmtpClient::new(r).map_err(|e| e.to_string())
}

/// Memory limiter that remembers whether it refused a growth.
pub(crate) struct MemoryLimiter {
    pub(crate) max_bytes: usize,
    pub(crate) hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            Ok(false)
        } else {
            Ok(true)
        }
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        64
    }
}

/// The `T` of every `Store<T>`: WASI state with nothing granted, the
/// per-call deadline and a record of refused capability requests.
pub(crate) struct HostState {
    pub(crate) shared: Arc<Shared>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) stderr: MemoryOutputPipe,
    /// What the guest prints (`print()`, `console.log`, `println!`).
    pub(crate) stdout: MemoryOutputPipe,
    /// Where the current call's output starts in `stdout` and `stderr`.
    pub(crate) output_from: (usize, usize),
    pub(crate) deadline: Instant,
    pub(crate) denials: Vec<String>,
    /// HTTP requests made during the current call.
    pub(crate) http_requests: u32,
    /// Outbound effects (HTTP requests dispatched, SMTP submissions) attempted
    /// during the current call: after one, a trap leaves the outcome unknown.
    pub(crate) effects: u32,
    /// The SMTP relay asked to slow down during the current call.
    pub(crate) throttled: bool,
}

impl HostState {
    pub(crate) fn new(shared: Arc<Shared>) -> HostState {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let stdout = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No preopened directories, no environment, no arguments, no sockets,
        // no name lookup: WASI is present only so `std` links; it grants nothing.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .stdout(stdout.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let max_bytes = shared.limits.max_memory_bytes;
        HostState {
            shared,
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                max_bytes,
                hit: false,
            },
            stderr,
            stdout,
            output_from: (0, 0),
            deadline: Instant::now() + Duration::from_secs(3600),
            denials: Vec::new(),
            http_requests: 0,
            effects: 0,
            throttled: false,
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn deny(&mut self, what: &str, msg: String) -> String {
        tracing::warn!(target: "herald_plugin", plugin = %self.shared.id, capability = what, "denied: {msg}");
        self.denials.push(format!("{what}: {msg}"));
        msg
    }

    /// Text the guest wrote to stderr during the current call (panic messages and
    /// tracebacks end up here).
    pub(crate) fn stderr_text(&self) -> String {
        let all = self.stderr.contents();
        String::from_utf8_lossy(all.get(self.output_from.1..).unwrap_or_default()).into_owned()
    }

    /// Text the guest wrote to stdout during the current call.
    pub(crate) fn stdout_text(&self) -> String {
        let all = self.stdout.contents();
        String::from_utf8_lossy(all.get(self.output_from.0..).unwrap_or_default()).into_owned()
    }

    /// Start a call: its output begins here.
    pub(crate) fn mark_output(&mut self) {
        self.output_from = (self.stdout.contents().len(), self.stderr.contents().len());
    }

    /// Put what the guest printed during the call into the daemon's log, tagged with the
    /// plugin and the call, at most [`LOGGED_LINES`] lines of [`LOGGED_LINE_BYTES`] each.
    pub(crate) fn log_output(&self, call: &str) {
        for (stream, text) in [
            ("stdout", self.stdout_text()),
            ("stderr", self.stderr_text()),
        ] {
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            for line in lines.iter().take(LOGGED_LINES) {
                let line = clip(line, LOGGED_LINE_BYTES);
                if stream == "stderr" {
                    tracing::warn!(target: "herald_plugin", plugin = %self.shared.id, call, stream, "{line}");
                } else {
                    tracing::info!(target: "herald_plugin", plugin = %self.shared.id, call, stream, "{line}");
                }
            }
            if lines.len() > LOGGED_LINES {
                tracing::warn!(target: "herald_plugin", plugin = %self.shared.id, call, stream, "… {} more line(s) not logged", lines.len() - LOGGED_LINES);
            }
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

/// Classify an HTTP client error: nothing sent, a refused request, or an exchange cut off.
fn transport_error(e: reqwest::Error) -> http::HttpError {
    use http::HttpError as E;
    let msg = error_chain(&e);
    if e.is_builder() {
        E::InvalidRequest(msg)
    } else if e.is_connect() {
        E::Connect(msg)
    } else {
        E::Incomplete(msg)
    }
}

const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "proxy-authorization",
    "te",
];

impl http::Host for HostState {
    async fn send(&mut self, req: http::Request) -> Result<http::Response, http::HttpError> {
        use http::HttpError as E;
        let shared = self.shared.clone();
        if self.http_requests >= shared.limits.max_http_requests_per_call {
            return Err(E::Denied(self.deny(
                "http",
                format!(
                    "more than {} HTTP requests in one call",
                    shared.limits.max_http_requests_per_call
                ),
            )));
        }
        self.http_requests += 1;
        // 1. URL, scheme and host policy (placeholders are not allowed in the host part).
        let raw_url = url::Url::parse(&req.url)
            .map_err(|e| E::InvalidRequest(format!("bad url `{}`: {e}", req.url)))?;
        if raw_url.scheme() != "http" && raw_url.scheme() != "https" {
            return Err(E::Denied(self.deny(
                "http",
                format!(
                    "scheme `{}` is not allowed (only http, https)",
                    raw_url.scheme()
                ),
            )));
        }
        if !raw_url.username().is_empty() || raw_url.password().is_some() {
            return Err(E::InvalidRequest(
                "credentials in the URL are not allowed; use auth".into(),
            ));
        }
        let host = match raw_url.host() {
            Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(E::InvalidRequest("url has no host".into())),
        };
        let port = raw_url.port_or_known_default().unwrap_or(443);
        if !shared.host_allowed(&host, port) {
            return Err(E::Denied(self.deny(
                "http",
                format!("host `{host}:{port}` is not in the plugin's allowed hosts nor granted by the operator"),
            )));
        }
        match resolve_checked_async(&host, port, shared.allow_private).await {
            Ok(_) => {}
            Err(ResolveError::Private(m)) => return Err(E::Denied(self.deny("http", m))),
            Err(ResolveError::Lookup(m)) => return Err(E::Connect(m)),
        }
        // 2. Secrets.
        let url = shared
            .substitute_str(&req.url, true)
            .map_err(|m| E::Denied(self.deny("secret", m)))?;
        let method = req.method.to_ascii_uppercase();
        if !matches!(
            method.as_str(),
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS"
        ) {
            return Err(E::InvalidRequest(format!("method `{method}` not allowed")));
        }
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| E::InvalidRequest(format!("method `{method}`: {e}")))?;
        let mut request = shared.http.request(method.clone(), &url);
        for (name, value) in &req.headers {
            let lname = name.to_ascii_lowercase();
            if FORBIDDEN_HEADERS.contains(&lname.as_str()) {
                return Err(E::InvalidRequest(format!(
                    "header `{name}` may not be set by plugins"
                )));
            }
            let value = shared
                .substitute_str(value, false)
                .map_err(|m| E::Denied(self.deny("secret", m)))?;
            if value.contains(['\r', '\n']) || name.contains(['\r', '\n', ':']) {
                return Err(E::InvalidRequest(format!(
                    "header `{name}` contains a line break"
                )));
            }
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| E::InvalidRequest(format!("header `{name}`: {e}")))?;
            let value = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|e| E::InvalidRequest(format!("header `{name}`: {e}")))?;
            request = request.header(name, value);
        }
        // Values derived from secrets in this request, scrubbed from what comes back.
        let mut derived: Vec<(Vec<u8>, String)> = Vec::new();
        match &req.auth {
            http::Auth::None => {}
            http::Auth::Basic(b) => {
                use base64::Engine;
                let user = shared
                    .substitute_str(&b.username, false)
                    .map_err(|m| E::Denied(self.deny("secret", m)))?;
                let pass = shared
                    .substitute_str(&b.password, false)
                    .map_err(|m| E::Denied(self.deny("secret", m)))?;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                request = request.header("authorization", format!("Basic {token}"));
                if user != b.username || pass != b.password {
                    derived.push((token.into_bytes(), "{{secret:basic-auth}}".to_string()));
                }
            }
            http::Auth::Bearer(name) => {
                let token = shared
                    .secret(name)
                    .map_err(|m| E::Denied(self.deny("secret", m)))?
                    .to_string();
                request = request.header("authorization", format!("Bearer {token}"));
            }
        }
        let body = shared
            .substitute(&req.body, false)
            .map_err(|m| E::Denied(self.deny("secret", m)))?;
        // 3. Timeout: the smaller of the plugin's wish and the call's remaining budget.
        let mut timeout = self.remaining();
        if let Some(ms) = req.timeout_ms {
            timeout = timeout.min(Duration::from_millis(ms.into()));
        }
        if timeout.is_zero() {
            return Err(E::Connect("call deadline already passed".into()));
        }
        request = request.timeout(timeout);
        if !body.is_empty() || !matches!(method.as_str(), "GET" | "HEAD" | "DELETE" | "OPTIONS") {
            request = request.body(body);
        }
        self.effects += 1;
        let limit = shared.limits.max_http_body_bytes;
        let exchange = async {
            let mut response = request.send().await.map_err(transport_error)?;
            let status = response.status().as_u16();
            let headers: Vec<(String, String)> = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| E::Incomplete(format!("reading response body: {e}")))?
            {
                body.extend_from_slice(&chunk);
                if body.len() > limit {
                    return Err(E::Incomplete(format!(
                        "response body larger than {limit} bytes"
                    )));
                }
            }
            Ok((status, headers, body))
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| {
                E::Incomplete(format!(
                    "no complete answer within {} ms",
                    timeout.as_millis()
                ))
            })
            .and_then(|r| r);
        // An error names the URL, which may carry a secret.
        let (status, mut headers, mut body) = answer.map_err(|e| match e {
            E::Connect(m) => E::Connect(shared.scrub_text(m, &derived)),
            E::Incomplete(m) => E::Incomplete(shared.scrub_text(m, &derived)),
            E::InvalidRequest(m) => E::InvalidRequest(shared.scrub_text(m, &derived)),
            other => other,
        })?;
        shared.scrub(&mut body, &derived);
        for (_, v) in headers.iter_mut() {
            *v = shared.scrub_text(std::mem::take(v), &derived);
        }
        Ok(http::Response {
            status,
            headers,
            body,
        })
    }
}

impl smtp::Host for HostState {
    async fn submit(
        &mut self,
        envelope: smtp::Envelope,
        message: Vec<u8>,
    ) -> Result<String, smtp::SmtpError> {
        use smtp::SmtpError as E;
        let shared = self.shared.clone();
        if !shared.smtp_declared {
            return Err(E::NotGranted(self.deny(
                "smtp",
                "the plugin manifest does not declare `smtp = true`".into(),
            )));
        }
        let Some(client) = shared.smtp.clone() else {
            return Err(E::NotGranted(self.deny(
                "smtp",
                "the operator did not configure an SMTP relay for this channel".into(),
            )));
        };
        if message.is_empty() {
            return Err(E::Invalid("empty message".into()));
        }
        let from = if envelope.mail_from.is_empty() {
            None
        } else {
            Some(
                envelope
                    .mail_from
                    .parse::<lettre::Address>()
                    .map_err(|e| E::Invalid(format!("MAIL FROM `{}`: {e}", envelope.mail_from)))?,
            )
        };
        let to = envelope
            .rcpt_to
            .iter()
            .map(|a| {
                a.parse::<lettre::Address>()
                    .map_err(|e| E::Invalid(format!("RCPT TO `{a}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let env =
            lettre::address::Envelope::new(from, to).map_err(|e| E::Invalid(e.to_string()))?;
        if self.remaining().is_zero() {
            return Err(E::Transient("call deadline already passed".into()));
        }
        // Wait for a free relay connection without holding a thread; the exchange itself runs
        // on a blocking thread (one per connection in use).
        let slot =
            tokio::time::timeout(self.remaining(), shared.smtp_slots.clone().acquire_owned())
                .await
                .map_err(|_| {
                    E::Transient(
                        "no relay connection became free before the call's deadline".into(),
                    )
                })?
                .map_err(|_| E::Transient("the SMTP client is shutting down".into()))?;
        self.effects += 1;
        let timeout = self.remaining();
        let sent = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            client.send(&env, &message, Some(timeout))
        })
        .await
        .unwrap_or_else(|e| {
            Err(SmtpSendError::Ambiguous(format!(
                "the SMTP submission stopped: {e}"
            )))
        });
        match sent {
            Ok(resp) => Ok(format!(
                "{} {}",
                resp.code(),
                resp.message().collect::<Vec<_>>().join(" ")
            )),
            Err(SmtpSendError::Invalid(m)) => Err(E::Invalid(m)),
            Err(SmtpSendError::Rejected(m)) => Err(E::Rejected(m)),
            Err(SmtpSendError::Transient(m)) => Err(E::Transient(m)),
            Err(SmtpSendError::Throttled(m)) => {
                self.throttled = true;
                Err(E::Transient(m))
            }
            Err(SmtpSendError::Ambiguous(m)) => Err(E::Ambiguous(m)),
        }
    }
}

impl crypto::Host for HostState {
    async fn hmac_sha256(&mut self, secret_name: String, data: Vec<u8>) -> Result<Vec<u8>, String> {
        use hmac::{Hmac, Mac};
        let shared = self.shared.clone();
        let key = shared
            .secret(&secret_name)
            .map_err(|m| self.deny("crypto", m))?;
        let mut mac =
            Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).map_err(|e| e.to_string())?;
        mac.update(&data);
        Ok(mac.finalize().into_bytes().to_vec())
    }

    async fn hmac_sha1(&mut self, secret_name: String, data: Vec<u8>) -> Result<Vec<u8>, String> {
        use hmac::{Hmac, Mac};
        let shared = self.shared.clone();
        let key = shared
            .secret(&secret_name)
            .map_err(|m| self.deny("crypto", m))?;
        let mut mac =
            Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).map_err(|e| e.to_string())?;
        mac.update(&data);
        Ok(mac.finalize().into_bytes().to_vec())
    }
}

impl config::Host for HostState {
    async fn get(&mut self, key: String) -> Option<String> {
        let v = if key.starts_with('/') {
            self.shared.config.pointer(&key)
        } else {
            self.shared.config.get(&key)
        };
        v.map(|v| v.to_string())
    }

    async fn all(&mut self) -> String {
        self.shared.config.to_string()
    }
}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) {
        let message: String = message.chars().take(4096).collect();
        let fields: String = fields
            .iter()
            .take(32)
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        let id = &self.shared.id;
        match level {
            log::Level::Trace => {
                tracing::trace!(target: "herald_plugin", plugin = %id, %fields, "{message}")
            }
            log::Level::Debug => {
                tracing::debug!(target: "herald_plugin", plugin = %id, %fields, "{message}")
            }
            log::Level::Info => {
                tracing::info!(target: "herald_plugin", plugin = %id, %fields, "{message}")
            }
            log::Level::Warn => {
                tracing::warn!(target: "herald_plugin", plugin = %id, %fields, "{message}")
            }
            log::Level::Error => {
                tracing::error!(target: "herald_plugin", plugin = %id, %fields, "{message}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let mut granted = HashMap::new();
        granted.insert("TOKEN".to_string(), "s3cr3t&value".to_string());
        granted.insert("UNDECLARED".to_string(), "nope".to_string());
        Shared::new(
            "t".into(),
            vec![],
            false,
            ["TOKEN".to_string(), "MISSING".to_string()]
                .into_iter()
                .collect(),
            &granted,
            serde_json::json!({}),
            false,
            None,
            CallLimits::default(),
        )
        .unwrap()
    }

    #[test]
    fn substitutes_and_scrubs_secrets() {
        let s = shared();
        assert_eq!(
            s.substitute_str("Bearer {{secret:TOKEN}}!", false).unwrap(),
            "Bearer s3cr3t&value!"
        );
        assert_eq!(
            s.substitute_str("?k={{secret:TOKEN}}", true).unwrap(),
            "?k=s3cr3t%26value"
        );
        assert!(s
            .substitute_str("{{secret:UNDECLARED}}", false)
            .unwrap_err()
            .contains("not declared"));
        assert!(s
            .substitute_str("{{secret:MISSING}}", false)
            .unwrap_err()
            .contains("not supplied"));
        assert!(s.substitute_str("{{secret:TOKEN", false).is_err());
        let mut echoed = b"you sent s3cr3t&value twice: s3cr3t&value".to_vec();
        s.scrub(&mut echoed, &[]);
        assert_eq!(
            String::from_utf8(echoed).unwrap(),
            "you sent {{secret:TOKEN}} twice: {{secret:TOKEN}}"
        );
    }

    #[test]
    fn scrubs_the_encodings_a_provider_can_echo() {
        use base64::Engine as _;
        let s = shared();
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cr3t&value");
        let echoed = format!("url: ?k=s3cr3t%26value, base64: {b64}");
        assert_eq!(
            s.scrub_text(echoed, &[]),
            "url: ?k={{secret:TOKEN}}, base64: {{secret:TOKEN}}"
        );
        // A Basic token made from a secret during the call.
        let token = base64::engine::general_purpose::STANDARD.encode("AC123:s3cr3t&value");
        let derived = [(
            token.clone().into_bytes(),
            "{{secret:basic-auth}}".to_string(),
        )];
        assert_eq!(
            s.scrub_text(format!("Authorization: Basic {token}"), &derived),
            "Authorization: Basic {{secret:basic-auth}}"
        );
    }
}
