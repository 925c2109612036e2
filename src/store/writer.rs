//! The audit log: `Draft`s filled in while a request runs, submitted when it
//! ends (journal first, then the in-memory queue), and one writer task that
//! inserts queued records in batches and replays the journal when records
//! could not go through the queue.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::journal::{Journal, Replay, Slot};
use super::{AuditRecord, Store};
use crate::config::{AuditConfig, AuditContent, AuditFailurePolicy, Price, PriceTable};
use crate::telemetry::metrics;

/// The record could not be written anywhere durable and the policy is `reject`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the audit journal cannot be written")]
pub struct AuditUnavailable;

/// A submitted record, as the writer finds it: where it went in the journal,
/// to be read from the segment's mapping (`journal::Mapped::record_at`), or, when
/// the journal could not take it, its frame. Never the record itself: the
/// writer binds the record's texts where they lie, and the record is freed
/// on the thread that built it. (Each of its dozen strings freed on the
/// writer's thread instead cost the serving threads more, in allocator work
/// and cache misses, than the writer saved by not decoding; and so did a
/// frame of its own for each journaled record, allocated on a serving thread
/// and freed on the writer's.)
enum Queued {
    Journaled(Slot),
    Unjournaled(super::journal::Frame),
}

/// Why `submit` queued nothing.
enum Unqueued {
    /// The record cannot be encoded (over 4 GiB): lost, loudly.
    Lost,
    /// Neither the journal nor the encoder took it: kept in memory.
    Kept,
}

thread_local! {
    /// The frame each thread encodes its records into before the journal
    /// copies them (see `with_frame`).
    static FRAME: std::cell::Cell<super::journal::Frame> = std::cell::Cell::default();
}

/// The largest frame buffer a thread keeps between records: one record with
/// a long prompt does not pin its size on the thread for good.
const FRAME_KEPT: usize = 16 * 1024;

/// Runs `f` with this thread's frame buffer: encoded into the same memory
/// request after request, a record's frame stays in the serving thread's
/// cache, and costs no allocation. (An empty buffer where the thread's is
/// in use further up the stack, or gone with the thread.)
fn with_frame<R>(f: impl FnOnce(&mut super::journal::Frame) -> R) -> R {
    let mut frame = FRAME.try_with(std::cell::Cell::take).unwrap_or_default();
    let r = f(&mut frame);
    frame.shrink_to(FRAME_KEPT);
    let _ = FRAME.try_with(|cell| cell.set(frame));
    r
}

pub struct AuditLog {
    journal: Journal,
    tx: mpsc::Sender<Queued>,
    rx: Mutex<Option<mpsc::Receiver<Queued>>>,
    /// Rung when a full batch is queued; until then the writer lingers
    /// without being woken by each record.
    batch_ready: tokio::sync::Notify,
    store: Arc<Store>,
    policy: AuditFailurePolicy,
    content: AuditContent,
    detector: Arc<crate::security::Detector>,
    pricing: PriceTable,
    batch_size: usize,
    flush_interval: Duration,
    replay_interval: Duration,
    /// How long `shutdown` lets the writer go on (`audit.shutdown_timeout`).
    shutdown_timeout: Duration,
    /// Set by `shutdown` before it stops the writer: database work still
    /// going at this instant is cut off (`in_time`), and what it carried
    /// stays in the journal.
    deadline: std::sync::OnceLock<tokio::time::Instant>,
    stop: CancellationToken,
    writer: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The last `prepare_spare` task: shutdown waits for it before sealing.
    preparing: Mutex<Option<tokio::task::JoinHandle<()>>>,
    db: Mutex<DbState>,
}

#[derive(Default)]
struct DbState {
    /// After a failure, batches go straight to the journal until this time.
    down_until: Option<Instant>,
    last_error: Option<String>,
    /// Records that reached neither the journal nor the database yet.
    unjournaled: Vec<AuditRecord>,
}

/// What `/health` shows of the audit log.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditStatus {
    pub database_reachable: bool,
    pub journal_bytes: u64,
    pub journal_backlog_segments: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl AuditLog {
    pub fn new(
        config: &AuditConfig,
        pricing: &BTreeMap<String, Price>,
        store: Arc<Store>,
        detector: Arc<crate::security::Detector>,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let journal = Journal::open(&config.journal_dir, config.segment_bytes);
        metrics::audit_journal_bytes(journal.bytes());
        metrics::audit_initial();
        Arc::new(Self {
            journal,
            tx,
            rx: Mutex::new(Some(rx)),
            batch_ready: tokio::sync::Notify::new(),
            store,
            policy: config.on_failure,
            content: config.content,
            detector,
            pricing: PriceTable::new(pricing),
            batch_size: config.batch_size,
            flush_interval: config.flush_interval,
            replay_interval: config.replay_interval,
            shutdown_timeout: config.shutdown_timeout,
            deadline: std::sync::OnceLock::new(),
            stop: CancellationToken::new(),
            writer: tokio::sync::Mutex::new(None),
            preparing: Mutex::new(None),
            db: Mutex::new(DbState::default()),
        })
    }

    /// Starts the writer task (once).
    pub async fn start(self: &Arc<Self>) {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        if let Some(rx) = rx {
            let me = self.clone();
            *self.writer.lock().await = Some(tokio::spawn(async move { me.run(rx).await }));
        }
    }

    /// Under `reject`, whether requests should be refused before they start
    /// (the journal failed within the last second).
    pub fn refusing(&self) -> bool {
        self.policy == AuditFailurePolicy::Reject && self.journal.recently_failed()
    }

    pub fn status(&self) -> AuditStatus {
        let db = self.db_state();
        AuditStatus {
            database_reachable: db.down_until.is_none() && self.store.is_migrated(),
            journal_bytes: self.journal.bytes(),
            journal_backlog_segments: self.journal.backlog(),
            last_error: db.last_error.clone(),
        }
    }

    fn db_state(&self) -> std::sync::MutexGuard<'_, DbState> {
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Journal, then queue. `Err` only when the journal failed and the policy
    /// is `reject`; every other failure is logged and counted.
    pub fn submit(&self, mut record: AuditRecord) -> Result<(), AuditUnavailable> {
        // Encoded into this thread's frame buffer, which stays in its cache:
        // only a record the journal could not take gets a frame of its own.
        let queued = with_frame(|frame| {
            if let Err(e) = super::journal::encode(&mut record, frame) {
                tracing::error!(request_id = %record.request_id, error = %e, "audit record cannot be encoded");
                metrics::audit_failure("encode");
                return Err(Unqueued::Lost);
            }
            match self.journal.append(frame.bytes()) {
                // Counted by the writer, in bulk (`count_taken`).
                Ok(slot) => Ok(Queued::Journaled(slot)),
                Err(e) => {
                    tracing::error!(request_id = %record.request_id, error = %e, "audit journal write failed");
                    metrics::audit_failure("journal");
                    if self.policy == AuditFailurePolicy::Reject {
                        // The client gets a 503: the row says so.
                        record.status = 503;
                        record.error_kind = Some("audit_unavailable".into());
                        if super::journal::encode(&mut record, frame).is_err() {
                            return Err(Unqueued::Kept);
                        }
                    }
                    Ok(Queued::Unjournaled(frame.clone()))
                }
            }
        });
        let queued = match queued {
            Ok(q) => q,
            Err(Unqueued::Lost) => return self.allowed(AuditUnavailable),
            Err(Unqueued::Kept) => {
                self.keep_unjournaled(record);
                return Err(AuditUnavailable);
            }
        };
        let journaled = matches!(queued, Queued::Journaled(_));
        match self.tx.try_send(queued) {
            // Counted as queued when the writer takes it (`count_taken`).
            Ok(()) => {
                // Half the queue when that is less than a batch, so a small
                // queue does not overflow into the journal while the writer lingers.
                let ring_at = self.batch_size.min(self.tx.max_capacity() / 2).max(1);
                if self.tx.max_capacity() - self.tx.capacity() >= ring_at {
                    self.batch_ready.notify_one();
                }
            }
            Err(e) => {
                let (mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q)) = e;
                match q {
                    // Waits in the journal for replay.
                    Queued::Journaled(slot) => self.journal.mark_missed(slot),
                    Queued::Unjournaled(_) => self.keep_unjournaled(record),
                }
            }
        }
        if journaled { Ok(()) } else { self.allowed(AuditUnavailable) }
    }

    fn allowed(&self, e: AuditUnavailable) -> Result<(), AuditUnavailable> {
        match self.policy {
            AuditFailurePolicy::Allow => Ok(()),
            AuditFailurePolicy::Reject => Err(e),
        }
    }

    /// A record in neither the journal nor the queue: held in memory (bounded)
    /// for the writer to retry; beyond the bound it is lost, loudly.
    fn keep_unjournaled(&self, record: AuditRecord) {
        let mut db = self.db_state();
        if db.unjournaled.len() < 10_000 {
            db.unjournaled.push(record);
        } else {
            tracing::error!(request_id = %record.request_id, "audit record lost: journal, queue and buffer all full");
            metrics::audit_failure("lost");
        }
    }

    /// Drains the queue into the database (or leaves records in the journal),
    /// seals the journal and stops the writer. Call after the server stopped.
    /// The writer gets `audit.shutdown_timeout` for its last writes and the
    /// journal's replay; what is not in the database by then stays in the
    /// journal, and the next start replays it.
    pub async fn shutdown(&self) {
        let _ = self.deadline.set(tokio::time::Instant::now() + self.shutdown_timeout);
        self.stop.cancel();
        if let Some(handle) = self.writer.lock().await.take() {
            let _ = handle.await;
        }
        let preparing = self.preparing.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = preparing {
            let _ = task.await;
        }
        self.journal_leftovers();
        self.journal.seal();
        metrics::audit_journal_bytes(self.journal.bytes());
        let left = self.journal.backlog();
        if left > 0 {
            tracing::warn!(segments = left, "audit records left in the journal for the next start");
        }
    }

    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Queued>) {
        self.prepare_spare();
        // Segments left by an earlier run go first.
        self.replay().await;
        let mut tick = tokio::time::interval(self.replay_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(self.batch_size);
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                // Before the queue: under steady load the queue is never
                // empty, and replay must still get its turn.
                _ = tick.tick() => {
                    self.count_taken(0);
                    self.replay().await;
                }
                n = rx.recv_many(&mut batch, self.batch_size) => {
                    if n == 0 {
                        break;
                    }
                    self.fill(&mut rx, &mut batch).await;
                    self.count_taken(batch.len());
                    self.write(&mut batch).await;
                    self.prepare_spare();
                }
            }
        }
        // Shutdown: what is queued is written, or stays in the journal.
        rx.close();
        while rx.recv_many(&mut batch, self.batch_size).await > 0 {
            self.count_taken(batch.len());
            self.write(&mut batch).await;
        }
        self.count_taken(0);
        self.replay().await;
    }

    /// Counts records journaled since the last count, and `queued` records
    /// the writer just took from the queue. Counted here rather than in
    /// `submit`, where two shared counters bumped for every request passed
    /// their cache lines between the serving threads (a few nanoseconds each
    /// on a 2-vCPU VM: small, but free to avoid). `/metrics` shows both at
    /// most a batch (`flush_interval`, or `replay_interval` while the queue
    /// is full) late.
    fn count_taken(&self, queued: usize) {
        let journaled = self.journal.take_appended();
        if journaled > 0 {
            metrics::audit_records("journaled", journaled);
        }
        if queued > 0 {
            metrics::audit_records("queued", queued as u64);
        }
    }

    /// Has the journal's next segment made ready on a blocking thread, when
    /// it has none (see `Journal::prepare_spare`).
    fn prepare_spare(self: &Arc<Self>) {
        if self.journal.wants_spare() {
            let me = self.clone();
            let task = tokio::task::spawn_blocking(move || me.journal.prepare_spare());
            *self.preparing.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
    }

    /// Waits (at most `flush_interval`) for the batch to fill: under load one
    /// statement carries many rows instead of one statement per wake-up. The
    /// queue is not watched meanwhile (a watched queue wakes the writer for
    /// every record); `submit` rings `batch_ready` once a batch is waiting.
    async fn fill(&self, rx: &mut mpsc::Receiver<Queued>, batch: &mut Vec<Queued>) {
        let deadline = tokio::time::Instant::now() + self.flush_interval;
        loop {
            self.take_queued(rx, batch);
            if batch.len() >= self.batch_size {
                return;
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                () = self.batch_ready.notified() => {}
                () = tokio::time::sleep_until(deadline) => {
                    self.take_queued(rx, batch);
                    return;
                }
            }
        }
    }

    /// Moves what is queued now into `batch`, up to a batch, without waiting.
    fn take_queued(&self, rx: &mut mpsc::Receiver<Queued>, batch: &mut Vec<Queued>) {
        while batch.len() < self.batch_size {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
    }

    /// `work`, unless `shutdown`'s deadline passes first: then it is not
    /// started, or cut off where it waits (dropped: PostgreSQL rolls back a
    /// `COPY` cut off before it finished; an `INSERT` the server already
    /// holds may still land, which replay's `ON CONFLICT` makes harmless),
    /// and fails as the database would, so that its records stay in the
    /// journal. A SQLite write runs on this thread and is not cut off: its
    /// busy timeout (`database.connect_timeout`) bounds it.
    async fn in_time<T>(
        &self,
        work: impl Future<Output = Result<T, super::StoreError>>,
    ) -> Result<T, super::StoreError> {
        let out_of_time = || {
            Err(super::StoreError::Invalid(format!(
                "audit.shutdown_timeout ({:?}) passed; the rest stays in the journal for the next start",
                self.shutdown_timeout
            )))
        };
        if self.out_of_time() {
            return out_of_time();
        }
        let deadline = async {
            self.stop.cancelled().await;
            match self.deadline.get() {
                Some(deadline) => tokio::time::sleep_until(*deadline).await,
                // Cancelled other than by `shutdown`: no deadline.
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            () = deadline => out_of_time(),
            r = work => r,
        }
    }

    fn out_of_time(&self) -> bool {
        self.deadline.get().is_some_and(|d| tokio::time::Instant::now() >= *d)
    }

    /// After the writer stopped: records that reached neither the journal
    /// nor the database (the journal failed, and so did the database, or
    /// time ran out) get one more try at the journal, since the process is
    /// about to end and they are only in its memory. What the journal still
    /// refuses is lost, loudly: logged and counted one by one.
    fn journal_leftovers(&self) {
        let left = std::mem::take(&mut self.db_state().unjournaled);
        if left.is_empty() {
            return;
        }
        let (held, mut lost) = (left.len(), 0);
        for mut record in left {
            let kept = with_frame(|frame| {
                super::journal::encode(&mut record, frame).is_ok() && self.journal.append(frame.bytes()).is_ok()
            });
            if !kept {
                tracing::error!(request_id = %record.request_id, "audit record lost at shutdown: neither the database nor the journal took it");
                metrics::audit_failure("lost");
                lost += 1;
            }
        }
        if lost < held {
            tracing::warn!(
                records = held - lost,
                "audit records held in memory were journaled at shutdown for the next start"
            );
        }
    }

    fn db_down(&self) -> bool {
        self.db_state().down_until.is_some_and(|t| Instant::now() < t)
    }

    fn mark_down(&self, error: &super::StoreError) {
        if self.out_of_time() {
            // Not the database's failure: time ran out at shutdown.
            let mut db = self.db_state();
            if db.down_until.is_none() {
                tracing::warn!(error = %error, "audit writer stopped before it finished");
            }
            db.down_until = Some(Instant::now() + self.replay_interval);
            return;
        }
        let mut db = self.db_state();
        if db.down_until.is_none() {
            tracing::error!(error = %error, "audit database unavailable; records wait in the journal");
        }
        db.down_until = Some(Instant::now() + self.replay_interval);
        db.last_error = Some(error.to_string());
        metrics::audit_failure("database");
    }

    fn mark_up(&self) {
        let mut db = self.db_state();
        if db.down_until.take().is_some() {
            tracing::info!("audit database reachable again");
        }
        db.last_error = None;
    }

    async fn write(&self, batch: &mut Vec<Queued>) {
        let items = std::mem::take(batch);
        if self.db_down() {
            self.leave_in_journal(items);
            return;
        }
        // The mappings of the segments the batch's records are in (one or
        // two), held until the insert is done: the texts are bound where
        // they lie in them.
        let mut maps: Vec<(u64, super::journal::Mapped)> = Vec::new();
        for q in &items {
            if let Queued::Journaled(slot) = q
                && !maps.iter().any(|(seq, _)| *seq == slot.seq)
                && let Some(map) = self.journal.mapping(slot.seq)
            {
                maps.push((slot.seq, map));
            }
        }
        let mut records = Vec::with_capacity(items.len());
        // Where each of `records` is in the journal (`None`: it is not).
        let mut slots = Vec::with_capacity(items.len());
        for q in &items {
            let (record, slot) = match q {
                Queued::Journaled(slot) => {
                    let map = maps.iter().find(|(seq, _)| *seq == slot.seq).map(|(_, map)| map);
                    (map.and_then(|map| map.record_at(slot.offset)), Some(*slot))
                }
                Queued::Unjournaled(frame) => (frame.record(), None),
            };
            match (record, slot) {
                (Some(r), slot) => {
                    records.push(r);
                    slots.push(slot);
                }
                // Cannot happen (`submit` encoded it, `append` placed it);
                // if it did, the copy in the journal file is the one left
                // to replay, and without one the record is lost, loudly.
                (None, Some(slot)) => {
                    tracing::error!(segment = slot.seq, "a queued audit record cannot be read; left to replay");
                    metrics::audit_failure("encode");
                    self.journal.mark_missed(slot);
                }
                (None, None) => {
                    tracing::error!("audit record lost: a queued frame that was never journaled does not decode");
                    metrics::audit_failure("lost");
                }
            }
        }
        let result = self
            .in_time(async {
                self.store.migrate().await?;
                self.store.insert_fresh(&records).await
            })
            .await;
        match result {
            Ok(_) => {
                self.mark_up();
                metrics::audit_records("written", records.len() as u64);
                self.journal.committed(slots.iter().flatten().map(|s| s.seq));
                metrics::audit_journal_bytes(self.journal.bytes());
            }
            Err(e) => {
                self.mark_down(&e);
                for (record, slot) in records.iter().zip(&slots) {
                    match slot {
                        Some(slot) => self.journal.mark_missed(*slot),
                        None => self.keep_unjournaled(record.to_record()),
                    }
                }
            }
        }
    }

    fn leave_in_journal(&self, items: Vec<Queued>) {
        for q in items {
            match q {
                Queued::Journaled(slot) => self.journal.mark_missed(slot),
                Queued::Unjournaled(frame) => match frame.record() {
                    Some(r) => self.keep_unjournaled(r.to_record()),
                    None => {
                        tracing::error!("audit record lost: a queued frame that was never journaled does not decode");
                        metrics::audit_failure("lost");
                    }
                },
            }
        }
    }

    /// Writes journaled records that missed the queue, oldest segment first.
    async fn replay(&self) {
        let dirty = self.journal.dirty_segments();
        let unjournaled = std::mem::take(&mut self.db_state().unjournaled);
        if dirty.is_empty() && unjournaled.is_empty() {
            return;
        }
        if let Err(e) = self.in_time(self.store.migrate()).await {
            self.mark_down(&e);
            self.db_state().unjournaled.extend(unjournaled);
            return;
        }
        for chunk in unjournaled.chunks(self.batch_size) {
            if let Err(e) = self.in_time(self.store.insert_audit(chunk)).await {
                self.mark_down(&e);
                self.db_state().unjournaled.extend(unjournaled);
                return;
            }
        }
        if !unjournaled.is_empty() {
            metrics::audit_records("written", unjournaled.len() as u64);
        }
        for seq in dirty {
            let went_on = match self.journal.replay_plan(seq) {
                None => continue,
                Some(Replay::Whole) => self.replay_whole(seq).await,
                Some(Replay::Frames(offsets)) => self.replay_frames(seq, &offsets).await,
            };
            metrics::audit_journal_bytes(self.journal.bytes());
            if !went_on {
                return;
            }
        }
    }

    /// Replays every record of a segment found at start-up (some may be in
    /// the database already: a crash came between their write and the
    /// segment's deletion), or of a sealed one whose records not yet in the
    /// database all missed the queue (those that went through it are
    /// skipped). False when the database failed.
    async fn replay_whole(&self, seq: u64) -> bool {
        let contents = match self.journal.read(seq) {
            Ok(c) => c,
            Err(e) => return unreadable(seq, &e),
        };
        if contents.corrupt > 0 {
            tracing::warn!(segment = seq, lines = contents.corrupt, "unreadable audit journal lines skipped");
            metrics::audit_failure("journal_corrupt");
        }
        let mut inserted = 0;
        for chunk in contents.records.chunks(self.batch_size) {
            match self.in_time(self.store.insert_audit(chunk)).await {
                Ok(n) => inserted += n,
                Err(e) => {
                    self.mark_down(&e);
                    return false;
                }
            }
        }
        self.mark_up();
        metrics::audit_records("replayed", inserted);
        tracing::info!(segment = seq, records = contents.records.len(), inserted, "audit journal segment replayed");
        self.journal.replayed(seq);
        true
    }

    /// Replays the frames of a segment that missed the queue (or whose write
    /// failed), and no others: the rest are on their way through the queue.
    /// Each chunk is struck off the segment's list once it is in, so a
    /// failure part-way repeats none of them. False when the database failed.
    async fn replay_frames(&self, seq: u64, offsets: &[u64]) -> bool {
        let bytes = match self.journal.read_bytes(seq) {
            Ok(b) => b,
            Err(e) => return unreadable(seq, &e),
        };
        let (mut inserted, mut corrupt) = (0, 0);
        let mut rows = Vec::with_capacity(offsets.len().min(self.batch_size));
        for chunk in offsets.chunks(self.batch_size) {
            rows.clear();
            for &offset in chunk {
                match super::journal::frame_ref_at(&bytes, offset) {
                    Some(r) => rows.push(r),
                    None => corrupt += 1,
                }
            }
            match self.in_time(self.store.insert_fresh(&rows)).await {
                Ok(n) => inserted += n,
                Err(e) => {
                    self.mark_down(&e);
                    metrics::audit_records("replayed", inserted);
                    return false;
                }
            }
            self.journal.replayed_frames(seq, chunk.len());
        }
        if corrupt > 0 {
            tracing::warn!(segment = seq, frames = corrupt, "unreadable audit journal frames skipped");
            metrics::audit_failure("journal_corrupt");
        }
        self.mark_up();
        metrics::audit_records("replayed", inserted);
        tracing::info!(
            segment = seq,
            records = offsets.len(),
            inserted,
            "audit records that missed the queue replayed"
        );
        true
    }

    /// Text as `audit.content` says to keep it.
    fn content(&self, text: Option<String>) -> Option<String> {
        let text = text?;
        match self.content {
            AuditContent::None => None,
            AuditContent::Hash => Some(format!("sha256:{}", super::keys::hash_key(&text))),
            AuditContent::Redacted => {
                let (clean, kinds) = crate::security::pii::redact(&self.detector, &text);
                for kind in kinds {
                    metrics::pii_detected(kind.as_str(), "audit");
                }
                // Nothing found: the text itself, not a copy.
                match clean {
                    std::borrow::Cow::Borrowed(_) => Some(text),
                    std::borrow::Cow::Owned(clean) => Some(clean),
                }
            }
        }
    }

    fn cost(&self, provider: Option<&str>, model: Option<&str>, tokens_in: i64, tokens_out: i64) -> Option<f64> {
        let price = self.pricing.get(provider?, model?)?;
        Some(price.cost(tokens_in.max(0) as u64, tokens_out.max(0) as u64))
    }
}

/// A journal segment could not be read: said and counted, and the replay
/// goes on with the next one (this one is tried again at the next replay).
fn unreadable(seq: u64, e: &std::io::Error) -> bool {
    tracing::error!(segment = seq, error = %e, "cannot read an audit journal segment");
    metrics::audit_failure("journal_read");
    true
}

/// A record being filled in while its request runs. Cheap to clone; the
/// record is submitted by `finish`, or when the last clone is dropped (then
/// marked cancelled: the client went away first).
#[derive(Clone)]
pub struct Draft(Arc<Mutex<DraftInner>>);

struct DraftInner {
    record: AuditRecord,
    started: Instant,
    upstream: Duration,
    prompt: Option<String>,
    response: Option<String>,
    log: Arc<AuditLog>,
    done: bool,
}

pub struct DraftStart {
    pub request_id: String,
    /// Squad made the request id (a UUIDv7 of this millisecond), so no other
    /// request has it: the record takes it as its own id too (one id to look
    /// a request up by; and the request-id index, which holds only rows whose
    /// two ids differ, is not written).
    pub request_id_time: Option<i64>,
    pub method: String,
    pub route: String,
    pub client_addr: Option<String>,
}

impl Draft {
    pub fn new(log: Arc<AuditLog>, start: DraftStart, started: Instant) -> Self {
        // The record's time is its id's: when the request arrived (or, for a
        // fresh id, now), and what a lookup by id seeks. Taken from the UUID
        // itself: reading it back from the text cost 800 instructions.
        let (id, ts_ms) = match start.request_id_time {
            Some(ms) if !start.request_id.is_empty() => (start.request_id.clone(), ms),
            _ => {
                let id = uuid::Uuid::now_v7();
                (id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned(), super::uuid7_time(&id))
            }
        };
        let record = AuditRecord {
            id,
            request_id: start.request_id,
            ts_ms,
            client_addr: start.client_addr,
            method: start.method,
            route: start.route,
            // Filled in by the handler (`note_served`) or the error; a
            // request that made no attempt gets `[]` at submit, so that a
            // served one allocates no placeholder.
            attempts: String::new(),
            ..AuditRecord::default()
        };
        let inner =
            DraftInner { record, started, upstream: Duration::ZERO, prompt: None, response: None, log, done: false };
        Self(Arc::new(Mutex::new(inner)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DraftInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes fields of the record.
    pub fn update(&self, f: impl FnOnce(&mut AuditRecord)) {
        f(&mut self.lock().record)
    }

    pub fn prompt(&self, text: String) {
        self.lock().prompt = Some(text);
    }

    /// Appends to the response text (streams add chunk by chunk).
    pub fn response(&self, text: &str) {
        self.lock().response.get_or_insert_with(String::new).push_str(text);
    }

    /// Time spent waiting on providers.
    pub fn add_upstream(&self, d: Duration) {
        self.lock().upstream += d;
    }

    /// Tokens in and out, from the provider's usage.
    pub fn usage(&self, usage: crate::domain::Usage) {
        self.update(|r| {
            r.tokens_in = usage.prompt_tokens as i64;
            r.tokens_out = usage.completion_tokens as i64;
        });
    }

    /// Submits the record (once; later calls do nothing).
    pub fn finish(&self) -> Result<(), AuditUnavailable> {
        let mut inner = self.lock();
        inner.submit()
    }
}

impl DraftInner {
    fn submit(&mut self) -> Result<(), AuditUnavailable> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        let elapsed = self.started.elapsed();
        let r = &mut self.record;
        r.latency_ms = elapsed.as_secs_f64() * 1000.0;
        r.upstream_ms = self.upstream.as_secs_f64() * 1000.0;
        r.overhead_ms = (r.latency_ms - r.upstream_ms).max(0.0);
        if r.tokens_in > 0 || r.tokens_out > 0 {
            r.cost_usd = self.log.cost(r.provider.as_deref(), r.model.as_deref(), r.tokens_in, r.tokens_out);
        }
        if r.attempts.is_empty() {
            r.attempts.push_str("[]");
        }
        r.prompt = self.log.content(self.prompt.take());
        r.response = self.log.content(self.response.take());
        let record = std::mem::take(r);
        self.log.submit(record)
    }
}

impl Drop for DraftInner {
    fn drop(&mut self) {
        if !self.done {
            self.record.cancelled = true;
            if self.record.status == 0 {
                self.record.status = 499;
            }
            let _ = self.submit();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn record(id: &str) -> AuditRecord {
        AuditRecord { id: id.into(), request_id: format!("req-{id}"), ..AuditRecord::default() }
    }
}
