//! WORKER TIMEOUT: when the master finds a request running past
//! `--timeout`, it sends SIGABRT. The handler only writes a byte to a pipe
//! (async-signal-safe); a watcher thread then takes the GIL (which a stuck
//! request in `sleep`, I/O or bytecode gives up every few milliseconds),
//! logs every Python thread's stack at CRITICAL, and exits. A request stuck
//! in C code that never releases the GIL is SIGKILLed by the master after a
//! short grace instead.

use pyo3::prelude::*;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

static PIPE_W: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_abort(_sig: libc::c_int) {
    let fd = PIPE_W.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer is static.
        unsafe {
            libc::write(fd, b"A".as_ptr().cast(), 1);
        }
    }
}

/// Install the SIGABRT handler and its watcher thread.
pub fn install() {
    let (r, w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("cannot set up the timeout report: {e}");
            return;
        }
    };
    PIPE_W.store(w.into_raw_fd(), Ordering::Relaxed);
    let act = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_abort),
        nix::sys::signal::SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the handler only calls write(2), which is async-signal-safe.
    if let Err(e) = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGABRT, &act) }
    {
        tracing::warn!("cannot install the SIGABRT handler: {e}");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("abort-watch".into())
        .spawn(move || watch(r));
    if let Err(e) = spawned {
        tracing::warn!("cannot start the timeout watcher: {e}");
    }
}

fn watch(r: OwnedFd) {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(&r, &mut b) {
            Ok(1) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    }
    let pid = std::process::id();
    let stacks = Python::attach(|py| {
        crate::python::bootstrap(py)
            .and_then(|b| b.call_method0("dump_stacks"))
            .and_then(|s| s.extract::<String>())
            .unwrap_or_else(|e| format!("(no stack: {e})"))
    });
    crate::critical!("WORKER TIMEOUT (pid:{pid})\n{}", stacks.trim_end());
    crate::hooks::worker_abort_now();
    // SAFETY: leaving at once is the point; nothing must run after this.
    unsafe { libc::_exit(1) }
}
