//! The store (SQLite always, PostgreSQL when `DATABASE_URL` is set), the
//! audit log's completeness and outage guarantees, and API keys, over real
//! HTTP against the simulated upstream.

mod support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use squad::config::{AuditFailurePolicy, AuthMode, Config, DatabaseConfig};
use squad::store::keys::{self, KeySpec};
use squad::store::{AuditRecord, GroupBy, Store, Subject, now_ms};
use support::{Gateway, assert_error_body, drop_pg, gateway_with, pg_database};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("squad-persist-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("squad.db").display())
}

/// Every database the suite runs against: SQLite, and PostgreSQL when configured.
async fn databases(test: &str) -> Vec<String> {
    let mut urls = vec![sqlite_url(&temp_dir())];
    urls.extend(pg_database(test).await);
    urls
}

fn open(url: &str) -> Store {
    Store::open(&DatabaseConfig { url: url.to_owned(), ..DatabaseConfig::default() }).unwrap()
}

fn record(id: &str, provider: &str, tokens: (i64, i64), cost: Option<f64>, ts_ms: i64) -> AuditRecord {
    AuditRecord {
        id: id.into(),
        request_id: format!("req-{id}"),
        ts_ms,
        method: "POST".into(),
        route: "/v1/chat/completions".into(),
        status: 200,
        attempts: "[]".into(),
        provider: Some(provider.into()),
        model: Some("m".into()),
        agent: Some("dev".into()),
        tokens_in: tokens.0,
        tokens_out: tokens.1,
        cost_usd: cost,
        ..AuditRecord::default()
    }
}

async fn store_suite(url: &str) {
    let store = open(url);
    store.migrate().await.unwrap();
    let again = open(url);
    again.migrate().await.expect("migrations are idempotent");

    // Inserts are idempotent on the record id.
    let now = now_ms();
    let rows =
        vec![record("a", "groq", (10, 5), Some(0.5), now - 1000), record("b", "gemini", (1, 1), None, now - 500)];
    assert_eq!(store.insert_audit(&rows).await.unwrap(), 2);
    assert_eq!(store.insert_audit(&rows).await.unwrap(), 0, "a replayed batch adds nothing");
    let more: Vec<_> = (0..2500).map(|i| record(&format!("r{i:05}"), "groq", (1, 2), Some(0.001), now)).collect();
    for chunk in more.chunks(500) {
        store.insert_audit(chunk).await.unwrap();
    }
    assert_eq!(store.audit_count().await.unwrap(), 2502);
    let read = store.audit_by_request("req-a").await.unwrap();
    assert_eq!(read, vec![rows[0].clone()], "a row reads back as written");

    // Export pages cover every row exactly once.
    let mut seen = HashSet::new();
    let mut after = None;
    loop {
        let page = store.audit_page(0, i64::MAX, after.clone(), 700).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some((last.ts_ms, last.id.clone()));
        for r in page {
            assert!(seen.insert(r.id), "no row twice");
        }
    }
    assert_eq!(seen.len(), 2502);

    // Usage sums by group; a missing price counts as 0.
    let usage = store.usage(0, i64::MAX, GroupBy::Provider).await.unwrap();
    let groq = usage.iter().find(|u| u.group == "groq").unwrap();
    assert_eq!((groq.requests, groq.tokens_input, groq.tokens_output), (2501, 2510, 5005));
    assert!((groq.cost_usd - 3.0).abs() < 1e-6, "{groq:?}");
    let gemini = usage.iter().find(|u| u.group == "gemini").unwrap();
    assert_eq!((gemini.requests, gemini.cost_usd), (1, 0.0));
    let by_model = store.usage(0, i64::MAX, GroupBy::Model).await.unwrap();
    assert!(by_model.iter().any(|u| u.group == "groq/m"));
    assert!(store.usage(now + 1, now + 2, GroupBy::Agent).await.unwrap().is_empty());

    // Retention.
    assert_eq!(store.prune_audit(now - 200).await.unwrap(), 2);
    assert_eq!(store.audit_count().await.unwrap(), 2500);

    // Keys: stored as a hash only; revocation by id or name.
    let spec = |name: &str| KeySpec {
        name: name.into(),
        agents: Some(vec!["dev".into()]),
        rpm: Some(5),
        tpm: None,
        expires_ms: None,
        admin: false,
    };
    let k1 = keys::generate(spec("ci")).unwrap();
    let k2 = keys::generate(spec("ci")).unwrap();
    store.insert_key(&k1.key).await.unwrap();
    store.insert_key(&k2.key).await.unwrap();
    let listed = store.list_keys().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].agents, Some(vec!["dev".to_owned()]));
    assert!(listed.iter().all(|k| k.hash.len() == 64 && !k.hash.contains(&k1.secret[17..])));
    assert_eq!(store.revoke_key(&k1.key.id).await.unwrap(), 1);
    assert_eq!(store.revoke_key("ci").await.unwrap(), 1, "only the still-active key of that name");
    assert_eq!(store.revoke_key("ci").await.unwrap(), 0);
    assert!(store.list_keys().await.unwrap().iter().all(|k| k.revoked_ms.is_some()));

    if store.dialect() == "sqlite" {
        let out = temp_dir().join("backup.db");
        store.backup(&out).await.unwrap();
        let copy = open(&format!("sqlite://{}", out.display()));
        assert_eq!(copy.audit_count().await.unwrap(), 2500, "the backup is a full, consistent copy");
    }

    // A NUL in client text (PostgreSQL refuses it in text columns) neither
    // fails the batch nor is lost: it is kept as U+FFFD, in both dialects.
    let mut nul = record("nul", "groq", (1, 1), None, now);
    nul.prompt = Some("user: a\0b".into());
    nul.user_id = Some("u\0".into());
    // Beside it, a row with every field set reads back exactly as written.
    let full = AuditRecord {
        key_id: Some("k1".into()),
        client_addr: Some("127.0.0.1".into()),
        user_id: Some("user-7".into()),
        conversation_id: Some("c-9".into()),
        status: 502,
        error_kind: Some("upstream_error".into()),
        attempts: r#"[{"provider":"groq","outcome":"timeout","latency_ms":12.5}]"#.into(),
        latency_ms: 12.75,
        upstream_ms: 12.5,
        overhead_ms: 0.25,
        streamed: true,
        cancelled: true,
        prompt: Some("user: \"quoted\" \\ é 😀\n".into()),
        response: Some("partial".into()),
        metadata: Some(r#"{"team":"a"}"#.into()),
        ..record("beside-nul", "groq", (3, 4), Some(1.5e-5), now)
    };
    assert_eq!(store.insert_audit(&[nul, full.clone()]).await.unwrap(), 2, "the whole batch goes in");
    let read = store.audit_by_request("req-nul").await.unwrap().remove(0);
    assert_eq!((read.prompt.as_deref(), read.user_id.as_deref()), (Some("user: a\u{fffd}b"), Some("u\u{fffd}")));
    assert_eq!(store.audit_by_request("req-beside-nul").await.unwrap(), vec![full.clone()]);

    // A batch that spans multi-row statements and single-row ones (SQLite
    // inserts 16 rows a statement), with stored rows, an id repeated within
    // one statement and one repeated across statements: each new id counts
    // once, and each row reads back whole.
    let fresh = |i: usize| record(&format!("m{i:02}"), "groq", (1, 2), None, now);
    let mut mixed: Vec<_> = more[..10].to_vec();
    mixed.extend((0..16).map(fresh));
    mixed.extend([fresh(3), fresh(7)]);
    mixed.extend_from_slice(&more[10..19]);
    assert_eq!(mixed.len(), 37);
    assert_eq!(store.insert_audit(&mixed).await.unwrap(), 16);
    assert_eq!(store.audit_count().await.unwrap(), 2500 + 2 + 16);

    // The audit writer's records (each reaches its queue once) go in by
    // `insert_fresh`: by COPY on PostgreSQL. Every field reads back as
    // written, NULLs and extremes included; a batch holding a row that is
    // stored already goes in all the same, that row skipped (counted once,
    // stored once).
    let copied = AuditRecord {
        id: "copied".into(),
        request_id: "req-copied".into(),
        tokens_in: i64::MAX,
        tokens_out: -1,
        cost_usd: Some(0.0),
        prompt: Some(String::new()),
        ..full.clone()
    };
    let bare = AuditRecord { attempts: String::new(), ..record("copied-bare", "x", (0, 0), None, now - 1) };
    let bare = AuditRecord { provider: None, model: None, agent: None, ..bare };
    assert_eq!(store.insert_fresh(&[copied.borrowed(), bare.borrowed()]).await.unwrap(), 2);
    assert_eq!(store.audit_by_request("req-copied").await.unwrap(), vec![copied.clone()]);
    assert_eq!(store.audit_by_request("req-copied-bare").await.unwrap(), vec![bare.clone()]);
    let later = record("copied-later", "groq", (1, 1), None, now);
    assert_eq!(store.insert_fresh(&[later.borrowed(), bare.borrowed()]).await.unwrap(), 1, "the stored row is skipped");
    assert_eq!(store.insert_fresh(&[]).await.unwrap(), 0);
    assert_eq!(store.audit_by_request("req-copied-bare").await.unwrap(), vec![bare]);
    assert_eq!(store.audit_by_request("req-copied-later").await.unwrap(), vec![later]);
    assert_eq!(store.audit_count().await.unwrap(), 2500 + 2 + 16 + 3);
    assert_eq!(store.audit_by_request("req-m15").await.unwrap(), vec![fresh(15)]);

    // By request id: a row whose id is its request id (Squad made it: a
    // UUIDv7 of the row's time) and rows whose request id a client chose,
    // even one equal to such an id.
    let own_id = uuid::Builder::from_unix_timestamp_millis((now - 20) as u64, &[7; 10]).into_uuid().to_string();
    let own = AuditRecord { request_id: own_id.clone(), ..record(&own_id, "groq", (1, 1), None, now - 20) };
    let reused = AuditRecord { request_id: own_id.clone(), ..record("reuse-1", "groq", (1, 1), None, now - 10) };
    let twice = [("dup-a", now - 5), ("dup-b", now - 4)]
        .map(|(id, ts)| AuditRecord { request_id: "dup".into(), ..record(id, "groq", (1, 1), None, ts) });
    store.insert_audit(&[reused.clone(), own.clone()]).await.unwrap();
    store.insert_audit(&twice).await.unwrap();
    assert_eq!(store.audit_by_request(&own_id).await.unwrap(), vec![own, reused], "both, oldest first");
    assert_eq!(store.audit_by_request("dup").await.unwrap(), twice.to_vec());
    assert_eq!(store.audit_by_request("reuse-1").await.unwrap(), vec![], "a record id alone is not a request id");

    // A request id a client reused on many requests reads back page by
    // page, every row once, oldest first (ties in time broken by id).
    let reused: Vec<_> = (0..1500)
        .map(|i| AuditRecord {
            request_id: "static-id".into(),
            ..record(&format!("s{i:04}"), "groq", (1, 1), None, now + i / 3)
        })
        .collect();
    for chunk in reused.chunks(500) {
        store.insert_audit(chunk).await.unwrap();
    }
    let mut paged = Vec::new();
    loop {
        let after = paged.last().map(|r: &AuditRecord| (r.ts_ms, r.id.clone()));
        let page = store.audit_by_request_page("static-id", after, 700).await.unwrap();
        assert!(page.len() <= 700);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, reused, "three pages: 700, 700, 100");
    assert_eq!(store.audit_by_request("static-id").await.unwrap(), reused);

    // A data subject's rows: exported by user id (of one key: another key's
    // "ana" is someone else), then their personal data erased while the
    // accounting stays.
    let personal = |id: &str, key: &str, user: &str, ts_ms: i64| AuditRecord {
        key_id: Some(key.into()),
        user_id: Some(user.into()),
        prompt: Some(format!("{user} says hi")),
        response: Some("hello".into()),
        metadata: Some(r#"{"ticket":7}"#.into()),
        client_addr: Some("203.0.113.9".into()),
        conversation_id: Some("c1".into()),
        ..record(id, "deepseek", (7, 3), Some(0.25), ts_ms)
    };
    // u1 and u2 in the same millisecond: the page cursor goes on by id.
    let subject = vec![
        personal("u1", "k1", "ana", now - 50),
        personal("u2", "k1", "ana", now - 50),
        personal("u3", "k1", "bob", now - 30),
        personal("u4", "k2", "ana", now - 30),
    ];
    store.insert_audit(&subject).await.unwrap();
    let ana = Subject { user_id: "ana", key_id: Some("k1") };
    let first = store.audit_by_user_page(&ana, None, 1).await.unwrap();
    let second = store.audit_by_user_page(&ana, Some((first[0].ts_ms, first[0].id.clone())), 1).await.unwrap();
    let rest = store.audit_by_user_page(&ana, Some((second[0].ts_ms, second[0].id.clone())), 1).await.unwrap();
    assert_eq!((first, second, rest), (vec![subject[0].clone()], vec![subject[1].clone()], vec![]));
    assert_eq!(store.audit_user_count(&ana).await.unwrap(), 2);
    let any_ana = Subject { user_id: "ana", key_id: None };
    assert_eq!(store.audit_user_count(&any_ana).await.unwrap(), 3, "every key's ana");
    let before = store.usage(now - 50, now - 29, GroupBy::Provider).await.unwrap();
    assert!(before.iter().any(|u| u.group == "deepseek" && u.requests == 4), "{before:?}");
    assert_eq!(store.erase_user(&ana).await.unwrap(), 2);
    assert_eq!(store.erase_user(&ana).await.unwrap(), 0, "nothing left to erase");
    assert!(store.audit_by_user_page(&ana, None, 10).await.unwrap().is_empty());
    let erased = store.audit_by_request("req-u1").await.unwrap();
    let kept = AuditRecord {
        user_id: None,
        prompt: None,
        response: None,
        metadata: None,
        client_addr: None,
        conversation_id: None,
        ..subject[0].clone()
    };
    assert_eq!(erased, vec![kept], "the accounting stays, the personal data goes");
    let untouched = |user, key| Subject { user_id: user, key_id: Some(key) };
    assert_eq!(store.audit_by_user_page(&untouched("bob", "k1"), None, 10).await.unwrap(), vec![subject[2].clone()]);
    assert_eq!(store.audit_by_user_page(&untouched("ana", "k2"), None, 10).await.unwrap(), vec![subject[3].clone()]);
    assert_eq!(store.usage(now - 50, now - 29, GroupBy::Provider).await.unwrap(), before, "usage unchanged");
    assert_eq!(store.insert_audit(&subject[..1]).await.unwrap(), 0, "a replay does not bring the content back");
    assert_eq!(store.insert_fresh(&[subject[1].borrowed()]).await.unwrap(), 0, "nor does the writer's bulk path");
    assert_eq!(store.audit_by_request("req-u2").await.unwrap()[0].prompt, None);
}

#[tokio::test]
async fn store_suite_on_sqlite() {
    store_suite(&sqlite_url(&temp_dir())).await;
}

/// SQLite stores NaN as NULL; the insert skips conflicting ids silently, so
/// a NaN in a NOT NULL column must fail the batch, not vanish from it.
#[tokio::test]
async fn a_nan_in_a_sqlite_batch_fails_it_loudly() {
    let store = open(&sqlite_url(&temp_dir()));
    store.migrate().await.unwrap();
    let mut bad = record("nan", "groq", (1, 1), None, 1_000);
    bad.latency_ms = f64::NAN;
    let good = record("fine", "groq", (1, 1), None, 1_000);
    let err = store.insert_audit(&[good.clone(), bad]).await.unwrap_err();
    assert!(err.to_string().contains("NaN"), "{err}");
    assert_eq!(store.audit_count().await.unwrap(), 0, "the whole batch was rolled back");
    assert_eq!(store.insert_audit(&[good]).await.unwrap(), 1, "the writer's connection works after the failure");
}

/// The SQLite insert is `INSERT OR IGNORE`, which skips a row that breaks
/// any constraint, not only a duplicate: the table must have no other than
/// its unique `(ts_ms, id)` (a CHECK, another UNIQUE or a foreign key would
/// make rows vanish silently).
#[tokio::test]
async fn the_sqlite_audit_table_has_no_constraint_but_time_and_id() {
    let url = sqlite_url(&temp_dir());
    open(&url).migrate().await.unwrap();
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let (table,): (String,) =
        sqlx::query_as("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'audit_log'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    let upper = table.to_uppercase();
    for word in ["CHECK", "UNIQUE", "REFERENCES", "PRIMARY KEY"] {
        assert!(!upper.contains(word), "audit_log has a {word} constraint: {table}");
    }
    let unique: Vec<(String,)> = sqlx::query_as("SELECT name FROM pragma_index_list('audit_log') WHERE \"unique\" = 1")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(unique, vec![("audit_log_time".to_owned(),)], "one unique index");
    let columns: Vec<(String,)> = sqlx::query_as("SELECT name FROM pragma_index_info('audit_log_time') ORDER BY seqno")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(columns, vec![("ts_ms".to_owned(),), ("id".to_owned(),)]);
}

/// The PostgreSQL audit table after migration 0004: no primary key, one
/// unique index, on `(ts_ms, id)` (what `ON CONFLICT` names), and ids that
/// compare bytewise, as SQLite's do.
#[tokio::test]
async fn the_postgres_audit_table_has_one_unique_index_on_time_and_id() {
    let Some(url) = pg_database("the_postgres_audit_table_has_one_unique_index_on_time_and_id").await else { return };
    open(&url).migrate().await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let unique: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = 'audit_log'::regclass AND i.indisunique",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(unique.len(), 1, "one unique index: {unique:?}");
    assert_eq!(unique[0].0, "audit_log_time");
    assert!(unique[0].1.ends_with("USING btree (ts_ms, id)"), "{unique:?}");
    let (keys,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM pg_constraint WHERE conrelid = 'audit_log'::regclass AND contype = 'p'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(keys, 0, "no primary key");
    let collations: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT column_name::text, collation_name::text FROM information_schema.columns \
         WHERE table_name = 'audit_log' AND column_name IN ('id', 'request_id') ORDER BY column_name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(collations, vec![("id".into(), Some("C".into())), ("request_id".into(), Some("C".into()))]);
    pool.close().await;
    drop_pg(&url).await;
}

/// Applies the dialect's migrations before 0004 to a new store at `url`.
async fn migrate_before_0004(url: &str) {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let before = sqlx::migrate!("./migrations/postgres").iter().filter(|m| m.version < 4).cloned().collect();
        sqlx::migrate::Migrator::with_migrations(before).run(&pool).await.unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc")).await.unwrap();
        let before = sqlx::migrate!("./migrations/sqlite").iter().filter(|m| m.version < 4).cloned().collect();
        sqlx::migrate::Migrator::with_migrations(before).run(&pool).await.unwrap();
        pool.close().await;
    }
}

/// Migration 0004 trades an existing audit table's primary key and time
/// index for one unique index on `(ts_ms, id)` (SQLite rebuilds the table,
/// whose primary key cannot be dropped in place; PostgreSQL rebuilds only
/// the indexes): every row survives as it was, a replay of them adds
/// nothing, and rows written before a record's time was its id's time are
/// still found by request id.
#[tokio::test]
async fn an_old_audit_table_keeps_every_row_through_migration_0004() {
    for url in databases("an_old_audit_table_keeps_every_row_through_migration_0004").await {
        migrate_before_0004(&url).await;

        let v7 = |ms: u64, n: u8| uuid::Builder::from_unix_timestamp_millis(ms, &[n; 10]).into_uuid().to_string();
        let ms = 1_780_000_000_000_u64;
        // Squad made the request id; the record's clock read came 3 ms later.
        let mut squads = record(&v7(ms, 1), "groq", (1, 2), Some(0.1), ms as i64 + 3);
        squads.request_id = squads.id.clone();
        // A client's request id, used twice.
        let mut first = record(&v7(ms + 10, 2), "groq", (1, 2), None, ms as i64 + 10);
        first.request_id = "client-1".into();
        let mut second = record(&v7(ms + 20, 3), "gemini", (3, 4), None, ms as i64 + 20);
        second.request_id = "client-1".into();
        let rows = vec![squads.clone(), first.clone(), second.clone()];
        let store = open(&url);
        // Today's insert against yesterday's table (a Squad whose migration
        // has not run yet): it writes, and skips a replay there too.
        assert_eq!(store.insert_audit(&rows).await.unwrap(), 3, "{url}");
        assert_eq!(store.insert_audit(&rows).await.unwrap(), 0, "a replay adds nothing before 0004: {url}");
        store.close().await;

        let store = open(&url);
        store.migrate().await.unwrap();
        assert_eq!(store.audit_page(i64::MIN, i64::MAX, None, 10).await.unwrap(), rows, "every row, as it was: {url}");
        assert_eq!(store.insert_audit(&rows).await.unwrap(), 0, "a replay adds nothing: {url}");
        assert_eq!(store.audit_by_request(&squads.id).await.unwrap(), vec![squads.clone()], "{url}");
        assert_eq!(store.audit_by_request("client-1").await.unwrap(), vec![first, second], "{url}");
        // Beyond the slack, an id's time no longer finds the row.
        let mut far = squads;
        far.id = v7(ms + 100_000, 4);
        far.request_id = far.id.clone();
        far.ts_ms = ms as i64 + 100_000 + 1_001;
        assert_eq!(store.insert_audit(std::slice::from_ref(&far)).await.unwrap(), 1, "{url}");
        assert!(store.audit_by_request(&far.id).await.unwrap().is_empty(), "{url}");
        store.close().await;
        drop_pg(&url).await;
    }
}

#[tokio::test]
async fn store_suite_on_postgres() {
    let Some(url) = pg_database("store_suite_on_postgres").await else { return };
    store_suite(&url).await;
    drop_pg(&url).await;
}

/// A gateway in front of the simulated upstream, auditing into `db_url`.
async fn audited(db_url: &str, dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> Gateway {
    let (mock_app, _) = squad::mock::router(squad::mock::MockOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, mock_app).await });
    let mut config = Config::default();
    let mut secrets = squad::app::Secrets::default();
    squad::app::demo_overrides(&mut config, &mut secrets, addr);
    config.limits.enabled = false;
    config.database.url = db_url.to_owned();
    config.database.connect_timeout = Duration::from_millis(500);
    config.audit.journal_dir = dir.join("journal");
    config.audit.replay_interval = Duration::from_millis(200);
    tweak(&mut config);
    gateway_with(config, secrets).await
}

/// One plain chat with this request id.
async fn chat_as(gw: &Gateway, id: &str) -> reqwest::Response {
    gw.client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-request-id", id)
        .json(&json!({"model": "groq/openai/gpt-oss-20b", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
}

/// N concurrent requests of every kind → exactly N rows with the right fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_leaves_exactly_one_audit_row() {
    for url in databases("every_request_leaves_exactly_one_audit_row").await {
        let dir = temp_dir();
        let gw = Arc::new(audited(&url, &dir, |_| {}).await);
        let mut tasks = Vec::new();
        for i in 0..120 {
            let gw = gw.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("load-{i}");
                let req = match i % 4 {
                    0 => gw.client.post(format!("{}/v1/chat/completions", gw.url)).json(&json!({
                        "model": "groq/openai/gpt-oss-20b", "messages": [{"role": "user", "content": "mail bob@example.com, card 4111 1111 1111 1111"}]})),
                    1 => gw.client.post(format!("{}/v1/agents/dev", gw.url)).json(&json!({
                        "prompt": "review this", "user_id": "u1", "conversation_id": format!("c{i}"), "metadata": {"team": "a"}})),
                    2 => gw.client.post(format!("{}/v1/chat/completions", gw.url)).json(&json!({
                        "model": "gemini/gemini-3.5-flash", "stream": true, "messages": [{"role": "user", "content": "hi"}]})),
                    _ => gw.client.post(format!("{}/v1/chat/completions", gw.url)).json(&json!({
                        "model": "nope/nothing", "messages": [{"role": "user", "content": "hi"}]})),
                };
                let resp = req.header("x-request-id", &id).send().await.unwrap();
                let status = resp.status().as_u16();
                let _ = resp.bytes().await.unwrap();
                (id, status)
            }));
        }
        let mut sent = Vec::new();
        for t in tasks {
            sent.push(t.await.unwrap());
        }
        let gw = Arc::into_inner(gw).unwrap();
        gw.shutdown().await;

        let store = open(&url);
        assert_eq!(store.audit_count().await.unwrap(), 120, "{url}");
        for (id, status) in &sent {
            let rows = store.audit_by_request(id).await.unwrap();
            assert_eq!(rows.len(), 1, "{id}");
            let r = &rows[0];
            assert_eq!(r.status, i64::from(*status), "{id}");
            assert!(r.latency_ms > 0.0 && r.overhead_ms >= 0.0 && r.upstream_ms <= r.latency_ms + 0.001, "{r:?}");
            assert_eq!(r.client_addr.as_deref(), Some("127.0.0.1"));
            assert_eq!(squad::store::uuid7_ms(&r.id), Some(r.ts_ms), "a record's time is its id's: {r:?}");
            let n: usize = id.trim_start_matches("load-").parse().unwrap();
            match n % 4 {
                0 => {
                    assert_eq!(r.status, 200);
                    assert_eq!((r.provider.as_deref(), r.model.as_deref()), (Some("groq"), Some("openai/gpt-oss-20b")));
                    assert!(r.tokens_in > 0 && r.tokens_out > 0, "{r:?}");
                    assert!(r.cost_usd.unwrap() > 0.0, "built-in price for groq/openai/gpt-oss-20b");
                    let attempts: Value = serde_json::from_str(&r.attempts).unwrap();
                    assert_eq!(attempts[0]["outcome"], "ok");
                    let prompt = r.prompt.as_deref().unwrap();
                    assert_eq!(prompt, "user: mail [EMAIL], card [CARD]", "content is redacted by default");
                    assert!(!r.streamed && !r.cancelled);
                }
                1 => {
                    assert_eq!(r.route, "/v1/agents/{agent}");
                    assert_eq!(r.agent.as_deref(), Some("dev"));
                    assert_eq!(r.user_id.as_deref(), Some("u1"));
                    assert_eq!(r.conversation_id.as_deref(), Some(format!("c{n}").as_str()));
                    assert_eq!(r.metadata.as_deref(), Some(r#"{"team":"a"}"#));
                    assert!(r.tokens_out > 0);
                }
                2 => {
                    assert!(r.streamed && !r.cancelled, "{r:?}");
                    assert_eq!(r.provider.as_deref(), Some("gemini"));
                    assert!(r.tokens_out > 0, "stream usage captured: {r:?}");
                    assert!(r.response.is_some());
                }
                _ => {
                    assert_eq!(r.status, 404);
                    assert_eq!(r.error_kind.as_deref(), Some("model_not_found"));
                    assert_eq!(r.attempts, "[]", "no provider was tried");
                }
            }
        }
        store.close().await;
        drop_pg(&url).await;
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `audit.content: hash` keeps a SHA-256 of the prompt; `none` keeps nothing.
#[tokio::test]
async fn content_modes() {
    for (mode, expect_some) in [(squad::config::AuditContent::Hash, true), (squad::config::AuditContent::None, false)] {
        let dir = temp_dir();
        let url = sqlite_url(&dir);
        let gw = audited(&url, &dir, |c| c.audit.content = mode).await;
        let resp = chat_as(&gw, "content-1").await;
        assert_eq!(resp.status(), 200);
        gw.shutdown().await;
        let row = open(&url).audit_by_request("content-1").await.unwrap().remove(0);
        assert_eq!(row.prompt.is_some(), expect_some);
        if let Some(p) = row.prompt {
            assert_eq!(p, format!("sha256:{}", keys::hash_key("user: hi")));
        }
    }
}

/// User-defined patterns are redacted in audit rows like built-in types.
#[tokio::test]
async fn user_patterns_are_redacted_in_audit_rows() {
    let dir = temp_dir();
    let url = sqlite_url(&dir);
    let gw = audited(&url, &dir, |c| {
        c.pii.patterns =
            vec![squad::config::PiiPattern { name: "EMPLOYEE_ID".into(), regex: r"\bEMP-[0-9]{6}\b".into() }];
    })
    .await;
    let resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-request-id", "pattern-1")
        .json(&json!({"model": "groq/openai/gpt-oss-20b", "messages": [{"role": "user", "content": "who is EMP-123456?"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    gw.shutdown().await;
    let row = open(&url).audit_by_request("pattern-1").await.unwrap().remove(0);
    assert_eq!(row.prompt.as_deref(), Some("user: who is [EMPLOYEE_ID]?"));
    let _ = std::fs::remove_dir_all(dir);
}

/// A client that goes away mid-stream leaves a row marked cancelled.
#[tokio::test]
async fn a_cancelled_stream_is_recorded_as_cancelled() {
    let dir = temp_dir();
    let url = sqlite_url(&dir);
    let (mock_app, _) = squad::mock::router(squad::mock::MockOptions { tokens_per_second: 5.0, ..Default::default() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, mock_app).await });
    let mut config = Config::default();
    let mut secrets = squad::app::Secrets::default();
    squad::app::demo_overrides(&mut config, &mut secrets, addr);
    config.database.url = url.clone();
    config.audit.journal_dir = dir.join("journal");
    let gw = gateway_with(config, secrets).await;
    let mut resp = gw
        .client
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-request-id", "cancel-1")
        .json(&json!({"model": "groq/openai/gpt-oss-20b", "stream": true, "messages": [{"role": "user", "content": "a long story please"}]}))
        .send()
        .await
        .unwrap();
    assert!(resp.chunk().await.unwrap().is_some());
    drop(resp);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.shutdown().await;
    let row = open(&url).audit_by_request("cancel-1").await.unwrap().remove(0);
    assert!(row.cancelled && row.streamed, "{row:?}");
}

/// SQLite locked by another writer (the database is "down" for us):
/// requests keep succeeding; once it is free, every row arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outage_requests_succeed_and_rows_arrive_after() {
    let dir = temp_dir();
    let url = sqlite_url(&dir);
    let gw = audited(&url, &dir, |c| c.database.connect_timeout = Duration::from_millis(200)).await;
    let send = async |id: String| chat_as(&gw, &id).await.status();
    for i in 0..10 {
        assert_eq!(send(format!("before-{i}")).await, 200);
    }
    // Another process holds the write lock.
    let locker = sqlx::sqlite::SqliteConnectOptions::new().filename(dir.join("squad.db"));
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect_with(&locker).await.unwrap();
    sqlx::query("BEGIN EXCLUSIVE").execute(&mut conn).await.unwrap();
    let started = std::time::Instant::now();
    for i in 0..40 {
        assert_eq!(send(format!("during-{i}")).await, 200, "chat goes on while the database is away");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "requests were not held up by the database");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Segments holding records (the prepared spare is all zeros).
    let holding = std::fs::read_dir(dir.join("journal"))
        .unwrap()
        .filter(|e| std::fs::read(e.as_ref().unwrap().path()).unwrap().iter().any(|&b| b != 0))
        .count();
    assert!(holding > 0, "records wait in the journal");
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
    drop(conn);
    for i in 0..10 {
        assert_eq!(send(format!("after-{i}")).await, 200);
    }
    let store = open(&url);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.audit_count().await.unwrap_or(0) < 60 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.shutdown().await;
    assert_eq!(store.audit_count().await.unwrap(), 60, "every record once, none twice");
    for prefix in ["before", "during", "after"] {
        for i in 0..10 {
            assert_eq!(store.audit_by_request(&format!("{prefix}-{i}")).await.unwrap().len(), 1);
        }
    }
    assert_eq!(std::fs::read_dir(dir.join("journal")).unwrap().count(), 0, "the journal is empty once all is written");
}

/// A TCP proxy in front of PostgreSQL that can be cut (connections dropped,
/// new ones refused) and restored: an outage without stopping the shared server.
struct Cuttable {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    epoch: Arc<std::sync::atomic::AtomicU64>,
}

impl Cuttable {
    async fn start(target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (up2, epoch2) = (up.clone(), epoch.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let born = epoch2.load(Ordering::SeqCst);
                let epoch3 = epoch2.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while epoch3.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, () = cut => {} }
                });
            }
        });
        Self { port, up, epoch }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_requests_succeed_and_rows_arrive_after() {
    let Some(url) = pg_database("postgres_outage_requests_succeed_and_rows_arrive_after").await else { return };
    let (prefix, db) = url.rsplit_once('/').unwrap();
    let authority = prefix.rsplit_once('@').map(|(_, h)| h).unwrap_or(prefix.trim_start_matches("postgres://"));
    let target = tokio::net::lookup_host(authority).await.unwrap().next().unwrap();
    let proxy = Cuttable::start(target).await;
    let user = prefix.trim_start_matches("postgres://").rsplit_once('@').map(|(u, _)| u).unwrap_or("postgres");
    let proxied = format!("postgres://{user}@127.0.0.1:{}/{db}", proxy.port);
    let dir = temp_dir();
    let gw = audited(&proxied, &dir, |c| {
        c.database.pool_min = Some(1);
        c.database.connect_timeout = Duration::from_millis(300);
    })
    .await;
    let send = async |id: String| chat_as(&gw, &id).await.status();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(format!("pg-before-{i}"));
        assert_eq!(send(ids.last().unwrap().clone()).await, 200);
    }
    proxy.cut();
    for i in 0..40 {
        ids.push(format!("pg-during-{i}"));
        assert_eq!(send(ids.last().unwrap().clone()).await, 200, "chat goes on while PostgreSQL is away");
    }
    let health: Value = gw.get("/health").await.json().await.unwrap();
    assert_eq!(health["components"]["database"]["status"], "down", "{health}");
    proxy.restore();
    for i in 0..20 {
        ids.push(format!("pg-after-{i}"));
        assert_eq!(send(ids.last().unwrap().clone()).await, 200);
    }
    let store = open(&url);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while store.audit_count().await.unwrap() < 80 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.shutdown().await;
    assert_eq!(store.audit_count().await.unwrap(), 80, "every record once, none twice");
    for id in &ids {
        assert_eq!(store.audit_by_request(id).await.unwrap().len(), 1, "{id}");
    }
    store.close().await;
    drop_pg(&url).await;
}

/// A start-up migration slower than `database.connect_timeout` is not cut
/// off: cut off between PostgreSQL's `pg_advisory_lock` and its unlock, it
/// left the lock with a pooled connection, and the audit writer's own
/// migration (on another connection) waited until the pool reaped that
/// connection, 20 minutes later (this test, in CI, once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_up_migration_does_not_strand_the_migration_lock() {
    let Some(url) = pg_database("a_slow_start_up_migration_does_not_strand_the_migration_lock").await else { return };
    let migrated = open(&url);
    migrated.migrate().await.unwrap();
    migrated.close().await;
    // Another session holds the migrations table: the next migration takes
    // the advisory lock, then waits for the table.
    let mut blocker = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE").execute(&mut blocker).await.unwrap();
    let dir = temp_dir();
    let gw = audited(&url, &dir, |c| c.database.connect_timeout = Duration::from_millis(300)).await;
    assert_eq!(chat_as(&gw, "slow-migration-1").await.status(), 200);
    // The writer tries to migrate before writing the row (it flushes within 200 ms).
    tokio::time::sleep(Duration::from_millis(700)).await;
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
    let flushed = tokio::time::timeout(Duration::from_secs(20), gw.shutdown()).await;
    assert!(flushed.is_ok(), "the audit writer is still waiting for the migration lock");
    let store = open(&url);
    assert_eq!(store.audit_by_request("slow-migration-1").await.unwrap().len(), 1);
    store.close().await;
    drop_pg(&url).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A database statement still hanging at shutdown (here a `COPY` waiting on
/// a lock another session holds on the audit table) is cut off at
/// `audit.shutdown_timeout`: shutdown ends on time instead of waiting on the
/// database, the record stays in the journal, and the next start writes it,
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_waiting_on_a_hung_database_at_the_shutdown_timeout() {
    use sqlx::Connection;
    let Some(url) = pg_database("shutdown_stops_waiting_on_a_hung_database_at_the_shutdown_timeout").await else {
        return;
    };
    let dir = temp_dir();
    let gw = audited(&url, &dir, |c| c.audit.shutdown_timeout = Duration::from_secs(1)).await;
    // `audited` waits for the start-up migration only so long; the table must be there.
    open(&url).migrate().await.unwrap();
    let mut blocker = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE audit_log IN EXCLUSIVE MODE").execute(&mut blocker).await.unwrap();
    assert_eq!(chat_as(&gw, "hung-1").await.status(), 200);
    // The writer flushes within 200 ms; its `COPY` then waits on the lock.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    gw.shutdown().await;
    let took = started.elapsed();
    sqlx::raw_sql("ROLLBACK").execute(&mut blocker).await.unwrap();
    blocker.close().await.unwrap();
    assert!(took >= Duration::from_millis(900), "shutdown did not wait for the write at all: {took:?}");
    assert!(took < Duration::from_secs(6), "shutdown waited on the hung database: {took:?}");
    let store = open(&url);
    assert!(store.audit_by_request("hung-1").await.unwrap().is_empty(), "the cut-off COPY was rolled back");
    store.close().await;

    let again = audited(&url, &dir, |_| {}).await;
    again.shutdown().await;
    let store = open(&url);
    assert_eq!(store.audit_by_request("hung-1").await.unwrap().len(), 1, "replayed from the journal, once");
    store.close().await;
    drop_pg(&url).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A rollback: a build starts on a database that a newer build migrated
/// further (here, a migration this build does not have is recorded as
/// applied). It migrates (nothing to do), writes and reads audit rows; it
/// used to refuse the database, and then never wrote an audit row nor
/// reloaded the API keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_a_newer_build_migrated_further_is_used_as_it_is() {
    use sqlx::Connection;
    for url in databases("a_database_a_newer_build_migrated_further_is_used_as_it_is").await {
        let store = open(&url);
        store.migrate().await.unwrap();
        store.close().await;
        let future = "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                      VALUES (99991231000000, 'from a newer squad', TRUE, $1, 1)";
        if url.starts_with("postgres") {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(future).bind(vec![0u8; 48]).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        } else {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(future).bind(vec![0u8; 48]).execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
        }
        let older = open(&url);
        older.migrate().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let row = record("rollback-1", "groq", (3, 4), None, now_ms());
        older.insert_audit(std::slice::from_ref(&row)).await.unwrap();
        assert_eq!(older.audit_by_request("req-rollback-1").await.unwrap().len(), 1, "{url}");
        older.close().await;
        if url.starts_with("postgres") {
            drop_pg(&url).await;
        }
    }
}

/// When even the journal cannot be written: `reject` answers 503, `allow`
/// serves and still gets the row to the database through the queue.
#[tokio::test]
async fn an_unwritable_journal_follows_the_failure_policy() {
    for policy in [AuditFailurePolicy::Reject, AuditFailurePolicy::Allow] {
        let dir = temp_dir();
        let url = sqlite_url(&dir);
        std::fs::write(dir.join("blocker"), b"a file, not a directory").unwrap();
        let gw = audited(&url, &dir, |c| {
            c.audit.on_failure = policy;
            c.audit.journal_dir = dir.join("blocker").join("journal");
        })
        .await;
        let resp = chat_as(&gw, "unjournaled-1").await;
        match policy {
            AuditFailurePolicy::Reject => {
                assert_eq!(resp.status(), 503);
                assert_error_body(&resp.json().await.unwrap(), "audit_unavailable");
            }
            AuditFailurePolicy::Allow => {
                assert_eq!(resp.status(), 200);
                let metrics = gw.get("/metrics").await.text().await.unwrap();
                assert!(metrics.contains("squad_audit_failures_total{stage=\"journal\"}"), "{metrics}");
                gw.shutdown().await;
                let rows = open(&url).audit_by_request("unjournaled-1").await.unwrap();
                assert_eq!(rows.len(), 1, "the queue still delivered it");
            }
        }
    }
}

/// Keys: missing / invalid / expired / revoked → 401; scope → 403; admin
/// routes; open health and metrics; and the secret never appears in rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_end_to_end() {
    for url in databases("api_keys_end_to_end").await {
        let dir = temp_dir();
        let store = open(&url);
        store.migrate().await.unwrap();
        let make = |name: &str, agents: Option<Vec<&str>>, admin: bool, expires_ms: Option<i64>, rpm: Option<i64>| {
            keys::generate(KeySpec {
                name: name.into(),
                agents: agents.map(|a| a.into_iter().map(str::to_owned).collect()),
                rpm,
                tpm: None,
                expires_ms,
                admin,
            })
            .unwrap()
        };
        let full = make("full", None, false, None, None);
        let dev_only = make("dev-only", Some(vec!["dev"]), false, None, None);
        let admin = make("admin", None, true, None, None);
        let expires_at = now_ms() + 1500;
        let expired = make("old", None, false, Some(expires_at), None);
        let revoked = make("gone", None, false, None, None);
        let slow = make("slow", None, false, None, Some(2));
        for k in [&full, &dev_only, &admin, &expired, &revoked, &slow] {
            store.insert_key(&k.key).await.unwrap();
        }
        let gw = audited(&url, &dir, |c| {
            c.auth.mode = AuthMode::Required;
            c.auth.refresh_interval = Duration::from_millis(200);
            c.limits.enabled = true;
        })
        .await;
        let chat = |key: Option<&str>, model: &str| {
            let mut req = gw
                .client
                .post(format!("{}/v1/chat/completions", gw.url))
                .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            req.send()
        };
        let model = "groq/openai/gpt-oss-20b";

        assert_eq!(chat(Some(&expired.secret), model).await.unwrap().status(), 200, "not expired yet");
        let resp = chat(None, model).await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_error_body(&resp.json().await.unwrap(), "missing_api_key");
        // The right id with one character of the secret changed (always a change).
        let (head, last) = full.secret.split_at(full.secret.len() - 1);
        let tampered = format!("{head}{}", if last == "0" { "1" } else { "0" });
        for bad in ["nonsense", "sqd_000000000000_".to_string().as_str(), &tampered] {
            let resp = chat(Some(bad), model).await.unwrap();
            assert_eq!(resp.status(), 401, "{bad}");
            assert_error_body(&resp.json().await.unwrap(), "invalid_api_key");
        }
        let wrong_secret = format!("{}{}", &full.secret[..17], "0".repeat(64));
        assert_eq!(chat(Some(&wrong_secret), model).await.unwrap().status(), 401, "right id, wrong secret");

        assert_eq!(chat(Some(&full.secret), model).await.unwrap().status(), 200);
        let via_header = gw
            .client
            .post(format!("{}/v1/agents/pm", gw.url))
            .header("x-api-key", &full.secret)
            .json(&json!({"prompt": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(via_header.status(), 200, "x-api-key works too");

        // Scope: one agent only.
        assert_eq!(chat(Some(&dev_only.secret), "dev").await.unwrap().status(), 200);
        let resp = chat(Some(&dev_only.secret), "pm").await.unwrap();
        assert_eq!(resp.status(), 403);
        assert_error_body(&resp.json().await.unwrap(), "agent_not_allowed");
        assert_eq!(chat(Some(&dev_only.secret), model).await.unwrap().status(), 403, "no raw provider models");
        let resp = gw
            .client
            .post(format!("{}/v1/agents/analyst", gw.url))
            .bearer_auth(&dev_only.secret)
            .json(&json!({"prompt": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);

        // Admin route.
        let usage =
            |key: &str| gw.client.get(format!("{}/v1/usage?group_by=key", gw.url)).bearer_auth(key.to_owned()).send();
        let resp = usage(&full.secret).await.unwrap();
        assert_eq!(resp.status(), 403);
        assert_error_body(&resp.json().await.unwrap(), "admin_required");

        // Per-key rpm.
        let statuses: Vec<u16> = futures::future::join_all((0..4).map(|_| chat(Some(&slow.secret), model)))
            .await
            .into_iter()
            .map(|r| r.unwrap().status().as_u16())
            .collect();
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 2, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2, "{statuses:?}");

        // Expiry and revocation take effect without a restart.
        assert_eq!(chat(Some(&revoked.secret), model).await.unwrap().status(), 200);
        store.revoke_key(&revoked.key.id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let left = expires_at - now_ms();
        if left > 0 {
            tokio::time::sleep(Duration::from_millis(left as u64 + 50)).await;
        }
        let resp = chat(Some(&expired.secret), model).await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_error_body(&resp.json().await.unwrap(), "expired_api_key");
        let resp = chat(Some(&revoked.secret), model).await.unwrap();
        assert_eq!(resp.status(), 401);
        assert_error_body(&resp.json().await.unwrap(), "revoked_api_key");

        // A key created after start-up works at once: its unknown id triggers a
        // reload, at most once a second (the unknown ids above triggered one,
        // perhaps less than a second ago on a slow machine).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let late = make("late", None, false, None, None);
        store.insert_key(&late.key).await.unwrap();
        assert_eq!(chat(Some(&late.secret), model).await.unwrap().status(), 200);

        // Other API routes need a key; health and metrics do not.
        assert_eq!(gw.get("/v1/agents").await.status(), 401);
        assert_eq!(gw.get("/v1/models").await.status(), 401);
        assert_eq!(gw.get("/health").await.status(), 200);
        assert_eq!(gw.get("/health/ready").await.status(), 200);
        assert_eq!(gw.get("/metrics").await.status(), 200);

        // Usage, as the admin sees it, grouped by key.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let resp = usage(&admin.secret).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        let data = body["data"].as_array().unwrap();
        let full_row = data.iter().find(|r| r["group"] == full.key.id.as_str()).unwrap_or_else(|| panic!("{body}"));
        assert_eq!(full_row["requests"], 2, "{body}");
        assert!(full_row["tokens_output"].as_i64().unwrap() > 0);
        assert!(full_row["cost_usd"].as_f64().unwrap() > 0.0);
        let bad = gw.client.get(format!("{}/v1/usage?group_by=colour", gw.url)).bearer_auth(&admin.secret).send();
        assert_eq!(bad.await.unwrap().status(), 400);

        gw.shutdown().await;
        // Refusals are audited too, and no secret is ever stored.
        let mut after = None;
        let mut rows = Vec::new();
        loop {
            let page = store.audit_page(0, i64::MAX, after.clone(), 1000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some((last.ts_ms, last.id.clone()));
            rows.extend(page);
        }
        assert!(rows.iter().any(|r| r.status == 401 && r.error_kind.as_deref() == Some("missing_api_key")));
        assert!(rows.iter().any(|r| r.status == 403 && r.key_id.as_deref() == Some(dev_only.key.id.as_str())));
        let dump = serde_json::to_string(&rows).unwrap();
        for k in [&full, &dev_only, &admin, &expired, &revoked, &slow, &late] {
            assert!(!dump.contains(&k.secret[17..]), "a secret reached the audit rows");
        }
        store.close().await;
        drop_pg(&url).await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
