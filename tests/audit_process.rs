//! The audit guarantees as an operator meets them, with the real binary:
//! SIGKILL under load loses no record of an answered request, SIGTERM
//! flushes, and the `keys` / `audit` / `backup` commands.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::dialects::{Dialect, OpenAi};
use support::process::{export, serve, serve_with, squad, temp_dir, wait_exit};
use support::{Fake, Reply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_answered_request() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("fine", 5, 2))).await;
    let dir = temp_dir();
    let (mut child, url) = serve(&dir, &fake.url());

    let stop = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::new();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("kill-{w}-{i}");
                let resp = client
                    .post(format!("{url}/v1/chat/completions"))
                    .header("x-request-id", &id)
                    .json(&json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]}))
                    .send()
                    .await;
                let Ok(resp) = resp else { break };
                if resp.status() == 200 && resp.json::<Value>().await.is_ok() {
                    answered.push(id);
                }
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill().unwrap(); // SIGKILL: no flush, no shutdown hook.
    child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    let mut answered = Vec::new();
    for w in workers {
        answered.extend(w.await.unwrap());
    }
    assert!(answered.len() > 50, "the load ran ({} answered)", answered.len());

    // The restarted process replays the journal; SIGTERM then flushes.
    let (mut child, _) = serve(&dir, &fake.url());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut child).success());

    let rows = export(&dir);
    let ids: HashSet<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), rows.len(), "no record twice");
    let requests: HashSet<&str> = rows.iter().map(|r| r["request_id"].as_str().unwrap()).collect();
    assert_eq!(requests.len(), rows.len(), "no request twice");
    eprintln!("answered before SIGKILL: {}, audit rows after restart: {}", answered.len(), rows.len());
    let missing: Vec<&String> = answered.iter().filter(|id| !requests.contains(id.as_str())).collect();
    assert!(missing.is_empty(), "{} answered requests have no audit row: {missing:?}", missing.len());
    let journal = std::fs::read_dir(dir.join("squad-journal")).unwrap().count();
    assert_eq!(journal, 0, "a clean shutdown leaves an empty journal");
}

/// Every audit stage counter counts every record, with both serving threads
/// appending: N concurrent requests, then `/metrics` shows N journaled, N
/// queued and N written (the writer counts the first two in bulk, at most a
/// batch late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_stage_counters_count_every_record() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("fine", 5, 2))).await;
    let dir = temp_dir();
    let (mut child, url) = serve(&dir, &fake.url());
    let client = reqwest::Client::new();
    let n = 41;
    let requests = (0..n).map(|_| {
        client
            .post(format!("{url}/v1/chat/completions"))
            .json(&json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
    });
    for resp in futures::future::join_all(requests).await {
        assert_eq!(resp.unwrap().status(), 200);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
        if stage(&metrics, "written") >= n || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for name in ["journaled", "queued", "written"] {
        assert_eq!(stage(&metrics, name), n, "{name}: {metrics}");
    }
    assert_eq!(stage(&metrics, "replayed"), 0);
    support::process::stop(&mut child);
}

/// Records that miss a full queue wait in the journal and are replayed from
/// it, each once. The test holds a lock on the audit table while a burst of
/// requests arrives: the writer's first batch (20 records) waits on it, the
/// queue (20 more) fills and the rest miss it. When the lock goes, the writer
/// replays before it drains the queue, and every record must reach the
/// database by exactly one path: written through the queue + replayed =
/// journaled = N. (A replay that reread whole segments inserted the 20
/// records still queued, which the queue then wrote again.) Every request
/// has its row, once. On SQLite, and on PostgreSQL (where records from the
/// queue go by `COPY`) when `DATABASE_URL` is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_miss_the_queue_are_replayed_once_each() {
    use sqlx::Connection;
    let fake = Fake::start(Reply::json(200, OpenAi::completion("fine", 5, 2))).await;
    let mut stores = vec![None];
    stores.extend(support::pg_database("records_that_miss_the_queue_are_replayed_once_each").await.map(Some));
    for pg in stores {
        let what = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
        let dir = temp_dir();
        let database = pg.as_ref().map(|url| format!("database: {{ url: \"{url}\" }}\n")).unwrap_or_default();
        let extra = format!(
            "{database}auth: {{ mode: disabled }}\naudit: {{ batch_size: 20, queue_capacity: 20, replay_interval: 50ms }}"
        );
        let (mut child, url, logs) = serve_with(&dir, &fake.url(), &extra);
        std::thread::spawn(move || while logs.recv().is_ok() {});

        // Squad has migrated the store by now; writers wait on this lock.
        let lock: Box<dyn std::any::Any> = match &pg {
            Some(pg) => {
                let mut conn = sqlx::PgConnection::connect(pg).await.unwrap();
                sqlx::raw_sql("BEGIN; LOCK TABLE audit_log IN EXCLUSIVE MODE").execute(&mut conn).await.unwrap();
                Box::new(conn)
            }
            None => {
                let file = format!("sqlite://{}", dir.join("squad.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&file).await.unwrap();
                sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut conn).await.unwrap();
                Box::new(conn)
            }
        };
        let client = reqwest::Client::new();
        let n = 200;
        let requests = (0..n).map(|i| {
            client
                .post(format!("{url}/v1/chat/completions"))
                .header("x-request-id", format!("miss-{i}"))
                .json(&json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
        });
        for resp in futures::future::join_all(requests).await {
            assert_eq!(resp.unwrap().status(), 200, "{what}: answered while the table is locked");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(lock); // The connection closes: its transaction ends.

        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let (written, replayed, journaled) = loop {
            let metrics = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
            let counts = (stage(&metrics, "written"), stage(&metrics, "replayed"), stage(&metrics, "journaled"));
            if counts.0 + counts.1 >= n as u64 || std::time::Instant::now() > deadline {
                break counts;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!("{what}: {written} written through the queue, {replayed} replayed");
        assert!(replayed > 0, "{what}: the queue overflowed");
        assert!(written > 0, "{what}: and some records went through it");
        assert_eq!(journaled, n as u64, "{what}: every record journaled");
        assert_eq!(written + replayed, n as u64, "{what}: each record by one path");
        support::process::stop(&mut child);
        let rows = export(&dir);
        let requests: HashSet<String> = rows.iter().map(|r| r["request_id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(rows.len(), n, "{what}: one row a request");
        assert_eq!(requests, (0..n).map(|i| format!("miss-{i}")).collect(), "{what}");
        if let Some(pg) = pg {
            support::drop_pg(&pg).await;
        }
    }
}

/// A record only in memory at shutdown (the journal refused it, and the
/// database is down) gets one more try at the journal: taken, the next start
/// writes it; refused, it is logged as lost, by request id, never dropped
/// silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_only_in_memory_at_shutdown_are_journaled_or_reported_lost() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("fine", 5, 2))).await;
    let client = reqwest::Client::new();
    for journal_back in [false, true] {
        let dir = temp_dir();
        // The journal's directory would be under a file: appends fail.
        std::fs::write(dir.join("blocker"), b"a file, not a directory").unwrap();
        // PostgreSQL on a closed port: the database is down throughout.
        let extra = "auth: { mode: disabled }\n\
                     database: { url: \"postgres://postgres@127.0.0.1:1/none\", connect_timeout: 300ms }\n\
                     audit: { journal_dir: blocker/journal, replay_interval: 100ms, shutdown_timeout: 1s }";
        let (mut child, url, logs) = serve_with(&dir, &fake.url(), extra);
        let id = format!("in-memory-{journal_back}");
        let resp = client
            .post(format!("{url}/v1/chat/completions"))
            .header("x-request-id", &id)
            .json(&json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "on_failure: allow serves");
        // The writer has tried the database by now (it flushes within 200 ms).
        tokio::time::sleep(Duration::from_millis(500)).await;
        if journal_back {
            std::fs::remove_file(dir.join("blocker")).unwrap();
        }
        support::process::stop(&mut child);
        let lines: Vec<String> = logs.iter().collect();
        let lost: Vec<&String> = lines.iter().filter(|l| l.contains("audit record lost at shutdown")).collect();
        if journal_back {
            assert!(lost.is_empty(), "{lost:?}");
            assert!(lines.iter().any(|l| l.contains("journaled at shutdown")), "{lines:#?}");
            // The next start, with a database that answers, writes it.
            let (mut child, _, logs) =
                serve_with(&dir, &fake.url(), "auth: { mode: disabled }\naudit: { journal_dir: blocker/journal }");
            std::thread::spawn(move || while logs.recv().is_ok() {});
            support::process::stop(&mut child);
            let rows = export(&dir);
            assert_eq!(rows.len(), 1, "{rows:?}");
            assert_eq!(rows[0]["request_id"], id.as_str());
        } else {
            assert_eq!(lost.len(), 1, "{lines:#?}");
            assert!(lost[0].contains(&id), "the loss names the request: {}", lost[0]);
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `squad_audit_records_total{stage}` in a `/metrics` text (0 when absent).
fn stage(metrics: &str, stage: &str) -> u64 {
    let label = format!("stage=\"{stage}\"");
    metrics
        .lines()
        .find(|l| l.starts_with("squad_audit_records_total{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// A response's `x-request-id` finds its audit rows: `squad audit export
/// --request-id`. An id Squad made is the row's own id too; an id a client
/// chose may repeat (and may even be one Squad made for another request),
/// and every row carrying it is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_found_by_the_id_its_response_carried() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("fine", 5, 2))).await;
    let dir = temp_dir();
    let (mut child, url) = serve(&dir, &fake.url());
    let client = reqwest::Client::new();
    let chat = |id: Option<&str>| {
        let mut req = client
            .post(format!("{url}/v1/chat/completions"))
            .json(&json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]}));
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    let made = chat(None).await;
    assert_eq!(chat(Some("client-7")).await, "client-7");
    chat(Some("client-7")).await;
    chat(Some(&made)).await; // a client reusing the id Squad gave another request
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut child).success());

    let rows_of = |id: &str| -> Vec<Value> {
        let out = squad(&dir).args(["audit", "export", "--request-id", id]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let rows = rows_of(&made);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["request_id"] == made.as_str()), "{rows:?}");
    assert_eq!(rows[0]["id"], made.as_str(), "the first request's row has the id Squad made as its own");
    let made_time = squad::store::format_time(squad::store::uuid7_ms(&made).unwrap());
    assert_eq!(rows[0]["time"], made_time.as_str(), "its time is the id's");
    assert_ne!(rows[1]["id"], made.as_str(), "the client's reuse has an id of its own");
    let rows = rows_of("client-7");
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["request_id"] == "client-7" && r["id"] != "client-7"), "{rows:?}");
    assert_ne!(rows[0]["id"], rows[1]["id"]);
    assert!(rows_of("no-such-request").is_empty());
    assert_eq!(export(&dir).len(), 4, "four requests, four rows");

    let out = squad(&dir).args(["audit", "export", "--request-id", "x", "--since", "2020-01-01"]).output().unwrap();
    assert!(!out.status.success(), "--request-id and a time range do not combine");
}

/// A data subject's rows: `squad audit export --user-id` finds them;
/// `squad audit erase --user-id` says how many it would change, and with
/// `--yes` erases their personal data (prompt, response, client address,
/// user id) while the rows and their accounting stay; other users' rows are
/// untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_rows_are_exported_and_their_personal_data_erased() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("fine", 5, 2))).await;
    let dir = temp_dir();
    let (mut child, url) = serve(&dir, &fake.url());
    let client = reqwest::Client::new();
    for user in ["ana", "bob", "ana"] {
        let body = json!({"model": OpenAi::MODEL, "user": user,
            "messages": [{"role": "user", "content": format!("{user} asks about tides")}]});
        let resp = client.post(format!("{url}/v1/chat/completions")).json(&body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut child).success());

    let run = |args: &[&str]| {
        let out = squad(&dir).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let rows_of = |user: &str| -> Vec<Value> {
        run(&["audit", "export", "--user-id", user]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let ana = rows_of("ana");
    assert_eq!(ana.len(), 2, "{ana:?}");
    assert!(ana.iter().all(|r| r["user_id"] == "ana" && r["prompt"] == "user: ana asks about tides"), "{ana:?}");

    let dry = run(&["audit", "erase", "--user-id", "ana"]);
    assert_eq!(dry, "2 audit rows carry user id ana; nothing changed (pass --yes to erase their personal data)\n");
    assert_eq!(rows_of("ana").len(), 2, "a dry run changes nothing");
    assert_eq!(
        run(&["audit", "erase", "--user-id", "ana", "--yes"]),
        "erased the personal data of 2 audit rows of user id ana\n"
    );
    assert!(rows_of("ana").is_empty());

    let all = export(&dir);
    assert_eq!(all.len(), 3, "the rows stay: {all:?}");
    let erased: Vec<&Value> = all.iter().filter(|r| r["user_id"].is_null()).collect();
    assert_eq!(erased.len(), 2, "{all:?}");
    for r in &erased {
        assert!(r["prompt"].is_null() && r["response"].is_null() && r["client_addr"].is_null(), "{r}");
        assert_eq!((r["status"].as_i64(), r["tokens_in"].as_i64()), (Some(200), Some(5)), "accounting kept: {r}");
    }
    let bob = rows_of("bob");
    assert_eq!(bob.len(), 1);
    assert_eq!(bob[0]["prompt"], "user: bob asks about tides");
    assert!(!bob[0]["client_addr"].is_null());

    let out = squad(&dir).args(["audit", "export", "--user-id", "bob", "--since", "2020-01-01"]).output().unwrap();
    assert!(!out.status.success(), "--user-id and a time range do not combine");

    // With keys on, a user id belongs to a key: --key-id or --any-key.
    let keyed = |args: &[&str]| squad(&dir).args(args).env("SQUAD__AUTH__MODE", "required").output().unwrap();
    let out = keyed(&["audit", "erase", "--user-id", "bob"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --key-id"), "{out:?}");
    let out = keyed(&["audit", "erase", "--user-id", "bob", "--key-id", "0123456789ab"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0 audit rows carry user id bob of key 0123456789ab; nothing changed (pass --yes to erase their personal data)\n"
    );
    let out = keyed(&["audit", "export", "--user-id", "bob", "--any-key"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1, "{out:?}");
    assert!(!keyed(&["audit", "erase", "--user-id", "bob", "--any-key", "--key-id", "x"]).status.success());
}

#[test]
fn keys_audit_and_backup_commands() {
    let dir = temp_dir();
    let out = squad(&dir)
        .args(["keys", "create", "--name", "ci-bot", "--agents", "dev,pm", "--rpm", "30", "--expires", "2099-01-01"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(secret.starts_with("sqd_") && secret.len() > 40, "{secret}");
    let id = squad::store::keys::key_id(&secret).unwrap().to_owned();

    let out = squad(&dir).args(["keys", "list"]).output().unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(
        list.contains(&id) && list.contains("ci-bot") && list.contains("dev,pm") && list.contains("active"),
        "{list}"
    );
    assert!(!list.contains(&secret[17..]), "the secret is never listed");
    let db = std::fs::read(dir.join("squad.db")).unwrap();
    assert!(!db.windows(20).any(|w| w == &secret.as_bytes()[20..40]), "the secret is not in the database file");

    let out = squad(&dir).args(["keys", "create", "--name", "x", "--agents", "nobody"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown agent `nobody`"));
    let out = squad(&dir).args(["keys", "create", "--name", "x", "--expires", "2001-01-01"]).output().unwrap();
    assert!(!out.status.success(), "an expiry in the past is refused");

    let out = squad(&dir).args(["keys", "revoke", "ci-bot"]).output().unwrap();
    assert!(out.status.success());
    let list = String::from_utf8(squad(&dir).args(["keys", "list"]).output().unwrap().stdout).unwrap();
    assert!(list.contains("revoked"), "{list}");
    assert!(!squad(&dir).args(["keys", "revoke", "ci-bot"]).output().unwrap().status.success());

    let out = squad(&dir).args(["audit", "prune", "--before", "2000-01-01"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted 0 audit rows"));
    let out = squad(&dir).args(["audit", "export", "--format", "csv"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("id,request_id,time,"));

    let out = squad(&dir).args(["backup", "--out", "copy.db"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("copy.db").metadata().unwrap().len() > 0);
    assert!(!squad(&dir).args(["backup", "--out", "copy.db"]).output().unwrap().status.success(), "never overwrites");

    let out = squad(&dir).args(["migrate"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("sqlite"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_reach_the_logs() {
    let fake = Fake::start(Reply::json(200, OpenAi::completion("fine", 5, 2))).await;
    let dir = temp_dir();
    let out = squad(&dir).args(["keys", "create", "--name", "logged"]).output().unwrap();
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let (mut child, url, logs) = serve_with(&dir, &fake.url(), "auth: { mode: required }\nlog: { level: debug }");
    let client = reqwest::Client::new();
    let chat = json!({"model": OpenAi::MODEL, "messages": [{"role": "user", "content": "hi"}]});
    let ok = client.post(format!("{url}/v1/chat/completions")).bearer_auth(&secret).json(&chat).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let wrong = format!("{}{}", &secret[..17], "f".repeat(64));
    let bad = client.post(format!("{url}/v1/chat/completions")).bearer_auth(&wrong).json(&chat).send().await.unwrap();
    assert_eq!(bad.status(), 401);
    let by_header = client.get(format!("{url}/v1/agents")).header("x-api-key", &secret).send().await.unwrap();
    assert_eq!(by_header.status(), 200);
    let status = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(wait_exit(&mut child).success());
    let lines: Vec<String> = logs.iter().collect(); // ends at EOF: the process has exited
    assert!(lines.iter().any(|l| l.contains("\"status\":200")), "the access log ran at debug level");
    for line in &lines {
        assert!(!line.contains(&secret[17..]) && !line.contains(&wrong[17..]), "a key reached the logs: {line}");
    }
    let rows = export(&dir);
    assert_eq!(rows.len(), 2, "both chat requests audited");
    assert!(!serde_json::to_string(&rows).unwrap().contains(&secret[17..]));
}
