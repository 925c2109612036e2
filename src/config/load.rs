//! Layering: built-in defaults, then the YAML file, then environment overrides,
//! merged as JSON trees before one typed deserialisation. Unknown keys are
//! collected (all of them, with paths) rather than stopping at the first.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{Config, ConfigIssue};

/// Where the config came from, for `check-config` and the start-up log.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    pub env_overrides: Vec<String>,
}

/// Environment variables with a fixed meaning, and the config path they set.
const NAMED_ENV: &[(&str, &str)] = &[
    ("SQUAD_PORT", "server.port"),
    ("SQUAD_BIND", "server.bind"),
    ("LOG_LEVEL", "log.level"),
    ("LOG_FORMAT", "log.format"),
    ("REDIS_URL", "conversations.redis_url"),
    ("REDIS_URL", "limits.redis.url"),
    ("DATABASE_URL", "database.url"),
];

/// Prefix of generic overrides: `SQUAD__SERVER__REQUEST_TIMEOUT=60s` sets
/// `server.request_timeout`.
const GENERIC_PREFIX: &str = "SQUAD__";

/// Loads and validates. `explicit` is `--config`; without it `squad.yaml` in the
/// working directory is used when present. Returns every issue found.
pub fn load(explicit: Option<&Path>, env: &[(String, String)]) -> Result<(Config, ConfigSource), Vec<ConfigIssue>> {
    let mut source = ConfigSource::default();
    let mut tree = serde_json::to_value(Config::default()).map_err(|e| vec![ConfigIssue::new("", e.to_string())])?;

    let file = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from("squad.yaml")).filter(|p| p.is_file()),
    };
    if let Some(path) = &file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![ConfigIssue::new("", format!("cannot read {}: {e}", path.display()))])?;
        let overlay = parse_yaml(&text).map_err(|e| vec![ConfigIssue::new("", format!("{}: {e}", path.display()))])?;
        merge(&mut tree, overlay);
        source.file = Some(path.clone());
    }

    let mut issues = Vec::new();
    for (name, value) in env {
        let paths: Vec<String> = if let Some(rest) = name.strip_prefix(GENERIC_PREFIX) {
            vec![rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".")]
        } else {
            NAMED_ENV.iter().filter(|(n, _)| n == name).map(|(_, p)| (*p).to_owned()).collect()
        };
        if paths.is_empty() {
            continue;
        }
        for path in paths {
            if let Err(msg) = set_path(&mut tree, &path, scalar(value)) {
                issues.push(ConfigIssue::new(&path, format!("from {name}: {msg}")));
            }
        }
        source.env_overrides.push(name.clone());
    }

    let config = deserialize(tree, &mut issues);
    if let Some(config) = &config {
        issues.extend(config.validate());
    }
    match config {
        Some(config) if issues.is_empty() => Ok((config, source)),
        _ => Err(issues),
    }
}

fn parse_yaml(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let value: Value = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err("the top level must be a mapping".into()),
    }
}

/// Deserialises section by section (each provider on its own), so one type
/// error does not hide the others; then the whole tree once all parts pass.
fn deserialize(tree: Value, issues: &mut Vec<ConfigIssue>) -> Option<Config> {
    let mut blocked = false;
    if let Value::Object(top) = &tree {
        for (key, value) in top {
            let parts: Vec<Value> = match (key.as_str(), value) {
                ("providers", Value::Object(providers)) => {
                    providers.iter().map(|(id, p)| serde_json::json!({ "providers": { id: p } })).collect()
                }
                _ => vec![Value::Object(Map::from_iter([(key.clone(), value.clone())]))],
            };
            for part in parts {
                blocked |= deserialize_part(part, issues, true).is_none();
            }
        }
    }
    // Unknown keys were reported by the parts; they do not stop the semantic checks.
    if blocked { None } else { deserialize_part(tree, issues, false) }
}

fn deserialize_part(tree: Value, issues: &mut Vec<ConfigIssue>, report_unknown: bool) -> Option<Config> {
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let de = serde_ignored::Deserializer::new(tree, &mut on_unknown);
    let result: Result<Config, _> = serde_path_to_error::deserialize(de);
    if report_unknown {
        for path in unknown {
            issues.push(ConfigIssue::new(&path, "unknown field".to_owned()));
        }
    }
    match result {
        Ok(config) => Some(config),
        Err(err) => {
            issues.push(ConfigIssue::new(&err.path().to_string(), err.inner().to_string()));
            None
        }
    }
}

/// Objects merge key by key; anything else (lists included) replaces.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        // `key:` with nothing after it is YAML null: keep the default.
        (_, Value::Null) => {}
        (slot, value) => *slot = value,
    }
}

fn set_path(tree: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let mut node = tree;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            return Err("empty path segment".into());
        }
        let Value::Object(map) = node else {
            return Err(format!("`{}` is not a section", parts[..i].join(".")));
        };
        if i + 1 == parts.len() {
            map.insert((*part).to_owned(), value);
            return Ok(());
        }
        node = map.entry((*part).to_owned()).or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

/// An environment value read as a YAML scalar: `9000` is a number, `true` a bool,
/// `30s` a string.
fn scalar(raw: &str) -> Value {
    yaml_serde::from_str::<Value>(raw)
        .ok()
        .filter(|v| !v.is_object() && !v.is_null())
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::with(text)
    }

    mod tempfile_path {
        use super::*;
        pub struct TempPath(pub PathBuf);
        impl TempPath {
            pub fn with(text: &str) -> Self {
                let path = std::env::temp_dir().join(format!("squad-cfg-{}.yaml", uuid::Uuid::new_v4()));
                let mut f = std::fs::File::create(&path).unwrap();
                f.write_all(text.as_bytes()).unwrap();
                Self(path)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn defaults_alone_are_valid() {
        let (config, source) = load(Some(Path::new("/dev/null")), &[]).unwrap();
        assert_eq!(config.server.port, 8000);
        assert_eq!(config.providers.len(), 5);
        assert!(source.env_overrides.is_empty());
    }

    #[test]
    fn file_overrides_one_field_and_keeps_the_rest_of_a_provider() {
        let f = write("providers:\n  groq:\n    enabled: false\nserver:\n  request_timeout: 7s\n");
        let (config, _) = load(Some(&f.0), &[]).unwrap();
        let groq = &config.providers["groq"];
        assert!(!groq.enabled);
        assert_eq!(groq.base_url, "https://api.groq.com/openai/v1");
        assert_eq!(config.server.request_timeout.as_secs(), 7);
    }

    #[test]
    fn env_beats_file() {
        let f = write("server:\n  port: 9000\n");
        let vars = env(&[("SQUAD_PORT", "9100"), ("SQUAD__PROVIDERS__DEEPSEEK__ENABLED", "false")]);
        let (config, source) = load(Some(&f.0), &vars).unwrap();
        assert_eq!(config.server.port, 9100);
        assert!(!config.providers["deepseek"].enabled);
        assert_eq!(source.env_overrides.len(), 2);
    }

    #[test]
    fn every_unknown_key_and_semantic_error_is_reported_with_its_path() {
        let f = write(
            "server:\n  prot: 1\nproviders:\n  groq:\n    base_url: not a url\n    colour: red\n  mine:\n    kind: openai_compatible\naliases:\n  fast: nowhere/model\n",
        );
        let issues = load(Some(&f.0), &[]).unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        for expected in [
            "server.prot",
            "providers.groq.colour",
            "providers.groq.base_url",
            "providers.mine.base_url",
            "providers.mine.default_model",
            "aliases.fast",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn several_type_errors_are_all_reported() {
        let f = write(
            "server:\n  port: lots\nlog:\n  format: xml\nproviders:\n  groq:\n    enabled: maybe\n  gemini:\n    timeouts:\n      connect: soon\n",
        );
        let issues = load(Some(&f.0), &[]).unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        for expected in ["server.port", "log.format", "providers.groq.enabled", "providers.gemini.timeouts.connect"] {
            assert!(paths.contains(&expected), "missing {expected} in {issues:?}");
        }
    }

    #[test]
    fn type_errors_name_the_path() {
        let f = write("server:\n  port: lots\n");
        let issues = load(Some(&f.0), &[]).unwrap_err();
        assert_eq!(issues[0].path, "server.port", "{issues:?}");
    }
}
