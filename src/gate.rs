//! Polling only what woke: a [`Gate`] polls what it wraps only when that asked to be polled
//! again, and [`unless`] runs work that something else may cut short without polling that
//! something on every wake of the work. Polling a pending cancellation takes a lock; a task
//! woken several times per request paid it on each.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::task::{waker_ref, ArcWake, AtomicWaker};

/// Polls what it wraps only when that asked to be polled again (its own waker fired) or
/// last returned something. A task that wakes often (a WebSocket session for every outgoing
/// message, a connection several times per request) would otherwise re-poll everything it
/// waits on each time, at more cost than the message itself.
pub(crate) struct Gate {
    woken: Arc<Woken>,
}

/// The wrapped future's or stream's own waker: notes that it fired, then wakes the task.
struct Woken {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for Woken {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.fired.store(true, Ordering::Release);
        arc_self.task.wake();
    }
}

impl Default for Gate {
    fn default() -> Self {
        // Fired at first: what it wraps has never been polled.
        let woken = Woken {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        };
        Gate {
            woken: Arc::new(woken),
        }
    }
}

impl Gate {
    /// `poll` with the gate's own waker when that fired or `poll` was last ready, else pending.
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.woken.task.register(cx.waker());
        if !self.woken.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = waker_ref(&self.woken);
        let polled = poll(&mut Context::from_waker(&waker));
        if polled.is_ready() {
            // More may be ready already (buffered frames): the next call polls again.
            self.woken.fired.store(true, Ordering::Release);
        }
        polled
    }
}

/// Runs `work` to its end, unless `stop` completes first (then `None`). `stop` is polled only
/// when its own waker fired, not on each of the work's wakes.
pub(crate) async fn unless<F: Future>(work: F, stop: impl Future) -> Option<F::Output> {
    let mut work = pin!(work);
    let mut stop = pin!(stop);
    let gate = Gate::default();
    poll_fn(|cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        gate.poll(cx, |cx| stop.as_mut().poll(cx)).map(|_| None)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A future that counts its polls and stays pending until its waker fires.
    #[derive(Default)]
    struct Counted {
        polls: Arc<AtomicUsize>,
        waker: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn the_stop_is_polled_once_until_it_wakes_and_then_ends_the_work() {
        let stop = Counted::default();
        let (polls, stop_waker) = (stop.polls.clone(), stop.waker.clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(8);
        let work = async move {
            let mut sum = 0;
            while let Some(n) = rx.recv().await {
                sum += n;
            }
            sum
        };
        let run = tokio::spawn(unless(work, stop));
        // Every message wakes the work; none of those wakes polls the stop again.
        for n in 0..50 {
            tx.send(n).await.unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "the stop was re-polled");
        // The stop's own wake gets it polled (still pending here), then the work ends.
        stop_waker.lock().unwrap().take().unwrap().wake();
        tx.send(1).await.unwrap();
        tokio::task::yield_now().await;
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        drop(tx);
        assert_eq!(run.await.unwrap(), Some((0..50).sum::<u32>() + 1));
    }

    #[tokio::test]
    async fn a_stop_that_completes_cuts_the_work_short() {
        let never = std::future::pending::<()>();
        let stop = tokio_util::sync::CancellationToken::new();
        stop.cancel();
        assert_eq!(unless(never, stop.cancelled()).await, None);
    }
}
