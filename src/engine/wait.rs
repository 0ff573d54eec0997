//! Waiting for a lease to become vacant.

use std::time::{Duration, Instant};

use crate::core::backend::Backend;
use crate::core::clock::to_ms;
use crate::core::error::{Context, Error, Result};
use crate::core::event::Events;
use crate::core::key::Key;
use crate::engine::Engine;

/// The longest a waiter sleeps without re-reading its lease. Waiters are
/// woken by the engine's background thread when a key changes hands; this
/// is only a backstop (for changes made with raw SQL, which log no event).
const BACKSTOP: Duration = Duration::from_secs(1);

/// Deregisters a waiter from the background thread when it returns.
struct Registered<'a, B: Backend>(&'a Engine<B>);

impl<B: Backend> Drop for Registered<'_, B> {
    fn drop(&mut self) {
        self.0.driver().remove_waiter();
    }
}

impl<B: Backend> Engine<B> {
    /// Blocks until `key` is vacant: never claimed, released, revoked, or
    /// expired and unpinned. Returns at once if it already is.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] when the engine is shut down; storage errors as for
    /// [`Engine::lease`].
    ///
    /// # Panics
    ///
    /// If the operating system cannot start the engine's background thread,
    /// which the first tracker or waiter of an engine starts (as
    /// `std::thread::spawn` panics).
    pub fn block_until_released(&self, key: &Key) -> Result<()> {
        self.wait_released(key, None)
    }

    /// As [`Engine::block_until_released`], giving up after `timeout`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the key is still held after `timeout`; otherwise
    /// as [`Engine::block_until_released`].
    ///
    /// # Panics
    ///
    /// If the operating system cannot start the engine's background thread,
    /// which the first tracker or waiter of an engine starts (as
    /// `std::thread::spawn` panics).
    pub fn block_until_released_timeout(&self, key: &Key, timeout: Duration) -> Result<()> {
        // A timeout too long to express waits for good.
        self.wait_released(key, Instant::now().checked_add(timeout))
    }

    /// As [`Engine::block_until_released`], giving up at `deadline`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if the key is still held at `deadline`; otherwise
    /// as [`Engine::block_until_released`].
    ///
    /// # Panics
    ///
    /// If the operating system cannot start the engine's background thread,
    /// which the first tracker or waiter of an engine starts (as
    /// `std::thread::spawn` panics).
    pub fn block_until_released_deadline(&self, key: &Key, deadline: Instant) -> Result<()> {
        self.wait_released(key, Some(deadline))
    }

    fn wait_released(&self, key: &Key, deadline: Option<Instant>) -> Result<()> {
        let started = Instant::now();
        let ctx = || Context::new("wait for release").key(key);
        let driver = self.driver();
        driver.add_waiter(self.host());
        let _registered = Registered(self);
        loop {
            self.ensure_running(&ctx)?;
            if driver.is_stopping() {
                return Err(Error::Stopped { context: ctx() });
            }
            let seen = driver.generation();
            let mut wait = BACKSTOP;
            match self.lease(key) {
                Ok(Some(lease)) if lease.is_held() => {
                    if let Some(until) = lease.held_until() {
                        let left = to_ms(until) - self.now_ms();
                        wait = wait.min(Duration::from_millis(left.max(0) as u64));
                    }
                }
                Ok(_) => return Ok(()),
                // A busy database is no answer: look again soon (until the
                // deadline), as Juju's waiter only gives up when stopped.
                Err(e) if e.is_transient() => wait = Duration::from_millis(10),
                Err(e) => return Err(e),
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
            driver.wait_change(seen, wait);
        }
    }

    /// Events (of any key, or of `namespace`) logged after position
    /// `after`, by any process, oldest first: at once if there are some
    /// (or some were missed), else as soon as one is logged, or none after
    /// `timeout`. Start with `after = 0` for the whole retained history, and
    /// go on from [`Events::cursor`].
    ///
    /// Events mark claims of new tenures, releases, revokes, pins and
    /// unpins; a tenure that merely runs out is logged (as `lapsed`) only
    /// when a later write notices it. The history keeps the newest
    /// [event retention](crate::EngineBuilder::event_retention) events: a
    /// reader that falls further behind, or whose position was cut from
    /// the history by hand, is told so by [`Events::gap`] — read the leases
    /// it follows again.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] when the engine is shut down; storage errors as for
    /// [`Engine::lease`].
    ///
    /// # Panics
    ///
    /// If the operating system cannot start the engine's background thread,
    /// which the first tracker or waiter of an engine starts (as
    /// `std::thread::spawn` panics).
    pub fn wait_for_events(
        &self,
        namespace: Option<&str>,
        after: i64,
        timeout: Duration,
    ) -> Result<Events> {
        // A timeout too long to express waits for good.
        let deadline = Instant::now().checked_add(timeout);
        let ctx = || Context::new("wait for events");
        let driver = self.driver();
        driver.add_waiter(self.host());
        let _registered = Registered(self);
        let mut after = after;
        loop {
            self.ensure_running(&ctx)?;
            if driver.is_stopping() {
                return Err(Error::Stopped { context: ctx() });
            }
            let seen = driver.generation();
            let events = self.read(ctx, |st| {
                st.events_after(namespace, after, 1000)
                    .map_err(|e| Error::storage(ctx(), e))
            })?;
            let now = Instant::now();
            if !events.is_empty() || events.gap().is_some() || deadline.is_some_and(|d| now >= d) {
                return Ok(events);
            }
            // Other namespaces' events, skipped: no need to read them again.
            after = events.cursor();
            let left = deadline.map_or(BACKSTOP, |d| d - now);
            driver.wait_change(seen, left.min(BACKSTOP));
        }
    }
}
