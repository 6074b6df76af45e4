//! `--reload`: a worker watches the source files of every module its app
//! imported, and `reload_extra_files`, and when one changes it asks the
//! master for a reload (`Msg::CodeChanged`). The master reloads as SIGHUP
//! does: a new generation imports the code afresh and the old one retires
//! once the new one is ready, so a save in an editor fails no request, and
//! code that does not import leaves the old generation serving and watching
//! (`Supervisor::on_code_changed` says who is heard).
//!
//! The files are those Gunicorn's reloader watches: the `__file__` of each
//! module in `sys.modules` once the app is imported (`.pyc` read as its
//! `.py`). The engines are Gunicorn's too:
//! - inotify (`auto`, `inotify`), through the notify crate: like Gunicorn's
//!   inotify engine, the directories holding the files are watched (one
//!   watch each, not one per file), and only events for the files
//!   themselves count; an editor that saves by writing a new file and
//!   renaming it over the old one is seen too.
//! - `poll`: every second, each file's modification time, to the
//!   nanosecond, as Gunicorn's poll engine compares `st_mtime`. (notify's
//!   own poll watcher compares whole seconds, so it misses a second save
//!   within the same second; hashing every file instead would read all of
//!   the stdlib's modules each second.)
//!
//! The watching runs on threads of its own that never take the GIL.

use super::msg::{self, Msg};
use crate::config::Settings;
use crate::scoreboard::{now_ms, Slot};
use notify::event::{AccessKind, EventKind, MetadataKind, ModifyKind};
use notify::{Config, INotifyWatcher, RecursiveMode, Watcher};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

/// An editor's save is a burst of events (write, rename, chmod): wait until
/// the files are quiet this long before asking for one reload...
const SETTLE: Duration = Duration::from_millis(100);
/// ...but no longer than this after the first one.
const SETTLE_MAX: Duration = Duration::from_secs(1);
/// `reload_engine = "poll"`: how often the files' times are looked at
/// (Gunicorn's poll engine: every second).
const POLL_EVERY: Duration = Duration::from_secs(1);

/// In the worker, with its app imported: start watching, `extra` (the file
/// of code that did not compile) too. A failure to watch is logged and the
/// worker serves on without it.
pub(super) fn start(
    py: Python<'_>,
    s: &Settings,
    extra: Vec<PathBuf>,
    notify_fd: RawFd,
    slot: &'static Slot,
    slot_index: usize,
) {
    let mut files = match module_files(py) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("--reload: cannot list the app's modules: {e}");
            Vec::new()
        }
    };
    files.extend(s.reload_extra_files.iter().map(PathBuf::from));
    files.extend(extra);
    let watched: HashSet<PathBuf> = files.iter().filter_map(|f| key(f)).collect();
    let to = Master {
        notify_fd,
        slot,
        slot_index,
    };
    if let Err(e) = spawn(&s.reload_engine, watched, to) {
        tracing::warn!("--reload: cannot watch the app's files, code changes will not reload: {e}");
    }
}

/// The `__file__` of every module imported so far.
fn module_files(py: Python<'_>) -> PyResult<Vec<PathBuf>> {
    let modules = py.import("sys")?.getattr("modules")?.call_method0("copy")?;
    let modules = modules.cast_into::<PyDict>()?;
    let mut out = Vec::new();
    for (_, module) in modules.iter() {
        // Modules without a file (built-in, namespace packages, None
        // placeholders) have no `__file__` or a None one.
        if let Ok(Some(file)) = module
            .getattr("__file__")
            .and_then(|f| f.extract::<Option<PathBuf>>())
        {
            out.push(source_of(file));
        }
    }
    Ok(out)
}

/// `x.pyc` / `x.pyo` → `x.py`, as Gunicorn's reloader reads them.
fn source_of(file: PathBuf) -> PathBuf {
    match file.extension().and_then(|e| e.to_str()) {
        Some("pyc" | "pyo") => file.with_extension("py"),
        _ => file,
    }
}

/// The file as the watcher reports it: its absolute directory joined with
/// its name (events come as the watched directory joined with the name).
fn key(file: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(file).ok()?;
    Some(abs.parent()?.join(abs.file_name()?))
}

/// Where a change is reported.
struct Master {
    notify_fd: RawFd,
    slot: &'static Slot,
    slot_index: usize,
}

type Events = mpsc::Receiver<notify::Result<notify::Event>>;
type Sink = mpsc::Sender<notify::Result<notify::Event>>;

fn spawn(engine: &str, watched: HashSet<PathBuf>, to: Master) -> notify::Result<()> {
    let (tx, rx) = mpsc::channel();
    let start_polling = |tx| {
        let files = watched.clone();
        thread("reload-poll", move || poll(files, tx))
    };
    // "auto", "inotify" or "poll" (the value was checked when the settings
    // were read). `auto` polls where inotify cannot be had (the per-user
    // limit of inotify instances reached, a kernel without it), as
    // Gunicorn's `auto` does.
    let watcher = match engine {
        "poll" => {
            start_polling(tx)?;
            None
        }
        "auto" => match inotify(&watched, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "--reload: inotify is not available ({e}); polling the files every second"
                );
                start_polling(tx)?;
                None
            }
        },
        _ => Some(inotify(&watched, tx)?),
    };
    thread("reload", move || {
        // The watcher lives as long as the thread: dropping it stops it.
        let _watcher = watcher;
        run(rx, &watched, &to);
    })
}

fn thread(name: &str, f: impl FnOnce() + Send + 'static) -> notify::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|e| notify::Error::generic(&format!("cannot start a thread: {e}")))
}

/// An inotify watch on each directory holding a watched file.
fn inotify(watched: &HashSet<PathBuf>, tx: Sink) -> notify::Result<INotifyWatcher> {
    let mut watcher = INotifyWatcher::new(tx, Config::default())?;
    let dirs: BTreeSet<&Path> = watched.iter().filter_map(|f| f.parent()).collect();
    let mut watching = 0;
    for dir in dirs {
        // A directory that is gone (an extra file's, mistyped) is skipped.
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => watching += 1,
            Err(e) => tracing::debug!("--reload: not watching {}: {e}", dir.display()),
        }
    }
    tracing::debug!(
        "--reload: watching {} files in {watching} directories (inotify)",
        watched.len()
    );
    Ok(watcher)
}

/// `poll`: every [`POLL_EVERY`], a file whose modification time differs
/// from the last one seen is sent as changed. A file that cannot be read
/// (not there yet, or removed) counts once it is back. Ends when the
/// worker's watching thread is gone.
fn poll(watched: HashSet<PathBuf>, tx: Sink) {
    let mtime = |f: &Path| std::fs::metadata(f).and_then(|m| m.modified()).ok();
    let mut seen: HashMap<&PathBuf, Option<SystemTime>> =
        watched.iter().map(|f| (f, mtime(f))).collect();
    tracing::debug!("--reload: polling {} files", watched.len());
    loop {
        std::thread::sleep(POLL_EVERY);
        for (file, last) in seen.iter_mut() {
            let now = mtime(file);
            if now.is_none() || now == *last {
                continue;
            }
            *last = now;
            let kind = EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime));
            let event = notify::Event::new(kind).add_path(file.to_path_buf());
            if tx.send(Ok(event)).is_err() {
                return;
            }
        }
    }
}

/// Until the worker exits: each change to a watched file, once its burst
/// settles, is logged as Gunicorn logs it and reported to the master with
/// the time it was first seen (by which the master tells the other
/// workers' reports of the same save from a later one).
fn run(rx: Events, watched: &HashSet<PathBuf>, to: &Master) {
    while let Ok(event) = rx.recv() {
        let Some(file) = changed(event, watched) else {
            continue;
        };
        let seen = now_ms();
        if !settle(&rx, watched) {
            return;
        }
        tracing::info!("Worker reloading: {} modified", file.display());
        to.slot.code_changed_ms.store(seen, Ordering::Release);
        msg::send(to.notify_fd, Msg::CodeChanged, to.slot_index);
    }
}

/// Wait until the watched files have been quiet for [`SETTLE`] (events
/// for other files of their directories, such as a log written there, do
/// not count), at most [`SETTLE_MAX`]. false: the watcher is gone.
fn settle(rx: &Events, watched: &HashSet<PathBuf>) -> bool {
    let hard = Instant::now() + SETTLE_MAX;
    let mut quiet_at = Instant::now() + SETTLE;
    loop {
        let until = quiet_at.min(hard);
        let Some(left) = until.checked_duration_since(Instant::now()) else {
            return true;
        };
        match rx.recv_timeout(left) {
            Ok(event) => {
                if changed(event, watched).is_some() {
                    quiet_at = Instant::now() + SETTLE;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => return true,
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// The watched file an event changed, if any: reads and opens do not count
/// (importing a module is one), nor does a change to another file of the
/// same directory.
fn changed(event: notify::Result<notify::Event>, watched: &HashSet<PathBuf>) -> Option<PathBuf> {
    let event = event.ok()?;
    match event.kind {
        EventKind::Access(AccessKind::Close(notify::event::AccessMode::Write)) => {}
        EventKind::Access(_)
        | EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => return None,
        _ => {}
    }
    let file = event.paths.iter().find(|p| watched.contains(*p))?;
    // Not the log's own directory's every write: only the watched files'.
    tracing::debug!("--reload: {:?} {}", event.kind, file.display());
    Some(file.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_files_are_read_as_their_source() {
        assert_eq!(source_of("/a/m.pyc".into()), PathBuf::from("/a/m.py"));
        assert_eq!(source_of("/a/m.pyo".into()), PathBuf::from("/a/m.py"));
        assert_eq!(source_of("/a/m.so".into()), PathBuf::from("/a/m.so"));
    }

    #[test]
    fn only_changes_to_watched_files_count() {
        let watched: HashSet<PathBuf> = [PathBuf::from("/app/views.py")].into();
        let ev = |kind, path: &str| Ok(notify::Event::new(kind).add_path(path.into()));
        let write = EventKind::Modify(ModifyKind::Data(notify::event::DataChange::Any));
        assert_eq!(
            changed(ev(write, "/app/views.py"), &watched),
            Some(PathBuf::from("/app/views.py"))
        );
        assert_eq!(changed(ev(write, "/app/app.db"), &watched), None);
        let open = EventKind::Access(AccessKind::Open(notify::event::AccessMode::Read));
        assert_eq!(changed(ev(open, "/app/views.py"), &watched), None);
        // An editor's rename over the file.
        let renamed = EventKind::Modify(ModifyKind::Name(notify::event::RenameMode::To));
        assert!(changed(ev(renamed, "/app/views.py"), &watched).is_some());
    }

    #[test]
    fn a_relative_file_is_keyed_by_its_absolute_directory() {
        let cwd = std::env::current_dir().expect("a cwd");
        assert_eq!(key(Path::new("x/y.py")), Some(cwd.join("x").join("y.py")));
        assert_eq!(key(Path::new("/a/b.py")), Some(PathBuf::from("/a/b.py")));
    }
}
