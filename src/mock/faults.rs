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

/// Faults and the share of requests each gets.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultMix(pub Vec<(Fault, f64)>);

/// `500=0.2,429=0.1,stall=0.05`.
pub fn parse_mix(spec: &str) -> Result<FaultMix, String> {
    let mut mix = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, share) = part.split_once('=').ok_or_else(|| format!("`{part}`: expected FAULT=SHARE"))?;
        let fault = Fault::parse(name).ok_or_else(|| format!("unknown fault `{name}`"))?;
        let share: f64 = share.parse().map_err(|_| format!("`{share}` is not a number"))?;
        if !(0.0..=1.0).contains(&share) {
            return Err(format!("share `{share}` must be between 0 and 1"));
        }
        mix.push((fault, share));
    }
    if mix.iter().map(|(_, s)| s).sum::<f64>() > 1.0 + 1e-9 {
        return Err("the shares add up to more than 1".into());
    }
    Ok(FaultMix(mix))
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

    #[test]
    fn mixes_parse_and_reject_nonsense() {
        assert_eq!(parse_mix("500=0.2, stall=0.05").unwrap().0, vec![(Fault::Status(500), 0.2), (Fault::Stall, 0.05)]);
        assert!(parse_mix("500=0.7,429=0.5").is_err());
        assert!(parse_mix("teapot=0.1").is_err());
        assert!(parse_mix("500").is_err());
    }
}
