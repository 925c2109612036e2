//! How upstream calls leave the process, tested on a real `squad serve` (the
//! environment is per process): HTTPS upstreams verified against the
//! platform's roots (`SSL_CERT_FILE` included), and `HTTP_PROXY` / `NO_PROXY`
//! from the environment.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http::Version;

use serde_json::{Value, json};
use support::dialects::{Dialect, OpenAi};
use support::process::{serve_yaml, stop, temp_dir};
use support::{Fake, Reply, assert_error_body, config_for, gateway};

/// A self-signed certificate for 127.0.0.1: (cert file, key file).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.join("upstream.crt"), dir.join("upstream.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// Starts `squad serve` off the runtime's threads (it blocks until listening).
async fn serve(dir: &Path, yaml: String, env: Vec<(&'static str, String)>) -> (std::process::Child, String) {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (child, url, logs) = serve_yaml(&dir, &yaml, &env);
        std::thread::spawn(move || while logs.recv().is_ok() {});
        (child, url)
    })
    .await
    .unwrap()
}

async fn shut(mut child: std::process::Child) {
    tokio::task::spawn_blocking(move || stop(&mut child)).await.unwrap();
}

async fn chat(url: &str, model: &str) -> (u16, Value) {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hello"}]});
    let resp = reqwest::Client::new().post(format!("{url}/v1/chat/completions")).json(&body).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn config(providers: &str) -> String {
    format!(
        "auth: {{ mode: disabled }}\naudit: {{ enabled: false }}\nlimits: {{ enabled: false }}\n\
         server: {{ bind: 127.0.0.1, port: 0, shutdown_grace: 5s }}\nproviders:\n{providers}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_verified_against_the_platform_roots() {
    // The upstream is an in-process Squad serving HTTPS with a self-signed
    // certificate, in front of a fake: the Squad under test calls it as `groq`.
    let fake = Fake::start(Reply::json(200, OpenAi::completion("over tls", 3, 2))).await;
    let dir = temp_dir();
    let (cert, key) = self_signed(&dir);
    let mut front = config_for(&fake);
    front.server.tls.cert_file = Some(cert.clone());
    front.server.tls.key_file = Some(key);
    let front = gateway(front).await;
    assert!(front.url.starts_with("https://"), "{}", front.url);
    let yaml = config(&format!("  groq: {{ base_url: \"{}/v1\" }}\n", front.url));
    let model = format!("groq/{}", OpenAi::MODEL);

    // Trusted through SSL_CERT_FILE: the call goes through.
    let (child, url) = serve(&dir, yaml.clone(), vec![("SSL_CERT_FILE", cert.display().to_string())]).await;
    let (status, body) = chat(&url, &model).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "over tls");
    assert_eq!(fake.hits(), 1);
    shut(child).await;

    // Not trusted: the handshake fails, nothing reaches the fake, and the
    // client gets our error body.
    let (child, url) = serve(&dir, yaml, Vec::new()).await;
    let (status, body) = chat(&url, &model).await;
    assert_eq!(status, 502, "{body}");
    assert_error_body(&body, "upstream_failed");
    assert_eq!(fake.hits(), 1, "an unverified upstream was sent the request");
    shut(child).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// An HTTPS upstream that speaks only HTTP/2 (ALPN `h2`), as the hosted
/// providers prefer: answers each request with `body` and records the
/// HTTP version and path it saw.
async fn h2_upstream(
    cert: &Path,
    key: &Path,
    body: String,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<(Version, String)>>>) {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ServerConfig, crypto::aws_lc_rs};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).unwrap().collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let mut tls = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(Version, String)>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, log, body) = (acceptor.clone(), log.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    log.lock().unwrap().push((req.version(), req.uri().path().to_owned()));
                    let body = body.clone();
                    async move {
                        let resp = hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_offers_http2_is_spoken_to_in_http2() {
    let dir = temp_dir();
    let (cert, key) = self_signed(&dir);
    let (addr, seen) = h2_upstream(&cert, &key, OpenAi::completion("over h2", 3, 2)).await;
    let yaml = config(&format!("  groq: {{ base_url: \"https://{addr}/openai/v1\" }}\n"));
    let (child, url) = serve(&dir, yaml, vec![("SSL_CERT_FILE", cert.display().to_string())]).await;
    for _ in 0..2 {
        let (status, body) = chat(&url, OpenAi::MODEL).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], "over h2");
    }
    shut(child).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(Version::HTTP_2, "/openai/v1/chat/completions".to_owned()); 2]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_proxy_carries_upstream_calls_and_no_proxy_bypasses_it() {
    let proxy = Fake::start(Reply::json(200, OpenAi::completion("via proxy", 3, 2))).await;
    let direct = Fake::start(Reply::json(200, OpenAi::completion("direct", 3, 2))).await;
    let dir = temp_dir();
    // `upstream.test` never resolves: only a proxy can reach it.
    let yaml = config(&format!(
        "  groq: {{ base_url: \"http://upstream.test/openai/v1\" }}\n  cerebras: {{ base_url: \"{}/v1\" }}\n",
        direct.url()
    ));
    let env = vec![
        ("HTTP_PROXY", proxy.url()),
        ("NO_PROXY", "127.0.0.1".to_owned()),
        ("CEREBRAS_API_KEY", "csk-transport-test-0123456789".to_owned()),
    ];
    let (child, url) = serve(&dir, yaml, env).await;

    let (status, body) = chat(&url, OpenAi::MODEL).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "via proxy");
    let seen = proxy.received();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["host"], "upstream.test");
    assert_eq!(seen[0].path, "/openai/v1/chat/completions");
    assert_eq!(seen[0].body["model"], OpenAi::MODEL.strip_prefix("groq/").unwrap());

    // NO_PROXY covers 127.0.0.1: cerebras is called directly.
    let (status, body) = chat(&url, "cerebras/llama3.1-8b").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "direct");
    assert_eq!((proxy.hits(), direct.hits()), (1, 1));
    shut(child).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// An upstream that accepts TCP and never answers the TLS handshake is a
/// connect failure within the connect timeout (DNS, TCP and TLS together),
/// not a wait for the first-byte timeout.
#[tokio::test]
async fn a_stalled_tls_handshake_is_cut_off_by_the_connect_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let fake = Fake::start(Reply::json(200, OpenAi::completion("unused", 1, 1))).await;
    let mut config = config_for(&fake);
    let groq = config.providers.get_mut("groq").unwrap();
    groq.base_url = format!("https://{addr}/openai/v1");
    groq.timeouts.connect = std::time::Duration::from_millis(300);
    groq.timeouts.first_byte = std::time::Duration::from_secs(20);
    groq.timeouts.total = std::time::Duration::from_secs(30);
    let gw = gateway(config).await;
    let started = std::time::Instant::now();
    let resp = gw.chat(json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]})).await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status(), 502);
    assert_error_body(&resp.json().await.unwrap(), "upstream_failed");
    // A few attempts of 300 ms each (the runner retries a connect failure),
    // far from the 20 s first-byte timeout.
    assert!(elapsed < std::time::Duration::from_secs(5), "took {elapsed:?}");
    assert_eq!(fake.hits(), 0);
}

/// Configured headers win over the client's defaults, and each goes once.
#[tokio::test]
async fn configured_headers_override_the_defaults() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("hi", 1, 1))).await;
    let mut config = config_for(&fake);
    let headers = &mut config.providers.get_mut("groq").unwrap().headers;
    headers.insert("user-agent".into(), "corp-gateway/7".into());
    headers.insert("content-type".into(), "application/json; charset=utf-8".into());
    let gw = gateway(config).await;
    let resp = gw.chat(json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]})).await;
    assert_eq!(resp.status(), 200);
    let seen = &fake.received()[0].headers;
    assert_eq!(seen.get_all("user-agent").iter().collect::<Vec<_>>(), ["corp-gateway/7"]);
    assert_eq!(seen.get_all("content-type").iter().collect::<Vec<_>>(), ["application/json; charset=utf-8"]);
    assert_eq!(seen["accept"], "*/*");
}

#[test]
fn credentials_in_a_base_url_are_refused_by_validation() {
    let mut config = squad::config::Config::default();
    config.providers.get_mut("groq").unwrap().base_url = "https://user:secret@api.groq.com/openai/v1".into();
    let issues = config.validate();
    let issue = issues.iter().find(|i| i.path == "providers.groq.base_url").expect("an issue for the base URL");
    assert!(issue.message.contains("headers"), "{}", issue.message);
    assert!(!issue.message.contains("secret"), "the message never repeats the credentials");
}
