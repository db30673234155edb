//! The Segment-compatible ingest endpoints: write-key check, rate limits ([`super::rate`]),
//! body decoding (gzip, limits), per-request acceptance through [`crate::ingest`].

#[allow(unused_imports)]
use super::*;

pub(super) fn basic_user(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = v
        .strip_prefix("Basic ")
        .or_else(|| v.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(
        text.split_once(':')
            .map(|(u, _)| u.to_string())
            .unwrap_or(text),
    )
}

pub(super) fn check_write_key(
    shared: &Shared,
    headers: &HeaderMap,
    body_key: Option<String>,
) -> ApiResult<crate::daemon::KeyKind> {
    let key = basic_user(headers).or(body_key);
    let kind = key
        .as_deref()
        .and_then(|k| shared.credentials().write_key_kind(k));
    match (key, kind) {
        (None, _) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_write_key",
            "send the write key as the HTTP Basic user name",
        )),
        (Some(_), Some(kind)) => Ok(kind),
        (Some(_), None) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_write_key",
            "the write key is not valid",
        )),
    }
}

/// A write key given only inside the body (`writeKey`, as some Segment clients send it) is
/// honoured for bodies up to this size; a larger body must carry its key in the Basic
/// authorization header, which is checked before a byte of the body is read.
pub const BODY_KEY_LIMIT: usize = 64 * 1024;

/// Decode the body (gzip or identity) into at most `limit` + 1 bytes.
pub(super) fn decode_body(headers: &HeaderMap, body: Bytes, limit: usize) -> ApiResult<Vec<u8>> {
    let gz = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gz {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_gzip",
                format!("gzip body could not be decoded: {e}"),
            )
        })?;
    Ok(out)
}

/// Bytes of a refused body read and thrown away at most, so that a client still sending can
/// read the answer; past them the connection is simply closed.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;

/// Keep the first `keep` bytes of a body, read and throw away the rest (up to
/// [`DRAIN_LIMIT`] in all), within `deadline`. Memory stays at `keep` whatever the client
/// sends. Returns the kept bytes and whether the body was longer.
async fn read_keeping(
    body: Body,
    keep: usize,
    deadline: std::time::Duration,
) -> ApiResult<(Vec<u8>, bool)> {
    use http_body_util::BodyExt as _;
    let read = async move {
        let mut body = body;
        let (mut kept, mut seen, mut longer) = (Vec::new(), 0usize, false);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen += data.len();
            if !longer && kept.len() + data.len() <= keep {
                kept.extend_from_slice(&data);
            } else {
                longer = true;
                kept.clear();
            }
            if seen > DRAIN_LIMIT {
                break;
            }
        }
        (kept, longer)
    };
    tokio::time::timeout(deadline, read)
        .await
        .map_err(|_| body_timed_out(deadline))
}

fn body_timed_out(deadline: std::time::Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!(
            "the request body did not arrive within {} ms",
            deadline.as_millis()
        ),
    )
}

/// Read at most `limit` bytes of a body within `deadline` in all (a body trickling in byte by
/// byte is cut off as well as one that stops).
async fn read_body(
    body: Body,
    limit: usize,
    deadline: std::time::Duration,
) -> Option<ApiResult<Bytes>> {
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Some(Ok(bytes)),
        Ok(Err(_)) => None,
        Err(_) => Some(Err(body_timed_out(deadline))),
    }
}

/// Read the body. Up to 4 MB is read even though 500 KB is the limit, so that a client that
/// is still sending learns what was wrong instead of seeing a broken connection.
pub(super) async fn read_limited(body: Body, deadline: std::time::Duration) -> ApiResult<Bytes> {
    read_body(body, 4 * 1024 * 1024, deadline)
        .await
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds the limit of {MAX_BATCH_BYTES} bytes (500 KB)"),
            )
        })?
}

pub(super) async fn ingest(
    kind: Option<&str>,
    shared: Arc<Shared>,
    peer: std::net::SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    accept(kind, shared, peer, headers, body)
        .await
        .map_err(ApiError::for_segment)
}

/// A request body as read: still encoded, or already decoded (to find a key inside it).
enum Received {
    Raw(Bytes),
    Decoded(Vec<u8>),
}

/// The `writeKey` of a JSON body, if it has one (nothing else of the body is kept).
fn body_write_key(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct KeyOnly {
        #[serde(rename = "writeKey")]
        write_key: Option<String>,
    }
    serde_json::from_slice::<KeyOnly>(bytes).ok()?.write_key
}

/// The rate limits for a request whose key is `key` (of `kind`), from `peer`: a request over
/// one is refused (429), counted by the limit it was over.
fn rate_limit(
    shared: &Shared,
    kind: crate::daemon::KeyKind,
    key: &str,
    peer: std::net::SocketAddr,
    headers: &HeaderMap,
) -> ApiResult<()> {
    shared
        .rate_limits()
        .check(kind, key, peer, headers)
        .map_err(|refused| {
            shared.engine.metrics.rate_limited(refused.limit.name());
            ApiError::rate_limited(refused)
        })
}

pub(super) async fn accept(
    kind: Option<&str>,
    shared: Arc<Shared>,
    peer: std::net::SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let rejected = |e: ApiError| {
        shared.engine.metrics.rejected(e.code);
        e
    };
    // Authenticate before any work that grows with the body: with the key in the header the
    // body is not read at all before the key and the rate limits are checked; a key inside
    // the body is honoured only for a small one.
    let deadline = std::time::Duration::from_millis(shared.server.body_timeout_ms.max(1));
    let (key_kind, received) = match basic_user(&headers) {
        Some(key) => {
            let checked = check_write_key(&shared, &headers, Some(key.clone()))
                .and_then(|kind| rate_limit(&shared, kind, &key, peer, &headers).map(|()| kind));
            let kind = match checked {
                Ok(kind) => kind,
                Err(e) => {
                    // Read (and throw away) what the client is still sending, so that it
                    // reads the answer instead of a broken pipe.
                    let _ = read_keeping(body, 0, deadline).await;
                    return Err(rejected(e));
                }
            };
            (kind, Received::Raw(read_limited(body, deadline).await?))
        }
        None => {
            let too_large = || {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_write_key",
                    format!(
                        "send the write key as the HTTP Basic user name (a writeKey inside the body is honoured only for bodies up to {} KB)",
                        BODY_KEY_LIMIT / 1024
                    ),
                )
            };
            let (bytes, longer) = read_keeping(body, BODY_KEY_LIMIT, deadline)
                .await
                .map_err(rejected)?;
            if longer {
                return Err(rejected(too_large()));
            }
            let decoded =
                decode_body(&headers, Bytes::from(bytes), BODY_KEY_LIMIT).map_err(rejected)?;
            if decoded.len() > BODY_KEY_LIMIT {
                return Err(rejected(too_large()));
            }
            let key = body_write_key(&decoded);
            let kind = check_write_key(&shared, &headers, key.clone()).map_err(rejected)?;
            rate_limit(
                &shared,
                kind,
                key.as_deref().unwrap_or_default(),
                peer,
                &headers,
            )
            .map_err(rejected)?;
            (kind, Received::Decoded(decoded))
        }
    };
    let single = kind.is_some();
    let client_rules = (key_kind == crate::daemon::KeyKind::Client).then(|| {
        (
            shared
                .engine
                .state()
                .channels
                .keys()
                .cloned()
                .collect::<Vec<_>>(),
            shared.engine.store.clone(),
        )
    });
    // Decoding and parsing are CPU work: off the async threads.
    let kind = kind.map(str::to_string);
    let parsed = blocking(move || {
        let decoded = match received {
            Received::Decoded(decoded) => decoded,
            Received::Raw(raw) => decode_body(&headers, raw, MAX_BATCH_BYTES)?,
        };
        let mut parsed = parse_body(kind.as_deref(), &decoded).map_err(ingest_error)?;
        if let Some((channels, store)) = &client_rules {
            crate::ingest::restrict_client(&mut parsed, channels, &**store, !single)?;
            if parsed.messages.is_empty() {
                let first = parsed.rejected.first().cloned();
                return Err(match first {
                    Some(r) => ApiError::new(StatusCode::FORBIDDEN, r.code, r.message),
                    None => ApiError::new(StatusCode::BAD_REQUEST, "empty_batch", "no valid item"),
                });
            }
        }
        Ok(parsed)
    })
    .await?
    .map_err(rejected)?;
    for r in &parsed.rejected {
        shared.engine.metrics.rejected(r.code);
    }
    if let Some(first) = parsed.rejected.first() {
        tracing::info!(
            rejected = parsed.rejected.len(),
            accepted = parsed.messages.len(),
            first_code = first.code,
            first_reason = %first.message,
            "batch items dropped; the rest of the batch is accepted"
        );
    }
    let accepted = shared
        .ingestor
        .ingest(parsed.messages)
        .await
        .map_err(ingest_error)?;
    let mut rejected = parsed.rejected;
    if let Some(first) = accepted.rejected.first() {
        tracing::info!(
            rejected = accepted.rejected.len(),
            first_code = first.code,
            first_reason = %first.message,
            "messages dropped at a contact limit; the rest of the request is accepted"
        );
        if accepted.accepted == 0 && accepted.duplicates == 0 {
            // Nothing of the request was kept: refused as a whole, with the first reason.
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                first.code,
                first.message.clone(),
            ));
        }
        rejected.extend(accepted.rejected.iter().cloned());
        rejected.sort_by_key(|r| r.index);
    }
    let mut answer = json!({
        "success": true,
        "accepted": accepted.accepted,
        "duplicates": accepted.duplicates,
    });
    if !rejected.is_empty() {
        answer["rejected"] = json!(rejected.len());
        answer["rejections"] = json!(rejected.iter().take(100).collect::<Vec<_>>());
    }
    Ok(Json(answer).into_response())
}

pub(super) fn ingest_error(e: IngestError) -> ApiError {
    match e {
        IngestError::Invalid { code, message } => {
            let status = if code == "payload_too_large" {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            ApiError::new(status, code, message)
        }
        other => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_accepted",
            format!("{other}; nothing was accepted, retry"),
        ),
    }
}

pub(super) async fn single(
    kind: &'static str,
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    ingest(Some(kind), shared, peer, headers, body).await
}

pub(super) async fn batch(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    ingest(None, shared, peer, headers, body).await
}
