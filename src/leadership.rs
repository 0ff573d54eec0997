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

use rusqlite::Connection;

use crate::core::error::Result;
use crate::core::key::Key;
use crate::core::ticket::LeaseTicket;
use crate::{Engine, Guard, LeaseToken, LeaseTracker, Tenure, Txn};

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
    /// Claims leadership of `application` for `unit`, or extends the unit's
    /// current leadership. On success leadership is guaranteed for at least
    /// `duration` from the start of the call.
    ///
    /// # Errors
    ///
    /// [`Error::ClaimDenied`](crate::Error::ClaimDenied) if another unit
    /// leads (definitely not the leader); after any other error nothing may
    /// be inferred.
    fn claim_leadership(&self, application: &str, unit: &str, duration: Duration)
    -> Result<Tenure>;

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

/// A unit's leadership of its application, checkable three ways (see
/// [`LeaseToken`] for the guarantees).
pub trait Token {
    /// Fails if the condition no longer holds, judged now.
    ///
    /// # Errors
    ///
    /// [`Error::GuardFailed`](crate::Error::GuardFailed) saying what holds
    /// instead, or a storage error.
    fn check(&self) -> Result<()>;

    /// Fails if the condition does not hold inside the caller's transaction
    /// on `conn`.
    ///
    /// # Errors
    ///
    /// As [`LeaseToken::check_in`].
    fn check_in(&self, conn: &Connection) -> Result<()>;

    /// The condition as an SQL predicate for the caller's own statements.
    fn guard(&self) -> Guard;

    /// Adds the condition to `txn` as an assertion op.
    fn add_to(&self, txn: &mut Txn);
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

impl Tracker for LeaseTracker {
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
impl Claimer for Engine {
    fn claim_leadership(
        &self,
        application: &str,
        unit: &str,
        duration: Duration,
    ) -> Result<Tenure> {
        self.claim(&key(application)?, unit, duration)
    }

    fn block_until_leadership_released(&self, application: &str) -> Result<()> {
        self.block_until_released(&key(application)?)
    }
}

impl Checker for Engine {
    type Token = LeaseToken;

    fn leadership_check(&self, application: &str, unit: &str) -> Result<LeaseToken> {
        self.token(&key(application)?, unit)
    }
}

impl Token for LeaseToken {
    fn check(&self) -> Result<()> {
        LeaseToken::check(self)
    }

    fn check_in(&self, conn: &Connection) -> Result<()> {
        LeaseToken::check_in(self, conn)
    }

    fn guard(&self) -> Guard {
        LeaseToken::guard(self)
    }

    fn add_to(&self, txn: &mut Txn) {
        LeaseToken::add_to(self, txn);
    }
}
