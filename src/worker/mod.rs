//! A worker process: built after the fork, it imports the app (unless the
//! master preloaded it), then serves HTTP/1.1 on the inherited listeners.
//!
//! Theory of operation:
//! - `boot.rs` sets the process up after the fork (privileges, Python, the
//!   app, logconfig, proctitle, the `post_worker_init` hook) and builds the
//!   WSGI bridge a class asks for.
//! - `conn.rs` is the one connection loop every class shares. Socket I/O
//!   runs on a tokio current-thread runtime on the worker's main thread. A
//!   connection holds no Python slot while its request head is read, while
//!   it waits between keep-alive requests, or while a response the app
//!   already produced drains to a slow client. A worker only accepts while
//!   it has a free Python slot, so a busy worker leaves new connections to
//!   an idle one. It also owns the signals, the heartbeat, `--max-requests`
//!   and the graceful drain.
//! - A worker class ([`Class`], one file each) decides only how many
//!   requests it runs at once and where the app runs for a parsed request:
//!   - `sync.rs`: inline on the main thread, one request at a time (no
//!     hand-off);
//!   - `gthread.rs`: on `--threads` Python threads fed through a channel;
//!   - `gevent.rs`: in greenlets on a gevent hub that owns the main thread;
//!   - `asgi.rs`: as tasks on an asyncio/uvloop event loop on the main
//!     thread, with the connection loop moved to an I/O thread.
//! - `tornado.rs` (`-k tornado`) is the exception: Tornado's HTTP server
//!   and IOLoop own the main thread, so it keeps the master's contract
//!   (ready, heartbeat, max-requests, graceful stop) itself, not `conn.rs`.
//!
//!   A class whose own event loop must own the main thread (gevent's hub,
//!   asyncio) sets [`Class::MAIN_LOOP`]: `conn.rs` then runs the same
//!   tokio loop on a thread named `io`, and the class's loop runs on the
//!   main thread ([`Class::main_loop`]); requests cross through a
//!   `handoff.rs` queue (one wake-up per batch), and completions come back
//!   as tokio oneshots. Everything the connection loop owns stays on the
//!   I/O thread, unchanged.
//!
//! Signals (installed after the app is imported, since importing `signal`
//! installs Python's own SIGINT handler): TERM = finish in-flight requests
//! and exit; INT/QUIT = exit now; USR1 = reopen logs; ABRT = the master's
//! `--timeout` (see `abort.rs`). TERM and USR1 are blocked from `conn::run`
//! until tokio's handlers are installed (a TERM meanwhile waits instead of
//! being lost), then unblocked on the main thread before any other thread
//! of the loop starts. All of these handlers are process-wide and only
//! write to a pipe, so whichever thread the kernel picks, TERM/USR1 reach
//! the tokio loop and ABRT/INT/QUIT the watcher thread. With
//! [`Class::MAIN_LOOP`] the main thread runs Python, so Python-level
//! handlers keep their usual home: `signal.signal` called by the app (at
//! import, or in a greenlet or coroutine) works, as it may only be called
//! from the main thread; Python runs those handlers on the main thread
//! when its loop turns (`set_wakeup_fd`, which asyncio's
//! `add_signal_handler` uses, wakes it). Python's own SIGINT handler
//! (KeyboardInterrupt) is replaced by the quick stop after the import, as
//! for every class; an app that installs its own handler for TERM, USR1,
//! INT, QUIT or ABRT replaces the worker's, as it would under Gunicorn.
//! The main thread runs with TERM and USR1 unblocked, so processes the app
//! starts do not inherit them blocked.

mod abort;
mod asgi;
mod balance;
mod body;
mod boot;
mod conn;
mod gevent;
mod gthread;
pub mod handback;
pub mod handoff;
pub mod linger;
pub mod msg;
pub use body::unlinked_tempfile;
mod proxy_header;
mod reload_watch;
mod sync;
mod tornado;

use crate::config::{Settings, WorkerClass};
use crate::http;
use crate::scoreboard::Slot;
use crate::sock::Listener;
use crate::wsgi::{Outcome, Peer};
use pyo3::prelude::*;
use std::future::Future;
use std::os::fd::RawFd;

/// How long a client may take to send a complete request head.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the master hands a new worker.
pub struct Spec<'a> {
    pub settings: &'a Settings,
    pub app_uri: &'a str,
    pub listeners: &'a [Listener],
    pub slot_index: usize,
    pub slot: &'a Slot,
    pub scoreboard: &'a crate::scoreboard::Scoreboard,
    pub notify_fd: RawFd,
    pub preloaded: Option<Py<PyAny>>,
    pub max_requests: u64,
    pub multiprocess: bool,
    pub argv: &'a [String],
    /// `--reload` before any worker served: app code that does not compile
    /// is served as a 500 with its traceback until it is fixed, as
    /// Gunicorn's `--reload` does, instead of failing the boot.
    pub serve_syntax_errors: bool,
}

/// Run a worker to the end. Never returns: the process exits with 0, or
/// with 3/4 when it could not boot.
pub fn run(spec: Spec<'_>) -> ! {
    boot::default_fault_signals();
    let (settings, age) = (spec.settings, spec.slot_index);
    let code = match boot::boot(spec).and_then(serve) {
        Ok(()) => 0,
        Err(code) => code,
    };
    crate::hooks::worker_exit(settings, age);
    if crate::python::is_initialized() {
        // Give the app's atexit handlers their turn, as a Python process would.
        Python::attach(|py| {
            let _ = py
                .import("atexit")
                .and_then(|m| m.call_method0("_run_exitfuncs"));
        });
    }
    std::process::exit(code)
}

/// The one place a worker class is chosen: build it, then run the shared
/// loop with it until the worker stops.
fn serve(b: boot::Booted<'_>) -> Result<(), i32> {
    match b.settings.effective_worker_class() {
        WorkerClass::Sync => conn::run(sync::Sync::new(&b)?, &b),
        WorkerClass::Gthread => conn::run(gthread::Gthread::new(&b)?, &b),
        // Tornado's own server and IOLoop: not the shared loop (which
        // serves connections handed back by an aborted worker: close them
        // rather than hold them unanswered).
        WorkerClass::Tornado => {
            drop(handback::take_adopted());
            tornado::run(&b)
        }
        WorkerClass::Gevent => conn::run(gevent::Gevent::new(&b)?, &b),
        WorkerClass::Asgi => asgi::serve(&b),
    }
}

/// The seam between the shared connection loop (`conn.rs`) and a worker
/// class. The loop owns accept and capacity, the PROXY header, parsing and
/// limits, keep-alive, the access log, the heartbeat, `--max-requests`,
/// signals and the graceful drain; a class decides how many requests it
/// runs at once and how a parsed request reaches the app and its outcome
/// comes back.
///
/// The loop is generic over the class (no dynamic dispatch, no boxed
/// future per request). A new class is one file in `worker/` implementing
/// this, plus its arm in [`serve`].
trait Class: Send + Sync + Sized + 'static {
    /// The app runs on the I/O thread itself: after each accept the loop
    /// waits until that connection's first request is under way (or not
    /// there yet) before accepting again, so a worker about to be busy
    /// does not grab a second client an idle worker could serve.
    const INLINE: bool;

    /// The worker leaves a new connection to a less loaded worker when it
    /// is ahead (`balance.rs`): for the classes whose one loop serves every
    /// connection (gevent, asgi), where a worker holding most keep-alive
    /// connections serves most of the load alone. sync and gthread accept
    /// only while a thread is free, which spreads the work already.
    const BALANCE: bool = false;

    /// How many requests may be in flight at once; the loop accepts only
    /// while fewer are.
    fn slots(&self) -> usize;

    /// Called once on the I/O thread before the loop starts, with TERM and
    /// USR1 still blocked (threads started here inherit that, so those
    /// signals reach the loop). `Err` is the worker's exit code.
    fn start(&mut self) -> Result<(), i32> {
        Ok(())
    }

    /// Run the app on one parsed request. The class keeps `slot.active`
    /// (and, when the app runs on the I/O thread, `slot.busy_since_ms`)
    /// current. `None`: the request was lost (the class is going away)
    /// and the connection closes without an answer.
    fn dispatch<'a>(
        &'a self,
        call: Call<'a>,
    ) -> impl Future<Output = Option<(http::Request, Outcome)>> + Send + 'a;

    /// How request bodies are pre-read before `dispatch` (see `body.rs`);
    /// the settings' policy unless the class streams bodies itself.
    fn body_policy(&self, p: body::Policy) -> body::Policy {
        p
    }

    /// Every heartbeat tick (500 ms) on the I/O thread: a class whose
    /// requests run off this thread publishes the start of its oldest one
    /// in `slot.busy_since_ms`, which `--timeout` watches.
    fn heartbeat(&self, _slot: &Slot) {}

    /// After a graceful stop, once the last connection has closed. With
    /// [`Class::MAIN_LOOP`], also called if the I/O thread dies, so it
    /// must be idempotent; it is how `main_loop` learns to return.
    fn stopped(&self) {}

    /// On the I/O thread when a graceful stop begins: connections still
    /// open at `deadline` (a little before `--graceful-timeout` ends) are
    /// closed by the loop; a class that holds long-lived connections of
    /// its own (the ASGI worker's WebSockets) closes them by then.
    fn draining(&self, _deadline: std::time::Instant) {}

    /// The class runs its own event loop on the worker's main thread
    /// (gevent's hub, an asyncio loop): the connection loop then runs on an
    /// I/O thread instead, and [`Class::main_loop`] on the main thread.
    /// false (sync, gthread): the connection loop runs on the main thread,
    /// with no extra thread or hand-off.
    const MAIN_LOOP: bool = false;

    /// With [`Class::MAIN_LOOP`]: run the class's loop on the main thread
    /// until [`Class::stopped`] has been called (return `Ok`), or give the
    /// worker's exit code. Called after `start`, once the worker's signal
    /// handlers are in place; requests `dispatch`ed meanwhile wait for it
    /// (a [`handoff`] queue is the usual way across).
    fn main_loop(&self) -> Result<(), i32> {
        Ok(())
    }
}

/// A parsed request on its way to the thread or event loop that runs the
/// app (gthread's pool, gevent's hub, the ASGI loop), with the oneshot its
/// outcome comes back on.
struct Job {
    listener: usize,
    req: http::Request,
    prebuffered: Vec<u8>,
    spill: Option<std::fs::File>,
    fd: RawFd,
    peer: Peer,
    reply: tokio::sync::oneshot::Sender<(http::Request, Outcome)>,
}

impl Call<'_> {
    /// The request as a [`Job`] for another thread, and where its outcome
    /// will arrive.
    fn into_job(
        self,
    ) -> (
        Job,
        tokio::sync::oneshot::Receiver<(http::Request, Outcome)>,
    ) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job {
            listener: self.listener,
            req: self.req,
            prebuffered: self.prebuffered,
            spill: self.spill,
            fd: self.fd,
            peer: self.peer.clone(),
            reply,
        };
        (job, rx)
    }
}

/// One parsed request, handed from the loop to the class.
struct Call<'a> {
    /// Index of the listener it arrived on.
    listener: usize,
    req: http::Request,
    /// Bytes already read past the head (the start of the body, or
    /// pipelined requests).
    prebuffered: Vec<u8>,
    /// The body, when Rust pre-read more of it than fits in memory.
    spill: Option<std::fs::File>,
    /// The connection's socket; the app's body reads and response writes
    /// use it directly.
    fd: RawFd,
    peer: &'a Peer,
}
