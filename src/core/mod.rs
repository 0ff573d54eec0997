//! The backend-neutral core: what a lease is, independent of where it is
//! stored. Nothing here names a database client library.

pub(crate) mod backend;
pub(crate) mod clock;
pub(crate) mod error;
pub(crate) mod event;
pub(crate) mod guard_sql;
pub(crate) mod key;
pub(crate) mod lease;
pub(crate) mod ops;
pub(crate) mod snapshot;
pub(crate) mod store;
pub(crate) mod ticket;
pub(crate) mod transfer;
