//! The workload's own promises: its builder's defaults and refusals, and a
//! run refusing a used directory. The nemesis runs themselves — the
//! recorded-history checker under each nemesis, its teeth, crash
//! consistency — run for every backend that can run processes, in the
//! conformance suite (`tests/conformance/nemesis.rs`).

use std::process::Command;
use std::time::Duration;

use leasehold::testing::{self, Nemesis, Span, Workload};
use leasehold::{Error, MAX_DURATION};

fn worker_command() -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("exe"));
    cmd.args(["worker", "--exact", "--nocapture", "--test-threads=1"]);
    cmd
}

/// The settings every nemesis test shares (spelled out, so that a change
/// of the builder's defaults does not change what these tests mean).
fn workload(nemeses: impl IntoIterator<Item = Nemesis>, guard: bool, seconds: u64) -> Workload {
    Workload::builder()
        .workers(3)
        .duration(Duration::from_secs(seconds))
        .lease(Duration::from_millis(250))
        .guard(guard)
        .nemeses(nemeses)
        .seed(0x1ea5e)
        .build()
        .expect("workload")
}

/// The builder's defaults are the ones documented (the ones these tests
/// were written against), lease-relative ones follow the lease whatever
/// the order of the calls, and nonsense is refused before anything starts.
#[test]
fn the_builder_keeps_its_documented_defaults_and_refuses_nonsense() {
    let ms = Duration::from_millis;
    let w = Workload::builder().build().expect("defaults");
    assert_eq!(
        (
            w.workers(),
            w.duration(),
            w.lease(),
            w.guard(),
            w.seed(),
            w.verbose()
        ),
        (3, Duration::from_secs(10), ms(250), true, 0x1ea5e, false)
    );
    assert_eq!(w.key(), &testing::workload_key());
    assert!(w.nemeses().is_empty());
    assert_eq!(w.interval(), Span::between(ms(100), ms(400)));
    assert_eq!(w.pause(), Span::between(ms(500), ms(700)));
    assert_eq!(w.lock_hold(), Span::between(ms(125), ms(375)));
    assert_eq!(w.clock_step(), ms(500));
    assert_eq!(w.pool_interval(), Span::between(ms(100), ms(400)));
    assert_eq!(w.pool_hold(), Span::between(ms(50), ms(250)));

    let w = Workload::builder()
        .lock_hold(Span::exactly(ms(5)))
        .lease(ms(1000))
        .nemesis(Nemesis::Kill)
        .nemesis(Nemesis::Kill)
        .build()
        .expect("workload");
    assert_eq!(w.pause(), Span::between(ms(2000), ms(2200)));
    assert_eq!(w.clock_step(), ms(2000));
    assert_eq!(w.lock_hold(), Span::exactly(ms(5)), "set explicitly, kept");
    assert_eq!(w.nemeses(), [Nemesis::Kill, Nemesis::Kill]);

    let config = w.worker_config(std::path::Path::new("/some/dir"), 7);
    assert_eq!(
        (
            config.proc(),
            config.holder().as_str(),
            config.key(),
            config.lease()
        ),
        (7, "w7", &testing::workload_key(), ms(1000))
    );
    assert_eq!(config.dir(), std::path::Path::new("/some/dir"));

    let refused = [
        ("workers", Workload::builder().workers(0)),
        ("lease", Workload::builder().lease(Duration::ZERO)),
        ("lease", Workload::builder().lease(MAX_DURATION * 2)),
        (
            "clock step",
            Workload::builder().clock_step(MAX_DURATION * 2),
        ),
        (
            "pause",
            Workload::builder().pause(Span::between(ms(2), ms(1))),
        ),
        (
            "interval",
            Workload::builder().interval(Span::between(ms(2), ms(1))),
        ),
        (
            "pool hold",
            Workload::builder().pool_hold(Span::between(ms(2), ms(1))),
        ),
    ];
    for (what, builder) in refused {
        match builder.build() {
            Err(Error::InvalidArgument { what: w, .. }) => assert_eq!(w, what),
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// A run never reuses a directory: its histories would mix with the old
/// ones. Refused before any worker starts.
#[test]
fn a_run_refuses_a_directory_that_holds_a_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("db.sqlite"), "").expect("write");
    let started = std::cell::Cell::new(0);
    let e = workload([Nemesis::Kill], true, 1)
        .run(dir.path(), &|| {
            started.set(started.get() + 1);
            worker_command()
        })
        .expect_err("refused");
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    assert_eq!(started.get(), 0);
}
