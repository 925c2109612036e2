//! The SSE decoder on arbitrary bytes fed in arbitrary pieces. The first bytes
//! of the input choose the limits and the split points; the rest is the stream.
//!
//! Checked: no panic; every splitting gives exactly the events and the result
//! (`Ok` or the first error) of a single feed; both equal a simple reference
//! decoder that splits the whole input into lines first; every event respects
//! the limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use squad::providers::sse::{SseDecoder, SseError, SseEvent, SseLimits};

type Decoded = (Vec<SseEvent>, Result<(), SseError>);

fn decode(body: &[u8], limits: SseLimits, pieces: &[usize]) -> Decoded {
    let mut dec = SseDecoder::new(limits);
    let mut out = Vec::new();
    let mut rest = body;
    for &len in pieces {
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        if let Err(e) = dec.feed(piece, &mut out) {
            return (out, Err(e));
        }
    }
    let result = dec.feed(rest, &mut out).and_then(|()| dec.finish(&mut out));
    (out, result)
}

/// The documented behaviour, written another way: split the whole input into
/// lines (`\r\n`, `\n` or `\r`), strip a BOM from the first, then apply the
/// field rules line by line; the final unterminated event is delivered.
fn reference(body: &[u8], limits: SseLimits) -> Decoded {
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\n' => {
                lines.push(&body[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&body[start..i]);
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < body.len() {
        lines.push(&body[start..]);
    }
    lines.push(b"");

    let mut out = Vec::new();
    let mut data: Option<String> = None;
    let mut event: Option<String> = None;
    for (n, raw) in lines.into_iter().enumerate() {
        if raw.len() > limits.max_line {
            return (out, Err(SseError::LineTooLong(limits.max_line)));
        }
        let line = if n == 0 { raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw) } else { raw };
        if line.is_empty() {
            if let Some(data) = data.take() {
                out.push(SseEvent { event: event.take(), data });
            }
            event = None;
            continue;
        }
        if line.starts_with(b":") {
            continue;
        }
        let Ok(line) = std::str::from_utf8(line) else {
            return (out, Err(SseError::InvalidUtf8));
        };
        let (field, value) = match line.find(':') {
            Some(at) => (&line[..at], line[at + 1..].strip_prefix(' ').unwrap_or(&line[at + 1..])),
            None => (line, ""),
        };
        match field {
            "data" => {
                let joined = match data.take() {
                    Some(d) => format!("{d}\n{value}"),
                    None => value.to_owned(),
                };
                if joined.len() > limits.max_event {
                    return (out, Err(SseError::EventTooLarge(limits.max_event)));
                }
                data = Some(joined);
            }
            "event" => event = Some(value.to_owned()),
            _ => {}
        }
    }
    (out, Ok(()))
}

fuzz_target!(|data: &[u8]| {
    let [mode, line, event, count, rest @ ..] = data else { return };
    let limits = if mode & 1 == 0 {
        SseLimits::default()
    } else {
        // Small limits, so the limit paths are reached.
        SseLimits { max_line: usize::from(*line), max_event: usize::from(*event) }
    };
    let count = usize::from(count % 16).min(rest.len());
    let (lengths, body) = rest.split_at(count);
    let pieces: Vec<usize> = lengths.iter().map(|&b| usize::from(b)).collect();

    let whole = decode(body, limits, &[]);
    let split = decode(body, limits, &pieces);
    assert_eq!(split, whole, "splitting at {pieces:?} changed the result");
    let expected = reference(body, limits);
    assert_eq!(whole, expected, "the decoder disagrees with the reference");

    for e in &whole.0 {
        assert!(e.data.len() <= limits.max_event, "event of {} bytes over {}", e.data.len(), limits.max_event);
        assert!(!e.data.contains('\r'), "a CR inside data {:?}", e.data);
        if let Some(name) = &e.event {
            assert!(name.len() <= limits.max_line, "event name over the line limit");
            assert!(!name.contains(['\r', '\n']), "a line end inside event name {name:?}");
        }
    }
});
