//! Waiting for a lease to become vacant.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::clock::to_ms;
use crate::engine::Engine;
use crate::error::{Context, Error, Result};
use crate::key::Key;

/// How often a waiter re-reads the database when nothing in this process
/// told it of a change (changes by other processes are seen this late at
/// worst).
const POLL: Duration = Duration::from_millis(25);

/// Wakes an engine's waiters: bumped on every commit the engine makes, on
/// every move of a manual clock, and on shutdown.
pub(crate) struct Watcher {
    state: Mutex<State>,
    changed: Condvar,
}

struct State {
    generation: u64,
    stopped: bool,
}

impl Watcher {
    fn new() -> Watcher {
        Watcher {
            state: Mutex::new(State {
                generation: 0,
                stopped: false,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn poke(&self) {
        self.lock().generation += 1;
        self.changed.notify_all();
    }

    pub fn stop(&self) {
        self.lock().stopped = true;
        self.changed.notify_all();
    }

    fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Sleeps until the generation moves past `seen`, the watcher stops, or
    /// `timeout` passes.
    fn wait_change(&self, seen: u64, timeout: Duration) {
        let state = self.lock();
        let _unused = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.generation == seen && !s.stopped)
            .unwrap_or_else(|e| e.into_inner());
    }
}

impl Engine {
    pub(crate) fn watcher(&self) -> &Watcher {
        self.inner.watcher.get_or_init(|| {
            let weak = Arc::downgrade(&self.inner);
            self.clock()
                .on_change(Box::new(move || match weak.upgrade() {
                    Some(inner) => {
                        if let Some(w) = inner.watcher.get() {
                            w.poke();
                        }
                        true
                    }
                    None => false,
                }));
            Watcher::new()
        })
    }

    /// Blocks until `key` is vacant: never claimed, released, revoked, or
    /// expired and unpinned. Returns at once if it already is.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] when the engine is shut down; storage errors as for
    /// [`Engine::lease`].
    pub fn block_until_released(&self, key: &Key) -> Result<()> {
        self.wait_released(key, None)
    }

    /// As [`Engine::block_until_released`], giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the key is still held after `timeout`; otherwise
    /// as [`Engine::block_until_released`].
    pub fn block_until_released_timeout(&self, key: &Key, timeout: Duration) -> Result<()> {
        self.wait_released(key, Some(Instant::now() + timeout))
    }

    /// As [`Engine::block_until_released`], giving up at `deadline`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the key is still held at `deadline`; otherwise
    /// as [`Engine::block_until_released`].
    pub fn block_until_released_deadline(&self, key: &Key, deadline: Instant) -> Result<()> {
        self.wait_released(key, Some(deadline))
    }

    fn wait_released(&self, key: &Key, deadline: Option<Instant>) -> Result<()> {
        let started = Instant::now();
        let ctx = || Context::new("wait for release").key(key);
        let watcher = self.watcher();
        loop {
            self.ensure_running(&ctx)?;
            let seen = watcher.generation();
            let lease = match self.lease(key)? {
                Some(lease) if lease.is_held() => lease,
                _ => return Ok(()),
            };
            let mut wait = POLL;
            if let (Some(expiry), false) = (lease.expires_at(), lease.is_pinned()) {
                let left = to_ms(expiry) - self.now_ms();
                wait = wait.min(Duration::from_millis(left.max(0) as u64));
            }
            if let Some(deadline) = deadline {
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::Timeout {
                        context: ctx(),
                        waited: now - started,
                    });
                }
                wait = wait.min(deadline - now);
            }
            watcher.wait_change(seen, wait);
        }
    }
}
