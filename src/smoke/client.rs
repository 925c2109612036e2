//! The smoke test's HTTP side: one request with its timeout, the answer read
//! whole, and errors as text that never holds the key. Depends on reqwest only.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::{Client, Method, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One answered request: status, headers, body and the time it took.
pub struct Answer {
    pub status: StatusCode,
    pub headers: header::HeaderMap,
    pub text: String,
    pub elapsed: Duration,
}

impl Answer {
    /// `200 (12 ms)`.
    pub fn took(&self) -> String {
        format!("{} ({} ms)", self.status.as_u16(), self.elapsed.as_millis())
    }

    /// Our error body's message, or the start of whatever came back.
    pub fn why(&self) -> String {
        let body: Value = serde_json::from_str(&self.text).unwrap_or(Value::Null);
        match body["error"]["message"].as_str() {
            Some(m) => format!("{}: {m}", self.status.as_u16()),
            None => format!("{}: {}", self.status.as_u16(), self.text.chars().take(160).collect::<String>()),
        }
    }

    /// The body as `T`, or why not (a field renamed or missing fails here,
    /// not later as a silent default).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.text).map_err(|e| format!("{} with an unexpected body: {e}", self.status.as_u16()))
    }

    /// Unix seconds from the `Date` header; this machine's clock without one.
    pub fn server_time(&self) -> u64 {
        let date = self.headers.get(header::DATE).and_then(|v| v.to_str().ok());
        let date = date.and_then(|s| httpdate::parse_http_date(s).ok()).unwrap_or_else(SystemTime::now);
        date.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
    }
}

pub struct Smoke {
    client: Client,
    /// The API's base URL, without a trailing `/`.
    pub base: String,
    key: Option<SecretString>,
}

impl Smoke {
    pub fn new(base: String, key: Option<SecretString>, timeout: Duration) -> Result<Self, String> {
        // Proxies from the environment apply (HTTPS_PROXY, NO_PROXY), as for
        // any client of the deployment.
        let client = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self { client, base, key })
    }

    /// A request to the API, with the key when there is one.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, String> {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = &self.key {
            req = req.bearer_auth(key.expose_secret());
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        send(req).await
    }

    /// A GET elsewhere (the operations port): never with the key, which that
    /// port does not need and which may travel there in clear text.
    pub async fn get_unkeyed(&self, url: &str) -> Result<Answer, String> {
        send(self.client.get(url)).await
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<Answer, String> {
    let started = Instant::now();
    let resp = req.send().await.map_err(describe)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.map_err(describe)?;
    Ok(Answer { status, headers, text, elapsed: started.elapsed() })
}

/// A transport error with its causes (reqwest's own text is often just
/// "error sending request"), its URL without credentials. Never the key,
/// which only ever travels in a header.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = if e.is_timeout() { "timed out".to_owned() } else { e.to_string() };
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `url` as a base to append paths to: http or https, no trailing `/`.
pub fn base_url(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("--url {}: {e}", shown(url)))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("--url {}: the scheme must be http or https", shown(url)));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `url` without a `user:password@` part, for printing.
pub fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.has_host() => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.as_str().trim_end_matches('/').to_owned()
        }
        _ => url.split_once('@').map_or(url, |(_, rest)| rest).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_http_or_https_without_a_trailing_slash() {
        assert_eq!(base_url("https://squad.example.com/"), Ok("https://squad.example.com".to_owned()));
        assert_eq!(base_url("http://127.0.0.1:8080"), Ok("http://127.0.0.1:8080".to_owned()));
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("squad:8080").is_err());
        assert!(base_url("not a url").is_err());
    }

    #[test]
    fn printed_urls_lose_their_credentials() {
        assert_eq!(shown("https://ops:s3cret@squad.example.com/"), "https://squad.example.com");
        assert_eq!(shown("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert!(!shown("ftp://u:s3cret@x").contains("s3cret"));
        assert!(base_url("ftp://u:s3cret@x").is_err_and(|e| !e.contains("s3cret")));
    }
}
