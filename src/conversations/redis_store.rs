//! Redis conversation store, shared by every replica: one list per
//! conversation plus a turn counter, appended and trimmed by one Lua script
//! (atomic, so concurrent requests on a conversation never interleave
//! half-turns), with a TTL refreshed on every append.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::{Bounds, ConvKey, ConversationStore, History, StoreError, Stored};
use crate::domain::Message;

const APPEND: &str = r"
redis.call('RPUSH', KEYS[1], ARGV[1], ARGV[2])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
local turns = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return turns
";

pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    bounds: Bounds,
    ttl: Duration,
    script: redis::Script,
}

impl RedisStore {
    pub fn new(url: &str, bounds: Bounds, ttl: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self { client, conn: OnceCell::new(), bounds, ttl, script: redis::Script::new(APPEND) })
    }

    /// Connects on first use; the manager reconnects by itself afterwards.
    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        // Bounded waits: a slow or absent Redis fails fast instead of holding requests.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)));
        let conn = self
            .conn
            .get_or_try_init(|| async { ConnectionManager::new_with_config(self.client.clone(), config).await })
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(conn.clone())
    }

    /// The conversation's list and its turn counter. The counter has a
    /// prefix of its own: as `…:turns` after the list's name, a keys-off
    /// conversation's counter (`u:c:turns`) was also the list of a keyed
    /// conversation named `turns` (`k:u:turns`).
    fn keys(key: &ConvKey) -> (String, String) {
        let name = key.storage_key();
        (format!("squad:conv:{name}"), format!("squad:conv-turns:{name}"))
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl ConversationStore for RedisStore {
    async fn load(&self, key: &ConvKey) -> Result<History, StoreError> {
        let mut conn = self.conn().await?;
        let (list, turns_key) = Self::keys(key);
        let (raw, turns): (Vec<String>, Option<u64>) =
            redis::pipe().lrange(&list, 0, -1).get(&turns_key).query_async(&mut conn).await.map_err(unavailable)?;
        let mut stored: std::collections::VecDeque<Stored> =
            raw.iter().filter_map(|s| serde_json::from_str(s).ok()).collect();
        self.bounds.trim(&mut stored);
        Ok(History { messages: stored.iter().filter_map(Stored::to_message).collect(), turns: turns.unwrap_or(0) })
    }

    fn ping(&self) -> Option<futures::future::BoxFuture<'_, Result<Duration, StoreError>>> {
        Some(Box::pin(async move {
            let started = std::time::Instant::now();
            let mut conn = self.conn().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await.map_err(unavailable)?;
            Ok(started.elapsed())
        }))
    }

    async fn append(&self, key: &ConvKey, user: &Message, assistant: &Message) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let (list, turns_key) = Self::keys(key);
        let encode = |m: &Message| serde_json::to_string(&Stored::from_message(m)).unwrap_or_default();
        self.script
            .key(list)
            .key(turns_key)
            .arg(encode(user))
            .arg(encode(assistant))
            .arg(self.bounds.max_turns * 2)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_counter_is_never_another_conversations_list() {
        let key = |scope: &str, id: &str| ConvKey { scope: scope.into(), id: id.into() };
        let (list, turns) = RedisStore::keys(&key("k:u", "turns"));
        let (other_list, other_turns) = RedisStore::keys(&key("k", "u"));
        assert_eq!(list, "squad:conv:k:u:turns");
        assert_eq!(other_turns, "squad:conv-turns:k:u");
        for (a, b) in [(&list, &other_turns), (&turns, &other_list), (&list, &turns)] {
            assert_ne!(a, b);
        }
    }
}
