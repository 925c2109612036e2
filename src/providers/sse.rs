//! A bounded Server-Sent Events decoder. Written by hand because the common
//! crates buffer without limit; here a line longer than `max_line` or an event
//! larger than `max_event` is an error, so a hostile upstream cannot grow our
//! memory. Accepts `\n`, `\r\n` and `\r` line ends (Gemini sends CRLF), joins
//! multi-line `data:`, skips comments (`: keep-alive`) and `id:` / `retry:`.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, when present (`error` marks an error event).
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SseError {
    #[error("SSE line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("SSE event larger than {0} bytes")]
    EventTooLarge(usize),
    #[error("SSE line is not valid UTF-8")]
    InvalidUtf8,
}

#[derive(Debug, Clone, Copy)]
pub struct SseLimits {
    pub max_line: usize,
    pub max_event: usize,
}

impl Default for SseLimits {
    fn default() -> Self {
        Self { max_line: 1024 * 1024, max_event: 4 * 1024 * 1024 }
    }
}

#[derive(Debug, Default)]
pub struct SseDecoder {
    limits: SseLimits,
    line: Vec<u8>,
    /// The previous line ended in `\r`; a `\n` right after it belongs to it.
    skip_lf: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    /// Whether the first line was seen (a UTF-8 BOM before it is skipped).
    started: bool,
}

impl SseDecoder {
    pub fn new(limits: SseLimits) -> Self {
        Self { limits, ..Self::default() }
    }

    /// Feeds bytes; complete events are pushed to `out`.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        while !bytes.is_empty() {
            if self.skip_lf {
                self.skip_lf = false;
                if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                    continue;
                }
            }
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(pos) => {
                    self.push_line_bytes(&bytes[..pos])?;
                    self.skip_lf = bytes[pos] == b'\r';
                    bytes = &bytes[pos + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.process_line(&line, out)?;
                    self.line = line;
                    self.line.clear();
                }
                None => {
                    self.push_line_bytes(bytes)?;
                    bytes = &[];
                }
            }
        }
        Ok(())
    }

    /// End of input: a final unterminated line or event is delivered rather than
    /// dropped (some servers omit the last blank line).
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
        }
        self.process_line(b"", out)
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.limits.max_line {
            return Err(SseError::LineTooLong(self.limits.max_line));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let line = if std::mem::replace(&mut self.started, true) {
            line
        } else {
            line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line)
        };
        if line.is_empty() {
            if self.has_data {
                out.push(SseEvent { event: self.event.take(), data: std::mem::take(&mut self.data) });
            }
            self.has_data = false;
            self.event = None;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::InvalidUtf8)?;
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                let extra = value.len() + usize::from(self.has_data);
                if self.data.len() + extra > self.limits.max_event {
                    return Err(SseError::EventTooLarge(self.limits.max_event));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], split: usize) -> Result<Vec<SseEvent>, SseError> {
        let mut dec = SseDecoder::new(SseLimits::default());
        let mut out = Vec::new();
        for piece in input.chunks(split.max(1)) {
            dec.feed(piece, &mut out)?;
        }
        dec.finish(&mut out)?;
        Ok(out)
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn every_line_ending_and_every_split_point_give_the_same_events() {
        let lf = "data: a\n\n: comment\ndata: b\ndata: c\n\nevent: error\ndata: {}\n\ndata: [DONE]\n\n";
        for text in [lf.to_owned(), lf.replace('\n', "\r\n"), lf.replace('\n', "\r")] {
            for split in 1..=text.len() {
                let events = decode_all(text.as_bytes(), split).unwrap();
                assert_eq!(data(&events), ["a", "b\nc", "{}", "[DONE]"], "split {split} of {text:?}");
                assert_eq!(events[2].event.as_deref(), Some("error"));
                assert_eq!(events[0].event, None);
            }
        }
    }

    #[test]
    fn a_leading_bom_is_skipped() {
        assert_eq!(data(&decode_all(b"\xEF\xBB\xBFdata: x\n\n", 2).unwrap()), ["x"]);
    }

    #[test]
    fn unterminated_final_event_is_delivered() {
        assert_eq!(data(&decode_all(b"data: tail", 3).unwrap()), ["tail"]);
    }

    #[test]
    fn multibyte_text_split_across_feeds_survives() {
        let text = "data: Olá, café ☕\n\n";
        for split in 1..text.len() {
            assert_eq!(data(&decode_all(text.as_bytes(), split).unwrap()), ["Olá, café ☕"]);
        }
    }

    #[test]
    fn oversized_lines_and_events_are_errors_not_buffers() {
        let limits = SseLimits { max_line: 16, max_event: 24 };
        let mut dec = SseDecoder::new(limits);
        let mut out = Vec::new();
        assert_eq!(dec.feed(&[b'x'; 64], &mut out), Err(SseError::LineTooLong(16)));

        let mut dec = SseDecoder::new(limits);
        let many = "data: 0123456789\n".repeat(3);
        assert_eq!(dec.feed(many.as_bytes(), &mut out), Err(SseError::EventTooLarge(24)));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        assert_eq!(decode_all(b"data: \xff\xfe\n\n", 4), Err(SseError::InvalidUtf8));
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_eventsource_stream_oracle_on_lf_input(
            datas in proptest::collection::vec("[a-zA-Z0-9{}\":,][a-zA-Z0-9 {}\":,]{0,19}", 1..6),
            split in 1usize..32,
        ) {
            let text: String = datas.iter().map(|d| format!("data: {d}\n\n")).collect();
            let ours = decode_all(text.as_bytes(), split).unwrap();
            let theirs = futures::executor::block_on(async {
                use eventsource_stream::Eventsource;
                use futures::StreamExt;
                let chunks: Vec<Result<bytes::Bytes, std::convert::Infallible>> =
                    text.as_bytes().chunks(split).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
                futures::stream::iter(chunks).eventsource().map(|e| e.unwrap().data).collect::<Vec<_>>().await
            });
            proptest::prop_assert_eq!(data(&ours), theirs.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
}
