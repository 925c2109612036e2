//! The audit journal: append-only segment files (`audit-<seq>.rec`) that every
//! record reaches before its response completes. A record is one frame:
//! payload length (u32 LE), CRC-32C of the payload (u32 LE), then the payload:
//! a format byte and the record's fields in a fixed order, texts as a length
//! and their bytes, no escaping (JSON cost a fifth of what a request costs
//! Squad). The CRC finds a frame that a crash cut short. Segments from before
//! the binary format (`audit-<seq>.jsonl`, one JSON record per line) are still
//! read and replayed.
//! The active segment is allocated on disk up front (`posix_fallocate`) and
//! mapped shared into memory, so an append is a copy into the page cache, with
//! no system call: the kernel owns those pages, so they reach the file even
//! if the process is killed the next instant (SIGKILL), as a completed `write`
//! would. A full disk shows when a segment is allocated, as an error, never as
//! a fault on a mapped page. Unused space at the end of a segment holds zero
//! bytes; a segment is trimmed to its records when sealed, and a reader skips
//! the zeros of one that was not (the process died). The database copy is
//! written later, in batches.
//!
//! A segment is deleted once it is sealed (full, or at shutdown) and every
//! record in it is known to be in the database. A segment is *dirty* when
//! some of its records did not reach the database through the in-memory queue
//! (the queue was full, or the write failed): the journal keeps where those
//! frames start, and only they are replayed from the file, in order; the
//! segment's other records are on their way through the queue. Segments
//! found at start-up are replayed whole, and so is a sealed one whose records
//! not yet in the database all missed the queue (`Segment::settle`); inserts
//! are idempotent, so replaying a record twice is harmless.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::AuditRecord;
use super::audit::RecordRef;

struct Active {
    seq: u64,
    file: File,
    /// Shared with the segment's entry in `Inner::segments` while queued
    /// records may be read from it (`Journal::mapping`).
    map: Arc<memmap2::MmapRaw>,
    /// Bytes of records in `map`; the rest is zeros.
    len: usize,
}

impl Active {
    /// Creates segment `seq` with room for `size` bytes, allocated on disk.
    fn create(path: &Path, seq: u64, size: u64) -> io::Result<Self> {
        let file = OpenOptions::new().create_new(true).read(true).write(true).open(path)?;
        // The file is the journal's own (created just now, `create_new`),
        // and nothing else writes or truncates it while it is mapped; its
        // blocks are allocated, so stores into the mapping cannot fault for
        // lack of disk space. Only `append` writes through the mapping, and
        // only past the frames it handed out (see `Mapped::record_at`).
        let allocated = allocate(&file, size).and_then(|()| memmap2::MmapRaw::map_raw(&file));
        match allocated {
            Ok(map) => Ok(Self { seq, file, map: Arc::new(map), len: 0 }),
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
        }
    }

    /// Faults every page of the mapping in now, for writing, so that appends
    /// copy into mapped, writable pages instead of faulting every few
    /// records. Faulted in for reading only, each page still faults on its
    /// first write (ext4 marks it written), which is most of the cost. The
    /// price: the pages are dirty, so under light load, when a segment takes
    /// longer to fill than the kernel waits to write dirty pages back (30 s by
    /// default), its zeros reach the disk before its records do: at most
    /// `segment_bytes` more written per segment. Best effort: where the
    /// kernel cannot (before Linux 5.14), appends fault the pages in as before.
    fn populate(&self) {
        #[cfg(target_os = "linux")]
        if let Err(e) = self.map.advise(memmap2::Advice::PopulateWrite) {
            tracing::debug!(segment = self.seq, error = %e, "cannot fault an audit journal segment in ahead");
        }
    }

    /// Whether the segment's file is still in the directory (not deleted
    /// from under the journal since it was made).
    fn linked(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.file.metadata().is_ok_and(|m| m.nlink() > 0)
    }

    fn fits(&self, line: &[u8]) -> bool {
        self.len + line.len() <= self.map.len()
    }

    fn append(&mut self, line: &[u8]) -> bool {
        if !self.fits(line) {
            return false;
        }
        // SAFETY: `len + line.len()` is within the mapping (just checked).
        // Those bytes are past every frame handed out so far, so nothing
        // reads them, and nothing else writes the mapping: `append` runs
        // with `&mut self`, under the journal's lock.
        unsafe { std::ptr::copy_nonoverlapping(line.as_ptr(), self.map.as_mut_ptr().add(self.len), line.len()) };
        self.len += line.len();
        true
    }
}

impl Drop for Active {
    /// Sealed: the file is cut to its records (the mapping, unmapped right
    /// after, is not touched past them again).
    fn drop(&mut self) {
        if let Err(e) = self.file.set_len(self.len as u64) {
            // Harmless: readers skip the zeros.
            tracing::warn!(segment = self.seq, error = %e, "cannot trim a sealed audit journal segment");
        }
    }
}

/// Reserves `size` bytes of disk for `file` (which grows to `size`), so that
/// later stores into a mapping of it cannot hit a full disk.
fn allocate(file: &File, size: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(size).map_err(|_| io::Error::other("segment too large"))?;
    // SAFETY: a plain system call on a file descriptor `file` keeps open.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

#[derive(Default)]
struct Segment {
    /// Records appended and not yet confirmed in the database (those in
    /// `missed` included).
    pending: u64,
    /// Every record is replayed from the file (found at start-up, or
    /// `settle`d).
    whole: bool,
    /// Where the frames start that missed the queue (or whose write failed),
    /// in the order they were marked: replayed from the file.
    missed: Vec<u64>,
    /// Records appended.
    records: u64,
    sealed: bool,
    bytes: u64,
    /// The segment's mapping, while records queued for the writer may be
    /// read from it (`Journal::mapping`): dropped once it is sealed and
    /// every record not yet in the database missed the queue.
    map: Option<Arc<memmap2::MmapRaw>>,
}

impl Segment {
    /// Some record must be replayed from the file.
    fn dirty(&self) -> bool {
        self.whole || !self.missed.is_empty()
    }

    /// A sealed segment whose records not yet in the database all missed
    /// the queue, and at least half of all its records, is replayed whole
    /// instead (the rest are skipped as rows already stored): while the
    /// database is away every record misses, and a list of every offset of
    /// every segment would grow for as long as the outage lasts.
    fn settle(&mut self) {
        let missed = self.missed.len() as u64;
        if self.sealed && !self.whole && missed > 0 && missed == self.pending && missed * 2 >= self.records {
            self.whole = true;
            self.missed = Vec::new();
        }
        self.release_map();
    }

    /// Lets go of the mapping of a sealed segment none of whose records is
    /// in the queue any more (each one not yet in the database missed it):
    /// an outage that seals segment after segment does not keep them all
    /// mapped.
    fn release_map(&mut self) {
        if self.sealed && (self.whole || self.pending <= self.missed.len() as u64) {
            self.map = None;
        }
    }
}

/// Where `Journal::append` put a frame: its segment, and its offset there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub seq: u64,
    pub offset: u64,
}

/// What a replay of a dirty segment reads (`Journal::replay_plan`).
#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    /// Every frame: a segment found at start-up, or a sealed one whose
    /// records not yet in the database all missed the queue (`settle`).
    Whole,
    /// The frames at these offsets, and no others.
    Frames(Vec<u64>),
}

#[derive(Default)]
struct Inner {
    active: Option<Active>,
    /// The next segment, made ready by `prepare_spare`, not yet appended to
    /// (so not in `segments`).
    spare: Option<Active>,
    segments: BTreeMap<u64, Segment>,
    next_seq: u64,
    failed_at: Option<Instant>,
    /// Records appended since `take_appended` last counted them.
    appended: u64,
}

pub struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    /// A `prepare_spare` is running.
    preparing: std::sync::atomic::AtomicBool,
}

fn segment_name(seq: u64) -> String {
    format!("audit-{seq:012}.rec")
}

/// Segments written before the binary format.
fn legacy_name(seq: u64) -> String {
    format!("audit-{seq:012}.jsonl")
}

fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_prefix("audit-")?;
    stem.strip_suffix(".rec").or_else(|| stem.strip_suffix(".jsonl"))?.parse().ok()
}

const CRC: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// CRC-32C of `bytes`: the CPU's `crc32` instruction where it has SSE4.2
/// (eight bytes a step), else a table.
fn checksum(bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE4.2, checked just above.
        return unsafe { checksum_sse42(bytes) };
    }
    CRC.checksum(bytes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn checksum_sse42(bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut crc = u64::from(u32::MAX);
    let (words, tail) = bytes.as_chunks::<8>();
    for word in words {
        crc = _mm_crc32_u64(crc, u64::from_le_bytes(*word));
    }
    let mut crc = crc as u32;
    for &b in tail {
        crc = _mm_crc32_u8(crc, b);
    }
    !crc
}
/// The first payload byte: how the fields that follow are laid out.
const FORMAT: u8 = 1;
const HEADER: usize = 8;
/// A text's length field for `None`.
const ABSENT: u32 = u32::MAX;

/// A journal frame that `encode` made, in memory: what `append` copies into
/// the journal, and what the writer binds from when the journal could not
/// take a record. Only `encode` writes one, so every text in it is a whole
/// `&str` where `decode` finds it, and reading it back skips the UTF-8 check
/// (about 1,000 instructions a record) and the checksum.
#[derive(Clone, Default)]
pub struct Frame(Vec<u8>);

impl Frame {
    pub fn with_capacity(bytes: usize) -> Self {
        Self(Vec::with_capacity(bytes))
    }

    /// Lets go of capacity beyond `bytes` (or the frame's length).
    pub fn shrink_to(&mut self, bytes: usize) {
        self.0.shrink_to(bytes);
    }

    /// The bytes a journal segment gets.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The record, its texts borrowed from the frame; `None` only for a
    /// frame whose encoding failed (it is left empty).
    pub fn record(&self) -> Option<RecordRef<'_>> {
        decode::<true>(self.0.get(HEADER..)?)
    }
}

/// `record` as one journal frame, in `out` (replacing what it held). A text
/// holding U+0000 is noticed on the way and the record scrubbed
/// (`AuditRecord::scrub_nul`) and encoded again: a NUL is rare, and looking
/// for one in the bytes being copied anyway cost less than a walk over the
/// record's texts of its own before every encoding. Fails only for a record
/// over 4 GiB, which the body limit rules out; `out` is then left empty.
pub fn encode(record: &mut AuditRecord, out: &mut Frame) -> io::Result<()> {
    let mut result = encode_into(record, &mut out.0);
    if let Ok(true) = result {
        record.scrub_nul();
        result = encode_into(record, &mut out.0);
    }
    if result.is_err() {
        out.0.clear();
    }
    result.map(drop)
}

/// Whether some text held a NUL.
fn encode_into(record: &AuditRecord, out: &mut Vec<u8>) -> io::Result<bool> {
    let mut w = FrameWriter { out, nul: false };
    let r = record;
    w.out.clear();
    w.out.extend_from_slice(&[0; HEADER]);
    w.out.push(FORMAT);
    w.text(Some(&r.id))?;
    w.text(Some(&r.request_id))?;
    w.int(r.ts_ms);
    w.text(r.key_id.as_deref())?;
    w.text(r.client_addr.as_deref())?;
    w.text(Some(&r.method))?;
    w.text(Some(&r.route))?;
    w.text(r.agent.as_deref())?;
    w.text(r.user_id.as_deref())?;
    w.text(r.conversation_id.as_deref())?;
    w.int(r.status);
    w.text(r.error_kind.as_deref())?;
    w.text(Some(&r.attempts))?;
    w.text(r.provider.as_deref())?;
    w.text(r.model.as_deref())?;
    w.int(r.tokens_in);
    w.int(r.tokens_out);
    w.real(r.cost_usd);
    w.real(Some(r.latency_ms));
    w.real(Some(r.upstream_ms));
    w.real(Some(r.overhead_ms));
    w.out.extend_from_slice(&[u8::from(r.streamed), u8::from(r.cancelled)]);
    w.text(r.prompt.as_deref())?;
    w.text(r.response.as_deref())?;
    w.text(r.metadata.as_deref())?;
    let nul = w.nul;
    let len = u32::try_from(out.len() - HEADER).map_err(|_| too_large())?;
    let crc = checksum(&out[HEADER..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(nul)
}

/// `encode_into`'s fields, each kind written by one function that is not
/// inlined, so the sixteen texts share one copy of the code: on a request
/// path that runs it once, every 64 bytes of code run is an instruction-cache
/// miss. With the NUL check folded in, encoding went from 1,940 instructions
/// and 54 simulated I1 misses a request (`scrub_nul` then `encode`) to 1,780
/// and 41 (`bench/instructions.sh` with `--cache-sim=yes`).
struct FrameWriter<'a> {
    out: &'a mut Vec<u8>,
    /// Some text held a NUL.
    nul: bool,
}

impl FrameWriter<'_> {
    #[inline(never)]
    fn text(&mut self, t: Option<&str>) -> io::Result<()> {
        match t {
            Some(t) => {
                let len = u32::try_from(t.len()).ok().filter(|&l| l != ABSENT).ok_or_else(too_large)?;
                self.nul |= super::audit::has_nul(t.as_bytes());
                self.out.extend_from_slice(&len.to_le_bytes());
                self.out.extend_from_slice(t.as_bytes());
            }
            None => self.out.extend_from_slice(&ABSENT.to_le_bytes()),
        }
        Ok(())
    }

    fn int(&mut self, v: i64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    #[inline(never)]
    fn real(&mut self, v: Option<f64>) {
        match v {
            Some(v) => {
                self.out.push(1);
                self.out.extend_from_slice(&v.to_le_bytes());
            }
            None => self.out.push(0),
        }
    }
}

fn too_large() -> io::Error {
    io::Error::other("audit record larger than 4 GiB")
}

/// Reads one payload back, its texts borrowed from it; `None` when it does
/// not decode. `FROM_ENCODE`: the payload is a `Frame`'s, which `encode`
/// wrote, every text from a `&str` at the offset this reads it from, so its
/// texts are not checked for UTF-8 again; a payload read from disk is.
fn decode<const FROM_ENCODE: bool>(payload: &[u8]) -> Option<RecordRef<'_>> {
    struct Cursor<'a, const FROM_ENCODE: bool>(&'a [u8]);
    impl<'a, const FROM_ENCODE: bool> Cursor<'a, FROM_ENCODE> {
        fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
            let (head, rest) = self.0.split_first_chunk::<N>()?;
            self.0 = rest;
            Some(*head)
        }
        fn int(&mut self) -> Option<i64> {
            self.take().map(i64::from_le_bytes)
        }
        fn flag(&mut self) -> Option<bool> {
            match self.take::<1>()? {
                [0] => Some(false),
                [1] => Some(true),
                _ => None,
            }
        }
        fn real(&mut self) -> Option<Option<f64>> {
            if self.flag()? { self.take().map(|b| Some(f64::from_le_bytes(b))) } else { Some(None) }
        }
        fn some_real(&mut self) -> Option<f64> {
            self.real()?
        }
        fn text(&mut self) -> Option<Option<&'a str>> {
            let len = u32::from_le_bytes(self.take()?);
            if len == ABSENT {
                return Some(None);
            }
            let (bytes, rest) = self.0.split_at_checked(len as usize)?;
            self.0 = rest;
            if FROM_ENCODE {
                // SAFETY: a `Frame`'s bytes are `encode`'s output, which no
                // one else can write: this cursor visits its fields in the
                // order `encode` wrote them, so `bytes` is exactly one of the
                // `&str`s it copied, which are UTF-8.
                Some(Some(unsafe { std::str::from_utf8_unchecked(bytes) }))
            } else {
                std::str::from_utf8(bytes).ok().map(Some)
            }
        }
        fn some_text(&mut self) -> Option<&'a str> {
            self.text()?
        }
    }
    let mut c = Cursor::<FROM_ENCODE>(payload);
    if c.take::<1>()? != [FORMAT] {
        return None;
    }
    let record = RecordRef {
        id: c.some_text()?,
        request_id: c.some_text()?,
        ts_ms: c.int()?,
        key_id: c.text()?,
        client_addr: c.text()?,
        method: c.some_text()?,
        route: c.some_text()?,
        agent: c.text()?,
        user_id: c.text()?,
        conversation_id: c.text()?,
        status: c.int()?,
        error_kind: c.text()?,
        attempts: c.some_text()?,
        provider: c.text()?,
        model: c.text()?,
        tokens_in: c.int()?,
        tokens_out: c.int()?,
        cost_usd: c.real()?,
        latency_ms: c.some_real()?,
        upstream_ms: c.some_real()?,
        overhead_ms: c.some_real()?,
        streamed: c.flag()?,
        cancelled: c.flag()?,
        prompt: c.text()?,
        response: c.text()?,
        metadata: c.text()?,
    };
    c.0.is_empty().then_some(record)
}

/// The frames of a binary segment. Zeros where a frame would start are the
/// unused end of a segment that was never trimmed. A frame that does not
/// check out (a crash cut it short, or the disk damaged it) is counted, and
/// reading resumes at the next offset where a whole frame checks out, so
/// damage loses only what it touched.
fn read_frames(bytes: &[u8], contents: &mut SegmentContents) {
    let mut at = 0;
    let mut damaged = false;
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        match frame_at(rest) {
            Some((record, len)) => {
                contents.records.push(record);
                at += len;
                damaged = false;
            }
            None => {
                // One count per damaged stretch, not per byte of it.
                if !damaged {
                    contents.corrupt += 1;
                    damaged = true;
                }
                at += 1;
            }
        }
    }
}

/// The record framed at the start of `bytes` and the frame's length, when
/// its length, CRC and fields all check out.
fn frame_at(bytes: &[u8]) -> Option<(AuditRecord, usize)> {
    frame_ref(bytes).map(|(record, len)| (record.to_record(), len))
}

/// A segment's mapping, as far as it held records when `Journal::mapping`
/// was called: where the writer reads queued records from.
pub struct Mapped {
    map: Arc<memmap2::MmapRaw>,
    /// Bytes of records in the mapping then: a sealed segment's file is cut
    /// to them, and a page past its end cannot be read.
    len: usize,
}

impl Mapped {
    /// The record that `Journal::append` put at `offset`, its texts
    /// borrowed from the mapping: how the writer reads a queued record,
    /// without a copy of its own. `None` when the frame there does not
    /// check out (its length or CRC), which a `Slot` from `append`, appended
    /// before this mapping was taken, rules out.
    pub fn record_at(&self, offset: u64) -> Option<RecordRef<'_>> {
        // SAFETY: the first `len` bytes of the mapping (`len` is within it),
        // which lives as long as `self`: frames that `append` wrote before
        // this mapping was taken, and that nothing writes again (appends
        // go past them).
        let records = unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) };
        let payload = checked_payload(records.get(usize::try_from(offset).ok()?..)?)?;
        // Unchecked UTF-8: the frame is one `encode` made (its checksum
        // says so), copied there by `append`; the mapping's file is the
        // journal's own and nothing else writes it (see `Active::create`).
        decode::<true>(payload)
    }
}

/// The record framed at `offset` of a segment's bytes, its texts borrowed
/// from them, when the frame checks out.
pub fn frame_ref_at(bytes: &[u8], offset: u64) -> Option<RecordRef<'_>> {
    frame_ref(bytes.get(usize::try_from(offset).ok()?..)?).map(|(record, _)| record)
}

/// As `frame_at`, the texts borrowed.
fn frame_ref(bytes: &[u8]) -> Option<(RecordRef<'_>, usize)> {
    let payload = checked_payload(bytes)?;
    Some((decode::<false>(payload)?, HEADER + payload.len()))
}

/// The payload of the frame at the start of `bytes`, when its length and
/// CRC check out.
fn checked_payload(bytes: &[u8]) -> Option<&[u8]> {
    let (header, body) = bytes.split_first_chunk::<HEADER>()?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len == 0 {
        return None;
    }
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    // The format byte first: while resynchronizing, most offsets fail here,
    // before a checksum over `len` bytes.
    body.get(..len).filter(|p| p[0] == FORMAT && checksum(p) == crc)
}

/// What a segment file held.
pub struct SegmentContents {
    pub records: Vec<AuditRecord>,
    /// Frames (or lines of a legacy segment) that did not decode: a write cut
    /// short by a crash leaves at most one, at the end, for a request that
    /// never got its response.
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
                inner.segments.insert(seq, Segment { whole: true, sealed: true, bytes, ..Segment::default() });
                inner.next_seq = inner.next_seq.max(seq + 1);
            }
        }
        Self {
            dir: dir.to_path_buf(),
            segment_bytes,
            inner: Mutex::new(inner),
            preparing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one frame (from `encode`), copied into the mapped
    /// segment (a new segment is allocated when it does not fit); returns
    /// where it went.
    pub fn append(&self, line: &[u8]) -> io::Result<Slot> {
        let mut inner = self.lock();
        let result = self.append_locked(&mut inner, line);
        match &result {
            Ok(_) => inner.failed_at = None,
            Err(_) => {
                // A failed append leaves no active segment (the last one was
                // sealed before a new one was tried).
                inner.failed_at = Some(Instant::now());
            }
        }
        result
    }

    fn append_locked(&self, inner: &mut Inner, line: &[u8]) -> io::Result<Slot> {
        if let Some(active) = inner.active.as_mut() {
            let offset = active.len as u64;
            if active.append(line) {
                let seq = active.seq;
                let segment = inner.segments.entry(seq).or_default();
                segment.pending += 1;
                segment.records += 1;
                segment.bytes += line.len() as u64;
                inner.appended += 1;
                return Ok(Slot { seq, offset });
            }
        }
        // No room (or no segment): the next one, big enough for this line:
        // the spare, unless the line is larger than a segment (it gets one of
        // its own, after the spare) or the spare was deleted from under the
        // journal (a new segment recreates the directory).
        self.seal_active(inner);
        let spare = inner.spare.take();
        let mut active = match spare {
            Some(spare) if spare.fits(line) && spare.linked() => spare,
            _ => {
                if let Some(spare) = spare {
                    self.discard(spare);
                }
                std::fs::create_dir_all(&self.dir)?;
                let seq = inner.next_seq;
                let size = self.segment_bytes.max(line.len() as u64);
                let active = Active::create(&self.dir.join(segment_name(seq)), seq, size)?;
                inner.next_seq += 1;
                active
            }
        };
        let seq = active.seq;
        active.append(line);
        let map = Some(active.map.clone());
        inner
            .segments
            .insert(seq, Segment { pending: 1, records: 1, bytes: line.len() as u64, map, ..Segment::default() });
        inner.active = Some(active);
        inner.appended += 1;
        Ok(Slot { seq, offset: 0 })
    }

    /// Makes the next segment ready (created, allocated, mapped and faulted
    /// in) off the request path, so that appends never fault a page in and
    /// the append that fills a segment only switches to the next. Does
    /// nothing while a spare is ready or being made. Blocking file work:
    /// call it from a thread that may block.
    pub fn prepare_spare(&self) {
        use std::sync::atomic::Ordering;
        if self.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        let seq = {
            let mut inner = self.lock();
            if inner.spare.is_some() {
                self.preparing.store(false, Ordering::Release);
                return;
            }
            let seq = inner.next_seq;
            inner.next_seq += 1;
            seq
        };
        match Active::create(&self.dir.join(segment_name(seq)), seq, self.segment_bytes) {
            Ok(spare) => {
                spare.populate();
                let mut inner = self.lock();
                // A segment numbered after this one was made meanwhile (an
                // append could not wait): this one would break the order.
                if inner.active.as_ref().is_some_and(|a| a.seq > seq)
                    || inner.segments.range(seq + 1..).next().is_some()
                {
                    self.discard(spare);
                } else {
                    inner.spare = Some(spare);
                }
            }
            // Appends make their own segment, and report what fails.
            Err(e) => tracing::debug!(segment = seq, error = %e, "cannot prepare the next audit journal segment"),
        }
        self.preparing.store(false, Ordering::Release);
    }

    /// Whether `prepare_spare` has work to do.
    pub fn wants_spare(&self) -> bool {
        !self.preparing.load(std::sync::atomic::Ordering::Acquire) && self.lock().spare.is_none()
    }

    /// Removes a segment that never held a record.
    fn discard(&self, segment: Active) {
        let seq = segment.seq;
        drop(segment);
        match std::fs::remove_file(self.dir.join(segment_name(seq))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            // Harmless: an empty segment replays to nothing.
            Err(e) => tracing::warn!(segment = seq, error = %e, "cannot delete an unused audit journal segment"),
        }
    }

    /// Seals the active segment, if any: nothing more is appended to it.
    fn seal_active(&self, inner: &mut Inner) {
        if let Some(active) = inner.active.take() {
            if let Some(s) = inner.segments.get_mut(&active.seq) {
                s.sealed = true;
                s.settle();
            }
            drop(active);
        }
    }

    /// Did an append fail within the last second (and none succeed since)?
    pub fn recently_failed(&self) -> bool {
        self.lock().failed_at.is_some_and(|t| t.elapsed() < Duration::from_secs(1))
    }

    /// The mapping of segment `seq`, to read queued records from
    /// (`Mapped::record_at`): there from the segment's first append until it
    /// is sealed and no record of it is left in the queue. Hold it until the
    /// records read from it are done with.
    pub fn mapping(&self, seq: u64) -> Option<Mapped> {
        let inner = self.lock();
        let segment = inner.segments.get(&seq)?;
        let len = usize::try_from(segment.bytes).ok()?;
        segment.map.clone().map(|map| Mapped { len: len.min(map.len()), map })
    }

    /// The frame at `slot` did not reach the database through the queue:
    /// it is to be replayed from the file.
    pub fn mark_missed(&self, slot: Slot) {
        if let Some(s) = self.lock().segments.get_mut(&slot.seq) {
            s.missed.push(slot.offset);
            s.settle();
        }
    }

    /// Records of these segments are in the database.
    pub fn committed(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut inner = self.lock();
        for seq in seqs {
            if let Some(s) = inner.segments.get_mut(&seq) {
                s.pending = s.pending.saturating_sub(1);
                s.settle();
            }
        }
        self.remove_clean(&mut inner);
    }

    fn remove_clean(&self, inner: &mut Inner) {
        let clean: Vec<u64> = inner
            .segments
            .iter()
            .filter(|(_, s)| s.sealed && s.pending == 0 && !s.dirty())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in clean {
            self.delete(inner, seq);
        }
    }

    fn delete(&self, inner: &mut Inner, seq: u64) {
        for name in [segment_name(seq), legacy_name(seq)] {
            match std::fs::remove_file(self.dir.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = seq, error = %e, "cannot delete an audit journal segment");
                    return;
                }
            }
        }
        inner.segments.remove(&seq);
    }

    /// Dirty segments, oldest first (the active one among them: the frames
    /// it is to replay are whole, and nothing rewrites them).
    pub fn dirty_segments(&self) -> Vec<u64> {
        self.lock().segments.iter().filter(|(_, s)| s.dirty()).map(|(seq, _)| *seq).collect()
    }

    /// What replaying `seq` reads, as of now (`None`: nothing).
    pub fn replay_plan(&self, seq: u64) -> Option<Replay> {
        let inner = self.lock();
        let segment = inner.segments.get(&seq).filter(|s| s.dirty())?;
        Some(if segment.whole { Replay::Whole } else { Replay::Frames(segment.missed.clone()) })
    }

    /// The segment file's bytes, to read frames of `Replay::Frames` from
    /// (`frame_ref_at`).
    pub fn read_bytes(&self, seq: u64) -> io::Result<Vec<u8>> {
        std::fs::read(self.dir.join(segment_name(seq)))
    }

    /// The first `n` frames of `seq`'s `Replay::Frames` are in the database.
    pub fn replayed_frames(&self, seq: u64, n: usize) {
        let mut inner = self.lock();
        if let Some(s) = inner.segments.get_mut(&seq) {
            let n = n.min(s.missed.len());
            s.missed.drain(..n);
            s.pending = s.pending.saturating_sub(n as u64);
            s.release_map();
            self.remove_clean(&mut inner);
        }
    }

    /// Reads a whole segment (`Replay::Whole`).
    pub fn read(&self, seq: u64) -> io::Result<SegmentContents> {
        let mut contents = SegmentContents { records: Vec::new(), corrupt: 0 };
        let found = |r: io::Result<()>| match r {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        };
        // Both may exist (an older Squad ran in between and reused the
        // number): `delete` removes both, so both are read.
        let binary = found(std::fs::read(self.dir.join(segment_name(seq))).map(|b| read_frames(&b, &mut contents)))?;
        let legacy = found(self.read_legacy(seq, &mut contents))?;
        if !(binary || legacy) {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no segment {seq}")));
        }
        Ok(contents)
    }

    fn read_legacy(&self, seq: u64, contents: &mut SegmentContents) -> io::Result<()> {
        let file = File::open(self.dir.join(legacy_name(seq)))?;
        for line in io::BufReader::new(file).split(b'\n') {
            let mut line = line?;
            // Zeros: the unused end of a segment that was never trimmed.
            let end = line.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            line.truncate(end);
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<AuditRecord>(&line) {
                Ok(r) => contents.records.push(r),
                Err(_) => contents.corrupt += 1,
            }
        }
        Ok(())
    }

    /// Every record of `seq` (`Replay::Whole`) is in the database: the
    /// segment goes.
    pub fn replayed(&self, seq: u64) {
        let mut inner = self.lock();
        self.delete(&mut inner, seq);
    }

    /// Seals the active segment (at shutdown), removes the spare and deletes
    /// every clean one.
    pub fn seal(&self) {
        let mut inner = self.lock();
        self.seal_active(&mut inner);
        if let Some(spare) = inner.spare.take() {
            self.discard(spare);
        }
        self.remove_clean(&mut inner);
    }

    /// Bytes in segments on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().segments.values().map(|s| s.bytes).sum()
    }

    /// Records appended since the last call. Counted under the lock an
    /// append holds anyway, and read in bulk by the audit writer (see
    /// `AuditLog::count_taken`).
    pub fn take_appended(&self) -> u64 {
        std::mem::take(&mut self.lock().appended)
    }

    /// Segments still on disk that hold records not known to be in the database.
    pub fn backlog(&self) -> usize {
        self.lock().segments.values().filter(|s| s.dirty() || s.pending > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> Vec<u8> {
        let mut frame = Frame::with_capacity(0);
        encode(&mut crate::store::writer::tests::record(id), &mut frame).unwrap();
        frame.0
    }

    /// Every field set, texts with what JSON would have escaped.
    fn full() -> AuditRecord {
        AuditRecord {
            id: "id-\"full\"".into(),
            request_id: "req\nfull".into(),
            ts_ms: -1_796_000_000_000,
            key_id: Some("k1".into()),
            client_addr: Some("10.0.0.7".into()),
            method: "POST".into(),
            route: "/v1/chat/completions".into(),
            agent: Some("winston".into()),
            user_id: Some("u-✓".into()),
            conversation_id: Some(String::new()),
            status: 502,
            error_kind: Some("upstream_failed".into()),
            attempts: r#"[{"provider":"groq","outcome":"timeout"}]"#.into(),
            provider: Some("groq".into()),
            model: Some("llama".into()),
            tokens_in: i64::MAX,
            tokens_out: 0,
            cost_usd: Some(0.000_123),
            latency_ms: 12.5,
            upstream_ms: f64::MIN_POSITIVE,
            overhead_ms: 0.0,
            streamed: true,
            cancelled: true,
            prompt: Some("user: hi \u{fffd}\t".into()),
            response: Some("x".repeat(70_000)),
            metadata: Some(r#"{"team":"a"}"#.into()),
        }
    }

    #[test]
    fn the_checksum_is_crc32c_whichever_way_it_is_computed() {
        // The standard check value of CRC-32C.
        assert_eq!(checksum(b"123456789"), 0xE306_9283);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 64, 65, 1000] {
            assert_eq!(checksum(&data[..len]), CRC.checksum(&data[..len]), "length {len}");
        }
    }

    /// A NUL met while encoding is scrubbed from the record (PostgreSQL
    /// refuses it), which is then encoded again: the frame, the record and
    /// what a segment reads back all hold U+FFFD, and nothing else changed.
    #[test]
    fn a_nul_in_a_text_is_scrubbed_on_its_way_into_the_frame() {
        let mut record = full();
        record.prompt = Some("user: a\0b\0".into());
        record.user_id = Some("\0".into());
        let mut frame = Frame::default();
        encode(&mut record, &mut frame).unwrap();
        let expected =
            AuditRecord { prompt: Some("user: a\u{fffd}b\u{fffd}".into()), user_id: Some("\u{fffd}".into()), ..full() };
        assert_eq!(record, expected);
        assert_eq!(frame.record(), Some(expected.borrowed()));
        let mut contents = SegmentContents { records: Vec::new(), corrupt: 0 };
        read_frames(frame.bytes(), &mut contents);
        assert_eq!((contents.records, contents.corrupt), (vec![expected], 0));
    }

    #[test]
    fn frames_round_trip_every_field_and_a_damaged_one_is_refused() {
        let records = [full(), crate::store::writer::tests::record("sparse")];
        let mut bytes = Vec::new();
        for r in &records {
            let mut frame = Frame::with_capacity(0);
            encode(&mut r.clone(), &mut frame).unwrap();
            // What the writer binds from a queued frame is the record itself.
            assert_eq!(frame.record(), Some(r.borrowed()));
            bytes.extend_from_slice(frame.bytes());
        }
        let mut contents = SegmentContents { records: Vec::new(), corrupt: 0 };
        read_frames(&bytes, &mut contents);
        assert_eq!(contents.corrupt, 0);
        assert_eq!(contents.records, records);

        // One bit flipped in the second frame's payload: the first still reads.
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let mut contents = SegmentContents { records: Vec::new(), corrupt: 0 };
        read_frames(&bytes, &mut contents);
        assert_eq!((contents.records.len(), contents.corrupt), (1, 1));
        assert_eq!(contents.records[0], records[0]);
        bytes[last] ^= 1;

        // Damage in the first frame: reading resumes at the second.
        bytes[HEADER + 3] ^= 0x40;
        let mut contents = SegmentContents { records: Vec::new(), corrupt: 0 };
        read_frames(&bytes, &mut contents);
        assert_eq!((contents.records.len(), contents.corrupt), (1, 1));
        assert_eq!(contents.records[0], records[1]);
    }

    #[test]
    fn segments_from_before_the_binary_format_are_replayed() {
        let dir = tempdir();
        let old = crate::store::writer::tests::record("from-jsonl");
        let mut line = serde_json::to_vec(&old).unwrap();
        line.extend_from_slice(b"\n{\"id\":\"torn");
        std::fs::write(dir.join(legacy_name(7)), &line).unwrap();
        let j = Journal::open(&dir, 4096);
        assert_eq!(j.dirty_segments(), vec![7]);
        let read = j.read(7).unwrap();
        assert_eq!((read.records, read.corrupt), (vec![old], 1));
        assert_eq!(j.append(&record("new")).unwrap().seq, 8, "new segments number on after the old ones");
        j.replayed(7);
        assert!(!dir.join(legacy_name(7)).exists());

        // Both kinds under one number (an older Squad ran in between): both read.
        let both = j.append(&record("binary")).unwrap().seq;
        j.seal();
        let mut line = serde_json::to_vec(&crate::store::writer::tests::record("legacy")).unwrap();
        line.push(b'\n');
        std::fs::write(dir.join(legacy_name(both)), &line).unwrap();
        let ids: Vec<String> = j.read(both).unwrap().records.into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["new", "binary", "legacy"], "segment 8 holds both binary records");
        assert!(j.read(999).is_err(), "a segment that does not exist");
    }

    fn files(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn committed_sealed_segments_are_deleted_and_only_missed_frames_replayed() {
        let dir = tempdir();
        let j = Journal::open(&dir, 4096);
        let a = j.append(&record("a")).unwrap();
        let b = j.append(&record("b")).unwrap();
        let c = j.append(&record("c")).unwrap();
        assert_eq!((a.seq, b.seq), (c.seq, c.seq));
        assert_eq!((a.offset, b.offset), (0, record("a").len() as u64));
        j.committed([a.seq]);
        j.mark_missed(c);
        j.mark_missed(b);
        assert_eq!(j.dirty_segments(), vec![a.seq], "the active segment, not sealed");
        assert_eq!(j.replay_plan(a.seq), Some(Replay::Frames(vec![c.offset, b.offset])));
        let d = j.append(&record("d")).unwrap();
        assert_eq!(d.seq, a.seq, "appends go on in the same segment");
        let bytes = j.read_bytes(a.seq).unwrap();
        let id = |offset| frame_ref_at(&bytes, offset).map(|r| r.id.to_owned());
        assert_eq!([id(c.offset), id(b.offset)], [Some("c".into()), Some("b".into())]);
        assert_eq!(id(b.offset + 1), None, "not where a frame starts");
        assert_eq!(id(1 << 20), None, "past the end");
        // Only c is in: b stays to replay, and the segment stays dirty.
        j.replayed_frames(a.seq, 1);
        assert_eq!(j.replay_plan(a.seq), Some(Replay::Frames(vec![b.offset])));
        assert_eq!(j.backlog(), 1);
        j.replayed_frames(a.seq, 1);
        assert_eq!(j.replay_plan(a.seq), None);
        assert!(j.dirty_segments().is_empty());
        assert_eq!(j.backlog(), 1, "d is not in the database yet");
        j.seal();
        assert_eq!(files(&dir), 1, "a sealed segment with a record still queued stays");
        j.committed([d.seq]);
        assert_eq!(files(&dir), 0, "everything reached the database");
        assert_eq!(j.backlog(), 0);
    }

    /// The writer reads queued records from the segment's mapping, also
    /// after the segment is sealed and trimmed; the journal lets go of the
    /// mapping once no record of a sealed segment can still be in the
    /// queue, and keeps it while one can.
    #[test]
    fn queued_records_are_read_from_the_mapping_until_none_is_left_in_the_queue() {
        let dir = tempdir();
        let frame = record("q");
        // Room for exactly three frames a segment.
        let j = Journal::open(&dir, 3 * frame.len() as u64);
        let slots: Vec<Slot> = ["a", "b", "c"].iter().map(|id| j.append(&record(id)).unwrap()).collect();
        let map = j.mapping(slots[0].seq).expect("the active segment is mapped");
        let id = |map: &Mapped, offset| map.record_at(offset).map(|r| r.id.to_owned());
        let ids: Vec<_> = slots.iter().map(|s| id(&map, s.offset)).collect();
        assert_eq!(ids, [Some("a".into()), Some("b".into()), Some("c".into())]);
        assert_eq!(id(&map, slots[1].offset + 1), None, "not where a frame starts");
        assert_eq!(id(&map, map.len as u64 - 4), None, "a header past the records");
        assert_eq!(map.len, 3 * frame.len());
        assert_eq!(id(&map, u64::MAX), None);

        // Sealed (the next append does not fit) and trimmed: what the
        // mapping held still reads.
        let next = j.append(&frame).unwrap();
        assert_ne!(next.seq, slots[0].seq);
        assert_eq!(std::fs::metadata(dir.join(segment_name(slots[0].seq))).unwrap().len(), 3 * frame.len() as u64);
        assert_eq!(id(&map, slots[2].offset), Some("c".into()));
        // a is in the database, b missed the queue, c is still queued: the
        // mapping stays for c.
        j.committed([slots[0].seq]);
        j.mark_missed(slots[1]);
        let again = j.mapping(slots[0].seq).expect("c may still be read from it");
        assert_eq!(id(&again, slots[2].offset), Some("c".into()));
        drop(again);
        // c's write failed too: nothing of the segment is queued any more.
        j.mark_missed(slots[2]);
        assert!(j.mapping(slots[0].seq).is_none(), "every record not in the database missed the queue");
        assert_eq!(id(&map, slots[0].offset), Some("a".into()), "a mapping held elsewhere stays valid");

        // The active segment keeps its mapping whatever missed.
        j.mark_missed(next);
        assert!(j.mapping(next.seq).is_some());
        // Sealed with its only record replayed: gone with the segment.
        j.seal();
        j.replayed_frames(next.seq, 1);
        assert!(j.mapping(next.seq).is_none());
    }

    #[test]
    fn a_sealed_segment_whose_records_all_missed_is_replayed_whole() {
        let dir = tempdir();
        let frame = record("f");
        // Room for exactly four frames a segment.
        let j = Journal::open(&dir, 4 * frame.len() as u64);
        // The database is away: every record misses.
        let first: Vec<Slot> = (0..4).map(|_| j.append(&frame).unwrap()).collect();
        first.iter().for_each(|&s| j.mark_missed(s));
        assert!(matches!(j.replay_plan(first[0].seq), Some(Replay::Frames(f)) if f.len() == 4), "open: frames");
        let next = j.append(&frame).unwrap();
        assert_ne!(next.seq, first[0].seq);
        assert_eq!(j.replay_plan(first[0].seq), Some(Replay::Whole), "sealed, every record missed: no list kept");

        // One record of four missed, the others went through the queue: its
        // frame alone is replayed.
        let second: Vec<Slot> = [next].into_iter().chain((0..3).map(|_| j.append(&frame).unwrap())).collect();
        assert!(second.iter().all(|s| s.seq == next.seq));
        j.mark_missed(second[1]);
        j.committed([next.seq, next.seq, next.seq]);
        let third = j.append(&frame).unwrap();
        assert_ne!(third.seq, next.seq);
        assert_eq!(j.replay_plan(next.seq), Some(Replay::Frames(vec![second[1].offset])));

        // Half missed, and the other half still on its way when the segment
        // is sealed: whole once those are in, not before (a whole replay
        // deletes the segment).
        let mut third_slots = vec![third];
        third_slots.extend((0..3).map(|_| j.append(&frame).unwrap()));
        j.mark_missed(third_slots[0]);
        j.mark_missed(third_slots[1]);
        j.append(&frame).unwrap();
        assert_eq!(j.replay_plan(third.seq), Some(Replay::Frames(vec![third_slots[0].offset, third_slots[1].offset])));
        j.committed([third.seq, third.seq]);
        assert_eq!(j.replay_plan(third.seq), Some(Replay::Whole));
    }

    #[test]
    fn segments_left_by_a_crash_are_adopted_and_a_torn_frame_is_counted() {
        use std::os::unix::fs::FileExt;
        let dir = tempdir();
        let j = Journal::open(&dir, 1 << 20);
        let line = record("x");
        let seq = j.append(&line).unwrap().seq;
        // A crash: the segment is never trimmed, and a record is cut short
        // after the last complete one, zeros after it.
        std::mem::forget(j);
        let path = dir.join(segment_name(seq));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20, "the segment is allocated up front");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        let torn = record("torn");
        f.write_at(&torn[..torn.len() / 2], line.len() as u64).unwrap();
        let j = Journal::open(&dir, 1 << 20);
        assert_eq!(j.dirty_segments(), vec![seq]);
        assert_eq!(j.replay_plan(seq), Some(Replay::Whole));
        let read = j.read(seq).unwrap();
        assert_eq!((read.records.len(), read.corrupt), (1, 1));
        assert_ne!(j.append(&record("y")).unwrap().seq, seq, "a restarted journal never appends to an old segment");
    }

    #[test]
    fn sealed_segments_are_cut_to_their_records() {
        let dir = tempdir();
        let j = Journal::open(&dir, 1 << 20);
        let (a, b) = (record("a"), record("b"));
        let seq = j.append(&a).unwrap().seq;
        j.append(&b).unwrap();
        j.seal();
        let bytes = std::fs::read(dir.join(segment_name(seq))).unwrap();
        assert_eq!(bytes, [a, b].concat(), "exactly the records, in order, no zeros");
    }

    #[test]
    fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
        let dir = tempdir();
        let j = Journal::open(&dir, 64);
        let big = record(&"x".repeat(500));
        let first = j.append(&record("a")).unwrap();
        let slot = j.append(&big).unwrap();
        assert_ne!(first.seq, slot.seq);
        assert_eq!(slot.offset, 0);
        j.mark_missed(slot);
        assert_eq!(j.dirty_segments(), vec![slot.seq]);
        let bytes = j.read_bytes(slot.seq).unwrap();
        assert_eq!(frame_ref_at(&bytes, 0).map(|r| r.id.len()), Some(500));
    }

    #[test]
    fn full_segments_rotate() {
        let dir = tempdir();
        let j = Journal::open(&dir, 1);
        let a = j.append(&record("a")).unwrap().seq;
        let b = j.append(&record("b")).unwrap().seq;
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

    #[test]
    fn appends_move_to_the_prepared_spare_in_order_and_sealing_removes_it() {
        let dir = tempdir();
        let frame = record("s");
        // Room for exactly two frames a segment.
        let j = Journal::open(&dir, 2 * frame.len() as u64);
        j.prepare_spare();
        assert!(!j.wants_spare(), "a spare is ready");
        assert_eq!(files(&dir), 1, "the spare is on disk before any append");
        let first = j.append(&frame).unwrap().seq;
        assert_eq!(files(&dir), 1, "the append made no file: it went to the spare");
        assert_eq!(j.append(&frame).unwrap().seq, first, "the spare became the active segment");
        assert!(j.wants_spare(), "and a new spare is wanted");
        j.prepare_spare();
        let second = j.append(&frame).unwrap().seq;
        assert!(second > first, "the next spare is numbered after the active segment");
        // Without a spare, a full segment is replaced on the spot.
        j.append(&frame).unwrap();
        let third = j.append(&frame).unwrap().seq;
        assert!(third > second);
        // A spare made now, then a frame too large for it: it is removed
        // and the frame gets a segment of its own, numbered after it.
        j.prepare_spare();
        let big = j.append(&[frame.clone(), frame.clone(), frame.clone()].concat()).unwrap().seq;
        assert!(big > third + 1, "{big} after the discarded spare");
        assert!(!dir.join(segment_name(third + 1)).exists(), "the unused spare is gone");
        j.prepare_spare();
        j.committed([first, first, second, second, third, big]);
        j.seal();
        assert_eq!(files(&dir), 0, "sealing removes the unused spare and every committed segment");
    }

    #[test]
    fn a_spare_deleted_from_under_the_journal_is_not_appended_to() {
        let dir = tempdir();
        let j = Journal::open(&dir, 1 << 16);
        j.prepare_spare();
        std::fs::remove_dir_all(&dir).unwrap();
        let seq = j.append(&record("after")).unwrap().seq;
        assert!(dir.join(segment_name(seq)).exists(), "a new segment, in a recreated directory");
        j.seal();
        let ids: Vec<String> = j.read(seq).unwrap().records.into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["after"]);
    }

    #[test]
    fn a_spare_left_by_a_crash_replays_to_nothing() {
        let dir = tempdir();
        let j = Journal::open(&dir, 1 << 16);
        j.prepare_spare();
        std::mem::forget(j);
        let j = Journal::open(&dir, 1 << 16);
        let dirty = j.dirty_segments();
        assert_eq!(dirty.len(), 1, "the zero-filled spare is adopted");
        let contents = j.read(dirty[0]).unwrap();
        assert!(contents.records.is_empty() && contents.corrupt == 0);
        j.replayed(dirty[0]);
        assert_eq!(files(&dir), 0);
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("squad-journal-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
