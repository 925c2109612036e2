//! Gemini `alt=sse` → domain chunks. There is no `[DONE]`: the stream ends at
//! EOF, and EOF before any `finishReason` means it was truncated.

use super::{convert, wire};
use crate::domain::{FinishReason, Usage};
use crate::providers::ProviderError;
use crate::providers::sse::SseEvent;
use crate::providers::stream::{Step, Translator};

pub struct GeminiTranslator {
    pub model: String,
    pub finished: bool,
    pub usage: Option<Usage>,
}

impl Translator for GeminiTranslator {
    fn on_event(&mut self, ev: SseEvent) -> Result<Step, ProviderError> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(Step::Skip);
        }
        let response: wire::Response =
            serde_json::from_str(data).map_err(|e| crate::providers::http::decode_error("stream chunk", &e))?;
        if let Some(error) = &response.error {
            let status = error.get("status").and_then(|s| s.as_str()).unwrap_or("unknown");
            return Err(ProviderError::Interrupted(format!("upstream error event ({status})")));
        }
        let mut chunk = convert::chunk_from_wire(response, &self.model);
        // Gemini repeats running usage on many chunks; the last one seen is
        // the total, whether or not it rides on the finishing chunk.
        if let Some(usage) = chunk.usage.take() {
            self.usage = Some(usage);
        }
        if let Some(finish) = &chunk.finish_reason {
            if *finish == FinishReason::Error {
                return Err(ProviderError::Interrupted("upstream finished with an error".into()));
            }
            chunk.usage = self.usage;
        }
        self.finished |= chunk.finish_reason.is_some();
        Ok(Step::Emit(Box::new(chunk)))
    }

    fn on_eof(&mut self) -> Result<(), ProviderError> {
        if self.finished {
            Ok(())
        } else {
            Err(ProviderError::Interrupted("stream ended without a finishReason".into()))
        }
    }
}
