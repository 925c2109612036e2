//! Providers resolved at start-up, and model-name routing:
//! `provider/model`, a bare provider id (its default model), or an alias.

use std::collections::BTreeMap;

use std::sync::Arc;

use crate::config::ProviderKind;
use crate::providers::DynProvider;
use crate::resilience::ProviderHealth;

#[derive(Clone)]
pub enum ProviderState {
    Ready(DynProvider),
    /// Enabled, but its key variable is unset.
    Unconfigured {
        key_env: String,
    },
    Disabled,
}

#[derive(Clone)]
pub struct ProviderEntry {
    pub id: String,
    pub kind: ProviderKind,
    pub default_model: String,
    pub models: Vec<String>,
    pub state: ProviderState,
    pub health: Arc<ProviderHealth>,
}

impl ProviderEntry {
    pub fn status(&self) -> &'static str {
        match self.state {
            ProviderState::Ready(_) => "configured",
            ProviderState::Unconfigured { .. } => "unconfigured",
            ProviderState::Disabled => "disabled",
        }
    }
}

#[derive(Clone, Default)]
pub struct Registry {
    providers: BTreeMap<String, ProviderEntry>,
    aliases: BTreeMap<String, String>,
}

/// Where one request goes.
#[derive(Clone)]
pub struct Route {
    pub provider_id: String,
    pub provider: DynProvider,
    /// The model id as the provider knows it.
    pub model: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    #[error("provider `{provider}` is not configured: set {key_env}")]
    Unconfigured { provider: String, key_env: String },
    #[error("provider `{0}` is disabled")]
    Disabled(String),
}

impl Registry {
    pub fn new(providers: Vec<ProviderEntry>, aliases: BTreeMap<String, String>) -> Self {
        Self { providers: providers.into_iter().map(|p| (p.id.clone(), p)).collect(), aliases }
    }

    pub fn entries(&self) -> impl Iterator<Item = &ProviderEntry> {
        self.providers.values()
    }

    pub fn get(&self, id: &str) -> Option<&ProviderEntry> {
        self.providers.get(id)
    }

    pub fn aliases(&self) -> &BTreeMap<String, String> {
        &self.aliases
    }

    pub fn resolve(&self, name: &str) -> Result<Route, RouteError> {
        let target = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        let (provider_id, model) = match target.split_once('/') {
            Some((p, m)) => (p, Some(m)),
            None => (target, None),
        };
        let entry = self.providers.get(provider_id).ok_or_else(|| RouteError::UnknownModel(name.to_owned()))?;
        let model = match model {
            Some("") => return Err(RouteError::UnknownModel(name.to_owned())),
            Some(m) => m.to_owned(),
            None => entry.default_model.clone(),
        };
        match &entry.state {
            ProviderState::Ready(provider) => {
                Ok(Route { provider_id: entry.id.clone(), provider: provider.clone(), model })
            }
            ProviderState::Unconfigured { key_env } => {
                Err(RouteError::Unconfigured { provider: entry.id.clone(), key_env: key_env.clone() })
            }
            ProviderState::Disabled => Err(RouteError::Disabled(entry.id.clone())),
        }
    }
}
