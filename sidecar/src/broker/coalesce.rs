//! Many concurrent requests for the same key, one read: what the resume storm needs, when
//! thousands of clients come back at once and ask Redis the same questions.
//!
//! ```text
//! request(key, req) --> pending[key] += (req, reply)    no drainer for key? spawn one
//! drainer(key): loop { batch = take(pending[key]); empty? remove key, end
//!                      run(key, batch).await }          (run answers every reply of its batch)
//! ```
//!
//! A batch holds exactly the requests that were pending when its read started: a request that
//! arrives while a read is in flight waits for the next one, never joins a read already sent
//! (so a read never predates a request's own subscription: nothing published in between is
//! missed). No fixed delay is added: the next read starts as soon as the previous one returns.
//!
//! Bounded: a key is in the map only while its drainer runs, with at most one pending entry
//! per waiting request. The drainer is its own task, so a client that goes away mid-read
//! cancels nothing for the others; if `run` panics, the key is removed and the waiting
//! requests see their reply dropped (callers fall back to a read of their own).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// A request waiting for the next read of its key, and where its answer goes.
pub type Waiter<Req, Res> = (Req, oneshot::Sender<Res>);

/// What reads one batch and answers each of its waiters.
pub type Run<K, Req, Res> =
    dyn Fn(K, Vec<Waiter<Req, Res>>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// Requests coalesced per key (see the module header).
pub struct Coalesce<K, Req, Res> {
    pending: Mutex<HashMap<K, Vec<Waiter<Req, Res>>>>,
    run: Box<Run<K, Req, Res>>,
}

impl<K, Req, Res> Coalesce<K, Req, Res>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    Req: Send + 'static,
    Res: Send + 'static,
{
    pub fn new(run: Box<Run<K, Req, Res>>) -> Arc<Self> {
        Arc::new(Self {
            pending: Mutex::new(HashMap::new()),
            run,
        })
    }

    /// Queues `req` for the next read of `key`; the answer arrives on the receiver (an error
    /// only if the read panicked).
    pub fn request(self: &Arc<Self>, key: K, req: Req) -> oneshot::Receiver<Res> {
        let (tx, rx) = oneshot::channel();
        let mut pending = self.lock();
        match pending.get_mut(&key) {
            Some(waiting) => waiting.push((req, tx)),
            None => {
                pending.insert(key.clone(), vec![(req, tx)]);
                drop(pending);
                tokio::spawn(self.clone().drain(key));
            }
        }
        rx
    }

    async fn drain(self: Arc<Self>, key: K) {
        let mut guard = Drained {
            owner: &self,
            key: &key,
            armed: true,
        };
        loop {
            let batch = {
                let mut pending = self.lock();
                let Some(waiting) = pending.get_mut(&key) else {
                    break;
                };
                if waiting.is_empty() {
                    pending.remove(&key);
                    break;
                }
                std::mem::take(waiting)
            };
            (self.run)(key.clone(), batch).await;
        }
        // Removed under the lock above: a later drainer of the same key is not ours to end.
        guard.armed = false;
    }

    /// Keys with a drainer running (tests, and to show the map empties).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Vec<Waiter<Req, Res>>>> {
        // Never held across an await nor while running user code: a poison is only a panic
        // in HashMap itself; the map is still consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes the key when a drainer ends early (its `run` panicked), so the next request starts
/// a new drainer and the waiting ones see their replies dropped instead of hanging.
struct Drained<'a, K: Hash + Eq, Req, Res> {
    owner: &'a Coalesce<K, Req, Res>,
    key: &'a K,
    armed: bool,
}

impl<K: Hash + Eq, Req, Res> Drop for Drained<'_, K, Req, Res> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.owner
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.key);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    /// A coalescer whose reads each take a permit of `gate` before answering every request of
    /// their batch with (its value, the batch's size); counts the reads.
    fn gated(
        gate: Arc<Semaphore>,
        reads: Arc<AtomicUsize>,
    ) -> Arc<Coalesce<&'static str, u32, (u32, usize)>> {
        Coalesce::new(Box::new(move |_key, batch| {
            let gate = gate.clone();
            let reads = reads.clone();
            Box::pin(async move {
                reads.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.expect("gate open").forget();
                let n = batch.len();
                for (req, reply) in batch {
                    let _ = reply.send((req, n));
                }
            })
        }))
    }

    const WAIT: Duration = Duration::from_secs(5);

    async fn until(what: &str, cond: impl Fn() -> bool) {
        tokio::time::timeout(WAIT, async {
            while !cond() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{what}"));
    }

    #[tokio::test]
    async fn requests_arriving_during_a_read_share_the_next_one_and_the_map_empties() {
        let gate = Arc::new(Semaphore::new(0));
        let reads = Arc::new(AtomicUsize::new(0));
        let c = gated(gate.clone(), reads.clone());
        let first = c.request("g", 1);
        until("the first read starts", || {
            reads.load(Ordering::SeqCst) == 1
        })
        .await;
        // In flight: these wait for the next read of "g" (never join the one already sent).
        let later: Vec<_> = (2..=5).map(|v| c.request("g", v)).collect();
        let other = c.request("h", 9);
        gate.add_permits(3);
        let answer = |rx: oneshot::Receiver<(u32, usize)>| async move {
            tokio::time::timeout(WAIT, rx)
                .await
                .expect("answered in time")
                .expect("not dropped")
        };
        assert_eq!(answer(first).await, (1, 1));
        for (v, rx) in (2..=5).zip(later) {
            assert_eq!(
                answer(rx).await,
                (v, 4),
                "one read for the four that waited"
            );
        }
        assert_eq!(answer(other).await, (9, 1), "another key reads on its own");
        assert_eq!(reads.load(Ordering::SeqCst), 3, "g twice, h once");
        until("no key left once every read is done", || c.keys() == 0).await;
    }

    #[tokio::test]
    async fn a_panicking_read_drops_its_waiters_and_the_next_request_reads_again() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let c: Arc<Coalesce<&'static str, u32, u32>> =
            Coalesce::new(Box::new(move |_key, batch| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    assert!(n > 0, "the first read fails");
                    for (req, reply) in batch {
                        let _ = reply.send(req * 10);
                    }
                })
            }));
        let failed = tokio::time::timeout(WAIT, c.request("g", 1)).await.unwrap();
        assert!(failed.is_err(), "the waiter sees its reply dropped");
        let ok = tokio::time::timeout(WAIT, c.request("g", 2)).await.unwrap();
        assert_eq!(ok.unwrap(), 20);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
