//! API keys: `sqd_<id>_<secret>`, where `id` is 12 hex characters (public:
//! it names the key in rows and logs) and `secret` 64 hex characters (256
//! random bits). Only the SHA-256 of the whole key is stored; a presented key
//! is found by its id and its hash compared in constant time. Keys are served
//! from an in-memory cache reloaded every `auth.refresh_interval`, and at once
//! when an unknown id shows up (at most once a second).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Store, StoreError, now_ms, on_db};

pub const PREFIX: &str = "sqd_";
const ID_HEX: usize = 12;
const SECRET_HEX: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub hash: String,
    /// Agents this key may use; `None`: every agent and every provider model.
    pub agents: Option<Vec<String>>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub admin: bool,
    pub created_ms: i64,
    pub expires_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
}

impl ApiKey {
    /// May this key use `agent` (`None`: a provider model with no agent)?
    pub fn allows(&self, agent: Option<&str>) -> bool {
        match (&self.agents, agent) {
            (None, _) => true,
            (Some(list), Some(agent)) => list.iter().any(|a| a == agent),
            (Some(_), None) => false,
        }
    }

    pub fn state(&self, now: i64) -> &'static str {
        if self.revoked_ms.is_some() {
            "revoked"
        } else if self.expires_ms.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

/// A freshly created key: the only time the secret exists outside the client.
pub struct NewKey {
    pub secret: String,
    pub key: ApiKey,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| StoreError::Invalid(format!("no randomness: {e}")))?;
    Ok(hex(&buf))
}

pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// The id part of a well-formed key.
pub fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (id.len() == ID_HEX && secret.len() == SECRET_HEX && is_hex(id) && is_hex(secret)).then_some(id)
}

pub struct KeySpec {
    pub name: String,
    pub agents: Option<Vec<String>>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub expires_ms: Option<i64>,
    pub admin: bool,
}

pub fn generate(spec: KeySpec) -> Result<NewKey, StoreError> {
    let id = random_hex(ID_HEX / 2)?;
    let secret = format!("{PREFIX}{id}_{}", random_hex(SECRET_HEX / 2)?);
    let key = ApiKey {
        id,
        name: spec.name,
        hash: hash_key(&secret),
        agents: spec.agents,
        rpm: spec.rpm,
        tpm: spec.tpm,
        admin: spec.admin,
        created_ms: now_ms(),
        expires_ms: spec.expires_ms,
        revoked_ms: None,
    };
    Ok(NewKey { secret, key })
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    name: String,
    hash: String,
    agents: Option<String>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    admin: bool,
    created_ms: i64,
    expires_ms: Option<i64>,
    revoked_ms: Option<i64>,
}

impl From<KeyRow> for ApiKey {
    fn from(r: KeyRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            hash: r.hash,
            agents: r.agents.and_then(|a| serde_json::from_str(&a).ok()),
            rpm: r.rpm,
            tpm: r.tpm,
            admin: r.admin,
            created_ms: r.created_ms,
            expires_ms: r.expires_ms,
            revoked_ms: r.revoked_ms,
        }
    }
}

impl Store {
    pub async fn insert_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let agents = key.agents.as_ref().map(|a| serde_json::to_string(a).unwrap_or_default());
        on_db!(self, pool, DB => sqlx::query(
            "INSERT INTO api_keys (id, name, hash, agents, rpm, tpm, admin, created_ms, expires_ms, revoked_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(key.id.as_str())
        .bind(key.name.as_str())
        .bind(key.hash.as_str())
        .bind(agents)
        .bind(key.rpm)
        .bind(key.tpm)
        .bind(key.admin)
        .bind(key.created_ms)
        .bind(key.expires_ms)
        .bind(key.revoked_ms)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    pub async fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let sql = "SELECT id, name, hash, agents, rpm, tpm, admin, created_ms, expires_ms, revoked_ms \
                   FROM api_keys ORDER BY created_ms, id";
        let rows: Vec<KeyRow> = on_db!(self, pool, DB => sqlx::query_as::<DB, KeyRow>(sql).fetch_all(pool).await)?;
        Ok(rows.into_iter().map(ApiKey::from).collect())
    }

    /// Revokes the key with this id, or every active key with this name.
    /// Returns how many keys were revoked.
    pub async fn revoke_key(&self, id_or_name: &str) -> Result<u64, StoreError> {
        on_db!(self, pool, DB => Ok(sqlx::query(
            "UPDATE api_keys SET revoked_ms = $1 WHERE (id = $2 OR name = $3) AND revoked_ms IS NULL",
        )
        .bind(now_ms())
        .bind(id_or_name)
        .bind(id_or_name)
        .execute(pool)
        .await?
        .rows_affected()))
    }
}

/// The outcome of checking a presented key.
#[derive(Debug, Clone)]
pub enum KeyCheck {
    Valid(Arc<ApiKey>),
    /// Malformed, unknown, or the secret does not match.
    Invalid,
    Expired,
    Revoked,
    /// The keys could not be loaded yet (the database has not answered).
    Unavailable,
}

type KeyMap = HashMap<String, Arc<ApiKey>>;

pub struct KeyCache {
    store: Arc<Store>,
    keys: RwLock<Option<Arc<KeyMap>>>,
    /// Last reload triggered by an unknown id (rate-limits such reloads).
    miss_reload: tokio::sync::Mutex<Option<Instant>>,
}

impl KeyCache {
    pub fn new(store: Arc<Store>) -> Self {
        crate::telemetry::metrics::auth_initial();
        Self { store, keys: RwLock::new(None), miss_reload: tokio::sync::Mutex::new(None) }
    }

    pub fn is_loaded(&self) -> bool {
        self.keys.read().map(|k| k.is_some()).unwrap_or(false)
    }

    /// Reloads every key from the store; on failure the last snapshot stays.
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        let keys = self.store.list_keys().await?;
        let map: KeyMap = keys.into_iter().map(|k| (k.id.clone(), Arc::new(k))).collect();
        let n = map.len();
        if let Ok(mut slot) = self.keys.write() {
            *slot = Some(Arc::new(map));
        }
        Ok(n)
    }

    fn snapshot(&self) -> Option<Arc<KeyMap>> {
        self.keys.read().ok().and_then(|k| k.clone())
    }

    pub async fn check(&self, presented: &str) -> KeyCheck {
        let Some(id) = key_id(presented) else { return KeyCheck::Invalid };
        let mut found = self.snapshot().map(|m| m.get(id).cloned());
        if !matches!(found, Some(Some(_))) {
            // Not loaded yet, or a key created since the last reload.
            let mut last = self.miss_reload.lock().await;
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *last = Some(Instant::now());
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "cannot reload API keys");
                }
            }
            drop(last);
            found = self.snapshot().map(|m| m.get(id).cloned());
        }
        let key = match found {
            None => return KeyCheck::Unavailable,
            Some(None) => return KeyCheck::Invalid,
            Some(Some(key)) => key,
        };
        let presented_hash = hash_key(presented);
        if !bool::from(presented_hash.as_bytes().ct_eq(key.hash.as_bytes())) {
            return KeyCheck::Invalid;
        }
        match key.state(now_ms()) {
            "revoked" => KeyCheck::Revoked,
            "expired" => KeyCheck::Expired,
            _ => KeyCheck::Valid(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KeySpec {
        KeySpec { name: "t".into(), agents: None, rpm: None, tpm: None, expires_ms: None, admin: false }
    }

    #[test]
    fn generated_keys_have_the_prefix_an_id_and_256_random_bits() {
        let a = generate(spec()).unwrap();
        let b = generate(spec()).unwrap();
        assert!(a.secret.starts_with(PREFIX));
        assert_eq!(key_id(&a.secret), Some(a.key.id.as_str()));
        assert_eq!(a.secret.len(), PREFIX.len() + ID_HEX + 1 + SECRET_HEX);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.key.hash, hash_key(&a.secret));
        assert!(!a.key.hash.contains(&a.secret[PREFIX.len() + ID_HEX + 1..]));
    }

    #[test]
    fn malformed_keys_have_no_id() {
        for bad in [
            "",
            "sqd_",
            "sk-abc",
            "sqd_abc_def",
            "sqd_0123456789ab_XYZ",
            &format!("sqd_0123456789AB_{}", "a".repeat(64)),
        ] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn scopes() {
        let mut k = generate(spec()).unwrap().key;
        assert!(k.allows(Some("dev")) && k.allows(None));
        k.agents = Some(vec!["dev".into()]);
        assert!(k.allows(Some("dev")));
        assert!(!k.allows(Some("pm")));
        assert!(!k.allows(None));
        assert_eq!(k.state(now_ms()), "active");
        k.expires_ms = Some(1);
        assert_eq!(k.state(now_ms()), "expired");
        k.revoked_ms = Some(1);
        assert_eq!(k.state(now_ms()), "revoked");
    }
}
