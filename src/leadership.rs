//! Application leadership, after Juju's `core/leadership`: a unit claims
//! leadership of its application, and its token gates writes.
//!
//! Leadership is an ordinary lease in the namespace [`NAMESPACE`], named
//! after the application and held by the unit. [`Engine`] implements
//! [`Claimer`] and [`Checker`]; [`LeaseToken`] implements [`Token`]. The
//! traits are small so that code depending on leadership can be tested
//! against fakes.
//!
//! ```
//! # let dir = tempfile::tempdir()?;
//! use std::time::Duration;
//! use leasehold::Engine;
//! use leasehold::leadership::{Checker, Claimer, Token};
//!
//! let engine = Engine::open(dir.path().join("model.db"))?;
//! engine.claim_leadership("mysql", "mysql/0", Duration::from_secs(60))?;
//! assert!(engine.claim_leadership("mysql", "mysql/1", Duration::from_secs(60)).is_err());
//!
//! let token = engine.leadership_check("mysql", "mysql/0")?;
//! token.check()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration;

use crate::core::backend::Backend;
use crate::core::error::Result;
use crate::core::key::Key;
use crate::core::ticket::LeaseTicket;
use crate::engine::{Engine, LeaseToken, LeaseTracker, Tenure};
pub use crate::sqlite::leadership::Token;

/// The namespace of application leadership leases.
pub const NAMESPACE: &str = "application-leadership";

/// The lease key of `application`'s leadership.
///
/// # Errors
///
/// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a bad
/// application name.
pub fn key(application: &str) -> Result<Key> {
    Key::new(NAMESPACE, application)
}

/// Acquires leadership.
pub trait Claimer {
    /// What a successful claim returns.
    type Tenure;

    /// Claims leadership of `application` for `unit`, or extends the unit's
    /// current leadership. On success leadership is guaranteed for at least
    /// `duration` from the start of the call.
    ///
    /// # Errors
    ///
    /// [`Error::ClaimDenied`](crate::Error::ClaimDenied) if another unit
    /// leads (definitely not the leader); after any other error nothing may
    /// be inferred.
    fn claim_leadership(
        &self,
        application: &str,
        unit: &str,
        duration: Duration,
    ) -> Result<Self::Tenure>;

    /// Blocks until `application` is known to have no leader.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`](crate::Error::Stopped) if the claimer is shut down
    /// while waiting, or a storage error.
    fn block_until_leadership_released(&self, application: &str) -> Result<()>;
}

/// Tests leadership.
pub trait Checker {
    /// The token type returned.
    type Token: Token;

    /// A token representing `unit`'s leadership of `application`. Its
    /// existence proves nothing: check it, best inside the transaction it
    /// should gate.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a bad
    /// application or unit name.
    fn leadership_check(&self, application: &str, unit: &str) -> Result<Self::Token>;
}

/// A tracker's answer to one question, available once.
pub trait Ticket {
    /// Blocks until the answer arrives.
    fn wait(&self) -> bool;

    /// Blocks until the answer arrives or `timeout` passes (`None`).
    fn wait_timeout(&self, timeout: Duration) -> Option<bool>;

    /// The answer if it has arrived, without blocking.
    fn try_wait(&self) -> Option<bool>;
}

/// Discovers leadership status by claiming it, in the background.
pub trait Tracker {
    /// The ticket type returned.
    type Ticket: Ticket;

    /// The application whose leadership is claimed.
    fn application_name(&self) -> &str;

    /// How long a `true` [`Tracker::claim_leader`] answer is guaranteed.
    fn claim_duration(&self) -> Duration;

    /// A ticket answering `true` if leadership is guaranteed for at least
    /// [`Tracker::claim_duration`] from the time it was issued.
    fn claim_leader(&self) -> Self::Ticket;

    /// A ticket answering `true` once the tracker leads.
    fn wait_leader(&self) -> Self::Ticket;

    /// A ticket answering `true` once the tracker's leadership can no longer
    /// be guaranteed.
    fn wait_minion(&self) -> Self::Ticket;
}

impl Ticket for LeaseTicket {
    fn wait(&self) -> bool {
        LeaseTicket::wait(self)
    }

    fn wait_timeout(&self, timeout: Duration) -> Option<bool> {
        LeaseTicket::wait_timeout(self, timeout)
    }

    fn try_wait(&self) -> Option<bool> {
        LeaseTicket::try_wait(self)
    }
}

impl<B: Backend> Tracker for LeaseTracker<B> {
    type Ticket = LeaseTicket;

    fn application_name(&self) -> &str {
        self.key().name()
    }

    fn claim_duration(&self) -> Duration {
        LeaseTracker::claim_duration(self)
    }

    fn claim_leader(&self) -> LeaseTicket {
        LeaseTracker::claim_leader(self)
    }

    fn wait_leader(&self) -> LeaseTicket {
        LeaseTracker::wait_leader(self)
    }

    fn wait_minion(&self) -> LeaseTicket {
        LeaseTracker::wait_minion(self)
    }
}

/// `block_until_leadership_released` panics as
/// [`Engine::block_until_released`] does, if the background thread cannot
/// be started.
impl<B: Backend> Claimer for Engine<B> {
    type Tenure = Tenure<B>;

    fn claim_leadership(
        &self,
        application: &str,
        unit: &str,
        duration: Duration,
    ) -> Result<Tenure<B>> {
        self.claim(&key(application)?, unit, duration)
    }

    fn block_until_leadership_released(&self, application: &str) -> Result<()> {
        self.block_until_released(&key(application)?)
    }
}

impl<B: Backend> Checker for Engine<B>
where
    LeaseToken<B>: Token,
{
    type Token = LeaseToken<B>;

    fn leadership_check(&self, application: &str, unit: &str) -> Result<LeaseToken<B>> {
        self.token(&key(application)?, unit)
    }
}

impl<B: Backend> Engine<B> {
    /// A tracker of `application`'s leadership for `unit`, with the given
    /// guarantee and default settings.
    ///
    /// # Errors
    ///
    /// As [`TrackerBuilder::build`](crate::engine::TrackerBuilder::build),
    /// and [`Error::InvalidArgument`](crate::Error::InvalidArgument) for
    /// bad names.
    ///
    /// # Panics
    ///
    /// As [`TrackerBuilder::build`](crate::engine::TrackerBuilder::build).
    pub fn leadership_tracker(
        &self,
        application: &str,
        unit: &str,
        guarantee: Duration,
    ) -> Result<LeaseTracker<B>> {
        self.tracker(&key(application)?, unit)
            .guarantee(guarantee)
            .build()
    }
}
