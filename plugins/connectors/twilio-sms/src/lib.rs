//! Twilio SMS connector for Herald.
//!
//! Sends with the Messages API — `POST {api_base}/2010-04-01/Accounts/{AccountSid}/Messages.json`,
//! form-encoded `To`, `From` (or `MessagingServiceSid`), `Body`, optional
//! `StatusCallback`, HTTP Basic auth `AccountSid:{{secret:TWILIO_AUTH_TOKEN}}`
//! — and parses Twilio's status callbacks and inbound-message webhooks,
//! verifying `X-Twilio-Signature` against `webhook_url`. Without `webhook_url`
//! no callback can be verified, so every callback is refused (fail closed).
//! A failed message is a hard or soft bounce by its `ErrorCode`; an inbound
//! STOP (and the other opt-out words) unsubscribes, START resubscribes.
use herald_plugin_sdk::prelude::*;

struct TwilioSms;

const SCHEMA: &str = include_str!("../config.schema.json");

/// Keywords Twilio treats as opt-out (Advanced Opt-Out defaults).
const OPT_OUT: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "OPTOUT",
    "REVOKE",
];

/// Keywords Twilio treats as opting back in.
const OPT_IN: &[&str] = &["START", "UNSTOP", "YES"];

/// Twilio error codes for numbers that will not take messages again (unknown or landline
/// handset, blocked, opted out, not a valid or mobile number).
const HARD_ERRORS: &[&str] = &["30004", "30005", "30006", "21211", "21610", "21614"];

/// Twilio error codes for failures that may pass (handset off, queue overflow, carrier
/// filtering, a lost segment).
const SOFT_ERRORS: &[&str] = &["30001", "30003", "30007", "30009"];

/// A failed message's bounce kind, by Twilio's `ErrorCode`.
fn bounce_kind(code: Option<&str>) -> BounceKind {
    match code {
        Some(c) if HARD_ERRORS.contains(&c) => BounceKind::Hard,
        Some(c) if SOFT_ERRORS.contains(&c) => BounceKind::Soft,
        _ => BounceKind::Undetermined,
    }
}

fn is_e164(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or("");
    (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Check `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, URL followed by
/// every POST parameter name and value, sorted by name)). The auth token
/// stays in the host; the plugin only gets the MAC.
fn verify_signature(
    url: &str,
    form: &[(String, String)],
    header: Option<&str>,
) -> Result<(), String> {
    let header = header.ok_or("missing X-Twilio-Signature")?;
    let mut params: Vec<&(String, String)> = form.iter().collect();
    params.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut data = url.to_string();
    for (k, v) in params {
        data.push_str(k);
        data.push_str(v);
    }
    let mac = crypto::hmac_sha1("TWILIO_AUTH_TOKEN", data.as_bytes())?;
    let expected = herald_plugin_sdk::b64::encode(&mac);
    if crypto::constant_time_eq(expected.as_bytes(), header.trim().as_bytes()) {
        Ok(())
    } else {
        Err("invalid X-Twilio-Signature".into())
    }
}

impl Plugin for TwilioSms {
    fn describe() -> Description {
        Description::new("twilio-sms", env!("CARGO_PKG_VERSION"))
            .display_name("Twilio SMS")
            .config_schema(serde_json::from_str(SCHEMA).expect("schema is valid JSON"))
    }

    fn validate_config(config: &Value) -> Result<(), String> {
        let sid = config
            .get("account_sid")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !(sid.len() == 34 && sid.starts_with("AC")) {
            return Err(
                "`account_sid` must be a Twilio Account SID (AC followed by 32 hex digits)".into(),
            );
        }
        if config.get("from").is_none() && config.get("messaging_service_sid").is_none() {
            return Err("one of `from` or `messaging_service_sid` is required".into());
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
        if !is_e164(to) {
            return Err(SendError::InvalidInput(format!(
                "`{to}` is not an E.164 phone number"
            )));
        }
        let body = msg
            .text
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| SendError::InvalidInput("SMS needs a text body".into()))?;
        if body.chars().count() > 1600 {
            return Err(SendError::InvalidInput(
                "SMS body exceeds Twilio's 1600 character limit".into(),
            ));
        }
        let sid = config::require_str("account_sid")?;
        let base = config::get_str("api_base").unwrap_or_else(|| "https://api.twilio.com".into());
        let mut form: Vec<(&str, String)> = vec![("To", to.to_string())];
        match (
            config::get_str("messaging_service_sid"),
            config::get_str("from"),
        ) {
            (Some(ms), _) => form.push(("MessagingServiceSid", ms)),
            (None, Some(from)) => form.push(("From", from)),
            (None, None) => {
                return Err(SendError::InvalidInput(
                    "configure `from` or `messaging_service_sid`".into(),
                ))
            }
        }
        form.push(("Body", body.to_string()));
        if let Some(cb) = config::get_str("status_callback") {
            form.push(("StatusCallback", cb));
        }
        let url = format!(
            "{}/2010-04-01/Accounts/{sid}/Messages.json",
            base.trim_end_matches('/')
        );
        let resp = http::Request::post(&url)
            .basic_auth(&sid, &secret("TWILIO_AUTH_TOKEN"))
            .header("Accept", "application/json")
            .form(&form)
            .send()?;
        if resp.status() == 400 {
            // Twilio error body: {"code": 21211, "message": "...", "more_info": "...", "status": 400}
            let j = resp.json();
            let code = j.get("code").and_then(Value::as_i64).unwrap_or(0);
            let message = j
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("bad request");
            return Err(SendError::InvalidInput(format!(
                "Twilio error {code}: {message}"
            )));
        }
        let resp = resp.error_for_status()?;
        let j = resp.json();
        let message_sid = resp.json_field("sid");
        if message_sid.is_none() {
            return Err(SendError::Ambiguous(
                "Twilio accepted the request but returned no message sid".into(),
            ));
        }
        log::info(
            "twilio message created",
            &[("sid", message_sid.as_deref().unwrap_or(""))],
        );
        Ok(Sent::with_id(message_sid).details(json!({
            "status": j.get("status").cloned().unwrap_or(Value::Null),
            "num_segments": j.get("num_segments").cloned().unwrap_or(Value::Null),
        })))
    }

    /// Status callbacks (`MessageStatus` = delivered / undelivered / failed / read)
    /// and inbound messages (`SmsStatus` = received) as Twilio posts them,
    /// form-encoded.
    fn parse_webhook(req: WebhookRequest) -> Result<Vec<WebhookEvent>, String> {
        let form = req.body_form();
        let url = config::get_str("webhook_url").ok_or(
            "webhook_url is not configured, so Twilio callbacks cannot be verified and are refused; \
             set config.webhook_url to the URL Twilio posts to",
        )?;
        verify_signature(&url, &form, req.header("x-twilio-signature"))?;
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let sid = get("MessageSid")
            .or_else(|| get("SmsSid"))
            .ok_or("not a Twilio callback: no MessageSid")?;
        let status = get("MessageStatus")
            .or_else(|| get("SmsStatus"))
            .unwrap_or_default();
        let mut events = Vec::new();
        match status.as_str() {
            "delivered" => events.push(
                WebhookEvent::new(EventKind::Delivered)
                    .message_id(Some(sid))
                    .recipient(get("To"))
                    .properties(json!({ "status": status })),
            ),
            "undelivered" | "failed" => events.push(
                WebhookEvent::bounced(
                    bounce_kind(get("ErrorCode").as_deref()),
                    get("ErrorCode").map(|c| match get("ErrorMessage") {
                        Some(m) => format!("{c} {m}"),
                        None => c,
                    }),
                )
                    .message_id(Some(sid))
                    .recipient(get("To"))
                    .properties(json!({ "status": status, "error_code": get("ErrorCode"), "error_message": get("ErrorMessage") })),
            ),
            "read" => events.push(
                WebhookEvent::new(EventKind::Opened)
                    .message_id(Some(sid))
                    .recipient(get("To"))
                    .properties(json!({ "status": status })),
            ),
            "received" => {
                let body = get("Body").unwrap_or_default();
                let word = body.trim().to_ascii_uppercase();
                let kind = if OPT_OUT.contains(&word.as_str()) {
                    EventKind::Unsubscribed
                } else if OPT_IN.contains(&word.as_str()) {
                    EventKind::Resubscribed
                } else {
                    EventKind::Replied
                };
                events.push(
                    WebhookEvent::new(kind)
                        .message_id(Some(sid))
                        .recipient(get("From"))
                        .properties(json!({ "body": body, "to": get("To") })),
                );
            }
            // queued / accepted / sending / sent: intermediate states, no Herald event.
            _ => {}
        }
        Ok(events)
    }
}

export_plugin!(TwilioSms);
