//! Security building blocks with no HTTP types: PII detection, redaction and
//! reversible masking, and the policy saying which applies where.

pub mod pii;

use std::collections::HashMap;
use std::sync::Arc;

pub use pii::{Detector, Mask, PiiKind, Restorer};

use crate::config::{PiiAgentConfig, PiiConfig};

/// What one agent (or, without an agent, every request) does about PII.
#[derive(Debug, Clone, Default)]
struct Rule {
    /// Types that make a request a 400.
    block: Vec<PiiKind>,
    /// `None`: no outbound masking. `Some(empty)`: every type is masked.
    mask: Option<Vec<PiiKind>>,
}

/// Which PII a request may carry and which is masked before it leaves for a
/// provider: global rules, overridden per agent.
pub struct PiiPolicy {
    pub detector: Arc<Detector>,
    global: Rule,
    agents: HashMap<String, Rule>,
}

impl PiiPolicy {
    /// Fails only on what `Config::validate` reports (bad patterns or types).
    pub fn new(config: &PiiConfig) -> Result<Self, String> {
        let patterns = config.patterns.iter().map(|p| (p.name.as_str(), p.regex.as_str()));
        let detector = Detector::with_patterns(patterns)?;
        let kinds = |names: &[String]| -> Result<Vec<PiiKind>, String> {
            names.iter().map(|n| detector.kind(n).ok_or_else(|| format!("unknown PII type `{n}`"))).collect()
        };
        let global = Rule {
            block: kinds(&config.block)?,
            mask: if config.mask { Some(kinds(&config.mask_types)?) } else { None },
        };
        let mut agents = HashMap::new();
        for (id, a) in &config.agents {
            let PiiAgentConfig { block, mask, mask_types } = a;
            let block = match block {
                Some(b) => kinds(b)?,
                None => global.block.clone(),
            };
            let types = match mask_types {
                Some(t) => kinds(t)?,
                None => global.mask.clone().unwrap_or_default(),
            };
            let mask = mask.unwrap_or(global.mask.is_some()).then_some(types);
            agents.insert(id.clone(), Rule { block, mask });
        }
        Ok(Self { detector: Arc::new(detector), global, agents })
    }

    fn rule(&self, agent: Option<&str>) -> &Rule {
        agent.and_then(|a| self.agents.get(a)).unwrap_or(&self.global)
    }

    /// The blocked types found in `texts`, sorted, each once; empty when none
    /// (or when nothing is blocked: then nothing is scanned).
    pub fn blocked<'a>(&self, agent: Option<&str>, texts: impl IntoIterator<Item = &'a str>) -> Vec<PiiKind> {
        let block = &self.rule(agent).block;
        if block.is_empty() {
            return Vec::new();
        }
        let mut hits: Vec<PiiKind> = texts
            .into_iter()
            .flat_map(|t| self.detector.find_where(t, |k| block.contains(&k)))
            .map(|f| f.kind)
            .collect();
        hits.sort();
        hits.dedup();
        for k in &hits {
            crate::telemetry::metrics::pii_detected(k.as_str(), "blocked");
        }
        hits
    }

    /// Masks the configured types in `texts` when outbound masking applies to
    /// `agent`; `None` when it does not or nothing was found.
    pub fn mask(&self, agent: Option<&str>, texts: &mut [&mut String]) -> Option<Arc<Mask>> {
        let types = self.rule(agent).mask.as_ref()?;
        let mask = pii::mask(&self.detector, |k| types.is_empty() || types.contains(&k), texts);
        for k in mask.kinds() {
            crate::telemetry::metrics::pii_detected(k.as_str(), "masked");
        }
        (!mask.is_empty()).then(|| Arc::new(mask))
    }
}
