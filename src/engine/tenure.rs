//! Tenures and the tokens that vouch for them.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::core::backend::Backend;
use crate::core::error::{Context, Result};
use crate::core::key::Key;
use crate::core::ops;
use crate::core::store::GuardSpec;
use crate::engine::Engine;

/// The result of a successful claim: one tenure of one holder.
///
/// The lease is guaranteed to be held until at least the instant taken just
/// before the claim call plus the claimed duration; measure that instant
/// yourself. [`Tenure::token`] gives a token fixed to this very tenure.
pub struct Tenure<B: Backend> {
    pub(crate) engine: Engine<B>,
    pub(crate) key: Key,
    pub(crate) holder: String,
    pub(crate) epoch: u64,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) extended: bool,
}

impl<B: Backend> Tenure<B> {
    /// The lease's key.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The holder.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The tenure's fencing epoch: larger than every earlier tenure's of this
    /// key, and never reused.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When this tenure began (for an extension, when it first began).
    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// The stored expiry after this claim. Pins may hold the lease beyond it.
    /// (From [`Engine::extend`](crate::Engine::extend) or
    /// `InTxn::extend`: a lower bound.)
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }

    /// Whether this claim extended a tenure the holder already held, rather
    /// than starting a new one.
    pub fn is_extension(&self) -> bool {
        self.extended
    }

    /// A token that holds only while this holder holds the key *in this
    /// tenure*: it fails after a release, a revoke, an expiry, and also after
    /// the same holder re-claims a lapsed lease (a new epoch).
    pub fn token(&self) -> LeaseToken<B> {
        LeaseToken::new(
            self.engine.clone(),
            self.key.clone(),
            self.holder.clone(),
            Some(self.epoch),
        )
    }
}

impl<B: Backend> fmt::Debug for Tenure<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tenure")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .field("epoch", &self.epoch)
            .field("started_at", &self.started_at)
            .field("expires_at", &self.expires_at)
            .field("extended", &self.extended)
            .finish()
    }
}

impl<B: Backend> Clone for Tenure<B> {
    fn clone(&self) -> Self {
        Tenure {
            engine: self.engine.clone(),
            key: self.key.clone(),
            holder: self.holder.clone(),
            epoch: self.epoch,
            started_at: self.started_at,
            expires_at: self.expires_at,
            extended: self.extended,
        }
    }
}

/// A claim that a holder holds a lease, which can be checked — best inside
/// the transaction whose writes it should gate.
///
/// From [`Engine::token`] (asserts "holder holds the key now", in any tenure)
/// or [`Tenure::token`] (also fixes the tenure's epoch: fails once that
/// tenure ends, even if the same holder claims again). Holding a token
/// proves nothing by itself; check it. Three ways, one rule, each backend
/// evaluating the same predicate:
///
/// - in a transaction builder the engine commits (SQLite: `add_to` a
///   [`Txn`](crate::Txn));
/// - inside your own open transaction (SQLite: `check_in`);
/// - as an SQL predicate for your own `UPDATE … WHERE` (SQLite: `guard`).
///
/// # Concurrency
///
/// A guard evaluated inside a write transaction stays true until that
/// transaction ends: no rival tenure can begin between the check and the
/// commit (SQLite lets one writer at a time commit; see the backend's
/// promises on [`Backend`]). The write therefore commits only while the
/// holder leads — however the clocks behave and however long the process
/// paused before it.
pub struct LeaseToken<B: Backend> {
    engine: Engine<B>,
    spec: GuardSpec,
}

impl<B: Backend> Clone for LeaseToken<B> {
    fn clone(&self) -> Self {
        LeaseToken {
            engine: self.engine.clone(),
            spec: self.spec.clone(),
        }
    }
}

impl<B: Backend> LeaseToken<B> {
    pub(crate) fn new(
        engine: Engine<B>,
        key: Key,
        holder: String,
        epoch: Option<u64>,
    ) -> LeaseToken<B> {
        LeaseToken {
            engine,
            spec: GuardSpec { key, holder, epoch },
        }
    }

    /// The lease this token speaks for.
    pub fn key(&self) -> &Key {
        &self.spec.key
    }

    /// The holder it vouches for.
    pub fn holder(&self) -> &str {
        &self.spec.holder
    }

    /// The tenure it is fixed to, for tokens from a claim.
    pub fn epoch(&self) -> Option<u64> {
        self.spec.epoch
    }

    /// What the token asserts, as data for the code that evaluates it.
    pub(crate) fn spec(&self) -> &GuardSpec {
        &self.spec
    }

    /// The engine the token belongs to.
    pub(crate) fn engine(&self) -> &Engine<B> {
        &self.engine
    }

    pub(crate) fn context(&self) -> Context {
        Context::new("check")
            .key(&self.spec.key)
            .holder(&self.spec.holder)
    }

    /// Checks the token now, outside any transaction of yours. The answer may
    /// be stale by the time you act on it; to gate a write, check inside the
    /// write's transaction instead.
    ///
    /// # Errors
    ///
    /// [`Error::GuardFailed`](crate::Error::GuardFailed) saying what the
    /// database holds instead; [`Error::Storage`](crate::Error::Storage),
    /// [`Error::PoolTimeout`](crate::Error::PoolTimeout),
    /// [`Error::Stopped`](crate::Error::Stopped).
    pub fn check(&self) -> Result<()> {
        let ctx = || self.context();
        self.engine.ensure_running(&ctx)?;
        self.engine
            .backend()
            .read_unbound(self.engine.busy_timeout(), &ctx, |st| {
                ops::check_guard(st, &self.spec, None)
            })
    }
}

impl<B: Backend> fmt::Debug for LeaseToken<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseToken")
            .field("key", &self.spec.key)
            .field("holder", &self.spec.holder)
            .field("epoch", &self.spec.epoch)
            .finish()
    }
}
