//! Serving cores: one single-threaded tokio runtime per thread, each running
//! the connections dealt to it and everything those connections start (the
//! upstream calls included, on that core's own upstream connections).
//!
//! A request then stays on one thread from the client's socket to the
//! upstream's and back, with no cross-thread wake-up on its path. On tokio's
//! work-stealing runtime a request was picked up by whichever worker woke
//! first, with a futex wake and a hand-off per request; on a 2-vCPU VM,
//! saturation throughput went from 17–21% of direct-to-upstream to 35% with
//! this (`bench/overhead.sh`), while latency at 1,000 req/s did not move.
//! Background work (the audit writer, health probes, key cache, retention)
//! stays on the shared multi-threaded runtime.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::watch;

thread_local! {
    static CORE: Cell<usize> = const { Cell::new(0) };
}

/// The serving core this thread is (0 off the serving threads).
pub fn core_index() -> usize {
    CORE.with(Cell::get)
}

/// How many serving cores to start by default: one per CPU this process may use.
pub fn default_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The running cores. Stopping (or dropping) ends each core's runtime,
/// dropping whatever tasks are left on it.
pub struct Cores {
    handles: Vec<Handle>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    next: AtomicUsize,
}

impl Cores {
    pub fn start(count: usize) -> std::io::Result<Self> {
        let count = count.max(1);
        let (stop, stopped) = watch::channel(false);
        let mut handles = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new().name(format!("squad-core-{index}")).spawn(move || {
                CORE.with(|c| c.set(index));
                runtime.block_on(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                });
            })?;
            threads.push(thread);
        }
        Ok(Self { handles, threads: std::sync::Mutex::new(threads), stop, next: AtomicUsize::new(0) })
    }

    /// The core for the next connection: round robin.
    pub fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    /// Ends every core and waits for its thread (off the async runtime).
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_are_dealt_round_robin_to_threads_that_know_their_core() {
        let cores = Cores::start(2).expect("cores");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let where_ran = cores
                .next()
                .spawn(async { (core_index(), std::thread::current().name().map(str::to_owned)) })
                .await
                .expect("task");
            seen.push(where_ran);
        }
        let expected: Vec<(usize, Option<String>)> =
            [0, 1, 0, 1].iter().map(|&i| (i, Some(format!("squad-core-{i}")))).collect();
        assert_eq!(seen, expected);
        assert_eq!(core_index(), 0, "off the serving threads");
    }

    #[tokio::test]
    async fn stopping_ends_every_core_and_drops_what_was_left_on_it() {
        let cores = Cores::start(2).expect("cores");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // Never finishes on its own; dropping it (with the core) closes `rx`.
        cores.next().spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), cores.stop()).await.expect("stop finishes");
        assert!(rx.await.is_err(), "the task left on the core was dropped");
        assert!(cores.threads.lock().expect("lock").is_empty());
    }
}
