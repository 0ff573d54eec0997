//! Prompt, cheap notice of commits made by other processes.
//!
//! Every commit to a WAL database writes its `-wal` file. On Linux one
//! process-wide thread (`leasehold-fs-watch`) waits on inotify for writes to
//! the files of every database an engine watches, and nudges those engines'
//! background threads, which then look at `PRAGMA data_version`. Idle, this
//! costs nothing; polling `data_version` every millisecond instead costs
//! about 2% of a core on a small VM (a timed wake-up alone is ~18 µs there).
//!
//! Where inotify is unavailable (other systems, or the watch limit is
//! reached), [`subscribe`] returns `false` and the driver falls back to
//! polling.

use std::path::Path;
use std::sync::Weak;

use crate::core::backend::Nudge;

/// Asks for `driver` to be nudged whenever the database at `path` (or its
/// WAL) is written. Returns whether that will happen.
pub(crate) fn subscribe(path: &Path, driver: Weak<dyn Nudge>) -> bool {
    imp::subscribe(path, driver)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::HashMap;
    use std::ffi::{OsStr, OsString};
    use std::path::Path;
    use std::sync::{Arc, Mutex, OnceLock, Weak};
    use std::time::{Duration, Instant};

    use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};

    use crate::core::backend::Nudge;

    struct Subscriber {
        /// The database file's name; events for it and for `<name>-wal`
        /// count.
        file: OsString,
        driver: Weak<dyn Nudge>,
    }

    struct Registry {
        watches: Watches,
        by_dir: HashMap<WatchDescriptor, Vec<Subscriber>>,
    }

    type Shared = Arc<Mutex<Registry>>;

    fn registry() -> Option<&'static Shared> {
        static REGISTRY: OnceLock<Option<Shared>> = OnceLock::new();
        REGISTRY
            .get_or_init(|| {
                let inotify = Inotify::init().ok()?;
                let shared = Arc::new(Mutex::new(Registry {
                    watches: inotify.watches(),
                    by_dir: HashMap::new(),
                }));
                let reader = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name("leasehold-fs-watch".into())
                    .spawn(move || read_forever(inotify, &reader))
                    .ok()?;
                Some(shared)
            })
            .as_ref()
    }

    pub(super) fn subscribe(path: &Path, driver: Weak<dyn Nudge>) -> bool {
        let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
            return false;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let Some(shared) = registry() else {
            return false;
        };
        let mut reg = shared.lock().unwrap_or_else(|e| e.into_inner());
        let Ok(wd) = reg.watches.add(dir, WatchMask::MODIFY) else {
            return false;
        };
        let subscribers = reg.by_dir.entry(wd).or_default();
        subscribers.retain(|s| s.driver.strong_count() > 0);
        subscribers.push(Subscriber {
            file: file.to_owned(),
            driver,
        });
        true
    }

    fn concerns(file: &OsStr, event: &OsStr) -> bool {
        let (file, event) = (file.as_encoded_bytes(), event.as_encoded_bytes());
        event == file || event.strip_prefix(file) == Some(b"-wal")
    }

    fn read_forever(mut inotify: Inotify, shared: &Mutex<Registry>) {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut last_batch = Instant::now();
        loop {
            let Ok(events) = inotify.read_events_blocking(&mut buffer) else {
                // The descriptor broke: drivers keep their backstop polls.
                return;
            };
            let mut nudge: Vec<Arc<dyn Nudge>> = Vec::new();
            {
                let mut reg = shared.lock().unwrap_or_else(|e| e.into_inner());
                for event in events {
                    let Some(name) = event.name else { continue };
                    let Some(subscribers) = reg.by_dir.get_mut(&event.wd) else {
                        continue;
                    };
                    subscribers.retain(|s| s.driver.strong_count() > 0);
                    for s in subscribers.iter().filter(|s| concerns(&s.file, name)) {
                        if let Some(d) = s.driver.upgrade()
                            && !nudge.iter().any(|n| Arc::ptr_eq(n, &d))
                        {
                            nudge.push(d);
                        }
                    }
                }
                // Stop watching directories nobody cares about any more.
                let dead: Vec<WatchDescriptor> = reg
                    .by_dir
                    .iter()
                    .filter(|(_, subs)| subs.is_empty())
                    .map(|(wd, _)| wd.clone())
                    .collect();
                for wd in dead {
                    reg.by_dir.remove(&wd);
                    let _ = reg.watches.remove(wd);
                }
            }
            for driver in nudge {
                driver.nudge();
            }
            // Under a stream of commits, let events gather for a moment so
            // that each read (and each nudge) covers many of them.
            if last_batch.elapsed() < Duration::from_millis(1) {
                std::thread::sleep(Duration::from_micros(500));
            }
            last_batch = Instant::now();
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::path::Path;
    use std::sync::Weak;

    use crate::core::backend::Nudge;

    pub(super) fn subscribe(_path: &Path, _driver: Weak<dyn Nudge>) -> bool {
        false
    }
}
