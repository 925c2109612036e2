//! PII detection and redaction, in one linear pass with no backtracking.
//!
//! A `match` on each byte sends a position to at most one detector: `@` →
//! e-mail, a digit (or `+digit`) → a numeric run classified as IPv4, SSN,
//! CPF, CNPJ, card or phone (check digits, Luhn and formats decide), two
//! capitals and two digits → IBAN (mod 97), a hex/colon run → IPv6. Secrets
//! (provider key formats, bearer tokens, JWTs, AWS key ids, Squad keys) are
//! found by an Aho-Corasick search for their prefixes. Each detector only
//! looks at a bounded window, so the whole scan is linear in the text.
//! Clean text costs one byte test per position, and words are skipped whole.
//! User-defined patterns (config `pii.patterns`) run on the `regex` crate,
//! whose finite automata are linear-time too.
//!
//! Besides redaction (`[EMAIL]`), `mask` replaces values with numbered
//! placeholders (`[EMAIL_1]`) and returns the `Mask` that restores them, in
//! one piece or (`Restorer`) across the chunks of a stream.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use aho_corasick::AhoCorasick;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PiiKind {
    Email,
    Phone,
    Cpf,
    Cnpj,
    Card,
    Iban,
    Ipv4,
    Ipv6,
    Ssn,
    Secret,
    /// A user-defined pattern, by its configured name (`EMPLOYEE_ID`).
    Custom(&'static str),
}

impl PiiKind {
    pub const ALL: [PiiKind; 10] = [
        Self::Email,
        Self::Phone,
        Self::Cpf,
        Self::Cnpj,
        Self::Card,
        Self::Iban,
        Self::Ipv4,
        Self::Ipv6,
        Self::Ssn,
        Self::Secret,
    ];

    /// `EMAIL`, `card`, … → the kind.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str().eq_ignore_ascii_case(s))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "EMAIL",
            Self::Phone => "PHONE",
            Self::Cpf => "CPF",
            Self::Cnpj => "CNPJ",
            Self::Card => "CARD",
            Self::Iban => "IBAN",
            Self::Ipv4 => "IPV4",
            Self::Ipv6 => "IPV6",
            Self::Ssn => "SSN",
            Self::Secret => "SECRET",
            Self::Custom(name) => name,
        }
    }
}

/// A pattern name as a `'static` label. Each distinct name is leaked once:
/// names come from the configuration, so the set is small and fixed.
fn intern(name: &str) -> &'static str {
    static NAMES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut names = NAMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let names = names.get_or_insert_with(HashSet::new);
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// A valid name for a user-defined pattern: `A-Z`, `0-9`, `_`, starting with
/// a letter, at most 32 characters, and not a built-in type.
pub fn valid_pattern_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=32).contains(&b.len())
        && b[0].is_ascii_uppercase()
        && b.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
        && PiiKind::parse(name).is_none()
}

/// Compiles a user-defined pattern: bounded in size, and it must not match
/// the empty string (it would match everywhere).
pub fn compile_pattern(regex: &str) -> Result<regex::Regex, String> {
    let re = regex::RegexBuilder::new(regex)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| e.to_string())?;
    if re.is_match("") {
        return Err("the pattern matches the empty string".into());
    }
    Ok(re)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub kind: PiiKind,
}

/// Longest numeric run looked at (a card with separators is 23 characters).
const MAX_NUMERIC_RUN: usize = 40;

const SECRET_PREFIXES: &[&str] =
    &["sk-", "gsk_", "AIza", "AKIA", "ASIA", "eyJ", "Bearer ", "bearer ", "sqd_", "xoxb-", "ghp_"];

pub struct Detector {
    secrets: AhoCorasick,
    patterns: Vec<(PiiKind, regex::Regex)>,
}

impl Default for Detector {
    fn default() -> Self {
        Self::new()
    }
}

const fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl Detector {
    pub fn new() -> Self {
        #[expect(clippy::expect_used, reason = "fixed, valid literal patterns")]
        let secrets = AhoCorasick::new(SECRET_PREFIXES).expect("secret prefixes");
        Self { secrets, patterns: Vec::new() }
    }

    /// The built-in detectors plus user-defined `(name, regex)` patterns.
    pub fn with_patterns<'a>(patterns: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, String> {
        let mut detector = Self::new();
        for (name, regex) in patterns {
            if !valid_pattern_name(name) {
                return Err(format!("`{name}` is not a valid pattern name"));
            }
            let re = compile_pattern(regex).map_err(|e| format!("pattern {name}: {e}"))?;
            detector.patterns.push((PiiKind::Custom(intern(name)), re));
        }
        Ok(detector)
    }

    /// A type by name: built-in (`EMAIL`, case-insensitive) or user-defined.
    pub fn kind(&self, name: &str) -> Option<PiiKind> {
        PiiKind::parse(name).or_else(|| self.patterns.iter().map(|(k, _)| *k).find(|k| k.as_str() == name))
    }

    /// Every PII match in `text`, sorted, non-overlapping.
    pub fn find(&self, text: &str) -> Vec<Found> {
        if self.cannot_match(text) {
            return Vec::new();
        }
        self.find_where(text, |_| true)
    }

    /// Whether no detector can match anywhere in `text`: no user pattern,
    /// no run long enough for a secret, nothing a built-in detector starts
    /// from. The same tests `find_where` makes before each search, made
    /// first: a clean text (most of them) costs two quick passes and
    /// little code. For the benchmark's clean prompt and response, `find`
    /// went from 1,250 instructions and 42 simulated instruction-cache
    /// misses a request to 1,080 and 31 (`bench/instructions.sh`).
    fn cannot_match(&self, text: &str) -> bool {
        let bytes = text.as_bytes();
        self.patterns.is_empty() && !may_match(bytes) && !has_token_run(bytes)
    }

    /// The matches of the types `keep` accepts. Other types do not compete
    /// for the text, so a kept value is never hidden by an ignored one that
    /// overlaps it (a secret-looking local part of an e-mail, say).
    pub fn find_where(&self, text: &str, keep: impl Fn(PiiKind) -> bool) -> Vec<Found> {
        // Secrets and user patterns first; the other detectors run in the gaps
        // between them, whose edges are boundaries, as the tokens' will be.
        let mut fixed = Vec::new();
        if keep(PiiKind::Secret) {
            self.find_secrets(text, &mut fixed);
        }
        for (kind, re) in self.patterns.iter().filter(|(k, _)| keep(*k)) {
            fixed.extend(re.find_iter(text).filter(|m| !m.is_empty()).map(|m| Found {
                start: m.start(),
                end: m.end(),
                kind: *kind,
            }));
        }
        let fixed = resolve(fixed);
        let mut found = Vec::with_capacity(fixed.len());
        let mut at = 0;
        for f in fixed {
            scan(&text[at..f.start], at, &mut found, 0);
            at = f.end;
            found.push(f);
        }
        scan(&text[at..], at, &mut found, 0);
        found.retain(|f| keep(f.kind));
        found
    }

    fn find_secrets(&self, text: &str, out: &mut Vec<Found>) {
        let bytes = text.as_bytes();
        if !has_token_run(bytes) {
            return;
        }
        for m in self.secrets.find_iter(text) {
            let (start, prefix_end) = (m.start(), m.end());
            if start > 0 && is_token_byte(bytes[start - 1]) {
                continue; // inside another word
            }
            let prefix = &text[start..prefix_end];
            let (jwt, body_start) = (prefix == "eyJ", prefix_end);
            let min_body = if jwt { 20 } else { 16 };
            // A JWT spans three dot-separated parts; the scan stops at a third
            // dot, so overlapping `eyJ` matches cannot make it quadratic.
            let (mut end, mut dots) = (body_start, 0);
            while end < bytes.len() && (is_token_byte(bytes[end]) || (jwt && bytes[end] == b'.' && dots < 2)) {
                dots += usize::from(bytes[end] == b'.');
                end += 1;
            }
            if jwt && dots != 2 {
                continue;
            }
            if matches!(prefix, "AKIA" | "ASIA") {
                let body = &bytes[body_start..end];
                if body.len() != 16 || !body.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
                    continue;
                }
            }
            if end - body_start >= min_body {
                // A bearer token keeps its scheme word: `Bearer [SECRET]`.
                let from = if prefix.ends_with(' ') { body_start } else { start };
                out.push(Found { start: from, end, kind: PiiKind::Secret });
            }
        }
    }
}

/// The built-in detectors over `gap` (at `base` in the whole text), left to
/// right, judging every candidate as it will look once its neighbours are
/// tokens (so redacting twice finds nothing new):
/// - after a match, the rest is scanned as a text of its own: the match's
///   end is a boundary, as its token's `]` will be;
/// - a candidate rejected because it ran into the next match is judged again
///   ending where that match starts: the stretch before each match (from the
///   last separator no detector crosses) is scanned again up to it. The
///   stretches are disjoint, so the scan stays linear.
fn scan(gap: &str, base: usize, out: &mut Vec<Found>, depth: u8) {
    if may_match(gap.as_bytes()) {
        scan_all(gap, base, out, depth);
    }
}

fn scan_all(gap: &str, base: usize, out: &mut Vec<Found>, depth: u8) {
    let mut floor = 0;
    let mut i = 0;
    while i < gap.len() {
        let text = &gap[floor..];
        let bytes = text.as_bytes();
        let j = i - floor;
        let next = match bytes[j] {
            b'@' => email(bytes, j).map(|(s, e)| Found { start: s, end: e, kind: PiiKind::Email }),
            b'0'..=b'9' | b'+' | b'(' => numeric(bytes, j),
            b'A'..=b'Z' => iban(bytes, j),
            b':' => ipv6(text, j),
            _ => None,
        };
        match next {
            Some(f) if f.end > j => {
                let (start, end) = (floor + f.start, floor + f.end);
                if depth < 4 {
                    let from = restart_point(gap.as_bytes(), floor, start);
                    scan(&gap[from..start], base + from, out, depth + 1);
                }
                out.push(Found { start: base + start, end: base + end, kind: f.kind });
                i = end;
                floor = end;
            }
            _ => i += skip(bytes, j),
        }
    }
}

/// Whether any built-in detector could match in `text`. Each needs one of: an
/// `@` (e-mail), a digit (numbers, cards, IBAN), or two colons at most four
/// hex digits apart (IPv6: its groups sit between colons; `::` counts). Most
/// prose has none of them and skips the scan.
fn may_match(text: &[u8]) -> bool {
    // `@` or a digit anywhere: 32 bytes at a time, with no branch inside a
    // block, so the compiler vectorizes it.
    for block in text.chunks(32) {
        if block.iter().fold(false, |hit, &b| hit | (b == b'@') | b.is_ascii_digit()) {
            return true;
        }
    }
    // Two colons at most five apart with only hex letters between them.
    let mut last: Option<usize> = None;
    for i in memchr::memchr_iter(b':', text) {
        if let Some(c) = last
            && i - c <= 5
            && text[c + 1..i].iter().all(u8::is_ascii_hexdigit)
        {
            return true;
        }
        last = Some(i);
    }
    false
}

/// Whether `bytes` holds 16 token bytes (or dots) in a row. Every secret a
/// prefix introduces has a body at least that long, all token bytes (a JWT's
/// dots too), so a text without such a run holds none: the prefix search
/// is skipped, which for prose is most of the cost of redaction.
fn has_token_run(bytes: &[u8]) -> bool {
    // A table lookup per byte: the range tests of `is_token_byte` compiled to
    // branches that cost more than the prefix search they are meant to spare.
    const RUN: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 256 {
            t[b] = is_token_byte(b as u8) || b as u8 == b'.';
            b += 1;
        }
        t
    };
    let run = |b: u8| RUN[usize::from(b)];
    // A run of 16 covers a whole 8-byte chunk of the text (the first chunk
    // boundary in it is at most 7 bytes in). So chunks are tested whole, with
    // no branch per byte, and only a chunk of nothing but run bytes is
    // measured out to its run's ends (a run under 16 holds at most one whole
    // chunk, so this stays linear).
    let (chunks, _) = bytes.as_chunks::<8>();
    for (i, chunk) in chunks.iter().enumerate() {
        if chunk.iter().fold(true, |all, &b| all & run(b)) {
            let (start, end) = (i * 8, i * 8 + 8);
            let before = bytes[..start].iter().rev().take_while(|&&b| run(b)).count();
            let after = bytes[end..].iter().take_while(|&&b| run(b)).count();
            if before + 8 + after >= 16 {
                return true;
            }
        }
    }
    false
}

/// ASCII bytes no built-in detector takes into a match: scanning may restart
/// right after one as if the text began there.
fn separates(b: u8) -> bool {
    b",;!?\"'\n\r\t<>=[]{}|\\*&#$^`~".contains(&b)
}

/// Where to rescan the stretch before a match at `start`: after the last
/// separator (looking at most 512 bytes back), else from `floor`.
fn restart_point(bytes: &[u8], floor: usize, start: usize) -> usize {
    let lo = floor.max(start.saturating_sub(512));
    bytes[lo..start].iter().rposition(|&b| separates(b)).map_or(floor, |p| lo + p + 1)
}

/// How far to move when nothing matched at `i`: past the rest of a word, so
/// a detector never restarts inside one (keeps the scan linear).
fn skip(bytes: &[u8], i: usize) -> usize {
    let b = bytes[i];
    if b.is_ascii_alphanumeric() {
        let mut j = i + 1;
        while j < bytes.len() && bytes[j].is_ascii_alphanumeric() && j - i < 64 {
            j += 1;
        }
        j - i
    } else {
        1
    }
}

/// Overlapping matches: the earliest wins; of two starting together, the longer.
fn resolve(mut found: Vec<Found>) -> Vec<Found> {
    found.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut out: Vec<Found> = Vec::with_capacity(found.len());
    for f in found {
        if out.last().is_none_or(|last| f.start >= last.end) {
            out.push(f);
        }
    }
    out
}

fn email(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let local = |b: u8| b.is_ascii_alphanumeric() || b".%+-_".contains(&b);
    let mut s = at;
    while s > 0 && local(bytes[s - 1]) && at - s < 64 {
        s -= 1;
    }
    while s < at && bytes[s] == b'.' {
        s += 1;
    }
    if s == at {
        return None;
    }
    let mut e = at + 1;
    let mut last_dot = None;
    while e < bytes.len() && (bytes[e].is_ascii_alphanumeric() || bytes[e] == b'-' || bytes[e] == b'.') && e - at < 255
    {
        if bytes[e] == b'.' {
            last_dot = Some(e);
        }
        e += 1;
    }
    while e > at + 1 && bytes[e - 1] == b'.' {
        e -= 1;
    }
    let dot = last_dot.filter(|d| *d < e && *d > at + 1)?;
    let tld = &bytes[dot + 1..e];
    (tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic)).then_some((s, e))
}

/// A numeric run starting at `i`: digits and single separators (space . - /
/// parentheses), at most `MAX_NUMERIC_RUN` long; classified whole, then, if
/// that fails, by space-separated parts.
fn numeric(bytes: &[u8], i: usize) -> Option<Found> {
    if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_') {
        return None; // part of a word like `v2` or `abc123`
    }
    let mut e = i;
    while e < bytes.len() && e - i < MAX_NUMERIC_RUN {
        let b = bytes[e];
        let sep = matches!(b, b' ' | b'.' | b'-' | b'/' | b'(' | b')' | b'+');
        let continues = e + 1 < bytes.len() && matches!(bytes[e + 1], b'0'..=b'9' | b'(' | b' ');
        let double_space = b == b' ' && e > i && bytes[e - 1] == b' ';
        if b.is_ascii_digit() || (sep && continues && !double_space) {
            e += 1;
        } else {
            break;
        }
    }
    while e > i && !bytes[e - 1].is_ascii_digit() {
        e -= 1;
    }
    if e == i || (e < bytes.len() && (bytes[e].is_ascii_alphabetic() || bytes[e] == b'_')) {
        return None;
    }
    if let Some(kind) = classify(&bytes[i..e]) {
        return Some(Found { start: i, end: e, kind });
    }
    // Try the longest prefix made of whole space-separated parts.
    let mut cut = e;
    while let Some(sp) = bytes[i..cut].iter().rposition(|b| *b == b' ') {
        cut = i + sp;
        let end = (i..cut).rev().find(|k| bytes[*k].is_ascii_digit()).map(|k| k + 1)?;
        if let Some(kind) = classify(&bytes[i..end]) {
            return Some(Found { start: i, end, kind });
        }
    }
    None
}

fn digits_of(run: &[u8]) -> Vec<u8> {
    run.iter().filter(|b| b.is_ascii_digit()).map(|b| b - b'0').collect()
}

fn classify(run: &[u8]) -> Option<PiiKind> {
    let d = digits_of(run);
    let text = std::str::from_utf8(run).ok()?;
    let seps: Vec<u8> = run.iter().copied().filter(|b| !b.is_ascii_digit()).collect();
    let only = |allowed: &[u8]| seps.iter().all(|s| allowed.contains(s));
    if only(b".") && seps.len() == 3 && is_ipv4(text) {
        return Some(PiiKind::Ipv4);
    }
    if is_ssn(text) {
        return Some(PiiKind::Ssn);
    }
    if d.len() == 11 && (seps.is_empty() || is_shaped(text, "ddd.ddd.ddd-dd")) && cpf_valid(&d) {
        return Some(PiiKind::Cpf);
    }
    if d.len() == 14 && (seps.is_empty() || is_shaped(text, "dd.ddd.ddd/dddd-dd")) && cnpj_valid(&d) {
        return Some(PiiKind::Cnpj);
    }
    if (13..=19).contains(&d.len()) && only(b" -") && luhn(&d) {
        return Some(PiiKind::Card);
    }
    if is_phone(text, &d) {
        return Some(PiiKind::Phone);
    }
    None
}

/// `shape` uses `d` for a digit; every other character must match exactly.
fn is_shaped(text: &str, shape: &str) -> bool {
    text.len() == shape.len()
        && text.bytes().zip(shape.bytes()).all(|(t, s)| if s == b'd' { t.is_ascii_digit() } else { t == s })
}

fn is_ipv4(text: &str) -> bool {
    text.parse::<std::net::Ipv4Addr>().is_ok()
}

fn is_ssn(text: &str) -> bool {
    if !is_shaped(text, "ddd-dd-dddd") {
        return false;
    }
    let (area, group, serial) = (&text[0..3], &text[4..6], &text[7..11]);
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// E.164 (`+` and 8–15 digits) or a Brazilian number: `(11) 98765-4321`,
/// `11 98765-4321`, `11 3456-7890`, with or without `+55`.
fn is_phone(text: &str, d: &[u8]) -> bool {
    if let Some(rest) = text.strip_prefix('+') {
        let ok_seps = rest.bytes().all(|b| b.is_ascii_digit() || b" -().".contains(&b));
        return ok_seps && (8..=15).contains(&d.len());
    }
    let shapes = ["(dd) ddddd-dddd", "(dd) dddd-dddd", "dd ddddd-dddd", "dd dddd-dddd", "(dd)ddddd-dddd", "ddddd-dddd"];
    shapes.iter().any(|s| is_shaped(text, s))
}

pub fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

pub fn cpf_valid(d: &[u8]) -> bool {
    if d.len() != 11 || d.iter().all(|x| *x == d[0]) {
        return false;
    }
    let check = |n: usize| {
        let sum: u32 = (0..n).map(|i| u32::from(d[i]) * (n as u32 + 1 - i as u32)).sum();
        let r = (sum * 10) % 11;
        if r == 10 { 0 } else { r as u8 }
    };
    check(9) == d[9] && check(10) == d[10]
}

pub fn cnpj_valid(d: &[u8]) -> bool {
    if d.len() != 14 || d.iter().all(|x| *x == d[0]) {
        return false;
    }
    let check = |n: usize| {
        let weights: &[u32] =
            if n == 12 { &[5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2] } else { &[6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2] };
        let sum: u32 = (0..n).map(|i| u32::from(d[i]) * weights[i]).sum();
        let r = sum % 11;
        if r < 2 { 0 } else { (11 - r) as u8 }
    };
    check(12) == d[12] && check(13) == d[13]
}

/// IBAN: country letters, two check digits, 11–30 alphanumerics, optionally
/// in groups of four separated by single spaces; valid mod 97.
fn iban(bytes: &[u8], i: usize) -> Option<Found> {
    if i > 0 && bytes[i - 1].is_ascii_alphanumeric() {
        return None;
    }
    let head = bytes.get(i..i + 4)?;
    if !(head[0].is_ascii_uppercase()
        && head[1].is_ascii_uppercase()
        && head[2].is_ascii_digit()
        && head[3].is_ascii_digit())
    {
        return None;
    }
    let mut e = i + 4;
    let mut chars: Vec<u8> = head.to_vec();
    while e < bytes.len() && chars.len() < 34 {
        let b = bytes[e];
        if b.is_ascii_uppercase() || b.is_ascii_digit() {
            chars.push(b);
            e += 1;
        } else if b == b' '
            && e + 1 < bytes.len()
            && (bytes[e + 1].is_ascii_uppercase() || bytes[e + 1].is_ascii_digit())
        {
            e += 1;
        } else {
            break;
        }
    }
    while e > i && bytes[e - 1] == b' ' {
        e -= 1;
    }
    if e < bytes.len() && bytes[e].is_ascii_alphanumeric() {
        return None;
    }
    ((15..=34).contains(&chars.len()) && mod97(&chars) == 1).then_some(Found { start: i, end: e, kind: PiiKind::Iban })
}

fn mod97(chars: &[u8]) -> u32 {
    let rearranged = chars[4..].iter().chain(&chars[..4]);
    let mut r: u32 = 0;
    for &c in rearranged {
        let v = if c.is_ascii_digit() { u32::from(c - b'0') } else { u32::from(c - b'A') + 10 };
        r = if v >= 10 { (r * 100 + v) % 97 } else { (r * 10 + v) % 97 };
    }
    r
}

/// IPv6 around the colon at `i`: the hex/colon/dot run containing it.
fn ipv6(text: &str, i: usize) -> Option<Found> {
    let bytes = text.as_bytes();
    let ok = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
    let mut s = i;
    while s > 0 && ok(bytes[s - 1]) && i - s < 45 {
        s -= 1;
    }
    let mut e = i;
    while e < bytes.len() && ok(bytes[e]) && e - s < 45 {
        e += 1;
    }
    while e > i && bytes[e - 1] == b'.' {
        e -= 1;
    }
    if s > 0 && is_token_byte(bytes[s - 1]) {
        return None;
    }
    // The longest prefix ending at a group boundary that is an address: what
    // follows the last colon may be another match (`fe80::1.4111…` → a card).
    let plausible =
        |c: &str| c.matches(':').count() >= 2 && !c.ends_with(':') && c.bytes().any(|b| b.is_ascii_hexdigit());
    loop {
        let candidate = &text[s..e];
        let bounded = e == bytes.len() || !is_token_byte(bytes[e]);
        if bounded && plausible(candidate) && candidate.parse::<std::net::Ipv6Addr>().is_ok() {
            return Some(Found { start: s, end: e, kind: PiiKind::Ipv6 });
        }
        match candidate[..candidate.len() - 1].rfind([':', '.']) {
            Some(cut) if s + cut > i => e = s + cut,
            _ => return None,
        }
    }
}

/// `text` with each match replaced by its typed token (`[EMAIL]`, …).
pub fn redact<'a>(detector: &Detector, text: &'a str) -> (Cow<'a, str>, Vec<PiiKind>) {
    let found = detector.find(text);
    if found.is_empty() {
        return (Cow::Borrowed(text), Vec::new());
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in &found {
        out.push_str(&text[at..f.start]);
        out.push('[');
        out.push_str(f.kind.as_str());
        out.push(']');
        at = f.end;
    }
    out.push_str(&text[at..]);
    (Cow::Owned(out), found.iter().map(|f| f.kind).collect())
}

/// Placeholders issued for one request, and the values they stand for.
#[derive(Debug, Default)]
pub struct Mask {
    values: HashMap<String, String>,
    /// Length of the longest placeholder: how much a stream holds back.
    longest: usize,
    kinds: Vec<PiiKind>,
}

/// Bytes allowed between `[` and `]` of a placeholder.
fn placeholder_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
}

/// Every `[NAME_1]`-shaped token in `text` (one linear pass).
fn placeholder_like(text: &str, into: &mut HashSet<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(off) = memchr_bracket(&bytes[i..]) {
        let open = i + off;
        let mut j = open + 1;
        while j < bytes.len() && placeholder_byte(bytes[j]) {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b']' && j > open + 1 {
            into.insert(text[open..=j].to_owned());
        }
        i = j.max(open + 1);
    }
}

fn memchr_bracket(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'[')
}

/// Replaces each value of a type `masked` accepts, in every text, with a
/// numbered placeholder: the same value gets the same placeholder in every
/// text, and a number whose placeholder already appears in the texts is
/// skipped, so restoring never turns a client's own `[EMAIL_1]` into a value.
pub fn mask(detector: &Detector, masked: impl Fn(PiiKind) -> bool, texts: &mut [&mut String]) -> Mask {
    let found: Vec<Vec<Found>> = texts.iter().map(|t| detector.find_where(t, &masked)).collect();
    let mut out = Mask::default();
    if found.iter().all(Vec::is_empty) {
        return out;
    }
    let mut taken = HashSet::new();
    for t in texts.iter() {
        placeholder_like(t, &mut taken);
    }
    let mut by_value: HashMap<(PiiKind, String), String> = HashMap::new();
    let mut next: HashMap<PiiKind, usize> = HashMap::new();
    for (text, found) in texts.iter_mut().zip(&found) {
        if found.is_empty() {
            continue;
        }
        let mut rewritten = String::with_capacity(text.len());
        let mut at = 0;
        for f in found {
            rewritten.push_str(&text[at..f.start]);
            let value = &text[f.start..f.end];
            let placeholder = by_value.entry((f.kind, value.to_owned())).or_insert_with(|| {
                let n = next.entry(f.kind).or_insert(0);
                let placeholder = loop {
                    *n += 1;
                    let candidate = format!("[{}_{}]", f.kind.as_str(), n);
                    if !taken.contains(&candidate) {
                        break candidate;
                    }
                };
                out.longest = out.longest.max(placeholder.len());
                out.values.insert(placeholder.clone(), value.to_owned());
                out.kinds.push(f.kind);
                placeholder
            });
            rewritten.push_str(placeholder);
            at = f.end;
        }
        rewritten.push_str(&text[at..]);
        **text = rewritten;
    }
    out
}

impl Mask {
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The type of each distinct value masked (for metrics; never the values).
    pub fn kinds(&self) -> &[PiiKind] {
        &self.kinds
    }

    /// `text` with every placeholder this mask issued put back.
    pub fn restore<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.values.is_empty() || !text.contains('[') {
            return Cow::Borrowed(text);
        }
        let bytes = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let (mut copied, mut i) = (0, 0);
        while let Some(off) = memchr_bracket(&bytes[i..]) {
            let open = i + off;
            let mut j = open + 1;
            while j < bytes.len() && placeholder_byte(bytes[j]) && j - open < self.longest {
                j += 1;
            }
            if j < bytes.len()
                && bytes[j] == b']'
                && let Some(value) = self.values.get(&text[open..=j])
            {
                out.push_str(&text[copied..open]);
                out.push_str(value);
                copied = j + 1;
            }
            i = j.max(open + 1);
        }
        out.push_str(&text[copied..]);
        Cow::Owned(out)
    }
}

/// Restores placeholders across the chunks of a stream: a chunk ending in
/// what may be the start of a placeholder (`[EMA`) keeps that tail back until
/// the next chunk decides it (at most one placeholder's length is held).
pub struct Restorer {
    mask: Arc<Mask>,
    pending: String,
}

impl Restorer {
    pub fn new(mask: Arc<Mask>) -> Self {
        Self { mask, pending: String::new() }
    }

    /// The restored text that can be released after `chunk`.
    pub fn push(&mut self, chunk: &str) -> String {
        if self.pending.is_empty() && !chunk.contains('[') {
            return chunk.to_owned();
        }
        self.pending.push_str(chunk);
        let hold = self.pending.rfind('[').filter(|&open| {
            let tail = &self.pending.as_bytes()[open + 1..];
            tail.len() + 1 < self.mask.longest && tail.iter().all(|&b| placeholder_byte(b))
        });
        let cut = hold.unwrap_or(self.pending.len());
        let released = self.mask.restore(&self.pending[..cut]).into_owned();
        self.pending.drain(..cut);
        released
    }

    /// What is still held back (the stream ended): restored if complete.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.pending);
        self.mask.restore(&rest).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(text: &str) -> String {
        redact(&Detector::new(), text).0.into_owned()
    }

    #[test]
    fn each_kind_is_found_and_replaced() {
        let cases = [
            ("mail me at john.doe+x@example.co.uk today", "mail me at [EMAIL] today"),
            ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
            ("card 4111-1111-1111-1111", "card [CARD]"),
            ("card 4111111111111111.", "card [CARD]."),
            ("cpf 529.982.247-25 e 52998224725", "cpf [CPF] e [CPF]"),
            ("cnpj 11.222.333/0001-81", "cnpj [CNPJ]"),
            ("iban DE89 3704 0044 0532 0130 00 end", "iban [IBAN] end"),
            ("iban GB82WEST12345698765432", "iban [IBAN]"),
            ("from 192.168.10.1 and 2001:db8::8a2e:370:7334", "from [IPV4] and [IPV6]"),
            ("ssn 123-45-6789", "ssn [SSN]"),
            ("call +55 11 98765-4321 or (11) 98765-4321", "call [PHONE] or [PHONE]"),
            ("call +1 415 555 2671", "call [PHONE]"),
            ("key gsk_abcdefghijklmnopqrstuvwx1234", "key [SECRET]"),
            ("key sk-or-v1-abcdefghijklmnopqrstuvwxyz012345", "key [SECRET]"),
            ("key AIzaSyA1234567890abcdefghijklmnopqrstu", "key [SECRET]"),
            ("aws AKIAIOSFODNN7EXAMPLE", "aws [SECRET]"),
            ("Authorization: Bearer abcdefghijklmnop1234", "Authorization: Bearer [SECRET]"),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                "jwt [SECRET]",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(r(input), want, "{input}");
        }
    }

    #[test]
    fn invalid_numbers_and_plain_text_are_left_alone() {
        for text in [
            "card 4111 1111 1111 1112 fails Luhn",
            "cpf 529.982.247-26 has a bad check digit, 111.111.111-11 is all ones",
            "cnpj 11.222.333/0001-82 is invalid",
            "iban GB82WEST12345698765433 fails mod 97",
            "in 2024 we shipped 3 releases and 12:30 is lunch; v2.0.1 is out; 999.1.1.1",
            "ssn 666-45-6789 and 123-00-6789 are not issued",
            "Note: see https://example.com/a?b=c for details",
            "the sk- prefix alone, gsk_short, Bearer short",
        ] {
            assert_eq!(r(text), text);
        }
    }

    /// Found by the `pii` fuzz target: a match's neighbours are judged as
    /// they will be once it is a token, so a second redaction finds nothing.
    #[test]
    fn neighbours_of_a_match_are_judged_as_after_redaction() {
        let detector = Detector::with_patterns([("EMPLOYEE_ID", "EMP-[0-9]{3}")]).unwrap();
        let r = |t: &str| redact(&detector, t).0.into_owned();
        for (input, want) in [
            ("e@o.si+@o.dr", "[EMAIL][EMAIL]"),
            ("t@o.co+55115511", "[EMAIL][PHONE]"),
            ("::0000000000000", "::[CARD]"),
            ("fe80::1.0000000000000", "[IPV6].[CARD]"),
            ("1::4111111111111111", "1::[CARD]"),
            ("a :: b and std::vector", "a :: b and std::vector"),
            ("el +51111 111+51111 1111111 11::", "el [PHONE]+[CARD]::"),
            ("4111 1111 1111 1111EMP-123 and fe80::1EMP-456", "[CARD][EMPLOYEE_ID] and [IPV6][EMPLOYEE_ID]"),
        ] {
            let once = r(input);
            assert_eq!(once, want, "{input}");
            assert_eq!(r(&once), once, "{input}");
        }
    }

    #[test]
    fn check_digit_helpers() {
        assert!(cpf_valid(&digits_of(b"52998224725")));
        assert!(!cpf_valid(&digits_of(b"52998224724")));
        assert!(cnpj_valid(&digits_of(b"11222333000181")));
        assert!(luhn(&digits_of(b"4111111111111111")));
        assert!(!luhn(&digits_of(b"4111111111111112")));
    }

    fn luhn_complete(prefix: &[u8]) -> Vec<u8> {
        let mut d = prefix.to_vec();
        d.push(0);
        for c in 0..10 {
            *d.last_mut().unwrap() = c;
            if luhn(&d) {
                break;
            }
        }
        d
    }

    fn cpf_complete(base: &[u8]) -> Vec<u8> {
        let mut d = base.to_vec();
        for n in [9usize, 10] {
            let sum: u32 = (0..n).map(|i| u32::from(d[i]) * (n as u32 + 1 - i as u32)).sum();
            let r = (sum * 10) % 11;
            d.push(if r == 10 { 0 } else { r as u8 });
        }
        d
    }

    fn show(d: &[u8]) -> String {
        d.iter().map(|x| char::from(b'0' + x)).collect()
    }

    #[test]
    fn addresses_of_hex_letters_only_are_still_found() {
        let d = Detector::new();
        for text in ["at dead:beef::cafe now", "fe::ab", "a:b:c:d:e:f:a:b", "::ff"] {
            let kinds: Vec<_> = d.find(text).iter().map(|f| f.kind).collect();
            assert_eq!(kinds, [PiiKind::Ipv6], "{text}");
        }
        assert!(d.find("user: hi\nassistant: hello").is_empty());
        assert!(!may_match(b"You said: Say hello. a:b c:x:d"), "no colon pair only hex letters apart");
        assert!(may_match(b"x::y") && may_match(b"ab:cdef:") && may_match(b"a@b") && may_match(b"7"));
    }

    #[test]
    fn the_secret_shortcut_passes_the_shortest_secrets_and_skips_prose() {
        let d = Detector::new();
        for text in
            ["key sk-0123456789abcdef!", "AKIA0123456789ABCDEF", "eyJhbGciOi.eyJzdWIiOi.sig", "Bearer 0123456789abcdef"]
        {
            let mut found = Vec::new();
            d.find_secrets(text, &mut found);
            assert_eq!(found.len(), 1, "{text}");
            assert!(has_token_run(text.as_bytes()), "{text}");
        }
        assert!(!has_token_run(b"system: You are terse.\nuser: Say hello to the benchmark, sk-short."));
    }

    proptest! {
        /// The shortcut skips only texts no detector matches in: over an
        /// alphabet without `@` and digits (colons and hex letters included),
        /// whatever the full scan finds, `may_match` allows.
        #[test]
        fn the_scan_shortcut_skips_only_texts_without_matches(text in "[a-fA-Zx:. \\-]{0,40}") {
            let mut found = Vec::new();
            scan_all(&text, 0, &mut found, 0);
            prop_assert!(found.is_empty() || may_match(text.as_bytes()), "{text:?}: {found:?}");
        }

        /// The secret shortcut skips only texts without secrets: whatever
        /// the prefix search finds, the text has a long enough token run.
        #[test]
        fn the_secret_shortcut_skips_only_texts_without_secrets(
            text in "(sk-|gsk_|eyJ|Bearer |AKIA|sqd_|[A-Za-z0-9._ -]){0,24}"
        ) {
            let mut found = Vec::new();
            Detector::new().find_secrets(&text, &mut found);
            prop_assert!(found.is_empty() || has_token_run(text.as_bytes()), "{text:?}: {found:?}");
        }

        /// The chunked search answers as a count of consecutive run bytes
        /// does, wherever a run starts and ends.
        #[test]
        fn the_token_run_search_agrees_with_counting(text in "([A-Za-z0-9._-]{0,20}[ :/,+]{0,2}){0,8}") {
            let mut longest = 0;
            let mut current = 0;
            for &b in text.as_bytes() {
                current = if is_token_byte(b) || b == b'.' { current + 1 } else { 0 };
                longest = longest.max(current);
            }
            prop_assert_eq!(has_token_run(text.as_bytes()), longest >= 16, "{:?}", text);
        }

        /// `find`'s early answer for a text nothing can match is the full
        /// search's: over printable ASCII with PII and secret-shaped pieces
        /// mixed in, whenever `cannot_match` says so, `find_where` finds nothing.
        #[test]
        fn a_text_that_cannot_match_has_no_matches(
            text in "( ana@example.com | 4111 1111 1111 1111 |sk-[a-z0-9]{16}|::1|[ -~]){0,40}"
        ) {
            let detector = Detector::new();
            let full = detector.find_where(&text, |_| true);
            prop_assert!(!detector.cannot_match(&text) || full.is_empty(), "{text:?}: {full:?}");
            prop_assert_eq!(detector.find(&text), full);
        }

        #[test]
        fn redaction_is_idempotent(text in "[ -~]{0,200}") {
            let once = r(&text);
            prop_assert_eq!(r(&once), once.clone());
        }

        #[test]
        fn no_luhn_valid_card_survives(prefix in proptest::collection::vec(0u8..10, 12..18),
                                        pre in "[a-z ]{0,20}", post in "[a-z ]{0,20}") {
            let card = show(&luhn_complete(&prefix));
            let text = format!("{pre} {card} {post}");
            let out = r(&text);
            prop_assert!(!out.contains(&card), "{} -> {}", text, out);
        }

        #[test]
        fn no_valid_cpf_survives(base in proptest::collection::vec(0u8..10, 9), formatted in any::<bool>()) {
            let d = cpf_complete(&base);
            prop_assume!(cpf_valid(&d));
            let s = show(&d);
            let cpf = if formatted { format!("{}.{}.{}-{}", &s[0..3], &s[3..6], &s[6..9], &s[9..]) } else { s };
            let out = r(&format!("o cpf {cpf} confere"));
            prop_assert!(!out.contains(&cpf), "{}", out);
        }

        #[test]
        fn no_valid_cnpj_survives(base in proptest::collection::vec(0u8..10, 12), formatted in any::<bool>()) {
            // The check digits by search; the checker itself is pinned by the fixed cases above.
            let d = (0..100u8).map(|c| [&base[..], &[c / 10, c % 10]].concat()).find(|d| cnpj_valid(d));
            prop_assume!(d.is_some());
            let s = show(&d.unwrap_or_default());
            let cnpj = if formatted {
                format!("{}.{}.{}/{}-{}", &s[0..2], &s[2..5], &s[5..8], &s[8..12], &s[12..])
            } else {
                s
            };
            let out = r(&format!("a empresa {cnpj} pagou"));
            prop_assert!(!out.contains(&cnpj), "{}", out);
        }

        #[test]
        fn no_email_survives(user in "[a-z][a-z0-9._]{0,10}[a-z0-9]", host in "[a-z]{1,10}", tld in "[a-z]{2,5}") {
            let email = format!("{user}@{host}.{tld}");
            let out = r(&format!("write to {email}, please"));
            prop_assert!(!out.contains(&email), "{}", out);
        }

        #[test]
        fn any_unicode_text_is_handled(text in "\\PC{0,200}", digits in "[0-9 .()+-]{0,40}") {
            let mixed = format!("{text}{digits}{text}");
            let once = r(&mixed);
            prop_assert_eq!(r(&once), once.clone());
        }

        #[test]
        fn text_without_pii_is_unchanged(text in "[a-zA-Z ,.!?]{0,300}") {
            prop_assert_eq!(r(&text), text);
        }

        /// Masking then restoring is the identity, in one piece and with the
        /// masked text streamed in two chunks split at every position (and
        /// one character at a time); the masked text holds no value.
        #[test]
        fn mask_then_restore_is_the_identity(segments in proptest::collection::vec(segment(), 0..12)) {
            let original: String = segments.concat();
            let detector = Detector::new();
            let mut texts = [original.clone()];
            let mask = {
                let mut refs: Vec<&mut String> = texts.iter_mut().collect();
                Arc::new(mask(&detector, |_| true, &mut refs))
            };
            let masked = &texts[0];
            for sample in PII_SAMPLES {
                prop_assert!(!masked.contains(sample), "{} leaked in {}", sample, masked);
            }
            prop_assert_eq!(mask.restore(masked), original.as_str());
            let cuts = (0..=masked.len()).filter(|&i| masked.is_char_boundary(i));
            for i in cuts {
                let mut restorer = Restorer::new(mask.clone());
                let out = restorer.push(&masked[..i]) + &restorer.push(&masked[i..]) + &restorer.finish();
                prop_assert_eq!(&out, &original, "split at {}", i);
            }
            let mut restorer = Restorer::new(mask.clone());
            let mut out: String = masked.chars().map(|c| restorer.push(c.encode_utf8(&mut [0; 4]))).collect();
            out.push_str(&restorer.finish());
            prop_assert_eq!(out, original);
        }
    }

    const PII_SAMPLES: [&str; 5] =
        ["ana@example.com", "bob.smith@mail.example.org", "4111 1111 1111 1111", "529.982.247-25", "192.168.0.7"];

    /// Pieces of a prompt: PII values, plain words, and text shaped like our
    /// own placeholders (complete, truncated, or unknown numbers).
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            // Spaced, so a neighbouring digit or letter cannot change what the value is.
            proptest::sample::select(PII_SAMPLES.to_vec()).prop_map(|v| format!(" {v} ")),
            "[a-z ,.]{1,12}",
            proptest::sample::select(vec!["[EMAIL_1]", "[EMAIL_2]", "[CARD_1", "[", "]", "[EMAIL]", "_1]", "é ü"])
                .prop_map(str::to_owned),
        ]
    }

    /// Only masked types compete for the text: an e-mail whose local part
    /// looks like a key is still masked as an e-mail when secrets are not.
    #[test]
    fn ignored_types_do_not_hide_masked_ones() {
        let detector = Detector::new();
        let mut text = "write to sk-abcdefghijklmnop@example.com".to_owned();
        let mask = mask(&detector, |k| k == PiiKind::Email, &mut [&mut text]);
        assert_eq!(text, "write to [EMAIL_1]");
        assert_eq!(mask.restore(&text), "write to sk-abcdefghijklmnop@example.com");
    }

    #[test]
    fn the_same_value_gets_the_same_placeholder_across_texts() {
        let detector = Detector::new();
        let mut a = "to ana@example.com and bob@example.com".to_owned();
        let mut b = "cc ana@example.com, card 4111111111111111".to_owned();
        let mask = mask(&detector, |k| k != PiiKind::Card, &mut [&mut a, &mut b]);
        assert_eq!(a, "to [EMAIL_1] and [EMAIL_2]");
        assert_eq!(b, "cc [EMAIL_1], card 4111111111111111", "cards are not in the masked types");
        assert_eq!(mask.kinds(), [PiiKind::Email, PiiKind::Email]);
        assert_eq!(mask.restore("[EMAIL_2] [EMAIL_3] [EMAIL_1]"), "bob@example.com [EMAIL_3] ana@example.com");
    }

    #[test]
    fn user_patterns_are_detected_and_named() {
        let detector = Detector::with_patterns([("EMPLOYEE_ID", r"EMP-\d{6}")]).unwrap();
        assert_eq!(redact(&detector, "id EMP-123456 ok").0, "id [EMPLOYEE_ID] ok");
        assert_eq!(detector.kind("EMPLOYEE_ID").map(PiiKind::as_str), Some("EMPLOYEE_ID"));
        assert_eq!(detector.kind("email"), Some(PiiKind::Email));
        assert!(Detector::with_patterns([("EMAIL", "x")]).is_err(), "built-in names are taken");
        assert!(Detector::with_patterns([("X", "a*")]).is_err(), "a pattern matching nothing is refused");
    }
}
