//! The list-streaming RPCs of CRI 1.36 (StreamPodSandboxes, StreamContainers, StreamImages and
//! the stats and metrics ones, behind kubelet's CRIListStreaming gate): the same items as the
//! unary list, sent in messages of at least one item each, every item exactly once, then EOF.
//! A message is cut by encoded size, not by count, so a list of any size arrives whole within
//! the 16 MiB a client (kubelet) accepts per message; an empty list is no message at all.

use std::pin::Pin;

use prost::Message;
use tokio_stream::Stream;
use tonic::Status;

/// The answer type of the list-streaming RPCs.
pub type ListStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The most a message's items may take encoded: well under the 16 MiB kubelet (and this
/// server) accept, with room for the few bytes of framing around each item.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// What `item` adds to a message that holds it in a repeated field: its key, its length and
/// its bytes.
fn encoded_in_list<T: Message>(item: &T) -> usize {
    let len = item.encoded_len();
    // Field numbers of the list fields are 1: a one-byte key.
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Cuts `items` into runs, in order, each encoding to at most `limit` bytes; an item larger
/// than that goes alone (no run is empty).
pub fn chunks<T: Message>(items: Vec<T>, limit: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut size = 0usize;
    for item in items {
        let len = encoded_in_list(&item);
        if !current.is_empty() && size + len > limit {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The stream of `items` in messages made by `wrap`, each under [`CHUNK_BYTES`].
pub fn stream<T, R>(items: Vec<T>, wrap: fn(Vec<T>) -> R) -> ListStream<R>
where
    T: Message,
    R: Send + 'static,
{
    let messages: Vec<Result<R, Status>> = chunks(items, CHUNK_BYTES)
        .into_iter()
        .map(|chunk| Ok(wrap(chunk)))
        .collect();
    Box::pin(tokio_stream::iter(messages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri;

    fn container(i: usize, annotation_bytes: usize) -> cri::Container {
        cri::Container {
            id: format!("c{i}"),
            annotations: [("a".to_string(), "x".repeat(annotation_bytes))].into(),
            ..Default::default()
        }
    }

    #[test]
    fn chunks_are_cut_by_encoded_size_and_keep_every_item_once_in_order() {
        let items: Vec<_> = (0..1000).map(|i| container(i, 10_000 + i)).collect();
        let limit = 100_000;
        let runs = chunks(items.clone(), limit);
        assert!(runs.len() > 100, "{} runs", runs.len());
        for run in &runs {
            assert!(!run.is_empty());
            let message = cri::StreamContainersResponse {
                containers: run.clone(),
            };
            assert!(message.encoded_len() <= limit, "{}", message.encoded_len());
        }
        let flat: Vec<_> = runs.into_iter().flatten().collect();
        assert_eq!(flat, items);
    }

    #[test]
    fn a_message_fills_up_to_the_limit_exactly() {
        let one = container(0, 100);
        let limit = cri::StreamContainersResponse {
            containers: vec![one.clone(), one.clone()],
        }
        .encoded_len();
        let runs = chunks(vec![one.clone(), one.clone(), one.clone()], limit);
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    }

    #[test]
    fn an_item_over_the_limit_goes_alone_and_nothing_is_empty() {
        let items = vec![container(0, 10), container(1, 5000), container(2, 10)];
        let runs = chunks(items, 1000);
        assert_eq!(runs.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
        assert!(chunks(Vec::<cri::Container>::new(), 1000).is_empty());
    }
}
