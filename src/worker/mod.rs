//! A worker process: built after the fork, it imports the app (unless the
//! master preloaded it), then serves HTTP/1.1 on the inherited listeners.
//!
//! Socket I/O runs on a tokio current-thread runtime on the worker's main
//! thread. A connection holds no Python slot while its request head is
//! read, while it waits between keep-alive requests, or while a response
//! the app already produced drains to a slow client. Python runs:
//! - `sync`: inline on the main thread, one request at a time (no hand-off);
//! - `gthread`: on `--threads` Python threads fed through a channel.
//!
//! A worker only accepts while it has a free Python slot, so a busy worker
//! leaves new connections to an idle one.
//!
//! Signals (installed after the app is imported, since importing `signal`
//! installs Python's own SIGINT handler): TERM = finish in-flight requests
//! and exit; INT/QUIT = exit now; USR1 = reopen logs.

mod abort;
mod body;
pub mod msg;
pub use body::unlinked_tempfile;
mod proxy_header;

use crate::config::{Settings, WorkerClass};
use crate::http::{self, Limits};
use crate::scoreboard::{now_ms, Slot, SlotState};
use crate::sock::{Listener, ListenerKind};
use crate::wsgi::{self, Bridge, ListenerInfo, Outcome, Peer};
use msg::{Msg, APP_LOAD_ERROR, WORKER_BOOT_ERROR};
use pyo3::prelude::*;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch, Notify};

/// How long a client may take to send a complete request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

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
}

/// Run a worker to the end. Never returns: the process exits with 0, or
/// with 3/4 when it could not boot.
pub fn run(spec: Spec<'_>) -> ! {
    default_fault_signals();
    let (settings, age) = (spec.settings, spec.slot_index);
    let code = match boot_and_serve(spec) {
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

fn boot_and_serve(spec: Spec<'_>) -> Result<(), i32> {
    let s = spec.settings;
    let pid = std::process::id();
    tracing::info!("Booting worker with pid: {pid}");
    // --user/--group/--initgroups: the listeners are already bound and
    // inherited; the app is imported as the unprivileged user.
    if let Err(e) = crate::privileges::drop_to(s.user.as_deref(), s.group.as_deref(), s.initgroups)
    {
        tracing::error!("Exception in worker process: cannot drop privileges: {e:#}");
        spec.scoreboard
            .set_error(spec.slot_index, &format!("cannot drop privileges: {e:#}"));
        return Err(WORKER_BOOT_ERROR);
    }
    let app = match spec.preloaded {
        Some(app) => app,
        None => {
            if let Err(e) = crate::python::initialize(spec.argv)
                .and_then(|()| crate::python::apply_logconfig(s))
            {
                tracing::error!("Exception in worker process: {e:#}");
                spec.scoreboard
                    .set_error(spec.slot_index, &format!("{e:#}"));
                return Err(WORKER_BOOT_ERROR);
            }
            match crate::python::load_app(spec.app_uri, s.chdir.as_deref(), &s.pythonpath) {
                Ok(app) => app,
                Err(e) => {
                    tracing::error!("Exception in worker process\n{}", e.traceback.trim_end());
                    spec.scoreboard.set_error(spec.slot_index, &e.traceback);
                    return Err(APP_LOAD_ERROR);
                }
            }
        }
    };
    let threaded = s.effective_worker_class() == WorkerClass::Gthread;
    let slots = if threaded { s.threads.max(1) } else { 1 };
    let infos: Vec<ListenerInfo> = spec.listeners.iter().map(listener_info).collect();
    let io_timeout = Duration::from_secs(if s.timeout == 0 {
        3600
    } else {
        s.timeout.max(1)
    });
    let mut bridge =
        Python::attach(|py| Bridge::new(py, app, &infos, threaded, spec.multiprocess, io_timeout))
            .map_err(|e| {
                tracing::error!("Exception in worker process: {e}");
                WORKER_BOOT_ERROR
            })?;
    bridge.proxy = wsgi::ProxyPolicy::from_settings(s).map_err(|e| {
        tracing::error!("Exception in worker process: {e}");
        WORKER_BOOT_ERROR
    })?;
    // Decided once: the environ keys the access log reads after each call.
    bridge.access_environ = crate::logging::access_environ_keys();
    let body_policy = body::Policy::from_settings(s);
    bridge.body_rate = Some((body_policy.timeout, body_policy.min_rate));
    wsgi::spool::configure(wsgi::spool::Config {
        memory_max: s.response_buffer_size,
        worker_max: s.response_spool_max,
        grace: Duration::from_secs(s.response_timeout.max(1)),
        min_rate: s.response_min_rate,
    });
    crate::proctitle::set("worker", s);
    crate::hooks::post_worker_init(s, spec.slot_index);
    bridge.request_hooks = crate::hooks::RequestHooks::new(s, spec.slot_index);

    // From here until `serve` has its handlers, TERM and USR1 wait (blocked)
    // instead of being lost: signal-hook installs its sigaction a moment
    // before it records what to do with the signal, and a TERM landing in
    // between was dropped (a worker booting at the moment of a stop then
    // never stopped). Threads started meanwhile (Python threads, the abort
    // watcher) keep them blocked for good, so they always reach this one.
    set_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            tracing::error!("cannot start the worker's I/O runtime: {e}");
            WORKER_BOOT_ERROR
        })?;
    let slot: &'static Slot = unsafe_static(spec.slot);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let thread_busy: Arc<Vec<AtomicU64>> =
        Arc::new((0..slots).map(|_| AtomicU64::new(0)).collect());
    let ctx = Arc::new(Ctx {
        bridge,
        pool: if threaded {
            Some(start_pool(slots, thread_busy.clone()))
        } else {
            None
        },
        thread_busy,
        slots,
        inflight: AtomicUsize::new(0),
        conns: AtomicUsize::new(0),
        capacity: Notify::new(),
        fresh: AtomicUsize::new(0),
        fresh_done: Notify::new(),
        drained: Notify::new(),
        shutdown: shutdown_rx,
        limits: Limits {
            request_line: s.limit_request_line,
            fields: s.limit_request_fields,
            field_size: s.limit_request_field_size,
        },
        keepalive: Duration::from_secs(s.keepalive),
        graceful: Duration::from_secs(s.graceful_timeout),
        drain_deadline: std::sync::OnceLock::new(),
        io_timeout,
        max_conns: s.worker_connections.max(1),
        slot,
        served: AtomicU64::new(0),
        max_requests: spec.max_requests,
        retire_sent: AtomicBool::new(false),
        notify_fd: spec.notify_fd,
        slot_index: spec.slot_index,
        worker_int_hook: s.hook("worker_int").is_some(),
        body: body_policy,
    });
    let listener_fds: Vec<(RawFd, bool)> = spec
        .listeners
        .iter()
        .map(|l| (l.raw_fd(), matches!(l.kind, ListenerKind::Unix(_))))
        .collect();
    runtime.block_on(serve(ctx, listener_fds, shutdown_tx));
    Ok(())
}

/// The slot lives in the scoreboard mapping, which is never unmapped.
fn unsafe_static(slot: &Slot) -> &'static Slot {
    // SAFETY: Scoreboard mappings are never unmapped for the life of the
    // process (see scoreboard.rs), so a reference into one is 'static.
    unsafe { &*(slot as *const Slot) }
}

fn listener_info(l: &Listener) -> ListenerInfo {
    let (server_name, server_port) = l.server_name_port();
    ListenerInfo {
        server_name,
        server_port,
        url_scheme: "http",
        unix: matches!(l.kind, ListenerKind::Unix(_)),
    }
}

struct Job {
    listener: usize,
    req: http::Request,
    prebuffered: Vec<u8>,
    spill: Option<std::fs::File>,
    fd: RawFd,
    peer: Peer,
    reply: oneshot::Sender<(http::Request, Outcome)>,
}

/// Everything a connection task needs.
struct Ctx {
    bridge: Bridge,
    /// The config file set a `worker_int` hook (INT/QUIT run it first).
    worker_int_hook: bool,
    /// How request bodies are pre-read (see `body`).
    body: body::Policy,
    pool: Option<mpsc::Sender<Job>>,
    /// gthread: when each Python thread's current request began (0 = idle).
    thread_busy: Arc<Vec<AtomicU64>>,
    slots: usize,
    inflight: AtomicUsize,
    conns: AtomicUsize,
    capacity: Notify,
    /// Connections accepted whose first request head has not been looked at
    /// yet, and the wake-up when that count drops. A sync worker accepts the
    /// next connection only once the last one's request (if it had arrived)
    /// is being served: it must not grab a second client just before
    /// becoming busy with the first.
    fresh: AtomicUsize,
    fresh_done: Notify,
    /// Woken when the last connection closes (for a graceful exit).
    drained: Notify,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
    keepalive: Duration,
    /// `--graceful-timeout`: how long a retiring worker may take.
    graceful: Duration,
    /// Set when the worker starts retiring: idle keep-alive connections are
    /// closed by then at the latest (a moment before the master's kill).
    drain_deadline: std::sync::OnceLock<Instant>,
    io_timeout: Duration,
    max_conns: usize,
    slot: &'static Slot,
    served: AtomicU64,
    max_requests: u64,
    retire_sent: AtomicBool,
    notify_fd: RawFd,
    slot_index: usize,
}

impl Ctx {
    fn has_capacity(&self) -> bool {
        self.inflight.load(Ordering::Acquire) < self.slots
            && self.conns.load(Ordering::Acquire) < self.max_conns
    }

    fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// When a retiring worker closes the keep-alive connections still idle:
    /// a little before `--graceful-timeout` ends, so it exits by itself.
    fn drain_deadline(&self) -> Instant {
        *self.drain_deadline.get_or_init(|| {
            let margin = Duration::from_millis(500).min(self.graceful / 4);
            Instant::now() + self.graceful.saturating_sub(margin)
        })
    }

    fn tell_master(&self, kind: Msg) {
        let b = msg::encode(kind, self.slot_index);
        // SAFETY: the pipe's write end is inherited from the master and
        // stays open for the life of the worker.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.notify_fd) };
        let _ = nix::unistd::write(fd, &b);
    }

    fn request_done(&self) {
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

/// Python threads for gthread: each attaches once and releases the GIL
/// while it waits for the next job.
fn start_pool(n: usize, busy: Arc<Vec<AtomicU64>>) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n {
        let rx = rx.clone();
        let busy = busy.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("python-{i}"))
            .spawn(move || {
                Python::attach(|py| loop {
                    let job = py.detach(|| rx.lock().unwrap_or_else(|p| p.into_inner()).recv());
                    let Ok(job) = job else { break };
                    let Some(bridge) = BRIDGE_FOR_POOL.get() else {
                        break;
                    };
                    busy[i].store(now_ms(), Ordering::Relaxed);
                    let out = wsgi::handle(
                        py,
                        bridge,
                        job.listener,
                        &job.req,
                        job.prebuffered,
                        job.spill,
                        job.fd,
                        &job.peer,
                    );
                    busy[i].store(0, Ordering::Relaxed);
                    let _ = job.reply.send((job.req, out));
                })
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start Python thread {i}: {e}");
        }
    }
    tx
}

/// The pool threads reach the bridge through this (set once in `serve`).
static BRIDGE_FOR_POOL: std::sync::OnceLock<&'static Bridge> = std::sync::OnceLock::new();

async fn serve(ctx: Arc<Ctx>, listeners: Vec<(RawFd, bool)>, shutdown_tx: watch::Sender<bool>) {
    // The Ctx lives until the process exits; give the pool a 'static view.
    let leaked: &'static Arc<Ctx> = Box::leak(Box::new(ctx.clone()));
    let _ = BRIDGE_FOR_POOL.set(&leaked.bridge);

    abort::install(ctx.worker_int_hook);
    // The master that forked us. Orphaned means "my parent is no longer this
    // pid", not "my parent is pid 1": in a container the master *is* pid 1,
    // and under a subreaper an orphan is not re-parented to pid 1 at all.
    let master = nix::unistd::getppid();
    let orphaned = move || nix::unistd::getppid() != master;
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            return;
        }
    };
    let usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1());
    // Handlers in place: a TERM that came while booting is delivered now.
    set_mask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK);

    let mut accepts = Vec::new();
    for (i, (fd, unix)) in listeners.into_iter().enumerate() {
        let ctx = ctx.clone();
        accepts.push(tokio::spawn(async move {
            if let Err(e) = accept_loop(ctx, i, fd, unix).await {
                tracing::error!("accept loop on listener {i} ended: {e}");
            }
        }));
    }
    if let Ok(mut usr1) = usr1 {
        tokio::spawn(async move {
            while usr1.recv().await.is_some() {
                if let Err(e) = crate::logging::reopen() {
                    tracing::error!("cannot reopen log files: {e}");
                }
            }
        });
    }
    // Heartbeat: proves the event loop turns (the master reads it).
    let hb_ctx = ctx.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(Duration::from_millis(500));
        loop {
            t.tick().await;
            hb_ctx.slot.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
            if hb_ctx.pool.is_some() {
                // --timeout applies per request: publish the oldest one.
                let oldest = hb_ctx
                    .thread_busy
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .filter(|&t| t != 0)
                    .min()
                    .unwrap_or(0);
                hb_ctx.slot.busy_since_ms.store(oldest, Ordering::Relaxed);
            }
            if orphaned() {
                tracing::info!("Parent changed, shutting down");
                break;
            }
        }
    });

    ctx.slot.set_state(SlotState::Ready);
    ctx.tell_master(Msg::Ready);

    // Wait for SIGTERM (graceful) or the parent to die.
    let parent_watch = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if orphaned() {
                return;
            }
        }
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = parent_watch => {},
    }
    tracing::info!("Worker exiting (pid: {})", std::process::id());
    ctx.slot.set_state(SlotState::Retiring);
    ctx.drain_deadline();
    let _ = shutdown_tx.send(true);
    for a in &accepts {
        a.abort();
    }
    ctx.capacity.notify_waiters();
    // Open connections are work in flight: each one's next request is still
    // answered (with `Connection: close`), and an idle one closes only after
    // the keep-alive timeout, or just before --graceful-timeout ends. A
    // client that sent a request just as we began retiring gets its answer.
    loop {
        let closed = ctx.drained.notified();
        if ctx.conns.load(Ordering::Acquire) == 0 {
            break;
        }
        closed.await;
    }
}

/// SIGSEGV and SIGBUS kill the worker, as they kill a Python process.
/// Rust's runtime installs handlers for them (to report stack overflows)
/// that, for a signal sent with kill(2), reset the action and return: the
/// worker would survive its first SIGSEGV and the master would never know.
/// A real fault still dies of the same signal, so the master logs it.
fn default_fault_signals() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [Signal::SIGSEGV, Signal::SIGBUS] {
        // SAFETY: installing the default action runs no code of ours.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}

/// Block or unblock TERM and USR1 on this thread.
fn set_mask(how: nix::sys::signal::SigmaskHow) {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGUSR1);
    if let Err(e) = nix::sys::signal::pthread_sigmask(how, Some(&set), None) {
        tracing::warn!("cannot change the signal mask: {e}");
    }
}

async fn wait_for_capacity(ctx: &Ctx) {
    loop {
        let notified = ctx.capacity.notified();
        if ctx.has_capacity() || ctx.draining() {
            return;
        }
        notified.await;
    }
}

async fn accept_loop(ctx: Arc<Ctx>, idx: usize, fd: RawFd, unix: bool) -> std::io::Result<()> {
    // The descriptor is the master's listener, inherited across fork; the
    // worker gets its own duplicate so the runtime can own it.
    let dup = nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })?;
    if unix {
        let std_l = std::os::unix::net::UnixListener::from(dup);
        std_l.set_nonblocking(true)?;
        let l = tokio::net::UnixListener::from_std(std_l)?;
        loop {
            wait_for_capacity(&ctx).await;
            if ctx.draining() {
                return Ok(());
            }
            match l.accept().await {
                Ok((s, _)) => {
                    let peer = Peer {
                        trusted: true,
                        ..Peer::default()
                    };
                    spawn_conn(ctx.clone(), s, peer, idx);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
                Err(e) => accept_error(e).await,
            }
            settle(&ctx).await;
        }
    } else {
        let std_l = std::net::TcpListener::from(dup);
        std_l.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(std_l)?;
        loop {
            wait_for_capacity(&ctx).await;
            if ctx.draining() {
                return Ok(());
            }
            match l.accept().await {
                Ok((s, addr)) => {
                    let _ = s.set_nodelay(true);
                    let peer = Peer {
                        addr: addr.ip().to_string(),
                        port: addr.port().to_string(),
                        trusted: ctx.bridge.proxy.trusts(Some(addr.ip())),
                        proxy_info: None,
                    };
                    spawn_conn(ctx.clone(), s, peer, idx);
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
                Err(e) => accept_error(e).await,
            }
            // Let the new connection read and run its request before taking
            // another: a sync worker that is about to be busy should not
            // have grabbed a second client.
            settle(&ctx).await;
        }
    }
}

/// Between two accepts: a sync worker waits for the last connection's
/// request to be under way; a threaded one lets it run.
async fn settle(ctx: &Ctx) {
    if ctx.pool.is_none() {
        wait_fresh(ctx).await;
    } else {
        tokio::task::yield_now().await;
    }
}

/// One non-blocking read straight from the socket into `buf`. false: the
/// client already closed (or the socket failed).
fn read_now(fd: RawFd, buf: &mut Vec<u8>) -> bool {
    let len = buf.len();
    buf.resize(buf.capacity().max(len + 4096), 0);
    // SAFETY: the connection task owns the socket and keeps it open.
    let r = nix::unistd::read(
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        &mut buf[len..],
    );
    match r {
        Ok(0) => {
            buf.truncate(len);
            false
        }
        Ok(n) => {
            buf.truncate(len + n);
            true
        }
        Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {
            buf.truncate(len);
            true
        }
        Err(_) => {
            buf.truncate(len);
            false
        }
    }
}

async fn accept_error(e: std::io::Error) {
    // EMFILE and friends: back off instead of spinning.
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

struct ConnGuard(Arc<Ctx>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.conns.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
        self.0.capacity.notify_one();
    }
}

/// Marks a connection as fresh (see `Ctx::fresh`) until dropped.
struct Fresh(Arc<Ctx>);
impl Drop for Fresh {
    fn drop(&mut self) {
        self.0.fresh.fetch_sub(1, Ordering::AcqRel);
        self.0.fresh_done.notify_waiters();
    }
}

/// Sync workers: wait until every accepted connection's first request has
/// been looked at (its head was complete and is being served, or it was not
/// there yet and the connection waits without us).
async fn wait_fresh(ctx: &Ctx) {
    loop {
        let done = ctx.fresh_done.notified();
        if ctx.fresh.load(Ordering::Acquire) == 0 {
            return;
        }
        done.await;
    }
}

fn spawn_conn<S>(ctx: Arc<Ctx>, s: S, peer: Peer, idx: usize)
where
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send + 'static,
{
    ctx.conns.fetch_add(1, Ordering::AcqRel);
    ctx.fresh.fetch_add(1, Ordering::AcqRel);
    let fresh = Fresh(ctx.clone());
    let guard = ConnGuard(ctx.clone());
    tokio::spawn(async move {
        let _guard = guard;
        serve_conn(ctx, s, peer, idx, fresh).await;
    });
}

/// Read until a complete request head is buffered. None: close quietly.
async fn read_head<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Ctx,
    s: &mut S,
    buf: &mut Vec<u8>,
    idle: bool,
    fresh: &mut Option<Fresh>,
) -> Option<Result<(http::Request, usize), http::ParseError>> {
    let mut shutdown = ctx.shutdown.clone();
    let mut deadline = if idle {
        Instant::now() + ctx.keepalive
    } else {
        Instant::now() + HEADER_TIMEOUT
    };
    let mut waiting_first_byte = idle;
    // parse_head starts from the beginning each time: call it only when a
    // line may have ended or a limit may have been crossed, so a client
    // trickling bytes cannot make us rescan its head over and over.
    let mut scanned = 0;
    let mut parsed_at = 0;
    loop {
        let new_bytes = &buf[scanned.min(buf.len())..];
        let worth_parsing =
            new_bytes.contains(&b'\n') || (buf.len() > 4096 && buf.len() >= parsed_at + 1024);
        scanned = buf.len();
        if !buf.is_empty() && worth_parsing {
            parsed_at = buf.len();
            match http::parse_head(buf, &ctx.limits) {
                Ok(Some(r)) => return Some(Ok(r)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        if !buf.is_empty() && waiting_first_byte {
            waiting_first_byte = false;
            deadline = Instant::now() + HEADER_TIMEOUT;
        }
        // About to wait for the client: this connection no longer holds up
        // the accept loop.
        *fresh = None;
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        // Retiring: an idle keep-alive connection is not closed at once
        // (its client may be sending a request right now, and a client does
        // not retry a POST), but it waits no longer than the drain deadline.
        if ctx.draining() {
            deadline = deadline.min(ctx.drain_deadline());
        }
        let watch_shutdown = idle && buf.is_empty() && !ctx.draining();
        let read = tokio::time::timeout_at(deadline.into(), s.read_buf(buf));
        tokio::select! {
            r = read => match r {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => {
                    // Header or keep-alive timeout: a trickling client never
                    // reaches Python; an idle connection closes.
                    return None;
                }
            },
            // Retirement began: go round again with the deadline capped.
            _ = shutdown.wait_for(|v| *v), if watch_shutdown => {}
        }
    }
}

async fn serve_conn<S>(ctx: Arc<Ctx>, mut s: S, mut peer: Peer, idx: usize, fresh: Fresh)
where
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send + 'static,
{
    let fd = s.as_raw_fd();
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut fresh = Some(fresh);
    // The listener defers accept until data has arrived, so the request is
    // usually here already: take it now, without a trip through epoll.
    if !read_now(fd, &mut buf) {
        return;
    }
    if ctx.bridge.proxy.proxy_mode != http::proxy::Mode::Off
        && !proxy_header::read(&ctx.bridge.proxy, &mut s, &mut buf, &mut peer).await
    {
        return;
    }
    let mut idle = false;
    loop {
        let (mut req, n) = match read_head(&ctx, &mut s, &mut buf, idle, &mut fresh).await {
            None => return,
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::debug!("invalid request from {}: {e}", peer.addr);
                let out = wsgi::error_response(e.status(), e.reason(), true);
                let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&out)).await;
                return;
            }
        };
        let mut rest = body::split_rest(&ctx.body, &req, &mut buf, n);
        buf.clear();
        fresh = None;
        // The body is read here, before a Python slot is taken: a client
        // trickling it keeps no slot, and one too slow gets 408.
        let spill = match body::preread(&ctx.body, &mut s, &mut req, &mut rest).await {
            Ok(body::Preread::InBuffer) => None,
            Ok(body::Preread::Spilled(f)) => Some(f),
            Err(body::Refused::Closed) => return,
            Err(body::Refused::Answer(e)) => {
                tracing::debug!("request body from {}: {e}", peer.addr);
                let out = wsgi::error_response(e.status(), e.reason(), true);
                let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&out)).await;
                return;
            }
        };
        if ctx.draining() {
            // A retiring worker answers this request and says it closes, so
            // the client's next request goes to a worker that stays.
            req.keep_alive = false;
        }
        let started = Instant::now();
        ctx.inflight.fetch_add(1, Ordering::AcqRel);
        let (req, outcome) = if let Some(pool) = &ctx.pool {
            let (tx, rx) = oneshot::channel();
            let job = Job {
                listener: idx,
                req,
                prebuffered: rest,
                spill,
                fd,
                peer: peer.clone(),
                reply: tx,
            };
            ctx.slot.active.fetch_add(1, Ordering::Relaxed);
            if pool.send(job).is_err() {
                return;
            }
            let r = rx.await;
            ctx.slot.active.fetch_sub(1, Ordering::Relaxed);
            match r {
                Ok(r) => r,
                Err(_) => return,
            }
        } else {
            ctx.slot.busy_since_ms.store(now_ms(), Ordering::Relaxed);
            ctx.slot.active.store(1, Ordering::Relaxed);
            let out = Python::attach(|py| {
                wsgi::handle(py, &ctx.bridge, idx, &req, rest, spill, fd, &peer)
            });
            ctx.slot.active.store(0, Ordering::Relaxed);
            ctx.slot.busy_since_ms.store(0, Ordering::Relaxed);
            (req, out)
        };
        ctx.inflight.fetch_sub(1, Ordering::AcqRel);
        ctx.capacity.notify_one();
        ctx.request_done();
        let took = started.elapsed();
        if crate::logging::access_enabled() {
            access_log(&req, &peer, &outcome, took);
        }
        crate::logging::request_metrics(outcome.status, took);
        if !outcome.pending_out.is_empty() {
            let w = tokio::time::timeout(ctx.io_timeout, s.write_all(&outcome.pending_out)).await;
            if !matches!(w, Ok(Ok(()))) {
                return;
            }
        }
        // A large response, or one the client is slow to take: written at
        // the client's pace now that the slot is free.
        if let Some(mut spool) = outcome.spool {
            if let Err(e) = spool.write_to(&mut s).await {
                tracing::debug!("response to {} cut off: {e}", peer.addr);
                return;
            }
        }
        // A response that promised keep-alive is honoured even while
        // retiring: the connection waits (see read_head) for the next
        // request, which is then answered with `Connection: close`.
        if !outcome.keep_alive || ctx.keepalive.is_zero() {
            let _ = s.shutdown().await;
            return;
        }
        buf = outcome.leftover_in;
        idle = buf.is_empty();
    }
}

fn access_log(req: &http::Request, peer: &Peer, o: &Outcome, took: Duration) {
    crate::logging::access(&crate::logging::AccessInfo {
        remote: &peer.addr,
        method: &req.method,
        uri: &req.uri,
        path: &req.path,
        query: &req.query,
        protocol: match req.version {
            http::Version::Http10 => "HTTP/1.0",
            http::Version::Http11 => "HTTP/1.1",
        },
        status: o.status,
        sent: Some(o.sent),
        request_headers: &req.headers,
        response_headers: &o.response_headers,
        duration: took,
        environ: &o.environ_atoms,
    });
}
