//! The Segment-compatible ingest endpoints: write-key check, body decoding (gzip, limits),
//! per-request acceptance through [`crate::ingest`].

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
) -> ApiResult<()> {
    let key = basic_user(headers).or(body_key);
    match key {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_write_key",
            "send the write key as the HTTP Basic user name",
        )),
        Some(k) if shared.write_keys.iter().any(|w| w == &k) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_write_key",
            "the write key is not valid",
        )),
    }
}

pub(super) fn decode_body(headers: &HeaderMap, body: Bytes) -> ApiResult<Vec<u8>> {
    let gz = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gz {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&body[..])
        .take(MAX_BATCH_BYTES as u64 + 1)
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

/// Read the body. Up to 4 MB is read even though 500 KB is the limit, so that a client that
/// is still sending learns what was wrong instead of seeing a broken connection.
pub(super) async fn read_limited(body: Body) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, 4 * 1024 * 1024)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body exceeds the limit of {MAX_BATCH_BYTES} bytes (500 KB)"),
            )
        })
}

pub(super) async fn ingest(
    kind: Option<&str>,
    shared: Arc<Shared>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    accept(kind, shared, headers, body)
        .await
        .map_err(ApiError::for_segment)
}

pub(super) async fn accept(
    kind: Option<&str>,
    shared: Arc<Shared>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_limited(body).await?;
    let bytes = decode_body(&headers, bytes)?;
    let parsed = parse_body(kind, &bytes);
    let body_key = match &parsed {
        Ok((_, k)) => k.clone(),
        Err(_) => None,
    };
    // Authenticate before reporting payload problems, so that keyless probes learn nothing.
    if let Err(e) = check_write_key(
        &shared,
        &headers,
        body_key.or_else(|| {
            serde_json::from_slice::<Value>(&bytes)
                .ok()?
                .get("writeKey")?
                .as_str()
                .map(String::from)
        }),
    ) {
        shared.engine.metrics.rejected(e.code);
        return Err(e);
    }
    let (messages, _) = parsed.map_err(|e| {
        let err = ingest_error(e);
        shared.engine.metrics.rejected(err.code);
        err
    })?;
    let accepted = shared
        .ingestor
        .ingest(messages)
        .await
        .map_err(ingest_error)?;
    Ok(Json(
        json!({"success": true, "accepted": accepted.accepted, "duplicates": accepted.duplicates}),
    )
    .into_response())
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
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    ingest(Some(kind), shared, headers, body).await
}

pub(super) async fn batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    ingest(None, shared, headers, body).await
}
