//! The audit journal: append-only segment files (`audit-<seq>.jsonl`, one JSON
//! record per line) that every record reaches, with one `write` call, before
//! its response completes. The OS keeps a completed `write` across a crash of
//! the process, so a record survives SIGKILL; the database copy is written
//! later, in batches.
//!
//! A segment is deleted once it is sealed (full, or at shutdown) and every
//! record in it is known to be in the database. A segment is *dirty* when
//! some of its records did not reach the database through the in-memory queue
//! (the queue was full, or the write failed): it is then replayed from the
//! file, in order, and deleted. Segments found at start-up are replayed too;
//! inserts are idempotent, so replaying a record twice is harmless.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::AuditRecord;

struct Active {
    seq: u64,
    file: File,
}

#[derive(Default)]
struct Segment {
    /// Records appended and not yet confirmed in the database.
    pending: u64,
    /// Some record must be replayed from the file.
    dirty: bool,
    sealed: bool,
    bytes: u64,
}

#[derive(Default)]
struct Inner {
    active: Option<Active>,
    segments: BTreeMap<u64, Segment>,
    next_seq: u64,
    failed_at: Option<Instant>,
}

pub struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

fn segment_name(seq: u64) -> String {
    format!("audit-{seq:012}.jsonl")
}

fn parse_name(name: &str) -> Option<u64> {
    name.strip_prefix("audit-")?.strip_suffix(".jsonl")?.parse().ok()
}

/// What a segment file held.
pub struct SegmentContents {
    pub records: Vec<AuditRecord>,
    /// Lines that did not parse (a write cut short by a crash leaves at most
    /// one, at the end, for a request that never got its response).
    pub corrupt: usize,
}

impl Journal {
    /// Opens `dir`, adopting segments left by an earlier run (all to be
    /// replayed). Never fails: if the directory cannot be used, appends fail
    /// and the audit failure policy applies.
    pub fn open(dir: &Path, segment_bytes: u64) -> Self {
        let mut inner = Inner { next_seq: 1, ..Inner::default() };
        if let Err(e) = std::fs::create_dir_all(dir) {
            tracing::error!(dir = %dir.display(), error = %e, "cannot create the audit journal directory");
            inner.failed_at = Some(Instant::now());
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let Some(seq) = entry.file_name().to_str().and_then(parse_name) else { continue };
                let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
                inner.segments.insert(seq, Segment { pending: 0, dirty: true, sealed: true, bytes });
                inner.next_seq = inner.next_seq.max(seq + 1);
            }
        }
        Self { dir: dir.to_path_buf(), segment_bytes, inner: Mutex::new(inner) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one line (which must end in `\n`) with a single `write`;
    /// returns the segment it went to.
    pub fn append(&self, line: &[u8]) -> io::Result<u64> {
        let mut inner = self.lock();
        let result = self.append_locked(&mut inner, line);
        match &result {
            Ok(_) => inner.failed_at = None,
            Err(_) => {
                // The segment written to is abandoned: sealed, and replayed
                // from the file if any of its records is still pending.
                if let Some(active) = inner.active.take()
                    && let Some(s) = inner.segments.get_mut(&active.seq)
                {
                    s.sealed = true;
                    s.dirty |= s.pending > 0;
                }
                inner.failed_at = Some(Instant::now());
            }
        }
        result
    }

    fn append_locked(&self, inner: &mut Inner, line: &[u8]) -> io::Result<u64> {
        if inner.active.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            let seq = inner.next_seq;
            let file = OpenOptions::new().create_new(true).append(true).open(self.dir.join(segment_name(seq)))?;
            inner.next_seq += 1;
            inner.segments.insert(seq, Segment::default());
            inner.active = Some(Active { seq, file });
        }
        let Some(active) = inner.active.as_mut() else { return Err(io::Error::other("no active segment")) };
        let seq = active.seq;
        active.file.write_all(line)?;
        let segment = inner.segments.entry(seq).or_default();
        segment.pending += 1;
        segment.bytes += line.len() as u64;
        if segment.bytes >= self.segment_bytes {
            segment.sealed = true;
            inner.active = None;
        }
        Ok(seq)
    }

    /// Did an append fail within the last second (and none succeed since)?
    pub fn recently_failed(&self) -> bool {
        self.lock().failed_at.is_some_and(|t| t.elapsed() < Duration::from_secs(1))
    }

    pub fn mark_dirty(&self, seq: u64) {
        if let Some(s) = self.lock().segments.get_mut(&seq) {
            s.dirty = true;
        }
    }

    /// Records of these segments are in the database.
    pub fn committed(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut inner = self.lock();
        for seq in seqs {
            if let Some(s) = inner.segments.get_mut(&seq) {
                s.pending = s.pending.saturating_sub(1);
            }
        }
        self.remove_clean(&mut inner);
    }

    fn remove_clean(&self, inner: &mut Inner) {
        let clean: Vec<u64> = inner
            .segments
            .iter()
            .filter(|(_, s)| s.sealed && s.pending == 0 && !s.dirty)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in clean {
            self.delete(inner, seq);
        }
    }

    fn delete(&self, inner: &mut Inner, seq: u64) {
        match std::fs::remove_file(self.dir.join(segment_name(seq))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(segment = seq, error = %e, "cannot delete an audit journal segment");
                return;
            }
        }
        inner.segments.remove(&seq);
    }

    /// Sealed dirty segments, oldest first. A dirty active segment is sealed
    /// first (new records go to a new one), so it can be replayed whole.
    pub fn dirty_segments(&self) -> Vec<u64> {
        let mut inner = self.lock();
        if let Some(active) = &inner.active
            && inner.segments.get(&active.seq).is_some_and(|s| s.dirty)
        {
            let seq = active.seq;
            inner.active = None;
            if let Some(s) = inner.segments.get_mut(&seq) {
                s.sealed = true;
            }
        }
        inner.segments.iter().filter(|(_, s)| s.sealed && s.dirty).map(|(seq, _)| *seq).collect()
    }

    /// Reads a sealed segment (nothing appends to it any more).
    pub fn read(&self, seq: u64) -> io::Result<SegmentContents> {
        let file = File::open(self.dir.join(segment_name(seq)))?;
        let mut contents = SegmentContents { records: Vec::new(), corrupt: 0 };
        for line in io::BufReader::new(file).split(b'\n') {
            let line = line?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<AuditRecord>(&line) {
                Ok(r) => contents.records.push(r),
                Err(_) => contents.corrupt += 1,
            }
        }
        Ok(contents)
    }

    /// Every record of `seq` is in the database: the segment goes.
    pub fn replayed(&self, seq: u64) {
        let mut inner = self.lock();
        self.delete(&mut inner, seq);
    }

    /// Seals the active segment (at shutdown) and deletes every clean one.
    pub fn seal(&self) {
        let mut inner = self.lock();
        if let Some(active) = inner.active.take()
            && let Some(s) = inner.segments.get_mut(&active.seq)
        {
            s.sealed = true;
        }
        self.remove_clean(&mut inner);
    }

    /// Bytes in segments on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().segments.values().map(|s| s.bytes).sum()
    }

    /// Segments still on disk that hold records not known to be in the database.
    pub fn backlog(&self) -> usize {
        self.lock().segments.values().filter(|s| s.dirty || s.pending > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Vec<u8> {
        let mut line = serde_json::to_vec(&crate::store::writer::tests::record(id)).unwrap();
        line.push(b'\n');
        line
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn committed_sealed_segments_are_deleted_and_dirty_ones_replayed() {
        let dir = tempdir();
        let j = Journal::open(&dir, 4096);
        let a = j.append(&record("a")).unwrap();
        let b = j.append(&record("b")).unwrap();
        assert_eq!(a, b);
        j.committed([a]);
        j.mark_dirty(b);
        assert_eq!(j.dirty_segments(), vec![a], "a dirty active segment is sealed for replay");
        let c = j.append(&record("c")).unwrap();
        assert_ne!(c, a, "new records go to a new segment");
        let read = j.read(a).unwrap();
        assert_eq!(read.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        j.replayed(a);
        j.committed([c]);
        j.seal();
        assert_eq!(files(&dir), 0, "everything reached the database");
    }

    #[test]
    fn segments_left_by_a_crash_are_adopted_and_a_torn_line_is_counted() {
        let dir = tempdir();
        let j = Journal::open(&dir, 1 << 20);
        let seq = j.append(&record("x")).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(dir.join(segment_name(seq))).unwrap();
        f.write_all(b"{\"id\":\"torn").unwrap();
        let j = Journal::open(&dir, 1 << 20);
        assert_eq!(j.dirty_segments(), vec![seq]);
        let read = j.read(seq).unwrap();
        assert_eq!((read.records.len(), read.corrupt), (1, 1));
        assert_ne!(j.append(&record("y")).unwrap(), seq, "a restarted journal never appends to an old segment");
    }

    #[test]
    fn full_segments_rotate() {
        let dir = tempdir();
        let j = Journal::open(&dir, 1);
        let a = j.append(&record("a")).unwrap();
        let b = j.append(&record("b")).unwrap();
        assert_ne!(a, b);
        j.committed([a]);
        assert_eq!(files(&dir), 1, "the sealed, committed segment is gone");
    }

    #[test]
    fn an_unusable_directory_fails_appends() {
        let dir = tempdir();
        let blocker = dir.join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let j = Journal::open(&blocker.join("journal"), 4096);
        assert!(j.append(&record("a")).is_err());
        assert!(j.recently_failed());
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("squad-journal-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
