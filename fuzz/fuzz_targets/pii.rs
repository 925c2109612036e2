//! The PII engine on arbitrary text: `Detector::find` and `redact` never panic,
//! matches are sorted, non-overlapping, non-empty, inside the text and on char
//! boundaries, `redact` replaces exactly those matches, and a redacted text has
//! nothing left to find (so redacting it again changes nothing). Masking then
//! restoring gives the text back, in one piece and streamed in two chunks.

#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use squad::security::pii::{Detector, Restorer, mask, redact};

static DETECTOR: LazyLock<Detector> = LazyLock::new(Detector::new);

fuzz_target!(|data: &[u8]| {
    // Invalid UTF-8 becomes U+FFFD, so every input is some text.
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    let found = DETECTOR.find(text);
    let mut previous_end = 0;
    for f in &found {
        assert!(f.start < f.end, "empty match {f:?} in {text:?}");
        assert!(f.end <= text.len(), "match {f:?} past the end ({}) of {text:?}", text.len());
        assert!(
            f.start >= previous_end,
            "match {f:?} unsorted or overlapping (previous end {previous_end}) in {text:?}"
        );
        assert!(
            text.is_char_boundary(f.start) && text.is_char_boundary(f.end),
            "match {f:?} not on char boundaries in {text:?}"
        );
        previous_end = f.end;
    }

    let (once, kinds) = redact(&DETECTOR, text);
    assert_eq!(kinds, found.iter().map(|f| f.kind).collect::<Vec<_>>(), "redact reports other kinds than find");
    let mut expected = String::new();
    let mut at = 0;
    for f in &found {
        expected.push_str(&text[at..f.start]);
        expected.push_str(&format!("[{}]", f.kind.as_str()));
        at = f.end;
    }
    expected.push_str(&text[at..]);
    assert_eq!(once, expected, "redact does not replace exactly the matches of find");

    // `Detector::new()` has only builtin kinds, so every find here is one.
    let left = DETECTOR.find(&once);
    assert!(left.is_empty(), "redacted text {once:?} (from {text:?}) still has PII {left:?}");
    let (twice, kinds) = redact(&DETECTOR, &once);
    assert_eq!(twice, once, "redaction is not idempotent on {text:?}");
    assert!(kinds.is_empty());

    let mut masked = text.to_owned();
    let m = Arc::new(mask(&DETECTOR, |_| true, &mut [&mut masked]));
    assert_eq!(m.restore(&masked), text, "mask then restore is not the identity");
    // The first byte of the input picks where the stream splits.
    let mut cut = data.first().map_or(0, |b| usize::from(*b) * masked.len() / 255);
    while !masked.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut restorer = Restorer::new(m);
    let streamed = restorer.push(&masked[..cut]) + &restorer.push(&masked[cut..]) + &restorer.finish();
    assert_eq!(streamed, text, "streamed restore split at {cut} differs");
});
