//! Postmark email connector for Herald.
//!
//! `POST {api_base}/email` with `X-Postmark-Server-Token: {{secret:POSTMARK_SERVER_TOKEN}}`
//! and the JSON body Postmark documents (`From`, `To`, `Subject`, `HtmlBody`,
//! `TextBody`, `MessageStream`, `Tag`, `Metadata`, `Headers`, tracking flags).
//! The template's `from` and `reply_to`, the recipient's name, the preheader,
//! the runtime's headers (`List-Unsubscribe`, ...) and metadata go into the
//! message; Postmark's own open and link tracking is switched off for what
//! Herald tracks itself, so nothing is counted twice.
//!
//! Webhooks: `RecordType` Delivery, Bounce (hard or soft, by Postmark's `Type`),
//! Open, Click, SpamComplaint and SubscriptionChange (unsubscribed or
//! resubscribed) become Herald events tied to Postmark's `MessageID`.
//!
//! Callbacks are authenticated with the HTTP Basic credentials Postmark sends
//! when they are part of the webhook URL
//! (`https://USER:PASSWORD@herald.example.com/v1/webhooks/<channel>`): the user
//! must equal `webhook_username` and the password the `POSTMARK_WEBHOOK_PASSWORD`
//! secret, compared in constant time without the secret entering the plugin
//! (`crypto::secret_equals`). Without both configured every callback is
//! refused (fail closed).
use herald_plugin_sdk::parse_rfc3339_ms;
use herald_plugin_sdk::prelude::*;

struct Postmark;

/// Bounce types Postmark reports for addresses that will not accept mail again.
const HARD_BOUNCES: &[&str] = &[
    "HardBounce",
    "BadEmailAddress",
    "ManuallyDeactivated",
    "Unsubscribe",
];

/// Bounce types for failures that may pass.
const SOFT_BOUNCES: &[&str] = &[
    "Transient",
    "SoftBounce",
    "DnsError",
    "AutoResponder",
    "Blocked",
    "DMARCPolicy",
    "ChallengeVerification",
    "AddressChange",
];

/// Postmark's bounce `Type` (and whether it deactivated the address) as a bounce kind.
fn bounce_kind(kind: Option<&str>, inactive: bool) -> BounceKind {
    match kind {
        Some(t) if HARD_BOUNCES.contains(&t) => BounceKind::Hard,
        _ if inactive => BounceKind::Hard,
        Some(t) if SOFT_BOUNCES.contains(&t) => BounceKind::Soft,
        _ => BounceKind::Undetermined,
    }
}

const SCHEMA: &str = include_str!("../config.schema.json");

/// The secret holding the webhook's Basic auth password.
const PASSWORD_SECRET: &str = "POSTMARK_WEBHOOK_PASSWORD";

/// How a refusal for missing configuration ends.
const REFUSED: &str = "so Postmark callbacks cannot be authenticated and are refused";

/// Check the callback's Basic credentials against `webhook_username` and the
/// `POSTMARK_WEBHOOK_PASSWORD` secret.
fn authenticate(req: &WebhookRequest) -> Result<(), String> {
    let username = config::get_str("webhook_username")
        .filter(|u| !u.is_empty())
        .ok_or(
            "webhook_username is not configured, so Postmark callbacks cannot be authenticated \
             and are refused; set config.webhook_username and the POSTMARK_WEBHOOK_PASSWORD \
             secret, and put both into the webhook URL in Postmark \
             (https://USER:PASSWORD@host/v1/webhooks/<channel>)",
        )?;
    let credentials = req.basic_auth();
    let presented = credentials.as_ref().map_or("", |(_, p)| p.as_str());
    // Asked even without credentials, so an unconfigured secret is reported as such.
    let password_ok = crypto::secret_equals(PASSWORD_SECRET, presented.as_bytes())
        .map_err(|e| format!("the {PASSWORD_SECRET} secret is not available ({e}), {REFUSED}"))?;
    let (user, _) = credentials
        .ok_or("missing HTTP Basic credentials (put them into the webhook URL in Postmark)")?;
    let user_ok = crypto::constant_time_eq(user.as_bytes(), username.as_bytes());
    if user_ok & password_ok {
        Ok(())
    } else {
        Err("invalid webhook credentials".into())
    }
}

impl Plugin for Postmark {
    fn describe() -> Description {
        Description::new("postmark", env!("CARGO_PKG_VERSION"))
            .display_name("Email (Postmark)")
            .config_schema(serde_json::from_str(SCHEMA).expect("schema is valid JSON"))
    }

    fn validate_config(config: &Value) -> Result<(), String> {
        match config.get("from").and_then(Value::as_str) {
            Some(f) if f.contains('@') => {}
            _ => return Err("`from` must be a sender signature address".into()),
        }
        if let Some(u) = config.get("webhook_username") {
            match u.as_str() {
                Some(u) if !u.is_empty() && !u.contains(':') => {}
                _ => return Err("`webhook_username` must be a non-empty string without `:`".into()),
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
        let to = msg.require_to()?;
        if !to.contains('@') {
            return Err(SendError::InvalidInput(format!(
                "`{to}` is not an email address"
            )));
        }
        let subject = msg
            .subject
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| SendError::InvalidInput("email needs a subject".into()))?;
        if msg.text.is_none() && msg.html.is_none() {
            return Err(SendError::InvalidInput(
                "email needs a text or html body".into(),
            ));
        }
        let payload = msg.payload_json();
        let front_matter = msg.front_matter_json();
        let from = match msg.from.clone().filter(|f| !f.trim().is_empty()) {
            Some(f) => f,
            None => config::require_str("from")?,
        };
        let to_field = match &msg.to_name {
            // Postmark takes `"Name" <address>`; quotes and backslashes in the name escaped.
            Some(n) if !n.trim().is_empty() => {
                format!("\"{}\" <{to}>", n.replace('\\', "\\\\").replace('"', "\\\""))
            }
            _ => to.to_string(),
        };
        let mut metadata = serde_json::Map::new();
        for (k, v) in &msg.metadata {
            metadata.insert(k.clone(), json!(v));
        }
        metadata.insert("herald_idempotency_key".into(), json!(msg.idempotency_key));
        let mut body = json!({
            "From": from,
            "To": to_field,
            "Subject": subject,
            "MessageStream": config::get_str("message_stream").unwrap_or_else(|| "outbound".into()),
            "Metadata": metadata,
        });
        if let Some(h) = &msg.html {
            body["HtmlBody"] = json!(match &msg.preheader {
                Some(p) => herald_plugin_sdk::email::with_preheader(h, p),
                None => h.clone(),
            });
        }
        if let Some(t) = &msg.text {
            body["TextBody"] = json!(t);
        }
        let tag = payload
            .get("tag")
            .or_else(|| front_matter.get("tag"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| msg.topic.clone());
        if let Some(tag) = tag {
            body["Tag"] = json!(tag);
        }
        if let Some(r) = msg.reply_to_address()
        {
            body["ReplyTo"] = json!(r);
        }
        // What Herald tracks itself is not tracked by Postmark as well.
        if msg.tracking.opens {
            body["TrackOpens"] = json!(false);
        } else if let Some(true) = config::get("track_opens").and_then(|v| v.as_bool()) {
            body["TrackOpens"] = json!(true);
        }
        if msg.tracking.clicks {
            body["TrackLinks"] = json!("None");
        } else if let Some(t) = config::get_str("track_links") {
            body["TrackLinks"] = json!(t);
        }
        let mut headers: Vec<Value> = msg
            .headers
            .iter()
            .map(|(k, v)| json!({ "Name": k, "Value": v }))
            .collect();
        if msg.header("List-Unsubscribe").is_some() {
            // The runtime's unsubscribe headers are already there.
        } else if let Some(u) = payload.get("unsubscribe_url").and_then(Value::as_str) {
            headers.push(json!({ "Name": "List-Unsubscribe", "Value": format!("<{u}>") }));
            headers.push(
                json!({ "Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click" }),
            );
        }
        if !headers.is_empty() {
            body["Headers"] = Value::Array(headers);
        }

        let base =
            config::get_str("api_base").unwrap_or_else(|| "https://api.postmarkapp.com".into());
        let resp = http::Request::post(&format!("{}/email", base.trim_end_matches('/')))
            .header("Accept", "application/json")
            .header("X-Postmark-Server-Token", &secret("POSTMARK_SERVER_TOKEN"))
            .json(&body)
            .send()?;
        let j = resp.json();
        let code = j.get("ErrorCode").and_then(Value::as_i64).unwrap_or(0);
        let message = j
            .get("Message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match resp.status() {
            200 if code == 0 => {
                let id = resp
                    .json_field("MessageID")
                    .ok_or_else(|| SendError::Ambiguous("Postmark returned no MessageID".into()))?;
                Ok(
                    Sent::with_id(Some(id))
                        .details(json!({ "submitted_at": j.get("SubmittedAt") })),
                )
            }
            // 10 = bad or missing server token.
            401 => Err(SendError::Unauthorized(format!(
                "Postmark {code}: {message}"
            ))),
            422 if code == 10 => Err(SendError::Unauthorized(format!(
                "Postmark {code}: {message}"
            ))),
            422 => Err(SendError::InvalidInput(format!(
                "Postmark {code}: {message}"
            ))),
            _ => Err(resp
                .error_for_status()
                .err()
                .unwrap_or_else(|| SendError::Ambiguous(format!("Postmark {code}: {message}")))),
        }
    }

    fn parse_webhook(req: WebhookRequest) -> Result<Vec<WebhookEvent>, String> {
        authenticate(&req)?;
        let j = req.body_json()?;
        let record = j
            .get("RecordType")
            .and_then(Value::as_str)
            .ok_or("not a Postmark webhook: no RecordType")?;
        let s = |k: &str| j.get(k).and_then(Value::as_str).map(str::to_string);
        let ts = |k: &str| j.get(k).and_then(Value::as_str).and_then(parse_rfc3339_ms);
        let message_id = s("MessageID");
        let ev = match record {
            "Delivery" => WebhookEvent::new(EventKind::Delivered)
                .recipient(s("Recipient"))
                .timestamp_ms(ts("DeliveredAt"))
                .properties(json!({ "details": j.get("Details"), "tag": j.get("Tag"), "server_id": j.get("ServerID") })),
            "Bounce" => WebhookEvent::bounced(
                bounce_kind(
                    j.get("Type").and_then(Value::as_str),
                    j.get("Inactive").and_then(Value::as_bool) == Some(true),
                ),
                s("Description").or_else(|| s("Details")),
            )
                .recipient(s("Email"))
                .timestamp_ms(ts("BouncedAt"))
                .properties(json!({ "type": j.get("Type"), "type_code": j.get("TypeCode"), "description": j.get("Description"), "inactive": j.get("Inactive") })),
            "SpamComplaint" => WebhookEvent::new(EventKind::Complained)
                .recipient(s("Email"))
                .timestamp_ms(ts("BouncedAt"))
                .properties(json!({ "type": j.get("Type") })),
            "Open" => WebhookEvent::new(EventKind::Opened)
                .recipient(s("Recipient"))
                .timestamp_ms(ts("ReceivedAt"))
                .properties(json!({ "first_open": j.get("FirstOpen"), "user_agent": j.get("UserAgent"), "platform": j.get("Platform") })),
            "Click" => WebhookEvent::new(EventKind::Clicked)
                .recipient(s("Recipient"))
                .timestamp_ms(ts("ReceivedAt"))
                .properties(json!({ "url": j.get("OriginalLink"), "click_location": j.get("ClickLocation"), "platform": j.get("Platform") })),
            "SubscriptionChange" => {
                let kind = if j.get("SuppressSending").and_then(Value::as_bool) == Some(true) {
                    EventKind::Unsubscribed
                } else {
                    // The address was reactivated.
                    EventKind::Resubscribed
                };
                WebhookEvent::new(kind)
                    .recipient(s("Recipient"))
                    .timestamp_ms(ts("ChangedAt"))
                    .properties(json!({ "reason": j.get("SuppressionReason") }))
            }
            other => return Err(format!("unsupported Postmark RecordType `{other}`")),
        };
        Ok(vec![ev.message_id(message_id)])
    }
}

export_plugin!(Postmark);
