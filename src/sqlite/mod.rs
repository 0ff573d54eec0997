//! Everything SQLite: opening a file, its pragmas and pool, migrations, the
//! store and its guard SQL, the change feed, the busy handler, the WAL bound
//! and file-system events.

pub(crate) mod busy;
pub(crate) mod error;
pub(crate) mod fswatch;
pub(crate) mod history;
pub(crate) mod schema;
pub(crate) mod wal;
