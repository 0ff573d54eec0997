//! `import` reads lines of at most 1 MiB, whatever it is fed: a line of
//! hundreds of megabytes with no newline is refused at its first MiB, and
//! memory stays flat (a whole-line reader once reached about 980 MB on a
//! 1 GB line before refusing it). Alone in its test binary: the peak
//! resident size it reads is the largest of this process's children's.

use std::io::Write;
use std::process::{Command, Stdio};

use nix::sys::resource::{UsageWho, getrusage};

#[test]
fn a_huge_line_without_a_newline_is_refused_in_flat_memory()
-> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("app.db");
    let mut import = Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .env_remove("LEASEHOLD_DB")
        .arg("--db")
        .arg(&db)
        .args(["import", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = import.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        // 256 MiB of one line, until the reader stops reading.
        let chunk = vec![b'x'; 1 << 20];
        let mut sent = 0usize;
        while sent < 256 && stdin.write_all(&chunk).is_ok() {
            sent += 1;
        }
        sent
    });
    let out = import.wait_with_output()?;
    let sent = feeder.join().expect("feeder");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("line 1"), "{err}");
    assert!(
        sent < 256,
        "the reader stopped reading early ({sent} MiB sent)"
    );
    // Linux reports ru_maxrss in KiB.
    eprintln!(
        "sent {sent} MiB; peak {} KiB",
        getrusage(UsageWho::RUSAGE_CHILDREN)?.max_rss()
    );
    let peak_mib = getrusage(UsageWho::RUSAGE_CHILDREN)?.max_rss() / 1024;
    assert!(peak_mib < 48, "import peaked at {peak_mib} MiB resident");
    Ok(())
}
