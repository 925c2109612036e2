//! The real binary: `squad …` in a temporary directory, `squad serve` started
//! until it logs that it listens (its log lines kept), and the audit rows it wrote.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `squad` in `dir`, with an empty environment (PATH only).
pub fn squad(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_squad"));
    cmd.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).current_dir(dir);
    cmd
}

pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("squad-audit-proc-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The lines of `reader` (a child's stdout or stderr), read on a thread of
/// their own until it closes: the child never blocks on a full pipe, whether
/// or not anyone takes them.
pub fn lines(reader: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// `squad serve` in `dir` (auth off), once it logs that it listens.
pub fn serve(dir: &Path, upstream: &str) -> (Child, String) {
    let (child, url, logs) = serve_with(dir, upstream, "auth: { mode: disabled }");
    std::thread::spawn(move || while logs.recv().is_ok() {});
    (child, url)
}

/// `squad serve` in `dir` with `extra` YAML; the receiver yields its log lines.
pub fn serve_with(dir: &Path, upstream: &str, extra: &str) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    serve_in(dir, upstream, extra, &[])
}

/// As `serve_with`, with extra environment variables (`SQUAD__SERVER__…`
/// overrides reach settings the written file fixes).
pub fn serve_in(
    dir: &Path,
    upstream: &str,
    extra: &str,
    env: &[(&str, &str)],
) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let yaml = format!(
        "server: {{ bind: 127.0.0.1, port: 0, shutdown_grace: 10s }}\n{extra}\n\
         limits: {{ enabled: false }}\nproviders:\n  groq: {{ base_url: \"{upstream}/openai/v1\" }}\n"
    );
    serve_yaml(dir, &yaml, env)
}

/// `squad serve` in `dir` with `yaml` as its whole config file, the groq key
/// and `env` (nothing else of the test's environment).
pub fn serve_yaml(dir: &Path, yaml: &str, env: &[(&str, &str)]) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    std::fs::write(dir.join("squad.yaml"), yaml).unwrap();
    let mut child = squad(dir)
        .args(["serve"])
        .env("GROQ_API_KEY", "gsk_audit_process_test_key_0123")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rx = lines(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
            && let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["message"] == "squad listening"
        {
            return (child, format!("http://{}", v["address"].as_str().unwrap()), rx);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("squad serve did not start");
}

pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "squad did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then the exit (the audit log is flushed by then).
pub fn stop(child: &mut Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(wait_exit(child).success());
}

/// Every audit row in `dir`'s store, via `squad audit export`.
pub fn export(dir: &Path) -> Vec<Value> {
    let out = squad(dir).args(["audit", "export", "--format", "jsonl"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}
