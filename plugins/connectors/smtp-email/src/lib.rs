//! Email over SMTP for Herald.
//!
//! Renders a `multipart/alternative` message (plain text + HTML, each
//! quoted-printable or base64 as needed, via `mail-builder`) with
//! `List-Unsubscribe` (RFC 2369) and `List-Unsubscribe-Post` (RFC 8058,
//! one-click) headers, a Message-ID derived from Herald's idempotency key, and
//! submits it through the host's `smtp` capability: TLS, authentication and
//! connection pooling stay in the host.
//!
//! Per-message inputs: `to` and `to-name`, `subject`, `text` and/or `html`,
//! `preheader` (a hidden first element of the HTML part), `from` and
//! `reply-to` (the template's, over the configured ones), `headers` (the
//! runtime's `List-Unsubscribe`, `List-Unsubscribe-Post`, ...), and in
//! `payload`: `unsubscribe_url` (https URL for one-click unsubscribe, when the
//! runtime sent no `List-Unsubscribe`), `headers` (extra `X-` headers),
//! `reply_to`.
use herald_plugin_sdk::prelude::*;
use mail_builder::headers::raw::Raw;
use mail_builder::headers::url::URL;
use mail_builder::MessageBuilder;

struct SmtpEmail;

/// Headers the connector writes itself.
const RESERVED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Bcc",
    "Subject",
    "Message-ID",
    "Date",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

const SCHEMA: &str = include_str!("../config.schema.json");

fn valid_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
}

/// Crude HTML to text for messages that only have an HTML body.
fn html_to_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    let mut tag = String::new();
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                tag.clear();
            }
            '>' if in_tag => {
                in_tag = false;
                let t = tag.trim_start_matches('/').to_ascii_lowercase();
                if ["p", "br", "div", "li", "tr", "h1", "h2", "h3", "br/"]
                    .iter()
                    .any(|n| t.starts_with(n))
                {
                    out.push('\n');
                }
            }
            _ if in_tag => tag.push(c),
            _ => out.push(c),
        }
    }
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    decoded
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `<key@domain>` with characters outside RFC 5322 `dot-atom-text` replaced.
fn message_id(key: &str, domain: &str) -> String {
    let local: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{}@{domain}", local.trim_matches('.'))
}

impl Plugin for SmtpEmail {
    fn describe() -> Description {
        Description::new("smtp-email", env!("CARGO_PKG_VERSION"))
            .display_name("Email (SMTP)")
            .config_schema(serde_json::from_str(SCHEMA).expect("schema is valid JSON"))
    }

    fn validate_config(config: &Value) -> Result<(), String> {
        match config.get("from_address").and_then(Value::as_str) {
            Some(a) if valid_address(a) => {}
            _ => return Err("`from_address` must be an email address".into()),
        }
        for key in ["reply_to", "envelope_from", "list_unsubscribe_mailto"] {
            if let Some(v) = config.get(key) {
                if !v.as_str().is_some_and(valid_address) {
                    return Err(format!("`{key}` must be an email address"));
                }
            }
        }
        Ok(())
    }

    fn send(msg: Outbound) -> Result<Sent, SendError> {
        if !msg.operation_name().is_empty() {
            return Err(SendError::InvalidInput(format!(
                "unsupported operation `{}`",
                msg.operation_name()
            )));
        }
        let to = msg.require_to()?.to_string();
        if !valid_address(&to) {
            return Err(SendError::InvalidInput(format!(
                "`{to}` is not an email address"
            )));
        }
        let subject = msg.subject.clone().unwrap_or_default();
        if subject.trim().is_empty() {
            return Err(SendError::InvalidInput("email needs a subject".into()));
        }
        let html = msg
            .html
            .clone()
            .filter(|h| !h.trim().is_empty())
            .map(|h| match &msg.preheader {
                Some(p) => herald_plugin_sdk::email::with_preheader(&h, p),
                None => h,
            });
        let text = match (&msg.text, &html) {
            (Some(t), _) if !t.trim().is_empty() => t.clone(),
            (_, Some(h)) => html_to_text(h),
            _ => {
                return Err(SendError::InvalidInput(
                    "email needs a text or html body".into(),
                ))
            }
        };
        // The template's `from` over the configured sender.
        let (from_name, from_address) = match &msg.from {
            Some(f) if !f.trim().is_empty() => {
                let (name, address) = herald_plugin_sdk::email::parse_mailbox(f);
                if !valid_address(&address) {
                    return Err(SendError::InvalidInput(format!(
                        "from `{f}` is not an email address"
                    )));
                }
                (name.or_else(|| config::get_str("from_name")), address)
            }
            _ => (
                config::get_str("from_name"),
                config::require_str("from_address")?,
            ),
        };
        let domain = config::get_str("message_id_domain")
            .or_else(|| from_address.rsplit_once('@').map(|(_, d)| d.to_string()))
            .unwrap_or_else(|| "herald.invalid".into());
        let mid = message_id(&msg.idempotency_key, &domain);
        let payload = msg.payload_json();
        let recipient_name = msg.to_name.clone();

        let mut builder = MessageBuilder::new()
            .message_id(mid.clone())
            .subject(subject);
        builder = match &from_name {
            Some(n) => builder.from((n.clone(), from_address.clone())),
            None => builder.from(from_address.clone()),
        };
        builder = match &recipient_name {
            Some(n) if !n.is_empty() => builder.to((n.clone(), to.clone())),
            _ => builder.to(to.clone()),
        };
        let reply_to = msg.reply_to_address();
        if let Some(r) = reply_to {
            if !valid_address(&r) {
                return Err(SendError::InvalidInput(format!(
                    "reply_to `{r}` is not an email address"
                )));
            }
            builder = builder.reply_to(r);
        }
        // The runtime's headers (List-Unsubscribe and its one-click companion among them).
        for (k, v) in &msg.headers {
            if k.is_empty()
                || k.contains([':', ' ', '\r', '\n'])
                || v.contains(['\r', '\n'])
                || RESERVED_HEADERS.iter().any(|r| r.eq_ignore_ascii_case(k))
            {
                return Err(SendError::InvalidInput(format!(
                    "header `{k}` cannot be set on a message"
                )));
            }
            builder = builder.header(k.clone(), Raw::new(v.clone()));
        }
        // Otherwise RFC 2369 List-Unsubscribe, RFC 8058 one-click when an https URL is known.
        let mut unsub: Vec<String> = Vec::new();
        let unsubscribe_url = payload.get("unsubscribe_url").and_then(Value::as_str);
        if let Some(u) = unsubscribe_url {
            if !u.starts_with("https://") && !u.starts_with("http://") {
                return Err(SendError::InvalidInput(
                    "unsubscribe_url must be an http(s) URL".into(),
                ));
            }
            unsub.push(u.to_string());
        }
        if let Some(m) = config::get_str("list_unsubscribe_mailto") {
            unsub.push(format!("mailto:{m}?subject=unsubscribe"));
        }
        if !unsub.is_empty() && msg.header("List-Unsubscribe").is_none() {
            builder = builder.header("List-Unsubscribe", URL::new_list(unsub.into_iter()));
            if unsubscribe_url.is_some_and(|u| u.starts_with("https://")) {
                builder = builder.header(
                    "List-Unsubscribe-Post",
                    Raw::new("List-Unsubscribe=One-Click"),
                );
            }
        }
        let mut extra: Vec<(String, String)> = Vec::new();
        for source in [config::get("headers"), payload.get("headers").cloned()]
            .into_iter()
            .flatten()
        {
            if let Some(obj) = source.as_object() {
                for (k, v) in obj {
                    let v = v.as_str().unwrap_or_default().to_string();
                    if !k.starts_with("X-")
                        || k.contains([':', ' ', '\r', '\n'])
                        || v.contains(['\r', '\n'])
                    {
                        return Err(SendError::InvalidInput(format!(
                            "extra header `{k}` must be a single-line X- header"
                        )));
                    }
                    extra.push((k.clone(), v));
                }
            }
        }
        extra.push((
            "X-Herald-Idempotency-Key".into(),
            msg.idempotency_key.clone(),
        ));
        for (k, v) in extra {
            builder = builder.header(k, Raw::new(v));
        }
        builder = builder.text_body(text);
        if let Some(h) = html {
            builder = builder.html_body(h);
        }
        let raw = builder
            .write_to_vec()
            .map_err(|e| SendError::InvalidInput(format!("rendering MIME: {e}")))?;
        let envelope_from = config::get_str("envelope_from").unwrap_or(from_address);
        let reply = smtp::submit(&envelope_from, &[to], &raw)?;
        log::info(
            "smtp message accepted",
            &[("message_id", &mid), ("reply", &reply)],
        );
        Ok(Sent::with_id(Some(mid)).details(json!({ "smtp_reply": reply, "size": raw.len() })))
    }
}

export_plugin!(SmtpEmail);
