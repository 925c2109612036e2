//! OpenAI-style SSE → domain chunks. The stream must end with `[DONE]` or at
//! least a finish reason; an error event or a bare EOF is an interruption.

use super::{convert, wire};
use crate::domain::{ChatChunk, FinishReason};
use crate::providers::ProviderError;
use crate::providers::sse::SseEvent;
use crate::providers::stream::{Step, Translator};

#[derive(Default)]
pub struct OpenAiTranslator {
    finished: bool,
}

impl Translator for OpenAiTranslator {
    fn on_event(&mut self, ev: SseEvent) -> Result<Step, ProviderError> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            return Ok(Step::Done);
        }
        if ev.event.as_deref() == Some("error") {
            return Err(ProviderError::Interrupted("upstream error event".into()));
        }
        if data.is_empty() {
            return Ok(Step::Skip);
        }
        let chunk: wire::Chunk =
            serde_json::from_str(data).map_err(|e| crate::providers::http::decode_error("stream chunk", &e))?;
        if let Some(error) = &chunk.error {
            return Err(ProviderError::Interrupted(convert::describe_stream_error(error)));
        }
        if let Some(reason) = chunk.extra.get("x_groq").and_then(|x| x.get("error")).and_then(|e| e.as_str()) {
            return Err(ProviderError::Interrupted(format!("upstream stopped early: {reason}")));
        }
        let chunk: ChatChunk = convert::chunk_from_wire(chunk);
        // OpenRouter `error`, DeepSeek `insufficient_system_resource`: the
        // answer is incomplete, so it must not end like a complete one.
        if chunk.finish_reason == Some(FinishReason::Error) {
            return Err(ProviderError::Interrupted("upstream finished with an error".into()));
        }
        self.finished |= chunk.finish_reason.is_some();
        Ok(Step::Emit(Box::new(chunk)))
    }

    fn on_eof(&mut self) -> Result<(), ProviderError> {
        if self.finished { Ok(()) } else { Err(ProviderError::Interrupted("stream ended before [DONE]".into())) }
    }
}
