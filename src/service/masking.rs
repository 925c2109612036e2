//! Outbound PII masking around a provider call: the request's messages carry
//! placeholders (`[EMAIL_1]`) instead of values, and the answer gets the
//! values back, streamed answers included (a placeholder may be split
//! across chunks; the `Restorer` holds such a tail until it is decided).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};

use crate::domain::{ChatChunk, ChatRequest};
use crate::providers::{ChunkStream, ProviderError};
use crate::security::{Mask, PiiPolicy, Restorer};

/// Masks `req`'s messages as the policy says for `agent`.
pub fn mask_request(policy: &PiiPolicy, agent: Option<&str>, req: &mut ChatRequest) -> Option<Arc<Mask>> {
    let mut texts: Vec<&mut String> = req.messages.iter_mut().map(|m| &mut m.content).collect();
    policy.mask(agent, &mut texts)
}

/// Restores one chunk's text; a chunk that finishes the choice also carries
/// whatever was held back.
fn restore_chunk(restorer: &mut Restorer, chunk: &mut ChatChunk) {
    if let Some(text) = chunk.content.as_mut() {
        *text = restorer.push(text);
    }
    if chunk.finish_reason.is_some() {
        let rest = restorer.finish();
        if !rest.is_empty() {
            chunk.content.get_or_insert_with(String::new).push_str(&rest);
        }
    }
}

/// `first` and `rest` with every placeholder of `mask` restored.
pub fn unmask_stream(mask: Arc<Mask>, first: &mut Option<ChatChunk>, rest: ChunkStream) -> ChunkStream {
    let mut restorer = Restorer::new(mask);
    if let Some(chunk) = first.as_mut() {
        restore_chunk(&mut restorer, chunk);
    }
    Box::pin(Unmasked { inner: rest, restorer, ended: false, error: None })
}

struct Unmasked {
    inner: ChunkStream,
    restorer: Restorer,
    ended: bool,
    /// An upstream error, delivered after the text held back before it.
    error: Option<ProviderError>,
}

impl Stream for Unmasked {
    type Item = Result<ChatChunk, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(e) = this.error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        match std::task::ready!(this.inner.poll_next_unpin(cx)) {
            Some(Ok(mut chunk)) => {
                restore_chunk(&mut this.restorer, &mut chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Some(Err(e)) => {
                // What the provider did send reaches the client before the error.
                this.ended = true;
                let rest = this.restorer.finish();
                if rest.is_empty() {
                    return Poll::Ready(Some(Err(e)));
                }
                this.error = Some(e);
                Poll::Ready(Some(Ok(ChatChunk { content: Some(rest), ..ChatChunk::default() })))
            }
            None => {
                // A stream that ends without a finish reason still gets its tail.
                this.ended = true;
                let rest = this.restorer.finish();
                Poll::Ready((!rest.is_empty()).then(|| Ok(ChatChunk { content: Some(rest), ..ChatChunk::default() })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::pii::{Detector, mask};

    fn chunk(text: &str) -> Result<ChatChunk, ProviderError> {
        Ok(ChatChunk { content: Some(text.to_owned()), ..ChatChunk::default() })
    }

    #[tokio::test]
    async fn text_held_back_before_an_error_is_delivered_first() {
        let mut prompt = "mail ana@example.com".to_owned();
        let m = Arc::new(mask(&Detector::new(), |_| true, &mut [&mut prompt]));
        assert_eq!(prompt, "mail [EMAIL_1]");
        let upstream = vec![chunk("sent to [EMAIL_1], see [EMA"), Err(ProviderError::Upstream { status: 502 })];
        let mut first = None;
        let items: Vec<_> = unmask_stream(m, &mut first, Box::pin(futures::stream::iter(upstream))).collect().await;
        let text: Vec<Option<String>> = items.iter().map(|i| i.as_ref().ok().and_then(|c| c.content.clone())).collect();
        assert_eq!(text, [Some("sent to ana@example.com, see ".to_owned()), Some("[EMA".to_owned()), None]);
        assert!(matches!(items[2], Err(ProviderError::Upstream { status: 502 })));
    }
}
