//! Folds concurrent requests on one key into batches, so that one transaction serves many.
//!
//! Why: every reference add compare-and-swaps its audio record. Run one by one, concurrent
//! adds to one popular audio lose to each other and back off; one add per commit wins.
//! Batched, the adds waiting on one audio commit together in a single transaction.
//!
//! How: the first request on a key leads; the others queue. The leader takes what is queued
//! (up to a batch size), runs the batch, answers each request, then hands the lead to the
//! next queued request. At most one batch per key runs at a time in this process; other
//! processes (other Lambda sandboxes) still race through the index's conditions, as before.
//!
//! Cancellation: the lead is a guard whose drop hands it on, so a leader whose future is
//! dropped (a client that hung up) never strands the queue. Requests whose answer it was
//! carrying see their sender dropped and join again; every request it batches is
//! idempotent, so a batch that committed before the drop answers the same the second time.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// What batches are keyed by.
pub(crate) trait BatchKey: Eq + Hash + Clone {}
impl<K: Eq + Hash + Clone> BatchKey for K {}

/// After this many lost leaders in a row a request runs alone, outside the queue.
const MAX_REJOINS: usize = 16;

enum Message<K: BatchKey, R: Clone, T> {
    Done(T),
    Lead(Lead<K, R, T>),
}

struct Waiting<K: BatchKey, R: Clone, T> {
    request: R,
    reply: oneshot::Sender<Message<K, R, T>>,
}

type Queues<K, R, T> = HashMap<K, VecDeque<Waiting<K, R, T>>>;

/// Queues of waiting requests, one per key with a batch running.
pub(crate) struct Combiner<K: BatchKey, R: Clone, T> {
    queues: Mutex<Queues<K, R, T>>,
}

impl<K: BatchKey, R: Clone, T> Default for Combiner<K, R, T> {
    fn default() -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
        }
    }
}

/// What joining gives: the answer, computed by another request's batch, or the lead.
pub(crate) enum Turn<K: BatchKey, R: Clone, T> {
    Done(T),
    Lead(Lead<K, R, T>),
}

/// The right to run the next batch for a key. Dropping it hands it to the next request.
pub(crate) struct Lead<K: BatchKey, R: Clone, T> {
    combiner: Arc<Combiner<K, R, T>>,
    key: K,
    /// False for a request running alone (not registered in the queues).
    armed: bool,
}

/// A request taken into a batch: answer it with `send`.
pub(crate) struct Taken<K: BatchKey, R: Clone, T> {
    reply: oneshot::Sender<Message<K, R, T>>,
}

impl<K: BatchKey, R: Clone, T> Taken<K, R, T> {
    pub fn send(self, answer: T) {
        // A receiver that is gone was cancelled; it has nobody to tell.
        let _ = self.reply.send(Message::Done(answer));
    }
}

impl<K: BatchKey, R: Clone, T> Combiner<K, R, T> {
    fn lock(&self) -> MutexGuard<'_, Queues<K, R, T>> {
        // The map stays consistent even if a holder panicked: every change is one call.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the queue for `key`: leads at once if no batch for it is running, else waits
    /// for the batch that carries `request` to answer, or for the lead.
    pub async fn join(self: &Arc<Self>, key: K, request: &R) -> Turn<K, R, T> {
        for _ in 0..MAX_REJOINS {
            let rx = {
                let mut queues = self.lock();
                match queues.get_mut(&key) {
                    Some(queue) => {
                        let (reply, rx) = oneshot::channel();
                        queue.push_back(Waiting {
                            request: request.clone(),
                            reply,
                        });
                        rx
                    }
                    None => {
                        queues.insert(key.clone(), VecDeque::new());
                        return Turn::Lead(self.lead(key, true));
                    }
                }
            };
            match rx.await {
                Ok(Message::Done(answer)) => return Turn::Done(answer),
                Ok(Message::Lead(lead)) => return Turn::Lead(lead),
                // The leader carrying us was dropped mid-batch: queue again.
                Err(_) => continue,
            }
        }
        Turn::Lead(self.lead(key, false))
    }

    fn lead(self: &Arc<Self>, key: K, armed: bool) -> Lead<K, R, T> {
        Lead {
            combiner: self.clone(),
            key,
            armed,
        }
    }

    /// Passes the lead for `key` to the first queued request still listening, or retires
    /// the queue if none is.
    fn hand_off(self: &Arc<Self>, key: &K) {
        loop {
            let next = {
                let mut queues = self.lock();
                match queues.get_mut(key).and_then(VecDeque::pop_front) {
                    Some(next) => next,
                    None => {
                        queues.remove(key);
                        return;
                    }
                }
            };
            match next.reply.send(Message::Lead(self.lead(key.clone(), true))) {
                Ok(()) => return,
                // Cancelled while queued: disarm the returned lead and try the next one.
                Err(Message::Lead(mut lead)) => lead.armed = false,
                Err(Message::Done(_)) => return,
            }
        }
    }
}

impl<K: BatchKey, R: Clone, T> Lead<K, R, T> {
    /// Moves queued requests into `batch` (which holds the leader's own) until it has
    /// `max_len`, skipping those `fits` refuses (they stay queued, in order, for a later
    /// batch). Returns the replies for `batch[1..]`, in order.
    pub fn take(
        &self,
        batch: &mut Vec<R>,
        max_len: usize,
        fits: impl Fn(&[R], &R) -> bool,
    ) -> Vec<Taken<K, R, T>> {
        let mut taken = Vec::new();
        if !self.armed {
            return taken;
        }
        let mut queues = self.combiner.lock();
        let Some(queue) = queues.get_mut(&self.key) else {
            return taken;
        };
        let mut kept = VecDeque::with_capacity(queue.len());
        while let Some(w) = queue.pop_front() {
            if batch.len() < max_len && !w.reply.is_closed() && fits(batch, &w.request) {
                batch.push(w.request);
                taken.push(Taken { reply: w.reply });
            } else if !w.reply.is_closed() {
                kept.push_back(w);
            }
        }
        *queue = kept;
        taken
    }
}

impl<K: BatchKey, R: Clone, T> Drop for Lead<K, R, T> {
    fn drop(&mut self) {
        if self.armed {
            self.armed = false;
            self.combiner.hand_off(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type C = Combiner<u8, u32, &'static str>;

    async fn within<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .expect("stranded")
    }

    #[tokio::test]
    async fn the_lead_skips_cancelled_waiters_and_retires_the_empty_queue() {
        let c = Arc::new(C::default());
        let Turn::Lead(first) = c.join(1, &10).await else {
            panic!("the first request leads");
        };
        let gone = tokio::spawn({
            let c = c.clone();
            async move { c.join(1, &11).await }
        });
        let next = tokio::spawn({
            let c = c.clone();
            async move { matches!(c.join(1, &12).await, Turn::Lead(_)) }
        });
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        drop(first);
        assert!(within(next).await.unwrap(), "the live waiter got the lead");
        // Its lead was dropped with its task: the queue is gone, a new request leads at once.
        assert!(matches!(within(c.join(1, &13)).await, Turn::Lead(_)));
    }

    #[tokio::test]
    async fn take_answers_in_order_and_leaves_refused_requests_queued() {
        let c = Arc::new(C::default());
        let Turn::Lead(lead) = c.join(7, &1).await else {
            panic!("the first request leads");
        };
        let waiters: Vec<_> = [2, 3, 2]
            .into_iter()
            .map(|r| {
                let c = c.clone();
                tokio::spawn(async move {
                    match c.join(7, &r).await {
                        Turn::Done(a) => a,
                        Turn::Lead(_) => "led",
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        let mut batch = vec![1];
        let taken = lead.take(&mut batch, 10, |chosen, r| !chosen.contains(r));
        assert_eq!(batch, [1, 2, 3], "the second 2 waits for a later batch");
        for (t, answer) in taken.into_iter().zip(["two", "three"]) {
            t.send(answer);
        }
        drop(lead);
        let mut answers = Vec::new();
        for w in waiters {
            answers.push(within(w).await.unwrap());
        }
        assert_eq!(answers, ["two", "three", "led"]);
    }
}
