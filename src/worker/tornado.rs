//! The `tornado` worker class (`-k tornado`): the app is served by
//! Tornado's own `HTTPServer` on the listeners the master hands over, with
//! Tornado's IOLoop on the worker's main thread, as Gunicorn's tornado
//! worker does. A `tornado.web.Application` is served as it is; any other
//! app is a WSGI callable, wrapped in `tornado.wsgi.WSGIContainer`.
//!
//! Unlike the other classes this one does not use `conn.rs`: Tornado reads
//! and writes HTTP itself. What it owns instead is the worker's contract
//! with the master, kept in Rust (`Control`) and called from the Python
//! half (`tornado.py`) on the IOLoop:
//! - READY once the loop turns with the listeners registered;
//! - the heartbeat, written by a 500 ms `PeriodicCallback`, so an IOLoop
//!   blocked (by `time.sleep` in a handler, say) trips `--timeout`: no
//!   request clock is published (`busy_since_ms` stays 0), the loop's own
//!   heartbeat is the judge, and the abort watcher logs the stack;
//! - requests in flight and served in the scoreboard slot, and the RETIRE
//!   message at `--max-requests`;
//! - TERM (its handler writes to a pipe a thread of ours reads, which
//!   hands it to the IOLoop):
//!   stop accepting, let in-flight requests finish, answer late ones with
//!   `Connection: close`, leave before `--graceful-timeout`; USR1 reopens
//!   the logs; ABRT, INT and QUIT are `abort.rs`'s, as for every class.
//!
//! HTTPS (`certfile`): Tornado's server is handed an `ssl.SSLContext`, as
//! Gunicorn's tornado worker does, and does the handshake on its IOLoop.

use super::abort;
use super::boot::{set_mask, Booted};
use super::msg::{self, Msg, WORKER_BOOT_ERROR};
use crate::scoreboard::{now_ms, Slot};
use pyo3::prelude::*;
use pyo3::types::PyModule;
use std::ffi::CString;
use std::os::fd::{IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// HTTPS for Tornado's own server (`certfile`): what Gunicorn's tornado
/// worker hands it, an `ssl.SSLContext` built by `tornado.py` from these
/// settings (OpenSSL through Python's `ssl`, as under Gunicorn: the
/// handshake runs on the IOLoop, asynchronously). The master already
/// checked the files with rustls (`crate::tls`). None: plain HTTP.
fn tls_options<'py>(
    py: Python<'py>,
    s: &crate::config::Settings,
) -> PyResult<Option<Bound<'py, pyo3::types::PyDict>>> {
    if !crate::tls::enabled(s) {
        return Ok(None);
    }
    let d = pyo3::types::PyDict::new(py);
    d.set_item("certfile", &s.certfile)?;
    d.set_item("keyfile", &s.keyfile)?;
    d.set_item("ca_certs", &s.ca_certs)?;
    d.set_item("cert_reqs", s.cert_reqs)?;
    d.set_item("ciphers", &s.ciphers)?;
    Ok(Some(d))
}

/// Run the worker until the IOLoop stops. `Err` is the exit code.
pub(super) fn run(b: &Booted<'_>) -> Result<(), i32> {
    let s = b.settings;
    // A TERM that comes before our handlers are in place waits (blocked)
    // instead of being lost; threads started meanwhile (the abort watcher,
    // the signal thread) keep it blocked, so it reaches the handlers below.
    set_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK);
    abort::install(s.hook("worker_int").is_some() || s.hook("worker_exit").is_some());
    let ctl = Control {
        slot: b.slot,
        notify_fd: b.notify_fd,
        slot_index: b.slot_index,
        max_requests: b.max_requests,
        served: AtomicU64::new(0),
        retire_sent: AtomicBool::new(false),
        master: nix::unistd::getppid().as_raw(),
    };
    let fds: Vec<RawFd> = b.listeners.iter().map(|l| l.raw_fd()).collect();
    let worker = Python::attach(|py| -> PyResult<Py<PyAny>> {
        let code = CString::new(include_str!("tornado.py"))
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        let m = PyModule::from_code(py, &code, c"<rgunicorn-tornado>", c"_rgunicorn_tornado")?;
        let w = m.getattr("Worker")?.call1((
            Py::new(py, ctl)?,
            b.app.clone_ref(py),
            fds,
            s.keepalive,
            s.graceful_timeout as f64,
            tls_options(py, s)?,
        ))?;
        Ok(w.unbind())
    })
    .map_err(|e| {
        let tb = Python::attach(|py| crate::python::format_exception(py, &e));
        tracing::error!("Exception in worker process\n{}", tb.trim_end());
        WORKER_BOOT_ERROR
    })?;
    b.initialized();
    let target = Python::attach(|py| worker.clone_ref(py));
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
        tracing::error!("cannot set up the signal pipe: {e}");
        WORKER_BOOT_ERROR
    })?;
    if let Err(e) = std::thread::Builder::new()
        .name("tornado-signals".into())
        .spawn(move || signals(r, target))
    {
        tracing::error!("cannot start the signal thread: {e}");
        return Err(WORKER_BOOT_ERROR);
    }
    SIGNAL_PIPE.store(w.into_raw_fd(), Ordering::Relaxed);
    abort::handle(nix::sys::signal::Signal::SIGTERM, on_signal);
    abort::handle(nix::sys::signal::Signal::SIGUSR1, on_signal);
    // Handlers in place: a TERM that came while booting is delivered now.
    // (Not left blocked: processes the app starts would inherit the mask.)
    set_mask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK);
    Python::attach(|py| worker.bind(py).call_method0("run").map(|_| ())).map_err(|e| {
        let tb = Python::attach(|py| crate::python::format_exception(py, &e));
        tracing::error!("Exception in worker process\n{}", tb.trim_end());
        1
    })
}

/// The write end of the pipe the TERM and USR1 handlers write to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let byte: &[u8; 1] = if sig == libc::SIGTERM { b"T" } else { b"U" };
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the buffer is static.
        let _ = unsafe { libc::write(fd, byte.as_ptr().cast(), 1) };
    }
}

/// TERM and USR1, read from the handlers' pipe on a thread of their own:
/// TERM is handed to the IOLoop, USR1 reopens the logs.
fn signals(r: OwnedFd, worker: Py<PyAny>) {
    let mut b = [0u8; 1];
    loop {
        match nix::unistd::read(&r, &mut b) {
            Ok(1) if b[0] == b'T' => {
                tracing::info!("Worker exiting (pid: {})", std::process::id());
                let r = Python::attach(|py| worker.bind(py).call_method0("stop_soon").map(|_| ()));
                if let Err(e) = r {
                    tracing::error!("cannot stop the IOLoop: {e}");
                }
            }
            Ok(1) => {
                if let Err(e) = crate::logging::reopen() {
                    tracing::error!("cannot reopen log files: {e}");
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Ok(_) | Err(_) => return,
        }
    }
}

/// The worker's side of its contract with the master, called from the
/// IOLoop (`tornado.py`).
#[pyclass(module = "rgunicorn")]
struct Control {
    slot: &'static Slot,
    notify_fd: RawFd,
    slot_index: usize,
    max_requests: u64,
    served: AtomicU64,
    retire_sent: AtomicBool,
    /// The master's pid: a worker whose parent changed stops.
    master: i32,
}

impl Control {
    fn tell_master(&self, kind: Msg) {
        msg::send(self.notify_fd, kind, self.slot_index);
    }
}

#[pymethods]
impl Control {
    /// The IOLoop runs, listening.
    fn ready(&self) {
        self.tell_master(Msg::Ready);
    }

    /// The loop turned. False once the master is gone (time to stop).
    fn beat(&self) -> bool {
        self.slot.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
        if nix::unistd::getppid().as_raw() != self.master {
            tracing::info!("Parent changed, shutting down");
            return false;
        }
        true
    }

    /// A request head arrived.
    fn begin(&self) {
        self.slot.active.fetch_add(1, Ordering::Relaxed);
    }

    /// A request's response ended (or its connection did).
    fn end(&self) {
        let _ = self
            .slot
            .active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        self.slot.requests.store(n, Ordering::Relaxed);
        if self.max_requests > 0
            && n >= self.max_requests
            && !self.retire_sent.swap(true, Ordering::Relaxed)
        {
            tracing::info!("Autorestarting worker after current request.");
            self.tell_master(Msg::Retire);
        }
    }
}
