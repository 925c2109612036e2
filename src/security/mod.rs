//! Security building blocks with no HTTP types: PII detection and redaction.

pub mod pii;

pub use pii::{Detector, PiiKind};
