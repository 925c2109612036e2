//! In-process conversation store: one mutex over a map, lazy TTL expiry, and a
//! bound on the bytes of all histories (least recently used dropped first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Bounds, ConvKey, ConversationStore, History, StoreError, Stored};
use crate::domain::Message;

struct Entry {
    messages: VecDeque<Stored>,
    turns: u64,
    bytes: usize,
    touched: Instant,
}

pub struct MemoryStore {
    bounds: Bounds,
    ttl: Duration,
    max_bytes: usize,
    inner: Mutex<(HashMap<String, Entry>, usize)>,
}

impl MemoryStore {
    pub fn new(bounds: Bounds, ttl: Duration, max_bytes: usize) -> Self {
        Self { bounds, ttl, max_bytes, inner: Mutex::new((HashMap::new(), 0)) }
    }

    fn size(messages: &VecDeque<Stored>) -> usize {
        messages.iter().map(|m| m.content.len() + 32).sum()
    }
}

#[async_trait::async_trait]
impl ConversationStore for MemoryStore {
    async fn load(&self, key: &ConvKey) -> Result<History, StoreError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, total) = &mut *g;
        let k = key.storage_key();
        let expired = map.get(&k).is_some_and(|e| e.touched.elapsed() > self.ttl);
        if expired && let Some(e) = map.remove(&k) {
            *total -= e.bytes;
        }
        Ok(match map.get(&k) {
            Some(e) => History { messages: e.messages.iter().filter_map(Stored::to_message).collect(), turns: e.turns },
            None => History::default(),
        })
    }

    async fn append(&self, key: &ConvKey, user: &Message, assistant: &Message) -> Result<u64, StoreError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, total) = &mut *g;
        let now = Instant::now();
        let entry = map.entry(key.storage_key()).or_insert_with(|| Entry {
            messages: VecDeque::new(),
            turns: 0,
            bytes: 0,
            touched: now,
        });
        if entry.touched.elapsed() > self.ttl {
            entry.messages.clear();
            entry.turns = 0;
        }
        entry.messages.push_back(Stored::from_message(user));
        entry.messages.push_back(Stored::from_message(assistant));
        self.bounds.trim(&mut entry.messages);
        entry.turns += 1;
        entry.touched = now;
        let bytes = Self::size(&entry.messages);
        *total = *total + bytes - entry.bytes;
        entry.bytes = bytes;
        let turns = entry.turns;
        // Over the memory bound: forget the least recently used conversations.
        while *total > self.max_bytes && map.len() > 1 {
            let Some(oldest) = map.iter().min_by_key(|(_, e)| e.touched).map(|(k, _)| k.clone()) else { break };
            if let Some(e) = map.remove(&oldest) {
                *total -= e.bytes;
            }
        }
        Ok(turns)
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    fn key(id: &str) -> ConvKey {
        ConvKey { scope: "anon".into(), id: id.into() }
    }

    #[tokio::test(start_paused = true)]
    async fn turns_accumulate_expire_and_memory_is_bounded() {
        let store = MemoryStore::new(Bounds { max_turns: 2, max_tokens: 10_000 }, Duration::from_secs(60), 10_000);
        for i in 0..3 {
            let n = store
                .append(&key("a"), &Message::new(Role::User, format!("q{i}")), &Message::new(Role::Assistant, "r"))
                .await
                .unwrap();
            assert_eq!(n, i + 1);
        }
        let h = store.load(&key("a")).await.unwrap();
        assert_eq!(h.turns, 3);
        assert_eq!(h.messages.len(), 4, "two turns kept");
        assert_eq!(h.messages[0].content, "q1");
        assert!(store.load(&ConvKey { scope: "other".into(), id: "a".into() }).await.unwrap().messages.is_empty());

        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(store.load(&key("a")).await.unwrap().messages.is_empty(), "expired");

        let big = "x".repeat(3000);
        for id in ["1", "2", "3", "4"] {
            tokio::time::advance(Duration::from_millis(1)).await;
            store
                .append(&key(id), &Message::new(Role::User, big.clone()), &Message::new(Role::Assistant, "r"))
                .await
                .unwrap();
        }
        assert!(store.load(&key("1")).await.unwrap().messages.is_empty(), "least recently used evicted");
        assert!(!store.load(&key("4")).await.unwrap().messages.is_empty());
    }
}
