//! Signals that end a worker while Python may be running:
//!
//! - ABRT, WORKER TIMEOUT: the master found a request running past
//!   `--timeout`. A watcher thread takes the GIL (which a request stuck in
//!   `sleep`, I/O or bytecode gives up every few milliseconds), logs every
//!   Python thread's stack at CRITICAL, runs the `worker_abort` hook, and
//!   exits. A request stuck in C code that never releases the GIL is
//!   SIGKILLed by the master after a short grace instead.
//! - INT and QUIT, quick stop: the worker exits at once; when the config
//!   file sets a `worker_int` or `worker_exit` hook, the watcher runs them
//!   first, as Gunicorn's worker does (`worker_int`, then `sys.exit` whose
//!   unwinding runs `worker_exit`); the master's quick-stop deadline still
//!   bounds how long that may take.
//!
//! After a timeout's `worker_abort`, `worker_exit` runs too, as in Gunicorn.
//! Before either, every request of the worker whose response has not
//! started is answered `500 Internal Server Error` (as Gunicorn's sync
//! worker answers the request its abort interrupts) and closed cleanly
//! (see [`crate::wsgi::flight`]); a response already under way is cut off.
//! The worker's idle keep-alive connections are handed back to the master
//! for the next worker (see [`super::handback`]), so that requests their
//! clients sent behind the stuck one are answered, not lost.
//!
//! The handlers only write one byte to a pipe or call `_exit`, both
//! async-signal-safe; everything else happens on the watcher thread.

use pyo3::prelude::*;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static PIPE_W: AtomicI32 = AtomicI32::new(-1);
/// A `worker_int` or `worker_exit` hook is set: INT/QUIT go through the
/// watcher.
static INT_HOOK: AtomicBool = AtomicBool::new(false);

fn notify(byte: &'static [u8; 1]) -> bool {
    let fd = PIPE_W.load(Ordering::Relaxed);
    // SAFETY: write(2) is async-signal-safe; the buffer is static.
    fd >= 0 && unsafe { libc::write(fd, byte.as_ptr().cast(), 1) } == 1
}

extern "C" fn on_abort(_sig: libc::c_int) {
    notify(b"A");
}

extern "C" fn on_int(_sig: libc::c_int) {
    if !(INT_HOOK.load(Ordering::Relaxed) && notify(b"I")) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
}

/// Install `f` as the handler of `sig` (it must be async-signal-safe).
pub(super) fn handle(sig: nix::sys::signal::Signal, f: extern "C" fn(libc::c_int)) {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet};
    let act = SigAction::new(SigHandler::Handler(f), SaFlags::SA_RESTART, SigSet::empty());
    // SAFETY: the handlers only call write(2) or _exit(2), both
    // async-signal-safe.
    if let Err(e) = unsafe { sigaction(sig, &act) } {
        tracing::warn!("cannot install the {sig} handler: {e}");
    }
}

/// Install the ABRT, INT and QUIT handlers and the watcher thread.
/// `quick_stop_hooks`: the config file sets `worker_int` or `worker_exit`.
pub fn install(quick_stop_hooks: bool) {
    use nix::sys::signal::Signal;
    INT_HOOK.store(quick_stop_hooks, Ordering::Relaxed);
    match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok((r, w)) => {
            PIPE_W.store(w.into_raw_fd(), Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name("signal-watch".into())
                .spawn(move || watch(r));
            if let Err(e) = spawned {
                tracing::warn!("cannot start the signal watcher: {e}");
                PIPE_W.store(-1, Ordering::Relaxed);
            }
        }
        Err(e) => tracing::warn!("cannot set up the timeout report: {e}"),
    }
    handle(Signal::SIGABRT, on_abort);
    handle(Signal::SIGINT, on_int);
    handle(Signal::SIGQUIT, on_int);
}

fn watch(r: OwnedFd) {
    let mut b = [0u8; 1];
    let what = loop {
        match nix::unistd::read(&r, &mut b) {
            Ok(1) => break b[0],
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    };
    if what == b'I' {
        crate::hooks::worker_int_now();
        tracing::info!("Worker exiting (pid: {})", std::process::id());
        crate::hooks::worker_exit_now();
        // SAFETY: a quick stop: leave at once, as the plain handler does.
        unsafe { libc::_exit(0) }
    }
    let pid = std::process::id();
    // First, before waiting for the GIL: each request whose response has
    // not started gets Gunicorn's 500 and a clean close, not an empty reply.
    let answered = crate::wsgi::flight::abort_unstarted(&crate::http::response::error(
        500,
        "Internal Server Error",
        "",
    ));
    if answered > 0 {
        tracing::debug!("answered 500 to {answered} request(s) cut off by the timeout");
    }
    // Then the idle keep-alive connections go to the next worker, with any
    // request their clients sent meanwhile still unread in them.
    let handed = super::handback::hand_back();
    if handed > 0 {
        tracing::debug!("handed {handed} idle connection(s) back to the master");
    }
    let stacks = Python::attach(|py| {
        crate::python::bootstrap(py)
            .and_then(|b| b.call_method0("dump_stacks"))
            .and_then(|s| s.extract::<String>())
            .unwrap_or_else(|e| format!("(no stack: {e})"))
    });
    crate::critical!("WORKER TIMEOUT (pid:{pid})\n{}", stacks.trim_end());
    crate::hooks::worker_abort_now();
    crate::hooks::worker_exit_now();
    // SAFETY: leaving at once is the point; nothing must run after this.
    unsafe { libc::_exit(1) }
}
