//! PII redaction throughput: MB/s on clean text and on PII-dense text, and
//! the cost of redacting a typical 2 KB prompt.
//! Run: `cargo run --release --example pii_bench`. Targets (issue 6):
//! >= 100 MB/s on clean text, <= 20 µs for a 2 KB prompt.

use std::hint::black_box;
use std::time::Instant;

use squad::security::Detector;
use squad::security::pii::redact;

fn measure(detector: &Detector, text: &str, min_bytes: usize) -> (f64, f64) {
    let rounds = (min_bytes / text.len()).max(1);
    let started = Instant::now();
    for _ in 0..rounds {
        black_box(redact(detector, black_box(text)));
    }
    let secs = started.elapsed().as_secs_f64();
    ((text.len() * rounds) as f64 / secs / 1e6, secs / rounds as f64 * 1e6)
}

fn main() {
    let detector = Detector::new();
    let prose = "The quarterly review covers onboarding, the 2024 roadmap and 3 open risks. \
                 Please summarise the decisions, list owners and dates, and flag anything blocked. ";
    let clean: String = prose.repeat(64 * 1024 / prose.len() + 1);
    let dense_unit = "Contact maria.silva@example.com or +55 11 98765-4321, CPF 529.982.247-25, \
                      card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, host 10.0.0.12, \
                      key gsk_abcdefghijklmnopqrstuvwx1234. ";
    let dense: String = dense_unit.repeat(64 * 1024 / dense_unit.len() + 1);
    let prompt: String = {
        let mut p = prose.repeat(2048 / prose.len());
        p.push_str("Reply to ana@example.org about invoice 4111-1111-1111-1111.");
        p.truncate(2048);
        p
    };
    // Warm up.
    measure(&detector, &clean, 8 << 20);
    let (clean_mbs, _) = measure(&detector, &clean, 256 << 20);
    let (dense_mbs, _) = measure(&detector, &dense, 64 << 20);
    let (_, prompt_us) = measure(&detector, &prompt, 64 << 20);
    println!("PII redaction (one core, release build)");
    println!("  clean text:        {clean_mbs:>8.1} MB/s   (target >= 100 MB/s)");
    println!("  PII-dense text:    {dense_mbs:>8.1} MB/s");
    println!("  2 KB prompt:       {prompt_us:>8.2} µs     (target <= 20 µs)");
}
