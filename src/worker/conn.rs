//! The connection loop every worker class shares, on a tokio
//! current-thread runtime on the worker's main thread: one accept loop per
//! listener (TCP and Unix through the same code), accepting only while the
//! class has a free slot; per connection, the PROXY header, reading and
//! parsing request heads (header timeout, limits), handing each request to
//! the class, the access log and metrics, writing what the app left
//! unwritten, and keep-alive. It also owns the worker's signals (TERM,
//! USR1, and the abort watcher), the heartbeat, readiness, `--max-requests`
//! and the graceful drain. For a class with its own loop on the main thread
//! (`Class::MAIN_LOOP`), the same loop runs on a thread named `io`.

use super::balance::{self, Balance};
use super::boot::{set_mask, Booted};
use super::msg::{self, Msg, WORKER_BOOT_ERROR};
use super::{proxy_header, Call, Class, HEADER_TIMEOUT};
use crate::http::{self, Limits};
use crate::scoreboard::{now_ms, Slot};
use crate::sock::ListenerKind;
use crate::wsgi::{Outcome, Peer, ProxyPolicy};
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Notify};

/// Run the worker's loop with class `C` until it stops (TERM, or the
/// master went away). `Err` is the worker's exit code.
pub(super) fn run<C: Class>(mut class: C, b: &Booted<'_>) -> Result<(), i32> {
    let s = b.settings;
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
    super::linger::set_runtime(runtime.handle().clone());
    class.start()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let body = class.body_policy(super::body::Policy::from_settings(s));
    // HTTPS, and h2c: the `tls` thread, started while TERM and USR1 are
    // blocked.
    let config = crate::tls::current();
    let h2c = config.is_none() && crate::http2::prior_knowledge(s);
    let (tls, handed) = if config.is_some() || h2c {
        let is_tls = config.is_some();
        let opts = crate::tls::Opts::from_settings(s, b.io_timeout);
        let terminator =
            crate::tls::Terminator::start(config, opts, shutdown_rx.clone()).map_err(|e| {
                tracing::error!("cannot start the worker's TLS thread: {e}");
                WORKER_BOOT_ERROR
            })?;
        let (back, handed) = tokio::sync::mpsc::unbounded_channel();
        let side = TlsSide {
            terminator,
            back,
            tls: is_tls,
            h2c,
        };
        (Some(side), Some(handed))
    } else {
        (None, None)
    };
    let ctx = Arc::new(Ctx {
        cap: Arc::new(Capacity::new(
            class.slots(),
            s.worker_connections.max(1),
            // Only the classes that balance publish their connections:
            // nobody reads the others' counts.
            C::BALANCE.then(|| Balance::new(b.scoreboard.clone(), b.slot_index)),
        )),
        class,
        proxy: b.proxy.clone(),
        shutdown: shutdown_rx,
        head: HeadRules {
            limits: Limits {
                request_line: s.limit_request_line,
                fields: s.limit_request_fields,
                field_size: s.limit_request_field_size,
            },
            keepalive: Duration::from_secs(s.keepalive),
            header_timeout: HEADER_TIMEOUT,
            graceful: Duration::from_secs(s.graceful_timeout),
            drain_deadline: OnceLock::new(),
        },
        io_timeout: b.io_timeout,
        slot: b.slot,
        served: AtomicU64::new(0),
        max_requests: b.max_requests,
        retire_sent: AtomicBool::new(false),
        notify_fd: b.notify_fd,
        slot_index: b.slot_index,
        quick_stop_hooks: s.hook("worker_int").is_some() || s.hook("worker_exit").is_some(),
        body,
        tls,
    });
    let listener_fds: Vec<(RawFd, bool)> = b
        .listeners
        .iter()
        .map(|l| (l.raw_fd(), matches!(l.kind, ListenerKind::Unix(_))))
        .collect();
    let signals = {
        let _in_runtime = runtime.enter();
        Signals::install(ctx.quick_stop_hooks)?
    };
    if !C::MAIN_LOOP {
        runtime.block_on(serve(ctx, listener_fds, shutdown_tx, signals, handed));
        return Ok(());
    }
    // The class's loop owns the main thread; this one moves to `io`.
    let io_ctx = ctx.clone();
    let io = std::thread::Builder::new()
        .name("io".into())
        .spawn(move || {
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(serve(
                    io_ctx.clone(),
                    listener_fds,
                    shutdown_tx,
                    signals,
                    handed,
                ))
            }));
            // Normally done by `serve` already; after a panic, this is what
            // ends the main loop.
            io_ctx.class.stopped();
            served.is_ok()
        })
        .map_err(|e| {
            tracing::error!("cannot start the worker's I/O thread: {e}");
            WORKER_BOOT_ERROR
        })?;
    ctx.class.main_loop()?;
    match io.join() {
        Ok(true) => Ok(()),
        _ => Err(WORKER_BOOT_ERROR),
    }
}

/// The worker's signal handling, set up before the loop runs: ABRT, INT
/// and QUIT (`abort.rs`), and TERM and USR1 as tokio streams. Once they are
/// in place, TERM and USR1 are unblocked on this thread (see the
/// module comment of `worker/mod.rs`).
struct Signals {
    term: tokio::signal::unix::Signal,
    usr1: std::io::Result<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Must run inside the runtime (`Runtime::enter`).
    fn install(quick_stop_hooks: bool) -> Result<Signals, i32> {
        use tokio::signal::unix::{signal, SignalKind};
        super::abort::install(quick_stop_hooks);
        let term = signal(SignalKind::terminate()).map_err(|e| {
            tracing::error!("cannot watch SIGTERM: {e}");
            WORKER_BOOT_ERROR
        })?;
        // Beside tokio's stream, which the loop reads only between requests
        // (a sync worker runs the app on this very thread): at once, every
        // response head from now on says `Connection: close`.
        // SAFETY: the action only stores to an atomic, which is
        // async-signal-safe; it allocates nothing and takes no lock.
        let closing = unsafe {
            signal_hook_registry::register(
                nix::sys::signal::Signal::SIGTERM as i32,
                http::response::close_connections_from_now,
            )
        };
        if let Err(e) = closing {
            tracing::warn!("cannot watch SIGTERM for the drain: {e}");
        }
        let usr1 = signal(SignalKind::user_defined1());
        // Handlers in place: a TERM that came while booting is delivered now.
        set_mask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK);
        Ok(Signals { term, usr1 })
    }
}

/// Everything a connection task needs.
struct Ctx<C> {
    class: C,
    cap: Arc<Capacity>,
    /// The config file set `worker_int` or `worker_exit` (INT/QUIT run them).
    quick_stop_hooks: bool,
    /// How request bodies are pre-read (see `body.rs`).
    body: super::body::Policy,
    proxy: ProxyPolicy,
    shutdown: watch::Receiver<bool>,
    head: HeadRules,
    io_timeout: Duration,
    slot: &'static Slot,
    served: AtomicU64,
    max_requests: u64,
    retire_sent: AtomicBool,
    notify_fd: RawFd,
    slot_index: usize,
    /// HTTPS (`certfile`): where accepted connections go for their
    /// handshake.
    tls: Option<TlsSide>,
}

/// A connection whose handshake is done: the plain end of its socketpair
/// (see `crate::tls`), its client and its listener.
type Handed = (std::os::unix::net::UnixStream, Peer, usize);

/// The worker's TLS terminator, and the way back for its connections
/// (and HTTP/2 streams).
struct TlsSide {
    terminator: crate::tls::Terminator,
    back: tokio::sync::mpsc::UnboundedSender<Handed>,
    /// The listeners serve TLS (`certfile`).
    tls: bool,
    /// Plain listeners take prior-knowledge h2c from trusted peers.
    h2c: bool,
}

impl TlsSide {
    /// Where the front thread sends a connection's plain ends: one for an
    /// HTTP/1.1 connection, one per stream for HTTP/2.
    fn back_for(&self, peer: Peer, idx: usize) -> crate::tls::Done {
        let back = self.back.clone();
        Arc::new(move |plain, http2| {
            let mut peer = peer.clone();
            peer.http2 = http2;
            let _ = back.send((plain, peer, idx));
        })
    }
}

impl<C> Ctx<C> {
    fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn tell_master(&self, kind: Msg) {
        msg::send(self.notify_fd, kind, self.slot_index);
    }

    /// This request brings the worker to `--max-requests`, so it will
    /// retire: the connection ends with it (as Gunicorn's gthread worker
    /// closes the request that reaches the limit).
    fn last_request_due(&self) -> bool {
        self.max_requests > 0 && self.served.load(Ordering::Relaxed) + 1 >= self.max_requests
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

/// What the worker can take on: requests in flight against the class's
/// slots, open connections against `worker_connections`, and the
/// connections accepted whose first request has not been looked at yet.
struct Capacity {
    slots: usize,
    max_conns: usize,
    inflight: AtomicUsize,
    conns: AtomicUsize,
    /// Woken when a slot or a connection frees up.
    freed: Notify,
    /// Connections accepted whose first request head has not been looked at
    /// yet, and the wake-up when that count drops. A class that runs the
    /// app inline accepts the next connection only once the last one's
    /// request (if it had arrived) is being served: it must not grab a
    /// second client just before becoming busy with the first.
    fresh: AtomicUsize,
    fresh_done: Notify,
    /// Woken when the last connection closes (for a graceful exit).
    drained: Notify,
    /// The open connections as the other workers see them, and whether
    /// this worker is ahead of them (none in unit tests).
    balance: Option<Balance>,
}

/// Wait on `notify` until `done()` holds. The wake-up is registered before
/// `done` is checked, so a notification between the two is not lost.
async fn notified_until(notify: &Notify, done: impl Fn() -> bool) {
    loop {
        let woken = notify.notified();
        if done() {
            return;
        }
        woken.await;
    }
}

impl Capacity {
    fn new(slots: usize, max_conns: usize, balance: Option<Balance>) -> Capacity {
        Capacity {
            slots,
            max_conns,
            inflight: AtomicUsize::new(0),
            conns: AtomicUsize::new(0),
            freed: Notify::new(),
            fresh: AtomicUsize::new(0),
            fresh_done: Notify::new(),
            drained: Notify::new(),
            balance,
        }
    }

    fn available(&self) -> bool {
        self.inflight.load(Ordering::Acquire) < self.slots
            && self.conns.load(Ordering::Acquire) < self.max_conns
    }

    /// Wait until `available()` or the worker drains.
    async fn wait(&self, draining: impl Fn() -> bool) {
        notified_until(&self.freed, || self.available() || draining()).await
    }

    /// Wait until every accepted connection's first request has been looked
    /// at (its head was complete and is being served, or it was not there
    /// yet and the connection waits without us).
    async fn wait_fresh(&self) {
        notified_until(&self.fresh_done, || self.fresh.load(Ordering::Acquire) == 0).await
    }

    /// Wait until no connection is open.
    async fn wait_drained(&self) {
        notified_until(&self.drained, || self.conns.load(Ordering::Acquire) == 0).await
    }

    /// Whether this worker takes new connections (for the other workers).
    fn set_accepting(&self, on: bool) {
        if let Some(b) = &self.balance {
            b.set_accepting(on);
        }
    }

    /// A connection's exchange ended after `requests` requests.
    fn conn_ended(&self, requests: u64) {
        if let Some(b) = &self.balance {
            b.ended(requests);
        }
    }

    /// Look for the other workers again.
    fn refresh_peers(&self) {
        if let Some(b) = &self.balance {
            b.refresh();
        }
    }

    fn request_started(&self) {
        self.inflight.fetch_add(1, Ordering::AcqRel);
    }

    fn request_finished(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        self.freed.notify_one();
    }

    /// Count a new connection: open and fresh, until the guards drop.
    fn opened(self: &Arc<Self>) -> (ConnGuard, Fresh) {
        (self.open_only(), self.fresh_only())
    }

    /// Count a connection as open (a TLS one, from its accept until its
    /// pump ends: handshaking, it is not fresh, so it never holds up the
    /// accept loop).
    fn open_only(self: &Arc<Self>) -> ConnGuard {
        self.conns.fetch_add(1, Ordering::AcqRel);
        if let Some(b) = &self.balance {
            b.opened();
        }
        ConnGuard(self.clone())
    }

    /// Count a connection as fresh (a TLS one once its handshake is done).
    fn fresh_only(self: &Arc<Self>) -> Fresh {
        self.fresh.fetch_add(1, Ordering::AcqRel);
        Fresh(self.clone())
    }
}

/// Counts the requests of one connection's exchange and tells the balance
/// how many it carried when the exchange ends. (Not [`ConnGuard`]'s job:
/// a TLS connection's guard is held by its pump, not by `serve_conn`.)
struct Tally<'a> {
    cap: &'a Capacity,
    requests: u64,
}
impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.cap.conn_ended(self.requests);
    }
}

/// Counts a connection as open until dropped.
struct ConnGuard(Arc<Capacity>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(b) = &self.0.balance {
            b.closed();
        }
        if self.0.conns.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.drained.notify_waiters();
        }
        self.0.freed.notify_one();
    }
}

/// Marks a connection as fresh (see `Capacity::fresh`) until dropped.
struct Fresh(Arc<Capacity>);
impl Drop for Fresh {
    fn drop(&mut self) {
        self.0.fresh.fetch_sub(1, Ordering::AcqRel);
        self.0.fresh_done.notify_waiters();
    }
}

async fn serve<C: Class>(
    ctx: Arc<Ctx<C>>,
    listeners: Vec<(RawFd, bool)>,
    shutdown_tx: watch::Sender<bool>,
    signals: Signals,
    handed: Option<tokio::sync::mpsc::UnboundedReceiver<Handed>>,
) {
    let Signals { mut term, usr1 } = signals;
    if let Some(mut handed) = handed {
        // TLS connections whose handshake is done go down the plain path
        // (already counted as open: their pump holds the guard).
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some((plain, peer, idx)) = handed.recv().await {
                match tokio::net::UnixStream::from_std(plain) {
                    Ok(s) => {
                        let fresh = ctx.cap.fresh_only();
                        let ctx = ctx.clone();
                        tokio::spawn(serve_conn(ctx, s, peer, idx, fresh, false, None));
                    }
                    Err(e) => tracing::warn!("cannot take a TLS connection: {e}"),
                }
            }
        });
    }
    // The master that forked us. Orphaned means "my parent is no longer this
    // pid", not "my parent is pid 1": in a container the master *is* pid 1,
    // and under a subreaper an orphan is not re-parented to pid 1 at all.
    let master = nix::unistd::getppid();
    let orphaned = move || nix::unistd::getppid() != master;

    let unix_listener: Vec<bool> = listeners.iter().map(|l| l.1).collect();
    let mut accepts = Vec::new();
    for (i, (fd, unix)) in listeners.into_iter().enumerate() {
        let ctx = ctx.clone();
        accepts.push(tokio::spawn(async move {
            let r = if unix {
                accept_loop::<C, tokio::net::UnixListener>(ctx, i, fd).await
            } else {
                accept_loop::<C, tokio::net::TcpListener>(ctx, i, fd).await
            };
            if let Err(e) = r {
                tracing::error!("accept loop on listener {i} ended: {e}");
            }
        }));
    }
    // Idle keep-alive connections of a worker that --timeout aborted, with
    // any request their clients sent meanwhile (see `handback.rs`).
    for (fd, idx) in super::handback::take_adopted() {
        let idx = idx as usize;
        match unix_listener.get(idx) {
            Some(&unix) => {
                if let Err(e) = adopt(ctx.clone(), fd, idx, unix) {
                    tracing::debug!("cannot take over a handed-back connection: {e}");
                }
            }
            // A reload dropped its listener meanwhile: close it.
            None => drop(fd),
        }
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
            hb_ctx.cap.refresh_peers();
            hb_ctx.slot.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
            hb_ctx.class.heartbeat(hb_ctx.slot);
            if orphaned() {
                tracing::info!("Parent changed, shutting down");
                break;
            }
        }
    });

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
    // A response whose head is written from now on says it closes, so a
    // request in flight does not leave its connection open for the
    // keep-alive timeout: the client's next request goes to a worker that
    // stays, and this one can exit as soon as its requests are answered.
    http::response::close_connections_from_now();
    ctx.cap.set_accepting(false);
    ctx.class.draining(ctx.head.drain_deadline());
    let _ = shutdown_tx.send(true);
    for a in &accepts {
        a.abort();
    }
    ctx.cap.freed.notify_waiters();
    // Open connections are work in flight: each one's next request is still
    // answered (with `Connection: close`), and an idle one closes only after
    // the keep-alive timeout, or just before --graceful-timeout ends. A
    // client that sent a request just as we began retiring gets its answer.
    ctx.cap.wait_drained().await;
    ctx.class.stopped();
}

/// A listening socket the worker inherited: TCP and Unix go through the
/// same accept loop.
trait Listen: Sized {
    type Stream: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send + 'static;

    /// Take over a (duplicated) listening descriptor.
    fn open(fd: OwnedFd) -> std::io::Result<Self>;

    /// An accepted connection, for another runtime (the TLS thread).
    fn into_raw(s: Self::Stream) -> std::io::Result<crate::tls::Raw>;

    /// The next connection, and its client's address (`None` on a Unix
    /// socket).
    fn accept_one(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, Option<SocketAddr>)>> + Send;
}

impl Listen for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    fn open(fd: OwnedFd) -> std::io::Result<Self> {
        let l = std::net::TcpListener::from(fd);
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    }

    fn into_raw(s: Self::Stream) -> std::io::Result<crate::tls::Raw> {
        s.into_std().map(crate::tls::Raw::Tcp)
    }

    async fn accept_one(&self) -> std::io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (s, addr) = self.accept().await?;
        let _ = s.set_nodelay(true);
        Ok((s, Some(addr)))
    }
}

impl Listen for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;

    fn open(fd: OwnedFd) -> std::io::Result<Self> {
        let l = std::os::unix::net::UnixListener::from(fd);
        l.set_nonblocking(true)?;
        tokio::net::UnixListener::from_std(l)
    }

    fn into_raw(s: Self::Stream) -> std::io::Result<crate::tls::Raw> {
        s.into_std().map(crate::tls::Raw::Unix)
    }

    async fn accept_one(&self) -> std::io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (s, _) = self.accept().await?;
        Ok((s, None))
    }
}

/// The peer a new connection starts with (the PROXY header or forwarded
/// headers may refine it later). A Unix-socket client is trusted, as in
/// Gunicorn.
fn peer_for(addr: Option<SocketAddr>, proxy: &ProxyPolicy) -> Peer {
    match addr {
        Some(addr) => Peer {
            addr: addr.ip().to_string().into(),
            port: addr.port().to_string().into(),
            trusted: proxy.trusts(Some(addr.ip())),
            ..Peer::default()
        },
        None => Peer {
            trusted: true,
            ..Peer::default()
        },
    }
}

async fn accept_loop<C: Class, L: Listen>(
    ctx: Arc<Ctx<C>>,
    idx: usize,
    fd: RawFd,
) -> std::io::Result<()> {
    // The descriptor is the master's listener, inherited across fork; the
    // worker gets its own duplicate so the runtime can own it.
    // SAFETY: the inherited listener stays open for the life of the worker.
    let dup = nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })?;
    // A class whose one loop serves every connection leaves a new one to a
    // less loaded worker when it is ahead (see `balance.rs`).
    let gate = if C::BALANCE {
        Some(balance::Gate::new(dup.as_fd())?)
    } else {
        None
    };
    let l = L::open(dup)?;
    loop {
        if !ctx.cap.available() {
            ctx.cap.set_accepting(false);
        }
        ctx.cap.wait(|| ctx.draining()).await;
        if ctx.draining() {
            ctx.cap.set_accepting(false);
            return Ok(());
        }
        ctx.cap.set_accepting(true);
        if let (Some(gate), Some(b)) = (&gate, &ctx.cap.balance) {
            if b.ahead() {
                gate.wait_turn(b).await?;
            }
        }
        match l.accept_one().await {
            Ok((s, addr)) => {
                let mut peer = peer_for(addr, &ctx.proxy);
                match ctx.tls.as_ref().filter(|t| t.tls) {
                    None => spawn_conn(ctx.clone(), s, peer, idx, false),
                    Some(tls) => {
                        // The handshake happens on the TLS thread; this
                        // loop goes on at once (the connection is not
                        // fresh until it is done).
                        peer.tls = true;
                        match L::into_raw(s) {
                            Ok(raw) => {
                                let back = tls.back_for(peer, idx);
                                tls.terminator.submit(
                                    raw,
                                    crate::tls::Kind::Tls,
                                    Box::new(ctx.cap.open_only()),
                                    back,
                                );
                            }
                            Err(e) => tracing::warn!("cannot hand a connection to TLS: {e}"),
                        }
                    }
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
            Err(e) => accept_error(e).await,
        }
        // Let the new connection read and run its request before taking
        // another: a worker that is about to be busy should not have
        // grabbed a second client.
        if C::INLINE {
            ctx.cap.wait_fresh().await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

async fn accept_error(e: std::io::Error) {
    // EMFILE and friends: back off instead of spinning.
    tracing::warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Serve `s`; `idle`: a keep-alive connection between requests (handed
/// back by an aborted worker), not a new one.
fn spawn_conn<C, S>(ctx: Arc<Ctx<C>>, s: S, peer: Peer, idx: usize, idle: bool)
where
    C: Class,
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send + 'static,
{
    let (guard, fresh) = ctx.cap.opened();
    tokio::spawn(serve_conn(ctx, s, peer, idx, fresh, idle, Some(guard)));
}

/// Serve a connection an aborted worker handed back (see `handback.rs`).
fn adopt<C: Class>(ctx: Arc<Ctx<C>>, fd: OwnedFd, idx: usize, unix: bool) -> std::io::Result<()> {
    if unix {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        let s = tokio::net::UnixStream::from_std(s)?;
        let peer = peer_for(None, &ctx.proxy);
        spawn_conn(ctx, s, peer, idx, true);
    } else {
        let s = std::net::TcpStream::from(fd);
        s.set_nonblocking(true)?;
        let addr = s.peer_addr().ok();
        let s = tokio::net::TcpStream::from_std(s)?;
        let _ = s.set_nodelay(true);
        let peer = peer_for(addr, &ctx.proxy);
        spawn_conn(ctx, s, peer, idx, true);
    }
    Ok(())
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

/// How request heads are read: the parser's limits, how long an idle
/// keep-alive connection may wait for its next request, how long a client
/// may take to send a head once it started, and when a retiring worker
/// stops waiting.
struct HeadRules {
    limits: Limits,
    keepalive: Duration,
    header_timeout: Duration,
    /// `--graceful-timeout`: how long a retiring worker may take.
    graceful: Duration,
    /// Set when the worker starts retiring: idle keep-alive connections are
    /// closed by then at the latest (a moment before the master's kill).
    drain_deadline: OnceLock<Instant>,
}

impl HeadRules {
    /// When a retiring worker closes the keep-alive connections still idle:
    /// a little before `--graceful-timeout` ends, so it exits by itself.
    fn drain_deadline(&self) -> Instant {
        *self.drain_deadline.get_or_init(|| {
            let margin = Duration::from_millis(500).min(self.graceful / 4);
            Instant::now() + self.graceful.saturating_sub(margin)
        })
    }
}

/// Read until a complete request head is buffered. None: close quietly.
/// `fresh` is dropped (the accept loop may go on) as soon as the head is
/// not all there and the connection has to wait for its client.
async fn read_head<S: AsyncRead + Unpin, F>(
    rules: &HeadRules,
    shutdown: &watch::Receiver<bool>,
    s: &mut S,
    buf: &mut Vec<u8>,
    idle: bool,
    fresh: &mut Option<F>,
) -> Option<Result<(http::Request, usize), http::ParseError>> {
    let mut shutdown = shutdown.clone();
    let mut deadline = if idle {
        Instant::now() + rules.keepalive
    } else {
        Instant::now() + rules.header_timeout
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
            match http::parse_head(buf, &rules.limits) {
                Ok(Some(r)) => return Some(Ok(r)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        if !buf.is_empty() && waiting_first_byte {
            waiting_first_byte = false;
            deadline = Instant::now() + rules.header_timeout;
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
        let draining = *shutdown.borrow();
        if draining {
            deadline = deadline.min(rules.drain_deadline());
        }
        let watch_shutdown = idle && buf.is_empty() && !draining;
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

/// The largest read buffer a connection keeps from one request to the next.
const READ_BUF_KEEP: usize = 64 * 1024;

async fn serve_conn<C, S>(
    ctx: Arc<Ctx<C>>,
    mut s: S,
    mut peer: Peer,
    idx: usize,
    fresh: Fresh,
    adopted: bool,
    guard: Option<ConnGuard>,
) where
    C: Class,
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send + 'static,
{
    // Counts the connection as open until it ends (or the front thread
    // takes it over).
    let mut guard = guard;
    // How many requests the connection carried, told when it ends.
    let mut tally = Tally {
        cap: &ctx.cap,
        requests: 0,
    };
    let fd = s.as_raw_fd();
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut fresh = Some(fresh);
    // The listener defers accept until data has arrived, so the request is
    // usually here already: take it now, without a trip through epoll.
    if !read_now(fd, &mut buf) {
        return;
    }
    if ctx.proxy.proxy_mode != http::proxy::Mode::Off
        && !proxy_header::read(&ctx.proxy, &mut s, &mut buf, &mut peer).await
    {
        return;
    }
    // Cleartext HTTP/2 with prior knowledge, from a peer trusted to speak
    // it (`forwarded_allow_ips`), as Gunicorn's `http2_cleartext`.
    if let Some(front) = ctx
        .tls
        .as_ref()
        .filter(|t| t.h2c && peer.trusted && !peer.http2 && !adopted)
    {
        match sniff_preface(&ctx.head, &mut s, &mut buf).await {
            Some(true) => match raw_of(fd) {
                Ok(raw) => {
                    let back = front.back_for(peer, idx);
                    let guard: Box<dyn Send> = Box::new(guard.take());
                    drop(fresh);
                    front
                        .terminator
                        .submit(raw, crate::tls::Kind::H2c(buf), guard, back);
                }
                Err(e) => tracing::warn!("cannot hand an h2c connection over: {e}"),
            },
            // A trusted peer on an h2c port must speak HTTP/2: no silent
            // downgrade (Gunicorn answers 400 too).
            Some(false) => {
                let out = http::response::error(
                    400,
                    "Bad Request",
                    "Invalid HTTP/2 connection preface (http2_cleartext expects prior-knowledge HTTP/2)",
                );
                let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&out)).await;
            }
            None => {}
        }
        return;
    }
    let mut idle = adopted && buf.is_empty();
    // Not a TLS connection: its plain end means nothing without this
    // worker's pump (and the TLS session state goes with the worker).
    let handable = ctx.proxy.proxy_mode == http::proxy::Mode::Off && !peer.tls;
    loop {
        // Nothing of the next request read yet: if --timeout aborts this
        // worker meanwhile, the connection goes to the next worker.
        let handback = (handable && buf.is_empty()).then(|| super::handback::idle(fd, idx));
        let head = read_head(&ctx.head, &ctx.shutdown, &mut s, &mut buf, idle, &mut fresh).await;
        drop(handback);
        let (mut req, n) = match head {
            None => return,
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::debug!("invalid request from {}: {e}", peer.addr);
                let out = http::response::parse_error(&e);
                let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&out)).await;
                return;
            }
        };
        let mut rest = super::body::split_rest(&ctx.body, &req, &mut buf, n);
        buf.clear();
        fresh = None;
        // The body is read here, before a Python slot is taken: a client
        // trickling it keeps no slot, and one too slow gets 408.
        let spill = match super::body::preread(&ctx.body, &mut s, &mut req, &mut rest).await {
            Ok(super::body::Preread::InBuffer) => None,
            Ok(super::body::Preread::Spilled(f)) => Some(f),
            Err(super::body::Refused::Closed) => return,
            Err(super::body::Refused::Answer(e)) => {
                tracing::debug!("request body from {}: {e}", peer.addr);
                let out = http::response::parse_error(&e);
                let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&out)).await;
                return;
            }
        };
        if ctx.draining() || ctx.last_request_due() {
            // A retiring worker answers this request and says it closes, so
            // the client's next request goes to a worker that stays.
            req.keep_alive = false;
        }
        let started = Instant::now();
        ctx.cap.request_started();
        let call = Call {
            listener: idx,
            req,
            prebuffered: rest,
            spill,
            fd,
            peer: &peer,
        };
        let Some((req, outcome)) = ctx.class.dispatch(call).await else {
            return;
        };
        ctx.cap.request_finished();
        ctx.request_done();
        tally.requests += 1;
        if outcome.taken_over {
            // The app took the connection over (gunicorn.socket) and is done
            // with it, or goes on with it on a thread of its own holding a
            // duplicate descriptor: write nothing, no shutdown (that would
            // end the connection under the app), no keep-alive, no log line
            // with a status it never sent (as in Gunicorn). Only our
            // descriptor closes, with a lingering close when it is the last.
            tracing::debug!(
                "{} {}: the app took the connection over",
                req.method,
                req.uri
            );
            if outcome.linger {
                super::linger::close(fd, &mut s).await;
            }
            return;
        }
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
        if !outcome.keep_alive || ctx.head.keepalive.is_zero() {
            let _ = s.shutdown().await;
            return;
        }
        // Pipelined bytes become the buffer; otherwise the (cleared) read
        // buffer is kept, so the next request does not allocate a new one
        // (unless a large head grew it: an idle connection holds no more
        // than a fresh one would).
        if !outcome.leftover_in.is_empty() || buf.capacity() > READ_BUF_KEEP {
            buf = outcome.leftover_in;
        }
        idle = buf.is_empty();
    }
}

/// Read until `buf` holds the HTTP/2 preface (`Some(true)`), something
/// else (`Some(false)`), or the client closes or stalls past the header
/// timeout (`None`).
async fn sniff_preface<S: AsyncRead + Unpin>(
    rules: &HeadRules,
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Option<bool> {
    let p = crate::http2::PREFACE;
    let deadline = Instant::now() + rules.header_timeout;
    loop {
        let n = buf.len().min(p.len());
        if buf[..n] != p[..n] {
            return Some(false);
        }
        if n == p.len() {
            return Some(true);
        }
        match tokio::time::timeout_at(deadline.into(), s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// The socket behind `fd` (a duplicate of it) for the front thread.
fn raw_of(fd: RawFd) -> std::io::Result<crate::tls::Raw> {
    use nix::sys::socket::{getsockname, AddressFamily, SockaddrLike, SockaddrStorage};
    // SAFETY: the connection task owns the socket and keeps it open.
    let dup = nix::unistd::dup(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })?;
    let unix = getsockname::<SockaddrStorage>(fd)
        .map(|a| a.family() == Some(AddressFamily::Unix))
        .unwrap_or(false);
    Ok(if unix {
        crate::tls::Raw::Unix(std::os::unix::net::UnixStream::from(dup))
    } else {
        crate::tls::Raw::Tcp(std::net::TcpStream::from(dup))
    })
}

fn access_log(req: &http::Request, peer: &Peer, o: &Outcome, took: Duration) {
    crate::logging::access(&crate::logging::AccessInfo {
        remote: &peer.addr,
        method: &req.method,
        uri: &req.uri,
        path: &req.path,
        query: &req.query,
        protocol: if peer.http2 {
            "HTTP/2.0"
        } else {
            req.version.as_str()
        },
        status: o.status,
        sent: Some(o.sent),
        request_headers: &req.headers,
        response_headers: &o.response_headers,
        duration: took,
        environ: &o.environ_atoms,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn rules() -> HeadRules {
        HeadRules {
            limits: Limits::default(),
            keepalive: Duration::from_millis(300),
            header_timeout: Duration::from_millis(150),
            graceful: Duration::from_secs(30),
            drain_deadline: OnceLock::new(),
        }
    }

    /// Stands in for the accept loop's `Fresh` guard: records its drop.
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn flag() -> (Option<Flag>, Arc<AtomicBool>) {
        let dropped = Arc::new(AtomicBool::new(false));
        (Some(Flag(dropped.clone())), dropped)
    }

    #[tokio::test]
    async fn a_head_already_buffered_is_served_without_releasing_the_accept_loop() {
        let (_client, mut server) = duplex(1024);
        let (_tx, shutdown) = watch::channel(false);
        let mut buf = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nrest".to_vec();
        let (mut fresh, dropped) = flag();
        let r = read_head(
            &rules(),
            &shutdown,
            &mut server,
            &mut buf,
            false,
            &mut fresh,
        )
        .await;
        let (req, n) = r.expect("a head").expect("valid");
        assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", "/a"));
        assert_eq!(&buf[n..], b"rest");
        // The request is about to run: the accept loop must still wait.
        assert!(!dropped.load(Ordering::SeqCst));
        assert!(fresh.is_some());
    }

    #[tokio::test]
    async fn a_head_in_pieces_is_assembled_and_releases_the_accept_loop() {
        let (mut client, mut server) = duplex(1024);
        let (_tx, shutdown) = watch::channel(false);
        let mut buf = b"GET / HT".to_vec();
        let (mut fresh, dropped) = flag();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"TP/1.1\r\nHost: x\r\n").await.ok();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"\r\n").await.ok();
            client
        });
        let r = read_head(
            &rules(),
            &shutdown,
            &mut server,
            &mut buf,
            false,
            &mut fresh,
        )
        .await;
        assert!(matches!(r, Some(Ok(_))));
        assert!(dropped.load(Ordering::SeqCst));
        drop(writer.await);
    }

    #[tokio::test]
    async fn a_trickling_client_is_dropped_at_the_header_timeout() {
        let (mut client, mut server) = duplex(1024);
        let (_tx, shutdown) = watch::channel(false);
        client.write_all(b"GET / HTTP/1.1\r\n").await.ok();
        let mut buf = Vec::new();
        let started = Instant::now();
        let r = read_head(
            &rules(),
            &shutdown,
            &mut server,
            &mut buf,
            false,
            &mut None::<()>,
        )
        .await;
        assert!(r.is_none());
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(140), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn an_idle_keepalive_connection_waits_keepalive_then_closes() {
        let (_client, mut server) = duplex(1024);
        let (_tx, shutdown) = watch::channel(false);
        let started = Instant::now();
        let r = read_head(
            &rules(),
            &shutdown,
            &mut server,
            &mut Vec::new(),
            true,
            &mut None::<()>,
        )
        .await;
        assert!(r.is_none());
        // keepalive (300 ms), not the shorter header timeout.
        assert!(started.elapsed() >= Duration::from_millis(290));
    }

    #[tokio::test]
    async fn retiring_keeps_an_idle_connection_until_its_keepalive_ends() {
        let (_c1, mut idle) = duplex(1024);
        let (mut c2, mut busy) = duplex(1024);
        let (tx, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(true);
            // A request sent just after retirement began.
            tokio::time::sleep(Duration::from_millis(30)).await;
            c2.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .ok();
            tokio::time::sleep(Duration::from_secs(1)).await;
            drop((tx, c2));
        });
        let rules = rules();
        let (mut buf_a, mut buf_b) = (Vec::new(), Vec::new());
        let (mut fresh_a, mut fresh_b) = (None::<()>, None::<()>);
        let started = Instant::now();
        let (a, b) = tokio::join!(
            read_head(&rules, &shutdown, &mut idle, &mut buf_a, true, &mut fresh_a),
            read_head(&rules, &shutdown, &mut busy, &mut buf_b, true, &mut fresh_b),
        );
        // The idle one closed at its keep-alive timeout (300 ms), not at once.
        assert!(a.is_none());
        assert!(started.elapsed() >= Duration::from_millis(290));
        // The request that came during the drain is read, to be answered.
        assert!(matches!(b, Some(Ok(_))));
    }

    #[tokio::test]
    async fn retiring_closes_idle_connections_before_graceful_timeout_ends() {
        let (_client, mut idle) = duplex(1024);
        let (tx, shutdown) = watch::channel(false);
        let rules = HeadRules {
            keepalive: Duration::from_secs(30),
            graceful: Duration::from_millis(400),
            ..rules()
        };
        let (mut buf, mut fresh) = (Vec::new(), None::<()>);
        let started = Instant::now();
        let retire = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            rules.drain_deadline();
            let _ = tx.send(true);
        };
        let (r, ()) = tokio::join!(
            read_head(&rules, &shutdown, &mut idle, &mut buf, true, &mut fresh),
            retire,
        );
        assert!(r.is_none());
        // 20 ms + 400 ms less a 100 ms margin (see the next test), not the
        // keep-alive timeout.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn the_drain_deadline_is_fixed_once_a_margin_before_graceful_timeout() {
        for (graceful, left) in [(30_000, 29_500), (400, 300), (0, 0)] {
            let rules = HeadRules {
                graceful: Duration::from_millis(graceful),
                ..rules()
            };
            let before = Instant::now();
            let d = rules.drain_deadline();
            let after = Instant::now();
            let left = Duration::from_millis(left);
            assert!(d >= before + left && d <= after + left, "{graceful}");
            assert_eq!(rules.drain_deadline(), d, "fixed when retiring began");
        }
    }

    #[tokio::test]
    async fn a_bad_head_is_an_error_to_answer() {
        let (_client, mut server) = duplex(1024);
        let (_tx, shutdown) = watch::channel(false);
        let mut buf = b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec();
        let r = read_head(
            &rules(),
            &shutdown,
            &mut server,
            &mut buf,
            false,
            &mut None::<()>,
        )
        .await;
        let e = r.expect("an answer").expect_err("invalid");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn capacity_counts_requests_and_connections() {
        let cap = Arc::new(Capacity::new(2, 3, None));
        assert!(cap.available());
        cap.request_started();
        cap.request_started();
        assert!(!cap.available(), "both slots busy");
        cap.request_finished();
        assert!(cap.available());
        let a = cap.opened();
        let b = cap.opened();
        assert!(cap.available());
        let c = cap.opened();
        assert!(!cap.available(), "worker_connections reached");
        assert_eq!(cap.fresh.load(Ordering::SeqCst), 3);
        drop((a, b));
        assert!(cap.available());
        assert_eq!(cap.conns.load(Ordering::SeqCst), 1);
        drop(c);
        assert_eq!(cap.conns.load(Ordering::SeqCst), 0);
        assert_eq!(cap.fresh.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn waits_end_when_the_guards_drop() {
        let cap = Arc::new(Capacity::new(1, 1, None));
        let (guard, fresh) = cap.opened();
        let waiter = {
            let cap = cap.clone();
            tokio::spawn(async move {
                cap.wait_fresh().await;
                let fresh_done = cap.conns.load(Ordering::SeqCst) == 1;
                cap.wait(|| false).await;
                cap.wait_drained().await;
                fresh_done
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(fresh);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the connection is still open");
        drop(guard);
        let fresh_first = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("woken")
            .expect("no panic");
        assert!(
            fresh_first,
            "wait_fresh returned while the connection was open"
        );
    }

    #[tokio::test]
    async fn a_draining_worker_stops_waiting_for_capacity() {
        let cap = Capacity::new(1, 1, None);
        cap.request_started();
        tokio::time::timeout(Duration::from_secs(2), cap.wait(|| true))
            .await
            .expect("returns at once");
    }

    #[test]
    fn peers_from_tcp_carry_the_address_and_unix_peers_are_trusted() {
        let policy = ProxyPolicy::default();
        let p = peer_for(Some("127.0.0.1:4321".parse().expect("addr")), &policy);
        assert_eq!((&*p.addr, &*p.port, p.trusted), ("127.0.0.1", "4321", true));
        let p = peer_for(Some("[2001:db8::1]:80".parse().expect("addr")), &policy);
        assert_eq!((&*p.addr, p.trusted), ("2001:db8::1", false));
        let p = peer_for(None, &policy);
        assert_eq!((&*p.addr, p.trusted), ("", true));
    }

    /// Both listener kinds go through `Listen`: a duplicated descriptor,
    /// then connections with (TCP) or without (Unix) a client address.
    #[tokio::test]
    async fn tcp_and_unix_listeners_accept_through_one_trait() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        let l = tokio::net::TcpListener::open(OwnedFd::from(tcp)).expect("open");
        let client = tokio::net::TcpStream::connect(("127.0.0.1", port));
        let (accepted, _c) = tokio::join!(l.accept_one(), client);
        let (_s, addr) = accepted.expect("accepted");
        assert_eq!(addr.map(|a| a.ip().to_string()), Some("127.0.0.1".into()));

        let dir = std::env::temp_dir().join(format!("rgunicorn-conn-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let unix = std::os::unix::net::UnixListener::bind(&dir).expect("bind unix");
        let l = tokio::net::UnixListener::open(OwnedFd::from(unix)).expect("open");
        let client = tokio::net::UnixStream::connect(&dir);
        let (accepted, _c) = tokio::join!(l.accept_one(), client);
        let (_s, addr) = accepted.expect("accepted");
        assert!(addr.is_none());
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn read_now_takes_what_is_there_and_sees_a_close() {
        use std::io::Write;
        let (mut a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        b.set_nonblocking(true).expect("nonblocking");
        let mut buf = Vec::new();
        assert!(
            read_now(b.as_raw_fd(), &mut buf),
            "nothing yet is not a close"
        );
        assert!(buf.is_empty());
        a.write_all(b"GET /").expect("write");
        assert!(read_now(b.as_raw_fd(), &mut buf));
        assert_eq!(buf, b"GET /");
        drop(a);
        assert!(!read_now(b.as_raw_fd(), &mut buf));
        assert_eq!(buf, b"GET /");
    }
}
