//! Cost of one admission decision: in process (atomics) and through Redis
//! (one Lua script round trip), on the path a request takes (request budget +
//! token reservation for one provider).
//!
//!     cargo run --release --example admission_bench            # in-process only
//!     REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example admission_bench

use std::time::Instant;

use squad::config::Config;
use squad::limits::Limits;

fn config(redis: Option<String>) -> Config {
    let mut config = Config::default();
    let groq = config.providers.get_mut("groq").expect("groq is built in");
    // Budgets no benchmark reaches, so every decision is an admission.
    groq.limits.rpm = Some(1_000_000_000);
    // Below one token a nanosecond, so the token path is really exercised.
    groq.limits.tpm = Some(10_000_000_000);
    config.limits.redis.url = redis;
    config.limits.redis.prefix = format!("bench-{}", std::process::id());
    config
}

async fn measure(limits: &Limits, n: u32) -> f64 {
    let started = Instant::now();
    for _ in 0..n {
        let reservation = limits.admit_provider("groq", "m", 500).await.expect("admitted");
        std::hint::black_box(&reservation);
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let local = Limits::from_config(&config(None)).expect("limits");
    measure(&local, 100_000).await;
    let ns = measure(&local, 1_000_000).await;
    println!("in-process admission (request + token budget): {ns:.0} ns per decision");

    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let shared = Limits::from_config(&config(Some(url))).expect("limits");
            measure(&shared, 1_000).await;
            let ns = measure(&shared, 20_000).await;
            if shared.degraded() {
                println!("redis admission: Redis unreachable, figure not measured");
            } else {
                println!("redis admission (request + token budget): {:.1} µs per decision", ns / 1000.0);
            }
        }
        Err(_) => println!("redis admission: set REDIS_URL to measure"),
    }
}
