//! The model thread's side of a query: what it owns ([`Models`]), the queue of images waiting
//! for it, and micro-batching. Queries that arrive while the thread is busy wait in the queue;
//! whichever job runs first takes up to `search.max_batch` of them and classifies them as one
//! batch. A query whose requester has gone (it timed out, or the shopper's request was dropped)
//! is taken out of the queue unclassified, so no forward pass is spent on it.

use std::sync::Mutex;
use std::time::Instant;

use image::RgbImage;

use super::{millis, SearchError};
use crate::config::EmbeddingSource;
use crate::decide::ImageVote;
use crate::index::EmbeddingKey;
use crate::text::{Intent, IntentReader};
use crate::vision::ensemble::Ensemble;

/// Everything the model thread owns; nothing outside this module reaches it.
pub(super) struct Models {
    /// The ensembles loaded, each with the embedding key its vectors match. Usually one; while
    /// a re-index embeds the catalogue for new heads, the new ones too (see [`upkeep`]).
    pub ensembles: Vec<(EmbeddingKey, Ensemble)>,
    pub intent: IntentReader,
}

impl Models {
    /// The ensemble queries are answered with (the newest, once a swap is done).
    pub fn current(&self) -> &Ensemble {
        &self.ensembles[0].1
    }

    /// The ensemble whose vectors match `key`, or why there is none.
    pub fn matching(&self, key: &EmbeddingKey) -> Result<&Ensemble, String> {
        self.ensembles.iter().find(|(k, _)| k == key).map(|(_, e)| e).ok_or_else(|| "the heads were replaced during this search: search again".to_string())
    }
}

/// What the model thread hands back for one image.
pub(super) struct Understood {
    pub(super) vote: ImageVote,
    /// The vector the index is searched with (`index.embedding`).
    pub(super) embedding: Vec<f32>,
    /// Words alone with the clip embedder: the sentence's clip vector, compared with the items'
    /// pictures. Empty otherwise.
    pub(super) pictures: Vec<f32>,
    pub(super) intent: Option<Intent>,
    /// Waiting in the queue, before its batch started.
    pub(super) queue_ms: f64,
    /// The batch's forward passes, shared by every query in it.
    pub(super) vision_ms: f64,
    pub(super) text_ms: f64,
    /// Queries in the batch, this one included.
    pub(super) batch: usize,
}

pub(super) struct Pending {
    pub(super) image: RgbImage,
    pub(super) text: Option<String>,
    pub(super) queued: Instant,
    /// The key of the generation the query searches: its image goes through the ensemble that matches it.
    pub(super) key: EmbeddingKey,
    pub(super) answer: tokio::sync::oneshot::Sender<Result<Understood, SearchError>>,
}

/// The queue of images waiting for the model thread, with its batch cap.
pub(super) struct Queue {
    waiting: Mutex<Vec<Pending>>,
    max_batch: usize,
}

impl Queue {
    pub fn new(max_batch: usize) -> Queue {
        Queue { waiting: Mutex::new(Vec::new()), max_batch: max_batch.max(1) }
    }

    pub fn push(&self, pending: Pending) {
        self.waiting.lock().expect("queue lock").push(pending);
    }

    /// The next batch: the oldest waiting queries whose requesters still wait, at most
    /// `max_batch` of them; the others stay queued for the next job (every query queues a job).
    fn take_batch(&self) -> Vec<Pending> {
        let mut waiting = self.waiting.lock().expect("queue lock");
        let before = waiting.len();
        waiting.retain(|p| !p.answer.is_closed());
        if waiting.len() < before {
            tracing::debug!(dropped = before - waiting.len(), "queries whose requester has gone were not classified");
        }
        let take = waiting.len().min(self.max_batch);
        waiting.drain(..take).collect()
    }
}

/// Runs on the model thread: classifies the next batch of queued images (one batch per
/// ensemble while new heads are being swapped in), then reads each sentence, and answers each
/// query.
pub(super) fn classify_pending(models: &mut Models, queue: &Queue, source: EmbeddingSource) {
    let mut batch = queue.take_batch();
    // An earlier job may have taken every query into its batch: then there is nothing to do.
    while let Some(key) = batch.first().map(|p| p.key.clone()) {
        let (group, rest): (Vec<Pending>, Vec<Pending>) = batch.into_iter().partition(|p| p.key == key);
        batch = rest;
        classify_group(models, group, &key, source);
    }
}

fn classify_group(models: &mut Models, group: Vec<Pending>, key: &EmbeddingKey, source: EmbeddingSource) {
    let started = Instant::now();
    let size = group.len();
    crate::metrics::METRICS.batch(size);
    let (images, rest): (Vec<RgbImage>, Vec<_>) = group.into_iter().map(|p| (p.image, (p.text, p.queued, p.answer))).unzip();
    let classified = models.matching(key).and_then(|ensemble| {
        ensemble.classify(&images, true).map_err(|err| {
            tracing::error!(cause = %format!("{err:#}"), batch = size, "the models failed on a batch");
            "the models failed on this image (see the log)".to_string()
        })
    });
    let classified = match classified {
        Ok(classified) => classified,
        Err(err) => {
            for (_, _, answer) in rest {
                let _ = answer.send(Err(SearchError::Models(err.clone())));
            }
            return;
        }
    };
    let vision_ms = millis(started.elapsed());
    for (classification, (text, queued, answer)) in classified.into_iter().zip(rest) {
        let text_started = Instant::now();
        let intent = match text.filter(|t| !t.trim().is_empty()).map(|t| models.intent.read(&t)).transpose() {
            Ok(intent) => intent,
            Err(err) => {
                let _ = answer.send(Err(SearchError::Models(format!("{err:#}"))));
                continue;
            }
        };
        let _ = answer.send(Ok(Understood {
            embedding: classification.embedding(source),
            pictures: Vec::new(),
            vote: classification.vote,
            intent,
            queue_ms: millis(started.duration_since(queued)),
            vision_ms,
            text_ms: millis(text_started.elapsed()),
            batch: size,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> EmbeddingKey {
        EmbeddingKey { profile: "kit".into(), backbones: vec![], source: "combined".into(), pooling: String::new(), weights_sha256: String::new(), dim: 4 }
    }

    /// A queued query whose text names it, and the receiver its requester waits on.
    fn query(name: &str) -> (Pending, tokio::sync::oneshot::Receiver<Result<Understood, SearchError>>) {
        let (answer, answered) = tokio::sync::oneshot::channel();
        (Pending { image: RgbImage::new(1, 1), text: Some(name.into()), queued: Instant::now(), key: key(), answer }, answered)
    }

    #[test]
    fn a_batch_is_capped_oldest_first_and_skips_queries_whose_requester_left() {
        let queue = Queue::new(2);
        let mut waiting = Vec::new();
        for name in ["a", "b", "c", "d", "e"] {
            let (pending, answered) = query(name);
            queue.push(pending);
            waiting.push(answered);
        }
        // b and d timed out: their requesters dropped the receivers.
        drop(waiting.remove(3));
        drop(waiting.remove(1));
        let names = |batch: Vec<Pending>| batch.into_iter().map(|p| p.text.unwrap()).collect::<Vec<_>>();
        assert_eq!(names(queue.take_batch()), ["a", "c"], "at most max_batch, oldest first, b never classified");
        assert_eq!(names(queue.take_batch()), ["e"], "d was dropped unclassified");
        assert!(queue.take_batch().is_empty(), "a later job finds nothing left");
    }
}
