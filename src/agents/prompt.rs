//! The system prompt: the persona, then Squad's framing (who the agent is,
//! which language to answer in, whom it is talking to).

use serde::{Deserialize, Serialize};

use super::Agent;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PromptSettings {
    /// Language replies are written in.
    pub language: String,
    /// How agents address the user; none by default.
    pub user_name: Option<String>,
}

impl Default for PromptSettings {
    fn default() -> Self {
        Self { language: "English".into(), user_name: None }
    }
}

pub fn system_prompt(agent: &Agent, settings: &PromptSettings) -> String {
    let mut prompt = format!(
        "{}\n\n---\nYou are {}, the {} of Squad, a team of AI agents. Stay in this role. Reply in {}.",
        agent.persona, agent.name, agent.title, settings.language
    );
    if let Some(user) = settings.user_name.as_deref().filter(|u| !u.trim().is_empty()) {
        prompt.push_str(&format!(" The user's name is {}.", user.trim()));
    }
    prompt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::Roster;

    #[test]
    fn prompt_carries_persona_language_and_name() {
        let (roster, _) = Roster::load(None);
        let agent = roster.get("architect").unwrap();
        let plain = system_prompt(agent, &PromptSettings::default());
        assert!(plain.starts_with(&agent.persona));
        assert!(plain.contains("You are Winston, the Architect of Squad"));
        assert!(plain.contains("Reply in English."));
        assert!(!plain.contains("user's name"));
        let custom = PromptSettings { language: "Portuguese".into(), user_name: Some("Ana".into()) };
        let p = system_prompt(agent, &custom);
        assert!(p.contains("Reply in Portuguese.") && p.contains("The user's name is Ana."));
    }
}
