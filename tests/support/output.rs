//! Reading what the `leasehold` binary printed, for the command-line tests.

use std::process::Output;

use serde_json::Value;

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success; returns standard output.
#[track_caller]
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({:?}): {}",
        o.status.code(),
        stderr(o)
    );
    stdout(o)
}

/// Asserts the exit code, one line on stderr and no panic's message;
/// returns that line.
#[track_caller]
pub fn fails(o: &Output, code: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout: {} stderr: {}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line on stderr: {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Asserts success; standard output as JSON.
#[track_caller]
pub fn json(o: &Output) -> Value {
    serde_json::from_str(&ok(o)).expect("JSON output")
}
