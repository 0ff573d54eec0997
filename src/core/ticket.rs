//! Tickets: one-shot answers from a tracker, awaitable from any thread or any
//! async runtime.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

thread_local! {
    /// Wakers held back while this thread holds a lock of ours (see
    /// [`DeferWakes`]); `None` when none is held.
    static DEFERRED: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

/// While alive, tickets resolved on this thread wake their wakers only when
/// the outermost `DeferWakes` is dropped. A waker is the caller's code (an
/// executor may poll right inside `wake`), so it must not run while the
/// driver's state is locked: it could call back into a tracker and deadlock.
pub(crate) struct DeferWakes {
    outermost: bool,
}

impl DeferWakes {
    pub(crate) fn begin() -> DeferWakes {
        let outermost = DEFERRED.with(|d| {
            let mut d = d.borrow_mut();
            let outermost = d.is_none();
            if outermost {
                *d = Some(Vec::new());
            }
            outermost
        });
        DeferWakes { outermost }
    }
}

impl Drop for DeferWakes {
    fn drop(&mut self) {
        if self.outermost {
            let wakers = DEFERRED.with(|d| d.borrow_mut().take()).unwrap_or_default();
            for waker in wakers {
                waker.wake();
            }
        }
    }
}

/// A tracker's answer to one question ("am I leader for the guarantee?",
/// "tell me when I lead", "tell me when I no longer do").
///
/// The answer arrives once and never changes. Wait for it with
/// [`LeaseTicket::wait`], [`LeaseTicket::wait_timeout`] or
/// [`LeaseTicket::wait_deadline`], poll with [`LeaseTicket::try_wait`], or
/// `.await` it in any async runtime (it needs none of its own). Clones share
/// the answer. A ticket pending when its tracker stops resolves `false`.
#[derive(Clone)]
pub struct LeaseTicket {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    ready: Condvar,
}

#[derive(Default)]
struct State {
    answer: Option<bool>,
    wakers: Vec<Waker>,
}

impl LeaseTicket {
    pub(crate) fn pending() -> LeaseTicket {
        LeaseTicket {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                ready: Condvar::new(),
            }),
        }
    }

    pub(crate) fn resolved(answer: bool) -> LeaseTicket {
        let ticket = LeaseTicket::pending();
        ticket.resolve(answer);
        ticket
    }

    /// Whether anyone but the tracker still holds this ticket.
    pub(crate) fn is_held_elsewhere(&self) -> bool {
        Arc::strong_count(&self.inner) > 1
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives the ticket its answer; later answers are ignored.
    pub(crate) fn resolve(&self, answer: bool) {
        let wakers = {
            let mut state = self.lock();
            if state.answer.is_some() {
                return;
            }
            state.answer = Some(answer);
            std::mem::take(&mut state.wakers)
        };
        self.inner.ready.notify_all();
        let wakers = DEFERRED.with(|d| match d.borrow_mut().as_mut() {
            Some(deferred) => {
                deferred.extend(wakers);
                Vec::new()
            }
            None => wakers,
        });
        for waker in wakers {
            waker.wake();
        }
    }

    /// Blocks until the answer arrives.
    pub fn wait(&self) -> bool {
        let state = self.lock();
        let state = self
            .inner
            .ready
            .wait_while(state, |s| s.answer.is_none())
            .unwrap_or_else(|e| e.into_inner());
        state.answer.unwrap_or(false)
    }

    /// Blocks until the answer arrives or `timeout` passes; `None` if it did
    /// not arrive.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<bool> {
        let state = self.lock();
        let (state, _) = self
            .inner
            .ready
            .wait_timeout_while(state, timeout, |s| s.answer.is_none())
            .unwrap_or_else(|e| e.into_inner());
        state.answer
    }

    /// Blocks until the answer arrives or `deadline` passes; `None` if it did
    /// not arrive.
    pub fn wait_deadline(&self, deadline: Instant) -> Option<bool> {
        self.wait_timeout(deadline.saturating_duration_since(Instant::now()))
    }

    /// The answer if it has arrived, without blocking.
    pub fn try_wait(&self) -> Option<bool> {
        self.lock().answer
    }
}

/// Awaiting a ticket resolves to its answer.
///
/// # Cancel safety
///
/// Cancel-safe: dropping the future (in a `select!`, on a timeout) before
/// it completes loses nothing. The answer is kept in the ticket, not in the
/// future, so awaiting a clone of it, or the same ticket again, later
/// resolves to the same answer; a dropped future's waker is at most woken
/// once, for nothing. Awaiting neither claims nor renews anything.
impl Future for LeaseTicket {
    type Output = bool;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<bool> {
        let mut state = self.lock();
        match state.answer {
            Some(answer) => Poll::Ready(answer),
            None => {
                if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    state.wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

impl fmt::Debug for LeaseTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseTicket")
            .field("answer", &self.try_wait())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_first_answer_sticks() {
        let t = LeaseTicket::pending();
        assert_eq!(t.try_wait(), None);
        assert_eq!(t.wait_timeout(Duration::from_millis(1)), None);
        t.resolve(true);
        t.resolve(false);
        assert!(t.wait());
        assert_eq!(t.clone().try_wait(), Some(true));
    }

    #[test]
    fn polling_registers_the_waker_once_and_wakes_it() {
        let t = LeaseTicket::pending();
        let counter = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut fut = t.clone();
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Pending);
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Pending);
        t.resolve(false);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut fut).poll(&mut cx), Poll::Ready(false));
    }

    #[test]
    fn a_waiting_thread_gets_the_answer() {
        let t = LeaseTicket::pending();
        let waiter = {
            let t = t.clone();
            std::thread::spawn(move || t.wait())
        };
        t.resolve(true);
        assert!(waiter.join().expect("join"));
    }
}
