//! The JSON log line, written straight into the line buffer.
//!
//! The same shape as tracing-subscriber's JSON format with a flattened event
//! and the current span (`{"timestamp","level", <fields>, "target",
//! "span":{<fields>,"name"}}`), at a fraction of its cost: that format
//! re-parses the span's stored JSON at every event and checks every byte it
//! writes for UTF-8 again, which made the access log line about a tenth of
//! what a proxied request cost. Here a span's fields are stored as a ready
//! JSON fragment (`"k":v,"k":v`) and copied into each line as they are.

use std::fmt::{self, Write};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Field formatting: a JSON object's members without the braces.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = Members { out: &mut writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(&self, current: &'w mut FormattedFields<Self>, fields: &tracing::span::Record<'_>) -> fmt::Result {
        let first = current.fields.is_empty();
        let mut writer = current.as_writer();
        let mut visitor = Members { out: &mut writer, first, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result
    }
}

/// One event as one JSON object (the line break is the caller's).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        w.write_str("{\"timestamp\":\"")?;
        let stamp = rfc3339_micros(std::time::SystemTime::now());
        // The bytes are ASCII digits and separators: always UTF-8.
        w.write_str(std::str::from_utf8(&stamp).unwrap_or_default())?;
        w.write_str("\",\"level\":\"")?;
        w.write_str(meta.level().as_str())?;
        w.write_char('"')?;
        let mut visitor = Members { out: &mut w, first: false, result: Ok(()) };
        event.record(&mut visitor);
        visitor.result?;
        w.write_str(",\"target\":")?;
        string(&mut w, meta.target())?;
        if let Some(span) = ctx.parent_span() {
            w.write_str(",\"span\":{")?;
            let extensions = span.extensions();
            if let Some(fields) = extensions.get::<FormattedFields<N>>().filter(|f| !f.fields.is_empty()) {
                w.write_str(&fields.fields)?;
                w.write_char(',')?;
            }
            w.write_str("\"name\":")?;
            string(&mut w, span.name())?;
            w.write_char('}')?;
        }
        w.write_str("}\n")
    }
}

/// Writes each recorded field as `"name":value`, comma-separated.
struct Members<'a, W> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<W: Write> Members<'_, W> {
    fn member(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.out.write_char(',')?;
            }
            // Names are identifiers but may be string literals too: escaped
            // (the check finds nothing to do in an identifier).
            string(self.out, field.name())?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }
}

impl<W: Write> Visit for Members<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.member(field, |w| string(w, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value:?}")?;
            w.write_char('"')
        });
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.member(field, |w| {
            w.write_char('"')?;
            write!(Escaped(w), "{value}")?;
            w.write_char('"')
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.member(field, |w| write!(w, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.member(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity. ryu, not `Display`: that falls back to
        // a bignum algorithm for values like a latency in milliseconds, and
        // cost more than the rest of the line.
        self.member(field, |w| {
            if value.is_finite() { w.write_str(ryu::Buffer::new().format_finite(value)) } else { w.write_str("null") }
        });
    }
}

/// A JSON string literal.
fn string(w: &mut impl Write, s: &str) -> fmt::Result {
    w.write_char('"')?;
    escape(w, s)?;
    w.write_char('"')
}

/// `s` escaped for the inside of a JSON string: runs that need nothing are
/// written in one piece.
pub(crate) fn escape(w: &mut impl Write, s: &str) -> fmt::Result {
    let bytes = s.as_bytes();
    // Most values need nothing: found 32 bytes at a time, with no branch
    // inside a block, so the compiler vectorizes it.
    let plain = bytes
        .chunks(32)
        .all(|block| !block.iter().fold(false, |hit, &b| hit | (b < 0x20) | (b == b'"') | (b == b'\\')));
    if plain {
        return w.write_str(s);
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let replacement = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Every byte matched above is ASCII, so `i` is a char boundary.
        w.write_str(&s[start..i])?;
        if replacement.is_empty() {
            write!(w, "\\u{b:04x}")?;
        } else {
            w.write_str(replacement)?;
        }
        start = i + 1;
    }
    w.write_str(&s[start..])
}

/// `2026-11-30T09:27:17.784294Z`: tracing-subscriber's format, without its
/// formatting machinery (which cost as much as the rest of the line).
fn rfc3339_micros(now: std::time::SystemTime) -> [u8; 27] {
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let fields = [
        (year, 4),
        (month, 2),
        (day, 2),
        (rest / 3600, 2),
        (rest / 60 % 60, 2),
        (rest % 60, 2),
        (u64::from(since.subsec_micros()), 6),
    ];
    let mut out = [0u8; 27];
    let mut at = 0;
    for (i, (value, width)) in fields.into_iter().enumerate() {
        let mut v = value;
        for slot in out[at..at + width].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at += width;
        if let Some(&sep) = b"--T::.Z".get(i) {
            out[at] = sep;
            at += 1;
        }
    }
    out
}

/// A `fmt::Write` that escapes what passes through it.
struct Escaped<'a, W>(&'a mut W);

impl<W: Write> Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape(self.0, s)
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn lines(buffer: &Buffer) -> Vec<Value> {
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
    }

    #[derive(Debug)]
    struct Awkward;

    impl std::fmt::Display for Awkward {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("tab\there \"quoted\" back\\slash nul\u{0} bell\u{7} é ✓")
        }
    }

    #[test]
    fn every_line_is_json_with_the_event_fields_flattened_and_the_span_beside_them() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .fmt_fields(JsonFields)
            .event_format(JsonLine)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(n = 3u64, neg = -4i64, ok = true, ms = 1.25f64, nan = f64::NAN, "no span");
            let span =
                tracing::info_span!("request", request_id = %"req-1", route = "/v1/x", late = tracing::field::Empty);
            let _entered = span.enter();
            span.record("late", 7u64);
            tracing::warn!(detail = %Awkward, debug = ?"q\"", "inside \"span\"");
            let empty = tracing::debug_span!("bare");
            let _inner = empty.enter();
            tracing::debug!("in a span without fields");
        });
        let lines = lines(&buffer);
        assert_eq!(lines.len(), 3, "{lines:?}");

        let first = &lines[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "no span");
        assert_eq!((first["n"].as_u64(), first["neg"].as_i64()), (Some(3), Some(-4)));
        assert_eq!((first["ok"].as_bool(), first["ms"].as_f64()), (Some(true), Some(1.25)));
        assert!(first["nan"].is_null());
        assert_eq!(first["target"], module_path!());
        assert!(first.get("span").is_none());
        let stamp = first["timestamp"].as_str().unwrap();
        assert!(stamp.starts_with("20") && stamp.ends_with('Z') && stamp.contains('T'), "{stamp}");

        let second = &lines[1];
        assert_eq!(second["level"], "WARN");
        assert_eq!(second["message"], "inside \"span\"");
        assert_eq!(second["detail"], Awkward.to_string());
        assert_eq!(second["debug"], "\"q\\\"\"");
        assert_eq!(second["span"]["request_id"], "req-1");
        assert_eq!(second["span"]["route"], "/v1/x");
        assert_eq!(second["span"]["late"], 7);
        assert_eq!(second["span"]["name"], "request");

        assert_eq!(lines[2]["span"], serde_json::json!({"name": "bare"}));
    }

    #[test]
    fn timestamps_match_tracing_subscribers_format() {
        use std::time::{Duration, UNIX_EPOCH};
        let rfc3339_micros = |t| String::from_utf8(rfc3339_micros(t).to_vec()).unwrap();
        let at = |secs: u64, micros: u64| UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros);
        assert_eq!(rfc3339_micros(at(0, 0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(at(951_782_400, 7)), "2000-02-29T00:00:00.000007Z");
        assert_eq!(rfc3339_micros(at(1_796_030_837, 784_294)), "2026-11-30T09:27:17.784294Z");
        assert_eq!(rfc3339_micros(at(4_102_444_799, 999_999)), "2099-12-31T23:59:59.999999Z");
        // Against tracing-subscriber's own timer, to the second.
        let mut theirs = String::new();
        let before = rfc3339_micros(std::time::SystemTime::now());
        tracing_subscriber::fmt::time::FormatTime::format_time(
            &tracing_subscriber::fmt::time::SystemTime,
            &mut Writer::new(&mut theirs),
        )
        .unwrap();
        let after = rfc3339_micros(std::time::SystemTime::now());
        assert_eq!(before.len(), theirs.len(), "{before} / {theirs}");
        assert!(before[..16] == theirs[..16] || after[..16] == theirs[..16], "{before} / {theirs} / {after}");
    }

    #[test]
    fn escaping_leaves_plain_text_alone_and_escapes_every_control_character() {
        let mut out = String::new();
        escape(&mut out, "plain é").unwrap();
        assert_eq!(out, "plain é");
        let all: String = (0u8..0x20).map(char::from).chain("\"\\".chars()).collect();
        let mut out = String::from("\"");
        escape(&mut out, &all).unwrap();
        out.push('"');
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), all);
    }
}
