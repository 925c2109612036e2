//! Security building blocks with no HTTP types: PII detection and redaction.

pub mod pii;

pub use pii::{Detector, PiiKind};

/// What a request's text may carry: the types that make it a 400.
pub struct PiiPolicy {
    pub detector: Detector,
    pub block: Vec<PiiKind>,
}

impl PiiPolicy {
    pub fn new(config: &crate::config::PiiConfig) -> Self {
        Self { detector: Detector::new(), block: config.block.iter().filter_map(|k| PiiKind::parse(k)).collect() }
    }

    /// The blocked types found in `texts`, sorted, each once; empty when none
    /// (or when nothing is blocked: then nothing is scanned).
    pub fn blocked<'a>(&self, texts: impl IntoIterator<Item = &'a str>) -> Vec<PiiKind> {
        if self.block.is_empty() {
            return Vec::new();
        }
        let mut hits: Vec<PiiKind> = texts
            .into_iter()
            .flat_map(|t| self.detector.find(t))
            .map(|f| f.kind)
            .filter(|k| self.block.contains(k))
            .collect();
        hits.sort();
        hits.dedup();
        for k in &hits {
            crate::telemetry::metrics::pii_detected(k.as_str(), "blocked");
        }
        hits
    }
}
