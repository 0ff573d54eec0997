//! Every byte the command line prints goes through here.
//!
//! `println!` panics when standard output is a pipe whose reader has gone
//! (`leasehold list | head -1`); Unix tools end quietly instead, as if
//! killed by SIGPIPE, and so does leasehold: [`out`] ends the process that
//! way, after running the clean-up set with [`on_exit`] (the demo's workers
//! and temporary directory). Any other failure to write standard output
//! (a full disk behind `> file`) ends it with exit code 1 and a line on
//! stderr. Failures to write stderr are ignored: there is nowhere left to
//! report them.

use std::io::{self, Write};
use std::sync::Mutex;

type Hook = Box<dyn FnOnce() + Send>;

/// What to undo before the process ends from here.
static ON_EXIT: Mutex<Option<Hook>> = Mutex::new(None);

/// Sets the clean-up to run if printing ends the process (replacing any
/// earlier one).
pub fn on_exit(hook: impl FnOnce() + Send + 'static) {
    *ON_EXIT.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(hook));
}

/// Forgets the clean-up set with [`on_exit`].
pub fn clear_on_exit() {
    ON_EXIT.lock().unwrap_or_else(|p| p.into_inner()).take();
}

/// Runs the clean-up set with [`on_exit`], once.
pub fn run_on_exit() {
    let hook = ON_EXIT.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(hook) = hook {
        hook();
    }
}

/// Writes `text` to standard output as it is.
pub fn out(text: &str) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        drop(stdout);
        stdout_failed(&e);
    }
}

/// Writes one line to standard output.
pub fn line(text: &str) {
    let mut s = String::with_capacity(text.len() + 1);
    s.push_str(text);
    s.push('\n');
    out(&s);
}

/// Writes one line to standard error; a failure is ignored.
pub fn err_line(text: &str) {
    let mut s = String::with_capacity(text.len() + 1);
    s.push_str(text);
    s.push('\n');
    let _ = io::stderr().lock().write_all(s.as_bytes());
}

/// Ends the process after standard output failed.
fn stdout_failed(e: &io::Error) -> ! {
    run_on_exit();
    if e.kind() == io::ErrorKind::BrokenPipe {
        // As if by SIGPIPE, whose default action Rust programs start
        // without: the reader has gone, which is not an error of ours.
        let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGPIPE);
        std::process::exit(128 + signal_hook::consts::SIGPIPE);
    }
    err_line(&format!("leasehold: cannot write to standard output: {e}"));
    std::process::exit(1);
}
