//! Output files (`export -o`, `demo --svg`): never the database, and never
//! half written.
//!
//! A path is compared with the database and its `-wal`, `-shm` and
//! `-journal` files by identity (device and inode, following symlinks), or,
//! for a file that does not exist yet, by its canonical directory and name:
//! `./e.db`, `e.db` through a symlink and a hard link all count. A regular
//! file is written to a temporary file in the same directory, synced, and
//! renamed over the target (keeping its permission bits), so a failed write
//! (a full disk) leaves the old file whole; what is not a regular file
//! (`/dev/null`, a FIFO) is written in place.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::CliError;

/// The files SQLite keeps beside a database.
const SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// The temporary file being written, until it is renamed into place or
/// removed: what [`remove_partial`] removes when a signal ends the process
/// first (Ctrl-C during `export -o`).
static WRITING: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

fn writing() -> std::sync::MutexGuard<'static, Option<PathBuf>> {
    WRITING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes the temporary file being written, if any: for a signal's
/// clean-up, before the process ends.
pub fn remove_partial() {
    if let Some(tmp) = writing().take() {
        let _ = fs::remove_file(tmp);
    }
}

/// Where `path` lives: its directory, canonical, joined with its name
/// (following a symlink, even one whose target does not exist yet: writing
/// through it creates the target). `None` if the directory does not exist
/// (or the path has no name).
fn place(path: &Path) -> Option<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        let name = path.file_name()?.to_owned();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let here = fs::canonicalize(parent).ok()?.join(name);
        match fs::read_link(&here) {
            // A relative target is relative to the link's directory.
            Ok(target) => path = here.parent().unwrap_or(Path::new("/")).join(target),
            Err(_) => return Some(here),
        }
    }
    None
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The database and its side files, where SQLite keeps them (a symlinked
/// database keeps them beside its target).
fn database_files(db: &Path) -> Vec<PathBuf> {
    let Some(base) = fs::canonicalize(db).ok().or_else(|| place(db)) else {
        return vec![db.to_path_buf()];
    };
    let mut files = vec![base.clone()];
    for suffix in SIDE_FILES {
        let mut name = OsString::from(base.as_os_str());
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    files
}

/// Refuses (invalid input) an output path that is the database `db` or one
/// of its side files.
pub fn not_the_database(output: &Path, db: &Path) -> Result<(), CliError> {
    let out_id = identity(output);
    let out_place = place(output);
    for file in database_files(db) {
        let same = match (out_id, identity(&file)) {
            (Some(a), Some(b)) => a == b,
            // One of them does not exist yet: the same place is the same
            // file once written.
            _ => out_place.as_ref().is_some_and(|p| *p == file),
        };
        if same {
            let what = if file == database_files(db)[0] {
                "the database".to_owned()
            } else {
                format!("the database's {} file", side_name(&file))
            };
            return Err(CliError::Invalid(format!(
                "refusing to write {}: it is {what} ({}); choose another file",
                output.display(),
                db.display()
            )));
        }
    }
    Ok(())
}

fn side_name(file: &Path) -> &'static str {
    let s = file.as_os_str().to_string_lossy();
    SIDE_FILES
        .iter()
        .find(|suffix| s.ends_with(*suffix))
        .map_or("side", |suffix| &suffix[1..])
}

/// Checks before long work that `output` can be written: its directory
/// exists and is writable, and it is not a directory itself.
pub fn writable(output: &Path) -> Result<(), CliError> {
    let refuse = |why: String| {
        Err(CliError::Invalid(format!(
            "cannot write {}: {why}",
            output.display()
        )))
    };
    if let Ok(m) = fs::metadata(output) {
        if m.is_dir() {
            return refuse("it is a directory".into());
        }
        if !m.is_file() {
            // A device or a FIFO, written in place.
            return Ok(());
        }
    }
    let Some(place) = place(output) else {
        let dir = output.parent().unwrap_or(Path::new("."));
        return refuse(format!("no directory {}", dir.display()));
    };
    let dir = place.parent().unwrap_or(Path::new("/"));
    if !fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
        return refuse(format!("{} is not a directory", dir.display()));
    }
    if let Err(e) = nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK) {
        return refuse(format!(
            "its directory {} is not writable ({})",
            dir.display(),
            e.desc()
        ));
    }
    Ok(())
}

/// Writes `bytes` to `path`: a regular file (or a new one) is replaced
/// whole or not at all; anything else is written in place.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let failed = |e: io::Error| CliError::Failed(format!("cannot write {}: {e}", path.display()));
    match fs::metadata(path) {
        Ok(m) if !m.is_file() => {
            if m.is_dir() {
                return Err(failed(io::Error::other("it is a directory")));
            }
            let mut f = OpenOptions::new().write(true).open(path).map_err(failed)?;
            f.write_all(bytes).and_then(|()| f.flush()).map_err(failed)
        }
        Ok(m) => {
            // Through a symlink, replace its target, not the link.
            let target = fs::canonicalize(path).map_err(failed)?;
            replace(&target, bytes, Some(m.permissions().mode() & 0o7777)).map_err(failed)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // A new file (through a dangling symlink: its target).
            let target = place(path).unwrap_or_else(|| path.to_path_buf());
            replace(&target, bytes, None).map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

/// Writes a temporary file beside `target`, syncs it and renames it over
/// `target`, then syncs the directory. On failure the temporary file is
/// removed and `target` is untouched.
fn replace(target: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?;
    // Created and recorded under the lock that a signal's clean-up (on a
    // thread of its own) takes: it never sees the file without its name.
    let (tmp, mut file) = {
        let mut recorded = writing();
        let (tmp, file) = create_temp(&dir, name)?;
        *recorded = Some(tmp.clone());
        (tmp, file)
    };
    let written = (|| {
        if let Some(mode) = mode {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, target)
    })();
    writing().take();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(&dir)?.sync_all()
}

/// A new file `.NAME.PID.N.tmp` in `dir`, created with mode 0666 less the
/// umask, as a plain new file would be.
fn create_temp(dir: &Path, name: &std::ffi::OsStr) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    for n in 0..1000 {
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{pid}.{n}.tmp"));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free temporary file name"))
}
