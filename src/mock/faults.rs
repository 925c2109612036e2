//! Fault specs for the simulated upstream.

use axum::response::Response;

use super::formats::Dialect;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and the dialect's error body.
    Status(u16),
    /// Accept the connection, never answer.
    Stall,
    /// Drop the connection halfway through the body.
    Cut,
    /// Send a body (or one stream event) that is not valid JSON.
    Malformed,
}

impl Fault {
    /// `503`, `429`, `stall`, `cut`, `malformed`; anything after the spec (a
    /// model name's tail, say) is ignored.
    pub fn parse(spec: &str) -> Option<Fault> {
        let word: String = spec.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        match word.as_str() {
            "stall" => Some(Fault::Stall),
            "cut" => Some(Fault::Cut),
            "malformed" => Some(Fault::Malformed),
            digits => digits.parse::<u16>().ok().filter(|s| (400..=599).contains(s)).map(Fault::Status),
        }
    }

    /// Faults that replace the whole response happen here; body-level ones
    /// (`cut`, `malformed`) return `None` and shape the body later.
    pub async fn before_body(&self, dialect: Dialect, retry_after_secs: u64) -> Option<Response> {
        match self {
            Fault::Status(status) => Some(dialect.error(*status, "simulated failure", retry_after_secs)),
            Fault::Stall => {
                std::future::pending::<()>().await;
                None
            }
            Fault::Cut | Fault::Malformed => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_from_headers_and_model_tails() {
        assert_eq!(Fault::parse("503"), Some(Fault::Status(503)));
        assert_eq!(Fault::parse("429-anything"), Some(Fault::Status(429)));
        assert_eq!(Fault::parse("cut"), Some(Fault::Cut));
        assert_eq!(Fault::parse("200"), None);
        assert_eq!(Fault::parse("nonsense"), None);
    }
}
