//! `ApiJson<T>`: our JSON extractor. Every way a body can be wrong (too large,
//! wrong content type, invalid UTF-8, malformed JSON, wrong field types) becomes
//! an `ApiError`, so clients always get our error body.

use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde::de::DeserializeOwned;

use super::auth::Principal;
use super::error::ApiError;
use super::middleware::{ClientKey, RequestId};
use super::state::AppState;
use crate::providers::CallContext;
use crate::store::Draft;

/// What the middleware learned about the caller, for the provider routes:
/// request id, client (for per-client budgets), key, and the audit draft.
pub struct Caller {
    pub request_id: String,
    pub client: Option<ClientKey>,
    pub principal: Option<Principal>,
    pub audit: Option<Draft>,
}

impl Caller {
    /// The call context for this request: its deadline and its client's budget.
    pub fn context(&self, state: &AppState, stream: bool) -> CallContext {
        let client = self.client.as_ref().map(|c| (c.0.clone(), c.1));
        state.gateway.context(&self.request_id, stream).with_client(client)
    }

    /// 403 unless the caller's key may use `agent` (`None`: a provider model).
    pub fn authorize(&self, agent: Option<&str>) -> Result<(), ApiError> {
        self.principal.as_ref().map_or(Ok(()), |p| p.authorize(agent))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ext = &parts.extensions;
        Ok(Self {
            request_id: ext.get::<RequestId>().map(|r| r.id.clone()).unwrap_or_default(),
            client: ext.get::<ClientKey>().cloned(),
            principal: ext.get::<Principal>().cloned(),
            audit: ext.get::<Draft>().cloned(),
        })
    }
}

pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.max_body_bytes;
        let headers = req.headers();
        if let Some(ct) = headers.get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
            let essence = ct.split(';').next().unwrap_or_default().trim();
            if essence != "application/json" && !essence.ends_with("+json") {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let deadline = tokio::time::Instant::now() + state.body_read_timeout;
        let (parts, mut body) = req.into_parts();
        let headers = &parts.headers;
        if declared.is_some_and(|n| n > limit as u64) {
            // A client waiting for `100 Continue` has sent nothing: reading
            // would only invite the body we refuse.
            if !expects_continue(headers) {
                drain(&mut body, deadline).await;
            }
            return Err(ApiError::PayloadTooLarge { limit });
        }
        // `declared` is within the limit here.
        let mut bytes = bytes::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        loop {
            let frame = match tokio::time::timeout_at(deadline, http_body_util::BodyExt::frame(&mut body)).await {
                Err(_) => return Err(ApiError::BodyTimeout),
                Ok(None) => break,
                Ok(Some(Err(_))) => return Err(ApiError::MalformedJson("the request body could not be read".into())),
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > limit {
                    drain(&mut body, deadline).await;
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                bytes.extend_from_slice(&data);
            }
        }
        parse(&bytes, state.max_json_depth).map(ApiJson)
    }
}

fn expects_continue(headers: &axum::http::HeaderMap) -> bool {
    headers.get(header::EXPECT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

/// At most this much of a refused body is read (and discarded) before the 413.
const DRAIN_BYTES: usize = 1 << 20;
/// And for at most this long.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and discards what is left of a refused body (bounded by
/// `DRAIN_BYTES`, `DRAIN_TIME` and the body deadline), so the client has sent
/// its body when the 413 goes out. A connection closed with unread request
/// bytes is reset by the kernel, and a client still uploading would see the
/// reset instead of the 413.
async fn drain(body: &mut axum::body::Body, deadline: tokio::time::Instant) {
    let deadline = deadline.min(tokio::time::Instant::now() + DRAIN_TIME);
    let mut read = 0;
    while read < DRAIN_BYTES {
        match tokio::time::timeout_at(deadline, http_body_util::BodyExt::frame(body)).await {
            Ok(Some(Ok(frame))) => read += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// UTF-8 check, nesting depth check, then JSON; an error names the path of
/// the first value of the wrong type.
pub fn parse<T: DeserializeOwned>(bytes: &[u8], max_depth: usize) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ApiError::MalformedJson("body is not valid UTF-8".into()))?;
    if text.trim().is_empty() {
        return Err(ApiError::MalformedJson("body is empty".into()));
    }
    if nesting_exceeds(bytes, max_depth) {
        return Err(ApiError::MalformedJson(format!("JSON nests deeper than {max_depth} levels")));
    }
    // Tracking the path costs on every value, so it is done only for a body
    // that fails: the same parse again, which fails the same way.
    if let Ok(value) = serde_json::from_str(text) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let param = (path != ".").then_some(path);
                let message = match &param {
                    Some(p) => format!("invalid field `{p}`: {inner}"),
                    None => format!("invalid request body: {inner}"),
                };
                ApiError::InvalidRequest { message, param }
            }
            _ => ApiError::MalformedJson(inner.to_string()),
        }
    })?;
    de.end().map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// Whether arrays and objects in `json` nest deeper than `max`: one pass, no
/// recursion, so any depth is safe to check. Brackets inside strings do not
/// count. serde_json has its own fixed limit (128); this one is ours,
/// configurable, checked before anything is built, and names the limit.
/// Malformed input may be counted loosely: the parser refuses it next anyway.
fn nesting_exceeds(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert!(!nesting_exceeds(br#"{"a":[1,{"b":[]}]}"#, 4));
        assert!(nesting_exceeds(br#"{"a":[1,{"b":[]}]}"#, 3));
        assert!(!nesting_exceeds(br#"{"a":"[[[[{{{{\"[[[["}"#, 1), "brackets in strings, escaped quote");
        assert!(!nesting_exceeds(b"[][][][]", 1), "siblings do not add up");
    }

    #[test]
    fn a_hundred_thousand_levels_are_refused_without_recursion() {
        let deep = "[".repeat(100_000);
        let err = parse::<serde_json::Value>(deep.as_bytes(), 64).unwrap_err();
        assert!(matches!(&err, ApiError::MalformedJson(m) if m.contains("64 levels")), "{err:?}");
        let at_limit = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse::<serde_json::Value>(at_limit.as_bytes(), 64).is_ok());
        let over = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(parse::<serde_json::Value>(over.as_bytes(), 64).is_err());
    }
}
