//! Components built against `herald:channel@0.1.0`, adapted to the current revision.
//!
//! Their imports (`http`, `smtp`, `crypto`, `config`, `log`) are the same functions as in
//! 0.2.0 under the older package version: each is answered by the 0.2.0 implementation in
//! [`crate::state`], with its values converted. Their exports are called with the current
//! [`wit::Outbound`] translated back: `fields` carries the template's front matter, as it did
//! for 0.1.0, and the fields 0.1.0 does not have are left out. Their answers are lifted: no
//! contact fields, a bounce of undetermined kind, no machine flag.

use crate::bindings::herald::channel as v2;
use crate::bindings::herald::channel::types as wit;
use crate::bindings_v1::herald::channel as v1;
use crate::state::HostState;

impl v1::types::Host for HostState {}

fn auth_to_v2(a: v1::http::Auth) -> v2::http::Auth {
    match a {
        v1::http::Auth::None => v2::http::Auth::None,
        v1::http::Auth::Basic(b) => v2::http::Auth::Basic(v2::http::BasicAuth {
            username: b.username,
            password: b.password,
        }),
        v1::http::Auth::Bearer(s) => v2::http::Auth::Bearer(s),
    }
}

fn http_error_to_v1(e: v2::http::HttpError) -> v1::http::HttpError {
    use v1::http::HttpError as O;
    use v2::http::HttpError as N;
    match e {
        N::Denied(m) => O::Denied(m),
        N::InvalidRequest(m) => O::InvalidRequest(m),
        N::Connect(m) => O::Connect(m),
        N::Incomplete(m) => O::Incomplete(m),
    }
}

impl v1::http::Host for HostState {
    async fn send(
        &mut self,
        req: v1::http::Request,
    ) -> Result<v1::http::Response, v1::http::HttpError> {
        let req = v2::http::Request {
            method: req.method,
            url: req.url,
            headers: req.headers,
            body: req.body,
            auth: auth_to_v2(req.auth),
            timeout_ms: req.timeout_ms,
        };
        v2::http::Host::send(self, req)
            .await
            .map(|r| v1::http::Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            })
            .map_err(http_error_to_v1)
    }
}

impl v1::smtp::Host for HostState {
    async fn submit(
        &mut self,
        envelope: v1::smtp::Envelope,
        message: Vec<u8>,
    ) -> Result<String, v1::smtp::SmtpError> {
        use v1::smtp::SmtpError as O;
        use v2::smtp::SmtpError as N;
        let envelope = v2::smtp::Envelope {
            mail_from: envelope.mail_from,
            rcpt_to: envelope.rcpt_to,
        };
        v2::smtp::Host::submit(self, envelope, message)
            .await
            .map_err(|e| match e {
                N::NotGranted(m) => O::NotGranted(m),
                N::Invalid(m) => O::Invalid(m),
                N::Rejected(m) => O::Rejected(m),
                N::Transient(m) => O::Transient(m),
                N::Ambiguous(m) => O::Ambiguous(m),
            })
    }
}

impl v1::crypto::Host for HostState {
    async fn hmac_sha256(&mut self, secret_name: String, data: Vec<u8>) -> Result<Vec<u8>, String> {
        v2::crypto::Host::hmac_sha256(self, secret_name, data).await
    }

    async fn hmac_sha1(&mut self, secret_name: String, data: Vec<u8>) -> Result<Vec<u8>, String> {
        v2::crypto::Host::hmac_sha1(self, secret_name, data).await
    }
}

impl v1::config::Host for HostState {
    async fn get(&mut self, key: String) -> Option<String> {
        v2::config::Host::get(self, key).await
    }

    async fn all(&mut self) -> String {
        v2::config::Host::all(self).await
    }
}

impl v1::log::Host for HostState {
    async fn log(&mut self, level: v1::log::Level, message: String, fields: Vec<(String, String)>) {
        use v1::log::Level as O;
        use v2::log::Level as N;
        let level = match level {
            O::Trace => N::Trace,
            O::Debug => N::Debug,
            O::Info => N::Info,
            O::Warn => N::Warn,
            O::Error => N::Error,
        };
        v2::log::Host::log(self, level, message, fields).await
    }
}

/// A 0.2.0 send request as a 0.1.0 component receives it: the front matter in `fields`.
pub(crate) fn outbound_to_v1(m: &wit::Outbound) -> v1::types::Outbound {
    v1::types::Outbound {
        idempotency_key: m.idempotency_key.clone(),
        operation: m.operation.clone(),
        to: m.to.clone(),
        subject: m.subject.clone(),
        text: m.text.clone(),
        html: m.html.clone(),
        fields: m.front_matter.clone(),
        payload: m.payload.clone(),
    }
}

/// A 0.1.0 `describe()` answer: no contact fields.
pub(crate) fn description_from_v1(d: v1::types::Description) -> wit::Description {
    wit::Description {
        id: d.id,
        version: d.version,
        display_name: d.display_name,
        delivers_messages: d.delivers_messages,
        operations: d
            .operations
            .into_iter()
            .map(|o| wit::OperationInfo {
                name: o.name,
                description: o.description,
            })
            .collect(),
        supports_idempotency: d.supports_idempotency,
        config_schema: d.config_schema,
        contact_fields: Vec::new(),
    }
}

pub(crate) fn sent_from_v1(
    r: Result<v1::types::Sent, v1::types::SendError>,
) -> Result<wit::Sent, wit::SendError> {
    use v1::types::SendError as O;
    use wit::SendError as N;
    match r {
        Ok(s) => Ok(wit::Sent {
            provider_message_id: s.provider_message_id,
            details: s.details,
        }),
        Err(e) => Err(match e {
            O::InvalidInput(m) => N::InvalidInput(m),
            O::Unauthorized(m) => N::Unauthorized(m),
            O::RateLimited(r) => N::RateLimited(wit::RateLimit {
                retry_after_ms: r.retry_after_ms,
                message: r.message,
            }),
            O::Transient(m) => N::Transient(m),
            O::Ambiguous(m) => N::Ambiguous(m),
        }),
    }
}

pub(crate) fn webhook_request_to_v1(r: &wit::WebhookRequest) -> v1::types::WebhookRequest {
    v1::types::WebhookRequest {
        method: r.method.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        headers: r.headers.clone(),
        body: r.body.clone(),
    }
}

/// 0.1.0 events: a bounce of undetermined kind, never flagged as a machine's.
pub(crate) fn events_from_v1(
    r: Result<Vec<v1::types::WebhookEvent>, String>,
) -> Result<Vec<wit::WebhookEvent>, String> {
    use v1::types::EventKind as O;
    use wit::EventKind as N;
    r.map(|events| {
        events
            .into_iter()
            .map(|e| wit::WebhookEvent {
                kind: match e.kind {
                    O::Delivered => N::Delivered,
                    O::Bounced => N::Bounced(wit::Bounce {
                        kind: wit::BounceKind::Undetermined,
                        reason: None,
                    }),
                    O::Opened => N::Opened,
                    O::Clicked => N::Clicked,
                    O::Replied => N::Replied,
                    O::Unsubscribed => N::Unsubscribed,
                    O::Complained => N::Complained,
                },
                message_id: e.message_id,
                recipient: e.recipient,
                properties: e.properties,
                timestamp_ms: e.timestamp_ms,
                machine: false,
            })
            .collect()
    })
}
