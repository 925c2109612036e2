//! The in-flight gauge and request counter when a client disconnects before
//! the response. Its own test binary: the metrics recorder is process-global.

mod support;

use std::time::Duration;

use serde_json::json;
use support::dialects::{Dialect, OpenAi};
use support::{Fake, Reply, config_for, gateway};

fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_client_that_goes_away_does_not_leak_the_in_flight_gauge() {
    let fake = Fake::start(Reply::Stall).await;
    let mut config = config_for(&fake);
    config.providers.get_mut("groq").unwrap().timeouts.first_byte = Duration::from_secs(30);
    config.providers.get_mut("groq").unwrap().timeouts.total = Duration::from_secs(30);
    let gw = gateway(config).await;

    let request = gw.chat(json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "x"}]}));
    assert!(tokio::time::timeout(Duration::from_millis(300), request).await.is_err(), "the upstream stalls");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = gw.get("/metrics").await.text().await.unwrap();
    // The metrics request itself is in flight while it renders; nothing else.
    assert_eq!(gauge(&after, "squad_http_requests_in_flight"), 1.0, "{after}");
    assert!(
        after.contains("squad_http_requests_total{route=\"/v1/chat/completions\",method=\"POST\",status=\"499\"} 1"),
        "{after}"
    );
}
