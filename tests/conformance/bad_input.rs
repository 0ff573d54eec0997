//! Bad input gets a typed error naming what was wrong, and changes nothing.
//! (SQLite's own bad input — paths, files, builder settings, full disks —
//! is in `tests/bad_input.rs`.)

use std::time::Duration;

use leasehold::engine::Engine;
use leasehold::{Backend, Error, Key, MAX_DURATION};

use crate::harness::{Harness, manual_engine};
use crate::support::{key, secs};

type R = Result<(), Box<dyn std::error::Error>>;

/// How many keys were ever claimed or pinned (lease rows), in every
/// namespace.
fn row_count<B: Backend>(engine: &Engine<B>) -> i64 {
    let namespaces = engine.namespaces().expect("namespaces");
    namespaces
        .iter()
        .map(|ns| engine.all_leases(ns).expect("all leases").len() as i64)
        .sum()
}

pub fn bad_names_are_refused_before_anything_is_written<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    let long = "n".repeat(leasehold::MAX_NAME_LEN + 1);
    for bad in [
        "",
        " lead",
        "trail ",
        "tab\there",
        "nul\0",
        "esc\u{1b}[31m",
        long.as_str(),
    ] {
        assert!(
            matches!(
                Key::new("ns", bad),
                Err(Error::InvalidArgument { what: "name", .. })
            ),
            "{bad:?}"
        );
        assert!(
            matches!(
                Key::new(bad, "n"),
                Err(Error::InvalidArgument {
                    what: "namespace",
                    ..
                })
            ),
            "{bad:?}"
        );
        let err = engine.claim(&key("a"), bad, secs(1)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument { what: "holder", .. }),
            "{bad:?}: {err}"
        );
        assert!(matches!(
            engine.release(&key("a"), bad),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            engine.pin(&key("a"), bad, "", None),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            engine.unpin(&key("a"), bad),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            engine.token(&key("a"), bad),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            engine.leases(bad),
            Err(Error::InvalidArgument { .. })
        ));
    }
    let reason = "r".repeat(leasehold::MAX_REASON_LEN + 1);
    assert!(matches!(
        engine.pin(&key("a"), "e", &reason, None),
        Err(Error::InvalidArgument { what: "reason", .. })
    ));
    assert!(matches!(
        engine.pin(&key("a"), "e", "line\nbreak", None),
        Err(Error::InvalidArgument { what: "reason", .. })
    ));
    assert_eq!(row_count(&engine), 0);
    Ok(())
}

pub fn zero_and_overlong_durations_are_refused<H: Harness>() -> R {
    let (_db, engine, _clock) = manual_engine::<H>();
    for d in [
        Duration::ZERO,
        MAX_DURATION + Duration::from_millis(1),
        Duration::MAX,
    ] {
        let err = engine.claim(&key("a"), "h1", d).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    what: "duration",
                    ..
                }
            ),
            "{d:?}: {err}"
        );
        let err = engine.pin(&key("a"), "e", "", Some(d)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidArgument {
                    what: "pin duration",
                    ..
                }
            ),
            "{d:?}: {err}"
        );
    }
    engine.claim(&key("a"), "h1", MAX_DURATION)?;
    assert_eq!(row_count(&engine), 1);
    Ok(())
}
