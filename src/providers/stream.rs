//! Drives a provider-specific translator over an SSE event stream, producing the
//! domain `ChunkStream`. The end-of-stream rule lives in the translator; this
//! driver guarantees that an error is the last item and that EOF is checked.

use futures::{Stream, StreamExt};

use super::sse::SseEvent;
use super::{ChunkStream, ProviderError};
use crate::domain::ChatChunk;

pub enum Step {
    Emit(Box<ChatChunk>),
    Skip,
    /// The protocol's explicit terminator (`[DONE]`); later bytes are ignored.
    Done,
}

pub trait Translator: Send + 'static {
    fn on_event(&mut self, ev: SseEvent) -> Result<Step, ProviderError>;
    /// Called when the body ends without `Step::Done`: is that a clean end?
    fn on_eof(&mut self) -> Result<(), ProviderError>;
}

pub fn drive<S, T>(events: S, translator: T) -> ChunkStream
where
    S: Stream<Item = Result<SseEvent, ProviderError>> + Send + 'static,
    T: Translator,
{
    let state = (Box::pin(events), translator, false);
    Box::pin(futures::stream::unfold(state, |(mut events, mut tr, over)| async move {
        if over {
            return None;
        }
        loop {
            let item = match events.next().await {
                None => tr.on_eof().err().map(Err),
                Some(Err(e)) => Some(Err(e)),
                Some(Ok(ev)) => match tr.on_event(ev) {
                    Ok(Step::Emit(chunk)) => Some(Ok(*chunk)),
                    Ok(Step::Skip) => continue,
                    Ok(Step::Done) => None,
                    Err(e) => Some(Err(e)),
                },
            };
            let stop = !matches!(item, Some(Ok(_)));
            return item.map(|it| (it, (events, tr, stop)));
        }
    }))
}
