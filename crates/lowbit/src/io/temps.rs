//! Temporary outputs and interrupts.
//!
//! Every temporary a writer creates (`OUT.tmp-<pid>-<n>` directories, `.NAME.tmp-<pid>-<n>` files,
//! `OUT.old-<pid>-<n>` while replacing) is registered here while it exists. An interrupt handler (the CLI
//! installs one for Ctrl-C, SIGTERM and SIGHUP) calls [`request_interrupt`]; the pipelines check
//! [`check_interrupt`] between tensors and unwind, removing their temporaries. If they do not get there in
//! time, the handler calls [`remove_registered`], which removes every registered temporary and keeps the
//! registry locked so that no new one can be created before the process exits.
//!
//! Temporaries of processes that no longer run (killed with SIGKILL, power loss) are found by name next to
//! a new output of the same name and removed ([`remove_stale`]).

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static REGISTRY: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Asks running pipelines to stop at the next tensor boundary and remove their temporary output.
pub fn request_interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether [`request_interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Error::Interrupted)` once an interrupt was requested.
pub(crate) fn check_interrupt(target: &Path) -> Result<()> {
    if interrupted() {
        return Err(Error::Interrupted {
            path: target.to_path_buf(),
        });
    }
    Ok(())
}

fn registry() -> MutexGuard<'static, Vec<PathBuf>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A unique suffix for this process: `<pid>-<n>`. The pid comes first so stale temporaries can be told
/// from live ones.
pub(crate) fn unique_tag() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `create` (which makes `path` on disk) and registers `path`, atomically with respect to
/// [`remove_registered`].
pub(crate) fn create_registered<T>(path: &Path, create: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut reg = registry();
    let v = create()?;
    reg.push(path.to_path_buf());
    Ok(v)
}

/// Registers a path that is about to appear under a new name (a rename target that is itself temporary).
pub(crate) fn register(path: &Path) {
    registry().push(path.to_path_buf());
}

/// Forgets `path` (it was renamed into place or removed).
pub(crate) fn unregister(path: &Path) {
    let mut reg = registry();
    if let Some(i) = reg.iter().rposition(|p| p == path) {
        reg.swap_remove(i);
    }
}

/// Removes every registered temporary and returns them. The registry stays locked afterwards, so no new
/// temporary can be created: call this only right before the process exits.
pub fn remove_registered() -> Vec<PathBuf> {
    let reg = registry();
    for p in reg.iter() {
        remove_path(p);
    }
    let removed = reg.clone();
    std::mem::forget(reg);
    removed
}

/// Removes a file or a directory tree, ignoring errors (best effort, several tries: a writer may still be
/// adding files to a directory being removed).
pub(crate) fn remove_path(p: &Path) {
    for _ in 0..5 {
        let r = match std::fs::symlink_metadata(p) {
            Err(_) => return,
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
            Ok(_) => std::fs::remove_file(p),
        };
        if r.is_ok() {
            return;
        }
    }
}

/// Whether process `pid` is known to have exited. Only answers `true` where the OS lets us check cheaply
/// (Linux `/proc`); elsewhere stale temporaries are reported, not removed.
fn process_gone(pid: u32) -> Option<bool> {
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        Some(!Path::new(&format!("/proc/{pid}")).exists())
    } else {
        None
    }
}

/// The pid in a temporary's name `prefix<pid>[-<n>]`, if `name` is one.
fn temp_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let pid = rest.split('-').next()?;
    if rest.len() > pid.len() && !rest[pid.len() + 1..].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// What [`remove_stale`] found.
#[derive(Clone, Debug, Default)]
pub struct StaleTemps {
    /// Removed: their process no longer runs.
    pub removed: Vec<PathBuf>,
    /// Left in place: their process still runs, or this OS cannot tell.
    pub kept: Vec<PathBuf>,
}

/// Temporaries of earlier runs that wrote `target` (`target.tmp-<pid>*`, `target.old-<pid>*`,
/// `.name.tmp-<pid>*` beside it): removed when their process is gone, reported otherwise.
pub fn remove_stale(target: &Path) -> StaleTemps {
    let mut out = StaleTemps::default();
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().to_string()) else {
        return out;
    };
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return out;
    };
    let prefixes = [
        format!("{name}.tmp-"),
        format!("{name}.old-"),
        format!(".{name}.tmp-"),
    ];
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        let Some(pid) = prefixes.iter().find_map(|p| temp_pid(&n, p)) else {
            continue;
        };
        let p = e.path();
        if pid != std::process::id() && process_gone(pid) == Some(true) {
            remove_path(&p);
            if std::fs::symlink_metadata(&p).is_err() {
                tracing::warn!(
                    "removed {} left by an earlier run (process {pid}, no longer running)",
                    p.display()
                );
                out.removed.push(p);
                continue;
            }
        }
        if pid != std::process::id() {
            if process_gone(pid).is_none() {
                tracing::warn!(
                    "{} was left by another run (process {pid}), which may still be writing; left in place",
                    p.display()
                );
            }
            out.kept.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::temp_pid;

    #[test]
    fn temp_names_parse() {
        assert_eq!(temp_pid("out.tmp-123-4", "out.tmp-"), Some(123));
        assert_eq!(temp_pid("out.tmp-123", "out.tmp-"), Some(123));
        assert_eq!(temp_pid("out.tmp-12x", "out.tmp-"), None);
        assert_eq!(temp_pid("out.tmp-12-a", "out.tmp-"), None);
        assert_eq!(temp_pid("other.tmp-12", "out.tmp-"), None);
    }
}
