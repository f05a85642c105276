//! The group-commit queue both backends share: requests wait on a channel, a writer takes
//! every request queued (up to [`MAX_GROUP`] events), commits them in one transaction and
//! answers each request once its group has committed.

use tokio::sync::{mpsc, oneshot};

use super::{Inserted, StoreError};
use crate::event::NewEvent;

/// Largest number of events committed in one transaction.
pub(super) const MAX_GROUP: usize = 2048;

/// Where a request's outcome goes: one per event, in order.
pub(super) type Reply = oneshot::Sender<Result<Vec<Inserted>, StoreError>>;

/// The requests one transaction commits.
pub(super) type Group = Vec<(Vec<NewEvent>, Reply)>;

pub(super) enum WriteReq {
    Insert(Vec<NewEvent>, Reply),
    Shutdown(oneshot::Sender<()>),
}

/// The requesting side of a writer.
pub(super) struct Writer(mpsc::Sender<WriteReq>);

impl Writer {
    /// A writer handle and the queue its writer serves.
    pub(super) fn channel() -> (Writer, mpsc::Receiver<WriteReq>) {
        let (tx, rx) = mpsc::channel(8 * MAX_GROUP);
        (Writer(tx), rx)
    }

    /// Queues `events` and waits until their group has committed.
    pub(super) async fn insert_many(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Inserted>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.0
            .send(WriteReq::Insert(events, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub(super) async fn insert(&self, event: NewEvent) -> Result<Inserted, StoreError> {
        let mut out = self.insert_many(vec![event]).await?;
        out.pop()
            .ok_or_else(|| StoreError::Other("writer returned no outcome".into()))
    }

    /// Whether the writer has stopped.
    pub(super) fn is_closed(&self) -> bool {
        self.0.is_closed()
    }

    /// Asks the writer to commit what is queued and stop; waits until it has.
    pub(super) async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(WriteReq::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Adds `first` and whatever is queued behind it (up to [`MAX_GROUP`] events) to `group`.
/// On a shutdown request it closes the queue, adds what raced in before that, and returns
/// the acknowledgement to send once the group has committed.
pub(super) fn gather(
    first: WriteReq,
    rx: &mut mpsc::Receiver<WriteReq>,
    group: &mut Group,
) -> Option<oneshot::Sender<()>> {
    let mut queued = Some(first);
    let mut events = 0;
    while let Some(req) = queued.take() {
        match req {
            WriteReq::Insert(evs, reply) => {
                events += evs.len();
                group.push((evs, reply));
            }
            WriteReq::Shutdown(ack) => {
                rx.close();
                while let Ok(WriteReq::Insert(evs, reply)) = rx.try_recv() {
                    group.push((evs, reply));
                }
                return Some(ack);
            }
        }
        if events < MAX_GROUP {
            queued = rx.try_recv().ok();
        }
    }
    None
}

/// When the background search indexer may work: it stays out of the writer's way while
/// groups keep committing (it works once none has for [`IDLE_MS`]) and while a bulk load
/// (a backfill, a poll) holds it off; the events it has not reached are scanned instead.
#[derive(Debug, Default)]
pub(crate) struct IndexerGate {
    last_commit: std::sync::atomic::AtomicI64,
    holds: std::sync::atomic::AtomicUsize,
}

/// How long the writer must have been idle before the indexer works.
pub(super) const IDLE_MS: i64 = 100;

impl IndexerGate {
    /// The writer committed a group.
    pub(super) fn committed(&self) {
        self.last_commit
            .store(crate::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the indexer should wait now.
    pub(super) fn should_wait(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.holds.load(Ordering::Relaxed) > 0
            || crate::now_ms() - self.last_commit.load(Ordering::Relaxed) < IDLE_MS
    }
}

/// Holds the background indexer off while it lives (see [`super::Store::hold_indexer`]).
#[must_use = "the indexer is held off only while the hold lives"]
pub struct IndexerHold(std::sync::Arc<IndexerGate>);

impl IndexerHold {
    pub(super) fn new(gate: std::sync::Arc<IndexerGate>) -> Self {
        gate.holds
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(gate)
    }
}

impl Drop for IndexerHold {
    fn drop(&mut self) {
        self.0
            .holds
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
