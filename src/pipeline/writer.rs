//! The store writer every stage shares: sessions on the engine thread send what they finished,
//! one task commits it to SQLite and only then answers "durable; go on" (or "stop"). A session
//! waits for that answer before it asks for its next turn, so a kill -9 loses at most the turns
//! in flight, and a store that fails stops the whole run (nothing after it could be made
//! durable). Generate's steps, label's judgments and eval's verdicts differ only in what is
//! committed: each stage implements [`Commit`] for its write type.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::PipelineError;
use crate::engine::StopSignal;
use crate::store::StoreError;

/// A write and the channel that answers once it is durable: true to go on, false to stop.
struct Request<W> {
    write: W,
    ack: oneshot::Sender<bool>,
}

/// The sessions' end of the writer: cloned into every session of a run.
pub struct Writer<W>(mpsc::Sender<Request<W>>);

impl<W> Clone for Writer<W> {
    fn clone(&self) -> Self {
        Writer(self.0.clone())
    }
}

impl<W> Writer<W> {
    /// Hands `write` to the store writer from the engine thread (blocking while the queue is
    /// full). The receiver resolves once it is durable; if the writer is gone it reports
    /// closed, which ends the session.
    pub fn send(&self, write: W) -> oneshot::Receiver<bool> {
        let (ack, rx) = oneshot::channel();
        let _ = self.0.blocking_send(Request { write, ack });
        rx
    }
}

/// How a stage makes its writes durable.
pub trait Commit<W>: Send + 'static {
    /// Commits `write`; true when its session may go on (a recorded failure ends it).
    fn commit(&mut self, write: W) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// A writer queue of `capacity` writes: the sessions' end, and its receiver for [`spawn`].
pub fn channel<W>(capacity: usize) -> (Writer<W>, Inbox<W>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (Writer(tx), Inbox(rx))
}

/// The store's end of a writer queue.
pub struct Inbox<W>(mpsc::Receiver<Request<W>>);

/// Starts the writer task: it commits each write with `committer`, then acknowledges it (go on
/// unless the write ended its session or a stop was asked for); it ends when every [`Writer`]
/// is gone and returns the committer (with whatever it counted). A store error aborts the run.
pub fn spawn<W: Send + 'static, C: Commit<W>>(
    Inbox(mut rx): Inbox<W>,
    mut committer: C,
    stop: StopSignal,
) -> tokio::task::JoinHandle<Result<C, PipelineError>> {
    tokio::spawn(async move {
        while let Some(Request { write, ack }) = rx.recv().await {
            match committer.commit(write).await {
                Ok(go_on) => {
                    let _ = ack.send(go_on && !stop.draining());
                }
                Err(e) => {
                    stop.abort();
                    let _ = ack.send(false);
                    return Err(e.into());
                }
            }
        }
        Ok(committer)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts writes; fails at `fail_at`; a write of 0 ends its session.
    struct Counter {
        seen: Vec<u32>,
        fail_at: Option<u32>,
    }

    impl Commit<u32> for Counter {
        async fn commit(&mut self, write: u32) -> Result<bool, StoreError> {
            if Some(write) == self.fail_at {
                return Err(StoreError::Other {
                    path: "test.db".into(),
                    message: "disk full".into(),
                });
            }
            self.seen.push(write);
            Ok(write != 0)
        }
    }

    fn counter(fail_at: Option<u32>) -> Counter {
        Counter {
            seen: Vec::new(),
            fail_at,
        }
    }

    #[tokio::test]
    async fn each_write_is_committed_before_its_acknowledgement() {
        let (writer, inbox) = channel::<u32>(2);
        let task = spawn(inbox, counter(None), StopSignal::default());
        let answers = tokio::task::spawn_blocking(move || {
            [3, 0, 5].map(|w| writer.send(w).blocking_recv().expect("an answer"))
        })
        .await
        .expect("sender");
        assert_eq!(answers, [true, false, true]);
        let committer = task.await.expect("task").expect("writer");
        assert_eq!(committer.seen, [3, 0, 5]);
    }

    #[tokio::test]
    async fn a_stop_request_is_answered_with_stop_after_the_commit() {
        let (writer, inbox) = channel::<u32>(2);
        let stop = StopSignal::default();
        stop.drain();
        let task = spawn(inbox, counter(None), stop);
        let go_on = tokio::task::spawn_blocking(move || writer.send(7).blocking_recv())
            .await
            .expect("sender");
        assert_eq!(go_on, Ok(false));
        assert_eq!(task.await.expect("task").expect("writer").seen, [7]);
    }

    #[tokio::test]
    async fn a_store_error_aborts_the_run_and_is_returned() {
        let (writer, inbox) = channel::<u32>(2);
        let stop = StopSignal::default();
        let task = spawn(inbox, counter(Some(2)), stop.clone());
        let answers = tokio::task::spawn_blocking(move || {
            [1, 2].map(|w| writer.send(w).blocking_recv().unwrap_or(false))
        })
        .await
        .expect("sender");
        assert_eq!(answers, [true, false]);
        assert!(stop.aborted());
        assert!(task.await.expect("task").is_err());
    }
}
