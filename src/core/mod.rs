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

/// The checksum recorded with each applied migration, so that an edit to
/// shipped SQL is caught: 64-bit FNV-1a of the script, hex, carriage
/// returns left out (a checkout with CRLF line endings agrees). Every
/// backend's migrations use it; changing it would make every database
/// look edited.
pub(crate) fn migration_checksum(sql: &str) -> String {
    let hash = sql
        .bytes()
        .filter(|&b| b != b'\r')
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    /// Databases record these: the function must never change.
    #[test]
    fn the_migration_checksum_is_fnv1a_without_carriage_returns() {
        assert_eq!(super::migration_checksum(""), "cbf29ce484222325");
        assert_eq!(super::migration_checksum("a"), "af63dc4c8601ec8c");
        assert_eq!(
            super::migration_checksum("a\r\nb"),
            super::migration_checksum("a\nb")
        );
    }
}
