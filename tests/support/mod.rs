//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod guarded_app;
pub mod output;
pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use leasehold::chrono::{DateTime, Utc};
use leasehold::{Engine, Key, ManualClock};

/// A temp dir holding one database, removed on drop.
pub struct TempDb {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl TempDb {
    pub fn new() -> TempDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("test.db");
        TempDb { dir, path }
    }
}

/// An arbitrary but fixed start time for manual clocks.
pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).expect("time")
}

/// An engine on a fresh file with a manual clock at [`t0`].
pub fn manual_engine() -> (TempDb, Engine, ManualClock) {
    let db = TempDb::new();
    let clock = ManualClock::new(t0());
    let engine = Engine::builder(&db.path)
        .clock(clock.clone())
        .build()
        .expect("open engine");
    (db, engine, clock)
}

pub fn key(name: &str) -> Key {
    Key::new("test", name).expect("key")
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Re-runs this test binary as a child process that executes only the test
/// `test_name` (an `#[test]` that checks `LEASEHOLD_ROLE` and acts as a
/// worker), with extra environment variables.
pub fn spawn_worker(test_name: &str, role: &str, env: &[(&str, &str)]) -> Child {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env("LEASEHOLD_ROLE", role);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn worker")
}

/// The worker role this process was started with, if any.
pub fn role() -> Option<String> {
    std::env::var("LEASEHOLD_ROLE").ok()
}

/// Waits until `path` exists (a rendezvous file written by another process).
pub fn wait_for_file(path: &Path, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
