//! The management API of consent and suppression: a contact's consent per topic (read, and
//! set with its source and evidence, as a form or a double opt-in confirmation would), each
//! channel's suppression list (listed in pages, imported, lifted), and the rotation of the
//! keys that sign unsubscribe links.

#[allow(unused_imports)]
use super::*;

use crate::consent::{record, Evidence};
use crate::model::{normalize_address, ConsentStatus, Suppression, SuppressionReason};
use crate::store::{Write, WriteBatch};

/// Addresses one import request may carry.
pub const MAX_SUPPRESSION_IMPORT: usize = 10_000;

/// `GET /v1/contacts/{id}/consent`: every declared topic with the contact's status, whether
/// it is the topic's default, and the record behind it.
pub(super) async fn get_consent(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    blocking(move || -> ApiResult<Json<Value>> {
        let c = find_contact(&shared, &id)?;
        let records = shared.engine.store.consent(&c.id)?;
        let state = shared.engine.state();
        let mut topics: Vec<String> = state.consent.topics.keys().cloned().collect();
        for r in &records {
            if !topics.contains(&r.topic) {
                topics.push(r.topic.clone());
            }
        }
        let list: Vec<Value> = topics
            .iter()
            .map(|t| {
                let rec = records.iter().find(|r| &r.topic == t);
                json!({
                    "topic": t,
                    "declared": state.consent.topics.contains_key(t),
                    "status": state.consent.status(&records, t).as_str(),
                    "default": rec.is_none(),
                    "record": rec,
                })
            })
            .collect();
        Ok(Json(json!({"contact": c.id, "topics": list})))
    })
    .await?
}

#[derive(Deserialize)]
struct ConsentChange {
    topic: String,
    status: ConsentStatus,
    #[serde(default = "api_source")]
    source: String,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
}

fn api_source() -> String {
    "api".into()
}

/// `POST /v1/contacts/{id}/consent` `{"topic", "status", "source"?, "ip"?, "user_agent"?}`
/// (or a list of them): record consent given or withdrawn elsewhere (a sign-up form, a double
/// opt-in confirmation, an import), with its evidence.
pub(super) async fn set_consent(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let value: Value = parse_json(&body)?;
    let changes: Vec<ConsentChange> = match value {
        Value::Array(_) => serde_json::from_value(value),
        other => serde_json::from_value(other).map(|c| vec![c]),
    }
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()))?;
    let state = shared.engine.state();
    for c in &changes {
        if !state.consent.topics.contains_key(&c.topic) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_topic",
                format!(
                    "topic `{}` is not declared in herald.toml ([topics.{}])",
                    c.topic, c.topic
                ),
            ));
        }
        if c.source.is_empty() || c.source.len() > 64 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "source must be 1 to 64 characters",
            ));
        }
    }
    blocking(move || -> ApiResult<Json<Value>> {
        let contact = find_contact(&shared, &id)?;
        let now = shared.engine.clock.now_ms();
        let mut batch = WriteBatch::new();
        for c in &changes {
            let evidence = Evidence {
                ip: c.ip.clone().map(|s| s.chars().take(64).collect()),
                user_agent: c.user_agent.clone().map(|s| s.chars().take(512).collect()),
                message: None,
            };
            batch.push(Write::Consent {
                contact: contact.id.clone(),
                record: record(&c.topic, c.status, now, &c.source, &evidence),
            });
        }
        shared.engine.apply_durably(&batch)?;
        Ok(Json(
            json!({"contact": contact.id, "recorded": changes.len()}),
        ))
    })
    .await?
}

#[derive(Deserialize)]
pub(super) struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

fn known_channel(shared: &Shared, channel: &str) -> ApiResult<()> {
    if shared.engine.state().channels.contains_key(channel) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "channel_not_found",
            format!("no channel \"{channel}\""),
        ))
    }
}

/// `GET /v1/suppressions/{channel}?after=ADDRESS&limit=N`: a page of the channel's
/// suppression list in address order (at most 1,000), with the cursor of the next page.
pub(super) async fn list_suppressions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    known_channel(&shared, &channel)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    blocking(move || -> ApiResult<Json<Value>> {
        let page = shared
            .engine
            .store
            .suppressions(&channel, q.after.as_deref(), limit)?;
        let next = (page.len() == limit).then(|| page.last().map(|s| s.address.clone()));
        Ok(Json(
            json!({"channel": channel, "suppressions": page, "next": next.flatten()}),
        ))
    })
    .await?
}

#[derive(Deserialize)]
struct Import {
    address: String,
    #[serde(default)]
    reason: Option<SuppressionReason>,
    #[serde(default)]
    detail: Option<String>,
}

/// `POST /v1/suppressions/{channel}` `[{"address", "reason"?, "detail"?}, …]`: import
/// addresses (at most 10,000 a request; `reason` defaults to `manual`).
pub(super) async fn import_suppressions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(channel): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    known_channel(&shared, &channel)?;
    let items: Vec<Import> = parse_json(&body)?;
    if items.len() > MAX_SUPPRESSION_IMPORT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many",
            format!(
                "{} addresses in one request; at most {MAX_SUPPRESSION_IMPORT}",
                items.len()
            ),
        ));
    }
    for i in &items {
        if i.address.trim().is_empty() || i.address.len() > 320 || i.address.contains('\0') {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_address",
                format!(
                    "`{}` is not an address",
                    i.address.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    blocking(move || -> ApiResult<Json<Value>> {
        let now = shared.engine.clock.now_ms();
        let mut batch = WriteBatch::new();
        for i in &items {
            batch.push(Write::Suppress(Suppression {
                channel: channel.clone(),
                address: normalize_address(&i.address),
                reason: i.reason.unwrap_or(SuppressionReason::Manual),
                at: now,
                source: "api".into(),
                detail: i.detail.clone().map(|d| d.chars().take(512).collect()),
            }));
        }
        shared.engine.apply_durably(&batch)?;
        Ok(Json(json!({"channel": channel, "suppressed": items.len()})))
    })
    .await?
}

/// `DELETE /v1/suppressions/{channel}/{address}`: lift a suppression.
pub(super) async fn lift_suppression(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((channel, address)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    known_channel(&shared, &channel)?;
    blocking(move || -> ApiResult<Json<Value>> {
        let address = normalize_address(&address);
        let store = &shared.engine.store;
        let Some(was) = store.suppression(&channel, &address)? else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_suppressed",
                format!("{address} is not suppressed on channel \"{channel}\""),
            ));
        };
        let mut batch = WriteBatch::new();
        batch.push(Write::Unsuppress {
            channel: channel.clone(),
            address: address.clone(),
        });
        shared.engine.apply_durably(&batch)?;
        tracing::info!(
            channel,
            address,
            reason = was.reason.as_str(),
            "suppression lifted by an operator"
        );
        Ok(Json(json!({"lifted": was})))
    })
    .await?
}

/// `POST /v1/links/rotate`: sign new links with a new key; links already sent still work.
pub(super) async fn rotate_links(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> ApiResult<Json<Value>> {
    check_admin(&shared, &headers)?;
    let id = blocking(move || shared.engine.rotate_link_keys()).await??;
    Ok(Json(json!({"key": id})))
}
