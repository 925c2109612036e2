//! The agent roster: 13 built-in personas embedded in the binary, plus user
//! files from `agents.dir` that add agents or override a built-in by id. Each
//! agent is one Markdown file: YAML front matter (identity, provider chain,
//! defaults) and a persona body. A bad user file is reported with its path and
//! reason and skipped; it never takes the other agents down.

mod prompt;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use prompt::{PromptSettings, system_prompt};

/// The built-in agents, in roster order.
const BUILTIN: &[(&str, &str)] = &[
    ("analyst", include_str!("builtin/analyst.md")),
    ("architect", include_str!("builtin/architect.md")),
    ("dev", include_str!("builtin/dev.md")),
    ("pm", include_str!("builtin/pm.md")),
    ("sm", include_str!("builtin/sm.md")),
    ("tea", include_str!("builtin/tea.md")),
    ("tech-writer", include_str!("builtin/tech-writer.md")),
    ("ux-designer", include_str!("builtin/ux-designer.md")),
    ("brainstorming-coach", include_str!("builtin/brainstorming-coach.md")),
    ("creative-problem-solver", include_str!("builtin/creative-problem-solver.md")),
    ("design-thinking-coach", include_str!("builtin/design-thinking-coach.md")),
    ("innovation-strategist", include_str!("builtin/innovation-strategist.md")),
    ("storyteller", include_str!("builtin/storyteller.md")),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainLink {
    pub provider: String,
    pub model: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrontMatter {
    id: String,
    name: String,
    title: String,
    icon: String,
    description: String,
    temperature: f64,
    max_tokens: u32,
    providers: Vec<ChainLink>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub title: String,
    pub icon: String,
    pub description: String,
    pub temperature: f64,
    pub max_tokens: u32,
    /// Providers in the order they are tried.
    pub chain: Vec<ChainLink>,
    /// The persona body (Markdown).
    pub persona: String,
    /// `builtin` or the file it came from.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadIssue {
    pub path: String,
    pub reason: String,
}

/// Agent ids appear in URLs, model names and metric labels.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

pub fn parse(text: &str, source: &str) -> Result<Agent, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rest = text.strip_prefix("---").ok_or("missing front matter: the file must start with ---")?;
    let end = rest.find("\n---").ok_or("front matter is not closed with ---")?;
    let (front, body) = (&rest[..end], &rest[end + 4..]);
    let fm: FrontMatter = yaml_serde::from_str(front).map_err(|e| format!("front matter: {e}"))?;
    if !is_valid_id(&fm.id) {
        return Err(format!("id `{}`: use lowercase letters, digits and -", fm.id));
    }
    if fm.providers.is_empty() {
        return Err("providers: at least one provider is required".into());
    }
    if !(0.0..=2.0).contains(&fm.temperature) {
        return Err("temperature: must be between 0 and 2".into());
    }
    if fm.max_tokens == 0 {
        return Err("max_tokens: must be at least 1".into());
    }
    let persona = body.trim_start_matches(['-', '\r', '\n']).trim().to_owned();
    if persona.is_empty() {
        return Err("the persona body is empty".into());
    }
    Ok(Agent {
        id: fm.id,
        name: fm.name,
        title: fm.title,
        icon: fm.icon,
        description: fm.description,
        temperature: fm.temperature,
        max_tokens: fm.max_tokens,
        chain: fm.providers,
        persona,
        source: source.to_owned(),
    })
}

#[derive(Debug, Clone, Default)]
pub struct Roster {
    agents: BTreeMap<String, Arc<Agent>>,
}

impl Roster {
    /// Built-ins, then every `*.md` in `dir` (adding or overriding by id).
    pub fn load(dir: Option<&Path>) -> (Roster, Vec<LoadIssue>) {
        let mut agents = BTreeMap::new();
        let mut issues = Vec::new();
        for (name, text) in BUILTIN {
            match parse(text, "builtin") {
                Ok(agent) => {
                    agents.insert(agent.id.clone(), Arc::new(agent));
                }
                Err(reason) => issues.push(LoadIssue { path: format!("builtin/{name}.md"), reason }),
            }
        }
        if let Some(dir) = dir {
            match user_files(dir) {
                Ok(files) => {
                    for path in files {
                        let shown = path.display().to_string();
                        match std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|t| parse(&t, &shown))
                        {
                            Ok(agent) => {
                                agents.insert(agent.id.clone(), Arc::new(agent));
                            }
                            Err(reason) => issues.push(LoadIssue { path: shown, reason }),
                        }
                    }
                }
                Err(e) => issues.push(LoadIssue { path: dir.display().to_string(), reason: e.to_string() }),
            }
        }
        (Roster { agents }, issues)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Agent>> {
        self.agents.get(id)
    }

    /// Sorted by id.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.agents.values()
    }

    pub fn ids(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

fn user_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_roster_is_complete_and_well_formed() {
        let (roster, issues) = Roster::load(None);
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(roster.len(), 13);
        let expected = [
            ("analyst", "Mary"),
            ("architect", "Winston"),
            ("dev", "Amelia"),
            ("pm", "John"),
            ("sm", "Bob"),
            ("tea", "Murat"),
            ("tech-writer", "Paige"),
            ("ux-designer", "Sally"),
            ("brainstorming-coach", "Carson"),
            ("creative-problem-solver", "Dr. Quinn"),
            ("design-thinking-coach", "Maya"),
            ("innovation-strategist", "Victor"),
            ("storyteller", "Sophia"),
        ];
        for (id, name) in expected {
            let agent = roster.get(id).unwrap_or_else(|| panic!("{id} missing"));
            assert_eq!(agent.name, name);
            assert!(agent.chain.len() >= 3, "{id}: chain too short");
            assert!(agent.persona.contains("## Principles"), "{id}");
        }
        let primaries: std::collections::BTreeSet<&str> = roster.all().map(|a| a.chain[0].provider.as_str()).collect();
        assert_eq!(primaries.into_iter().collect::<Vec<_>>(), ["cerebras", "deepseek", "gemini", "groq", "openrouter"]);
    }

    #[test]
    fn user_files_add_and_override_and_a_bad_file_is_reported_alone() {
        let dir = std::env::temp_dir().join(format!("squad-agents-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |id: &str, name: &str| {
            format!(
                "---\nid: {id}\nname: {name}\ntitle: T\nicon: \"x\"\ndescription: d\ntemperature: 0.1\nmax_tokens: 10\n\
                 providers:\n  - provider: groq\n    model: m\n---\nYou are {name}.\n"
            )
        };
        std::fs::write(dir.join("a.md"), file("analyst", "Maria")).unwrap();
        std::fs::write(dir.join("b.md"), file("ops", "Olga")).unwrap();
        std::fs::write(dir.join("c.md"), "---\nid: broken\nname: [\n---\nbody").unwrap();
        std::fs::write(dir.join("d.md"), file("Bad Id", "X")).unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let (roster, issues) = Roster::load(Some(&dir));
        assert_eq!(roster.len(), 14);
        assert_eq!(roster.get("analyst").unwrap().name, "Maria");
        assert_eq!(roster.get("ops").unwrap().persona, "You are Olga.");
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert!(issues[0].path.ends_with("c.md") && issues[0].reason.contains("front matter"));
        assert!(issues[1].path.ends_with("d.md") && issues[1].reason.contains("id"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
