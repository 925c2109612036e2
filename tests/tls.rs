//! TLS termination: HTTPS only on the port, `Strict-Transport-Security` on
//! every response (errors included), and the certificate and key files checked
//! by config validation. (No HSTS over plain HTTP: `security_headers.rs` and
//! `attacks.rs` assert that.)

mod support;

use std::path::{Path, PathBuf};

use serde_json::json;
use support::dialects::{Dialect, OpenAi};
use support::process::{squad, temp_dir};
use support::{Fake, Reply, config_for, gateway};

const HSTS: &str = "max-age=31536000; includeSubDomains";

/// A self-signed certificate for 127.0.0.1: (cert file, key file, cert PEM).
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let pem = certified.cert.pem();
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, pem)
}

#[tokio::test]
async fn https_only_and_every_response_carries_hsts() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("hi", 3, 1))).await;
    let dir = temp_dir();
    let (cert, key, pem) = self_signed(&dir, "server");
    let mut config = config_for(&fake);
    config.server.tls.cert_file = Some(cert);
    config.server.tls.key_file = Some(key);
    let gw = gateway(config).await;
    assert!(gw.url.starts_with("https://127.0.0.1:"), "{}", gw.url);
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .build()
        .unwrap();

    let chat = json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let requests = [
        ("chat", client.post(format!("{}/v1/chat/completions", gw.url)).json(&chat), 200),
        ("health", client.get(format!("{}/health/live", gw.url)), 200),
        (
            "bad JSON",
            client.post(format!("{}/v1/chat/completions", gw.url)).body("{").header("content-type", "application/json"),
            400,
        ),
        ("no route", client.get(format!("{}/nowhere", gw.url)), 404),
    ];
    for (what, req, status) in requests {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), status, "{what}");
        assert_eq!(resp.headers().get("strict-transport-security").unwrap(), HSTS, "{what}");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff", "{what}");
    }
    assert_eq!(fake.hits(), 1);

    // The port speaks TLS only: a plain-HTTP request gets no HTTP answer.
    let plain = gw.url.replacen("https://", "http://", 1);
    assert!(reqwest::Client::new().get(format!("{plain}/health/live")).send().await.is_err());
    // An untrusting client refuses the self-signed certificate.
    assert!(reqwest::Client::new().get(format!("{}/health/live", gw.url)).send().await.is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// `squad probe` on a TLS server: the URL it makes from the config is HTTPS
/// to this host, whose certificate it does not verify (it names the service,
/// not the loopback address); a `--url` is verified as any client would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_speaks_https_to_its_own_tls_server_and_verifies_any_other_url() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("hi", 3, 1))).await;
    let dir = temp_dir();
    let (cert, key, _) = self_signed(&dir, "server");
    let mut config = config_for(&fake);
    config.server.tls.cert_file = Some(cert.clone());
    config.server.tls.key_file = Some(key.clone());
    let gw = gateway(config).await;
    let port = gw.url.rsplit(':').next().unwrap().to_owned();
    let file = dir.join("squad.yaml");
    let yaml = format!(
        "server:\n  bind: 0.0.0.0\n  port: {port}\n  tls:\n    cert_file: {}\n    key_file: {}\n",
        cert.display(),
        key.display()
    );
    std::fs::write(&file, yaml).unwrap();
    let probe = |args: Vec<String>| {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || squad(&dir).arg("probe").args(args).output().unwrap())
    };
    let own = probe(vec!["--config".into(), file.display().to_string(), "--ready".into()]).await.unwrap();
    assert_eq!(own.status.code(), Some(0), "{own:?}");
    assert_eq!(String::from_utf8_lossy(&own.stdout), format!("https://127.0.0.1:{port}/health/ready: 200\n"));
    let other = probe(vec!["--url".into(), format!("{}/health/live", gw.url)]).await.unwrap();
    assert_eq!(other.status.code(), Some(1), "a self-signed certificate at --url must not pass: {other:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn tls_files_are_checked_by_validation_and_check_config() {
    let dir = temp_dir();
    let (cert, key, _) = self_signed(&dir, "a");
    let (_, other_key, _) = self_signed(&dir, "b");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a PEM file").unwrap();
    let missing = dir.join("missing.pem");
    let issues = |c: Option<&PathBuf>, k: Option<&PathBuf>| {
        let mut config = squad::config::Config::default();
        config.server.tls.cert_file = c.cloned();
        config.server.tls.key_file = k.cloned();
        config.validate().into_iter().map(|i| i.path).collect::<Vec<_>>()
    };
    assert_eq!(issues(Some(&cert), Some(&key)), Vec::<String>::new());
    assert_eq!(issues(None, None), Vec::<String>::new());
    assert_eq!(issues(Some(&cert), None), ["server.tls.key_file"]);
    assert_eq!(issues(None, Some(&key)), ["server.tls.cert_file"]);
    assert_eq!(issues(Some(&missing), Some(&key)), ["server.tls.cert_file"]);
    assert_eq!(issues(Some(&garbage), Some(&key)), ["server.tls.cert_file"]);
    assert_eq!(issues(Some(&cert), Some(&garbage)), ["server.tls.key_file"]);
    assert_eq!(issues(Some(&cert), Some(&other_key)), ["server.tls.key_file"], "a key for another certificate");

    let config = dir.join("squad.yaml");
    std::fs::write(&config, format!("server:\n  tls:\n    cert_file: {}\n", cert.display())).unwrap();
    let out = squad(&dir).args(["check-config", "--config"]).arg(&config).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("server.tls.key_file: required when cert_file is set"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}
