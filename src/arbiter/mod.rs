//! The master process (Gunicorn's "arbiter"): owns the listeners, forks
//! workers and supervises them. It never serves a request.
//!
//! One thread, one `poll(2)` loop over: a signalfd (every signal below is
//! blocked and read from it, so handlers never run), the pipe workers write
//! to (ready, retire), the control socket, and a timeout (the next deadline
//! of the supervisor, systemd or the control server, at most 1 s). No other
//! thread ever exists here, so a fork never copies a lock held by a thread
//! the child does not have.
//!
//! The loop decides nothing about workers: each turn it turns what it read
//! (signals, pipe messages, reaped children, each worker's heartbeat and
//! oldest request in the [`crate::scoreboard`]) into events for the
//! [`supervisor`], and performs the actions it answers (fork, signal, tell
//! systemd), running the hooks around them.
//!
//! | signal        | meaning                                                       |
//! |---------------|---------------------------------------------------------------|
//! | TERM          | graceful stop: workers finish in-flight requests (`--graceful-timeout`), exit 0 |
//! | INT, QUIT     | quick stop                                                    |
//! | HUP           | reload: new generation of workers, old ones retire once it is ready |
//! | TTIN / TTOU   | one worker more / fewer (never below 1)                       |
//! | USR1          | reopen log files (and tell the workers to)                    |
//! | CHLD          | reap children; replace workers that died                      |
//! | WINCH, USR2   | logged and ignored for now                                    |
//!
//! The control socket ([`crate::control`]) is served from the same loop;
//! its commands call the very methods the signals call (see `control.rs`).

mod affinity;
mod control;

mod sd;

mod supervisor;

pub use supervisor::ReloadOutcome;
use supervisor::{Action, Event, Exit, Limits, Supervisor};

use crate::config::Settings;
use crate::scoreboard::{now_ms, Scoreboard, MAX_SLOTS};
use crate::sock::Listener;
use crate::worker::{self, msg};
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use pyo3::prelude::*;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The signals the master handles (all read from the signalfd).
pub const SIGNALS: [Signal; 10] = [
    Signal::SIGCHLD,
    Signal::SIGHUP,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The environment variable that hands listeners to a re-executed master.
pub const REEXEC_FDS_ENV: &str = "RGUNICORN_FD";

fn oldbin(p: &std::path::Path) -> std::path::PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".oldbin");
    s.into()
}

/// Gunicorn's exit codes for a server that could not start its workers
/// (the same codes its workers end with).
pub use crate::worker::msg::{
    APP_LOAD_ERROR as EXIT_APP_LOAD_ERROR, WORKER_BOOT_ERROR as EXIT_WORKER_BOOT_ERROR,
};

/// Running totals for `metrics` kept by the loop (the supervisor keeps the
/// others); they only go up while the master lives.
#[derive(Debug, Default)]
struct Totals {
    /// Requests served by workers already reaped: each one's last count,
    /// read from its scoreboard slot before the slot is reused. Plus the
    /// live workers' counts, this is the server's requests served.
    retired_requests: u64,
    /// Worker processes forked.
    spawns: u64,
}

pub struct Arbiter {
    settings: Settings,
    app_uri: String,
    argv: Vec<String>,
    listeners: Vec<Listener>,
    scoreboard: Scoreboard,
    free_slots: Vec<usize>,
    /// The CPU each worker slot runs on (`worker_cpu_affinity`).
    affinity: affinity::Affinity,
    /// The workers' states and every decision about them.
    sup: Supervisor,
    sigfd: SignalFd,
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    preloaded: Option<Py<PyAny>>,
    pid: Pid,
    /// A new master started by SIGUSR2, sharing our listeners.
    reexec_child: Option<Pid>,
    /// The running totals `metrics` reports that the loop keeps.
    totals: Totals,
    started_at: Instant,
    /// When `--enable-backlog-metric` last looked at the listeners.
    backlog_at: Instant,
    /// The control socket, served from the loop.
    control: Option<crate::control::server::ControlServer>,
    /// The reload outcome the control server was last told about.
    notified_reload: Option<ReloadOutcome>,
    /// What the service manager is told (READY, STATUS, WATCHDOG, ...).
    sd: crate::systemd::Service,
    /// The values `raw_env` replaced, put back when a reload drops them.
    env_orig: EnvOrig,
    /// Listeners a reload's new `bind` dropped, with the last generation
    /// that serves on them: they stop listening once that generation
    /// retires (see `close_dropped_listeners`).
    dropped_listeners: Vec<(u64, Listener)>,
    /// Where workers aborted by `--timeout` send their idle keep-alive
    /// connections ([`crate::worker::handback`]).
    handback_r: OwnedFd,
    /// Connections handed back, for the next worker forked.
    handed_back: Vec<(OwnedFd, u32)>,
}

/// What the process environment held, before `raw_env` set them, for each
/// variable `raw_env` ever set (Gunicorn's `env_orig`).
#[derive(Debug, Default)]
pub struct EnvOrig(std::collections::HashMap<String, Option<std::ffi::OsString>>);

impl EnvOrig {
    /// Put back what `old` (a `raw_env`) set, then set `new`. Only while
    /// the process has one thread (set_var/remove_var).
    pub fn apply(&mut self, old: &[String], new: &[String]) {
        for kv in old {
            if let Some((k, _)) = kv.split_once('=') {
                match self.0.get(k) {
                    Some(Some(v)) => std::env::set_var(k, v),
                    _ => std::env::remove_var(k),
                }
            }
        }
        for kv in new {
            if let Some((k, v)) = kv.split_once('=') {
                if !k.is_empty() && !k.contains('\0') && !v.contains('\0') {
                    self.0
                        .entry(k.to_string())
                        .or_insert_with(|| std::env::var_os(k));
                    std::env::set_var(k, v);
                }
            }
        }
    }
}

impl Arbiter {
    /// Set up the master: block our signals into a signalfd, map the
    /// scoreboard, preload the app if asked.
    pub fn new(
        settings: Settings,
        app_uri: String,
        argv: Vec<String>,
        listeners: Vec<Listener>,
        preloaded: Option<Py<PyAny>>,
    ) -> Result<Arbiter> {
        let mut mask = SigSet::empty();
        for s in SIGNALS {
            mask.add(s);
        }
        mask.thread_block().context("cannot block signals")?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .context("cannot create a signalfd")?;
        let (pipe_r, pipe_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .context("cannot create the worker pipe")?;
        let scoreboard = Scoreboard::new().context("cannot map the scoreboard")?;
        let handback_r = crate::worker::handback::channel()
            .context("cannot create the connection hand-back socket")?;
        let sup = Supervisor::new(settings.workers, Limits::from_settings(&settings));
        Ok(Arbiter {
            settings,
            app_uri,
            argv,
            listeners,
            scoreboard,
            free_slots: (0..MAX_SLOTS).rev().collect(),
            affinity: affinity::Affinity::default(),
            sup,
            sigfd,
            pipe_r,
            pipe_w,
            preloaded,
            pid: nix::unistd::getpid(),
            reexec_child: None,
            totals: Totals::default(),
            started_at: Instant::now(),
            backlog_at: Instant::now(),
            control: None,
            notified_reload: None,
            sd: crate::systemd::Service::from_env(),
            env_orig: EnvOrig::default(),
            dropped_listeners: Vec::new(),
            handback_r,
            handed_back: Vec::new(),
        })
    }

    /// The environment as it was before `raw_env` (see [`EnvOrig`]).
    pub fn set_env_orig(&mut self, e: EnvOrig) {
        self.env_orig = e;
    }

    /// Run until stopped; returns the process exit code.
    pub fn run(mut self) -> i32 {
        tracing::info!("Starting rgunicorn {}", env!("CARGO_PKG_VERSION"));
        for l in &self.listeners {
            tracing::info!(
                "Listening at: {} ({})",
                crate::tls::scheme(l.describe()),
                self.pid
            );
        }
        tracing::info!(
            "Using worker: {}",
            self.settings.effective_worker_class().name()
        );
        crate::proctitle::set("master", &self.settings);
        if !crate::hooks::when_ready(&self.settings, self.sup.target()) {
            return 1;
        }
        self.apply(Vec::new());
        loop {
            let timeout = self.poll_timeout();
            let ctl_fds = self.control_poll_fds();
            let (sig_ready, pipe_ready, ctl_ready) = {
                let mut fds = vec![
                    PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.pipe_r.as_fd(), PollFlags::POLLIN),
                ];
                fds.extend(ctl_fds.iter().map(|(fd, f)| {
                    // SAFETY: the control server owns these descriptors and
                    // keeps them open until `handle_control` runs below.
                    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
                    PollFd::new(fd, *f)
                }));
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        tracing::error!("poll failed in the master loop: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let ctl_ready: Vec<_> = ctl_fds
                    .iter()
                    .zip(&fds[2..])
                    .filter_map(|((fd, _), p)| {
                        p.revents().filter(|r| !r.is_empty()).map(|r| (*fd, r))
                    })
                    .collect();
                (ready(&fds[0]), ready(&fds[1]), ctl_ready)
            };
            if sig_ready {
                self.handle_signals();
            }
            // What the workers said and how they ended, then how they look
            // in the scoreboard: one turn of the supervisor (its timers run
            // on every turn).
            let mut events = Vec::new();
            if pipe_ready {
                self.read_worker_messages(&mut events);
            }
            // Before reaping: a worker aborted by --timeout handed its idle
            // connections back before it exited; its replacement, forked
            // below, inherits them.
            crate::worker::handback::receive(&self.handback_r, &mut self.handed_back);
            let exited = self.reap_children(&mut events);
            self.read_scoreboard(&mut events);
            let actions = self.sup.tick(now_ms(), events);
            for (pid, slot) in exited {
                self.scoreboard.vacate(slot);
                self.free_slots.push(slot);
                self.affinity.release(slot);
                crate::hooks::child_exit(&self.settings, self.sup.target(), pid.as_raw(), slot);
            }
            self.execute(actions);
            self.close_dropped_listeners();
            self.backlog_tick();
            self.sd_tick();
            self.handle_control(&ctl_ready);
            if self.sup.finished() {
                break;
            }
            self.sd_tick();
        }
        tracing::info!("Shutting down: Master");
        // Answers still owed are sent (best effort) and the socket removed.
        drop(self.control.take());
        crate::hooks::on_exit(&self.settings);
        self.sup.exit_code()
    }

    /// `--enable-backlog-metric`: once a second (the loop wakes at least
    /// that often), the connections queued on the TCP listeners.
    fn backlog_tick(&mut self) {
        if !self.settings.enable_backlog_metric
            || self.backlog_at.elapsed() < Duration::from_secs(1)
        {
            return;
        }
        self.backlog_at = Instant::now();
        crate::logging::backlog_metric(self.connections_queued());
    }

    /// The connections waiting in the TCP listeners' accept queues.
    pub fn connections_queued(&self) -> u64 {
        self.listeners
            .iter()
            .filter_map(|l| l.backlog())
            .map(u64::from)
            .sum()
    }

    /// How long this master has been running.
    pub fn uptime(&self) -> Duration {
        self.started_at.elapsed()
    }

    /// How the last reload ended, if there was one.
    pub fn last_reload(&self) -> Option<&ReloadOutcome> {
        self.sup.last_reload()
    }

    fn poll_timeout(&self) -> PollTimeout {
        let mut wait = Duration::from_millis(1000);
        let now = Instant::now();
        let now_ms = now_ms();
        if let Some(at) = self.sup.next_deadline(now_ms) {
            wait = wait.min(Duration::from_millis(at.saturating_sub(now_ms)));
        }
        if let Some(d) = self.sd.next_deadline(now) {
            wait = wait.min(d);
        }
        if let Some(at) = self.control_deadline() {
            wait = wait.min(at.saturating_duration_since(now));
        }
        PollTimeout::from(u16::try_from(wait.as_millis()).unwrap_or(1000))
    }

    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.sigfd.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => {} // reaped right after
                Signal::SIGTERM => self.stop(false),
                Signal::SIGINT | Signal::SIGQUIT => self.stop(true),
                Signal::SIGHUP => self.reload(),
                Signal::SIGTTIN => self.scale(self.sup.target().saturating_add(1)),
                Signal::SIGTTOU => self.scale(self.sup.target().saturating_sub(1)),
                Signal::SIGUSR1 => self.reopen_logs(),
                Signal::SIGUSR2 => self.reexec(),
                Signal::SIGWINCH => {
                    // Gunicorn stops its workers on WINCH only when daemonized;
                    // rgunicorn never daemonizes.
                    tracing::info!("Handling signal: winch (ignored: not daemonized)");
                }
                other => tracing::info!("Ignoring {other}"),
            }
        }
    }

    fn read_worker_messages(&mut self, events: &mut Vec<Event>) {
        let mut buf = [0u8; msg::LEN * 64];
        loop {
            match nix::unistd::read(&self.pipe_r, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    for rec in buf[..n].chunks_exact(msg::LEN) {
                        match msg::decode(rec) {
                            Some((msg::Msg::CodeChanged, slot)) if slot < MAX_SLOTS => {
                                let at = self
                                    .scoreboard
                                    .slot(slot)
                                    .code_changed_ms
                                    .load(Ordering::Acquire);
                                events.push(Event::CodeChanged { slot, at });
                            }
                            Some((msg, slot)) => events.push(Event::Message { slot, msg }),
                            None => {}
                        }
                    }
                }
            }
        }
    }

    /// Each worker's heartbeat and oldest running request, for `--timeout`.
    fn read_scoreboard(&self, events: &mut Vec<Event>) {
        for (pid, w) in self.sup.workers() {
            let slot = self.scoreboard.slot(w.slot);
            events.push(Event::Seen {
                pid,
                heartbeat_ms: slot.heartbeat_ms.load(Ordering::Relaxed),
                busy_since_ms: slot.busy_since_ms.load(Ordering::Relaxed),
            });
        }
    }

    /// One supervisor turn: hand it `events`, then do what it says.
    fn apply(&mut self, events: Vec<Event>) {
        let actions = self.sup.tick(now_ms(), events);
        self.execute(actions);
    }

    fn execute(&mut self, actions: Vec<Action>) {
        let mut fork_failed = false;
        for action in actions {
            match action {
                Action::Spawn if fork_failed => {}
                Action::Spawn => {
                    if let Err(e) = self.spawn_worker() {
                        tracing::error!("cannot start a worker: {e:#}");
                        self.sup.spawn_failed(now_ms());
                        fork_failed = true;
                    }
                }
                Action::Signal(pid, sig) => {
                    // ESRCH: it died meanwhile; its reaping is the next event.
                    let _ = kill(pid, sig);
                }
                Action::Stopping { quick } => self.stopping(quick),
                Action::BootError(error) => self.sd.boot_error(&error),
                Action::ReloadFailed(error) => self.sd.reload_failed(&error),
                Action::Reload => {
                    tracing::info!("Reloading: the app's code changed (--reload)");
                    self.start_reload();
                }
            }
        }
        if self.sup.is_running() {
            crate::logging::workers_gauge(self.sup.live_count());
        }
    }

    fn spawn_worker(&mut self) -> Result<()> {
        let slot_index = self.free_slots.pop().context("no free worker slot")?;
        let slot = self.scoreboard.slot(slot_index);
        slot.reset(0);
        crate::hooks::pre_fork(&self.settings, self.sup.target(), slot_index);
        let cpu = self
            .affinity
            .assign(&self.settings.worker_cpu_affinity, slot_index);
        let pinned = cpu.map(affinity::pin_for_fork);
        // SAFETY: the master is single-threaded (see the module doc), and the
        // child goes straight into worker::run, which never returns.
        let forked = unsafe { crate::python::fork() };
        if let (Some(Ok(mine)), Err(_) | Ok(ForkResult::Parent { .. })) = (&pinned, &forked) {
            affinity::restore(mine);
        }
        match forked {
            Err(e) => {
                self.free_slots.push(slot_index);
                self.affinity.release(slot_index);
                Err(e).context("fork failed")
            }
            Ok(ForkResult::Parent { child }) => {
                // The child has them now.
                self.handed_back.clear();
                self.totals.spawns += 1;
                slot.pid.store(child.as_raw(), Ordering::Relaxed);
                self.sup.spawned(now_ms(), child, slot_index);
                Ok(())
            }
            Ok(ForkResult::Child) => {
                let pinned = cpu.zip(pinned).map(|(c, r)| (c, r.map(drop)));
                self.become_worker(slot_index, pinned)
            }
        }
    }

    /// In the child: drop the master's machinery, then run the worker
    /// (born on the CPU it was given, if any: `pinned` says how that went).
    fn become_worker(&mut self, slot_index: usize, pinned: Option<(usize, nix::Result<()>)>) -> ! {
        match pinned {
            Some((cpu, Ok(()))) => {
                tracing::info!("Worker (pid: {}) runs on CPU {cpu}", std::process::id())
            }
            Some((cpu, Err(e))) => tracing::warn!("Cannot bind the worker to CPU {cpu}: {e}"),
            None => {}
        }
        let _ = SigSet::empty().thread_set_mask();
        let _ = nix::unistd::close(self.sigfd.as_raw_fd());
        let _ = nix::unistd::close(self.pipe_r.as_raw_fd());
        let _ = nix::unistd::close(self.handback_r.as_raw_fd());
        crate::worker::handback::set_adopted(std::mem::take(&mut self.handed_back));
        if let Some(c) = self.control.take() {
            c.close_in_child();
        }
        // If the master dies, stop too (TERM: finish what is in flight).
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
        if nix::unistd::getppid() != self.pid {
            std::process::exit(0);
        }
        crate::hooks::post_fork(&self.settings, self.sup.target(), slot_index);
        let slot = self.scoreboard.slot(slot_index);
        slot.pid.store(std::process::id() as i32, Ordering::Relaxed);
        let preloaded = self
            .preloaded
            .as_ref()
            .map(|a| Python::attach(|py| a.clone_ref(py)));
        let max_requests = if self.settings.max_requests > 0 {
            let jitter = if self.settings.max_requests_jitter > 0 {
                random_below(self.settings.max_requests_jitter + 1)
            } else {
                0
            };
            self.settings.max_requests + jitter
        } else {
            0
        };
        worker::run(worker::Spec {
            settings: &self.settings,
            app_uri: &self.app_uri,
            listeners: &self.listeners,
            slot_index,
            slot,
            scoreboard: &self.scoreboard,
            notify_fd: self.pipe_w.as_raw_fd(),
            preloaded,
            max_requests,
            multiprocess: self.sup.target() > 1,
            argv: &self.argv,
            // No generation has served yet, so none can serve on while the
            // code is fixed.
            serve_syntax_errors: self.settings.reload && !self.sup.ever_ready(),
        })
    }

    /// Reap every child that ended; for each worker, an [`Event::Exited`]
    /// and its pid and slot (whose hook runs, and slot is freed, once the
    /// supervisor has handled the exit).
    fn reap_children(&mut self, events: &mut Vec<Event>) -> Vec<(Pid, usize)> {
        let mut exited = Vec::new();
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return exited,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("waitpid failed: {e}");
                    return exited;
                }
                Ok(s) => s,
            };
            let Some(pid) = status.pid() else { continue };
            if Some(pid) == self.reexec_child {
                self.reexec_child = None;
                tracing::warn!("The re-executed master (pid: {pid}) exited: {status:?}");
                if let Some(p) = &self.settings.pidfile {
                    let _ = std::fs::rename(oldbin(p), p);
                }
                continue;
            }
            let Some(slot) = self.sup.worker(pid).map(|w| w.slot) else {
                // Not a worker: an orphan we adopted as PID 1 or subreaper.
                tracing::debug!("reaped child {pid}: {status:?}");
                continue;
            };
            let exit = match status {
                WaitStatus::Exited(_, code) => Exit::Code(code),
                WaitStatus::Signaled(_, sig, _) => Exit::Signal(sig),
                // Without WUNTRACED/WCONTINUED nothing else is reported.
                other => {
                    tracing::info!("Worker (pid:{pid}) changed state: {other:?}");
                    continue;
                }
            };
            // Its count stays in the slot until the slot's next worker is
            // forked: keep it in the total before the slot is reused.
            let s = self.scoreboard.slot(slot);
            let served = s.requests.load(Ordering::Relaxed);
            self.totals.retired_requests = self.totals.retired_requests.saturating_add(served);
            let error = self.scoreboard.take_error(slot);
            events.push(Event::Exited { pid, exit, error });
            exited.push((pid, slot));
        }
    }

    /// Stop (SIGTERM: graceful, SIGINT/SIGQUIT: quick; `stop [--quick]`).
    fn stop(&mut self, quick: bool) {
        self.apply(vec![Event::Stop { quick }]);
    }

    /// The server begins to stop (the supervisor signals the workers).
    fn stopping(&mut self, quick: bool) {
        tracing::info!(
            "Handling signal: {}",
            if quick { "int/quit" } else { "term" }
        );
        self.sd.stopping();
        // Stop listening at once, for every process sharing the sockets: a
        // worker busy in Python could not close its copy until its request
        // ends, and connections would queue unserved meanwhile.
        // (Unix sockets are unlinked instead, when `listeners` is cleared:
        // a shut-down Unix listener would wake its workers' epoll forever.)
        let shared = self.reexec_child.is_some();
        for l in self.listeners.iter_mut() {
            if shared {
                // The new master serves on these: only forget our copies.
                l.unlink_on_exit = false;
                continue;
            }
            if matches!(l.kind, crate::sock::ListenerKind::Tcp(_)) && !l.shared {
                let _ = nix::sys::socket::shutdown(l.raw_fd(), nix::sys::socket::Shutdown::Read);
            }
        }
        self.listeners.clear();
        for (_, l) in std::mem::take(&mut self.dropped_listeners) {
            if !shared && matches!(l.kind, crate::sock::ListenerKind::Tcp(_)) && !l.shared {
                let _ = nix::sys::socket::shutdown(l.raw_fd(), nix::sys::socket::Shutdown::Read);
            }
        }
    }

    fn kill_all(&mut self, sig: Signal) {
        for (pid, _) in self.sup.workers() {
            let _ = kill(pid, sig);
        }
    }

    /// Reload (SIGHUP, `reload`): read the settings again and start a new
    /// generation of workers, which import the app afresh; each old worker
    /// retires once a new one is ready. As Gunicorn's reload, it also
    /// re-applies `raw_env`, the logging settings and a changed `bind`
    /// (unchanged listeners stay open throughout; see `rebind`).
    pub fn reload(&mut self) {
        if !self.sup.is_running() {
            return;
        }
        tracing::info!("Handling signal: hup");
        self.start_reload();
    }

    /// The reload itself, whoever asked (SIGHUP, `reload`, `--reload`).
    fn start_reload(&mut self) {
        self.sd.reloading();
        let args: Vec<std::ffi::OsString> = self.argv.iter().skip(1).map(Into::into).collect();
        match crate::python::config::load_settings(args, &self.argv) {
            Ok(new) => {
                // What Gunicorn's reload re-applies besides the workers:
                // raw_env, logging, a changed bind.
                self.env_orig.apply(&self.settings.raw_env, &new.raw_env);
                crate::python::sync_environ();
                if let Err(e) = crate::logging::reconfigure(&new) {
                    tracing::error!("Reload: logging stays as it was: {e:#}");
                }
                let mut new = new;
                // Renewed certificate files: the new generation serves them.
                if let Err(e) = crate::tls::install(&new) {
                    tracing::error!("Reload: TLS stays as it was: {e:#}");
                }
                if new.bind != self.settings.bind && !self.rebind(&new) {
                    new.bind = self.settings.bind.clone();
                }
                let event = Event::Reload {
                    workers: new.workers,
                    limits: Limits::from_settings(&new),
                };
                self.settings = new;
                let actions = self.sup.tick(now_ms(), vec![event]);
                // The hook runs before the new generation is forked.
                crate::hooks::on_reload(&self.settings, self.sup.target());
                self.execute(actions);
            }
            Err(e) => {
                let error = match e {
                    crate::python::config::LoadError::Config(e) => e.to_string(),
                    crate::python::config::LoadError::File(e) => format!("{e:#}"),
                };
                self.apply(vec![Event::ReloadUnreadable { error }]);
            }
        }
    }

    /// A reload changed `bind`: open the new addresses now (the new
    /// generation is forked with them), keep the unchanged ones, and set the
    /// dropped ones aside: the old generation keeps serving on them until it
    /// retires (`close_dropped_listeners`). false: nothing changed (listeners
    /// handed to us, or a new address cannot be opened); the old bind stays.
    fn rebind(&mut self, new: &Settings) -> bool {
        if self.listeners.iter().any(|l| l.bind.is_none()) {
            tracing::warn!(
                "Reload: the listeners were handed to this server (socket activation, \
                 fd://, USR2): a changed bind takes effect only on restart"
            );
            return false;
        }
        let opts = match crate::cli::bind_options(new) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("Reload: the bind stays as it was: {e:#}");
                return false;
            }
        };
        // Open every new address first: if one fails, nothing changes (what
        // was opened closes again).
        let mut opened: Vec<Listener> = Vec::new();
        for b in &new.bind {
            let have = |l: &Listener| l.bind.as_deref() == Some(b.as_str());
            if self.listeners.iter().any(have) || opened.iter().any(have) {
                continue;
            }
            match crate::sock::BindAddr::parse(b).and_then(|a| crate::sock::bind(&a, opts)) {
                Ok(ls) => opened.extend(ls.into_iter().map(|mut l| {
                    l.bind = Some(b.clone());
                    l
                })),
                Err(e) => {
                    tracing::error!(
                        "Reload: cannot listen at {b}, the bind stays as it was: {e:#}"
                    );
                    return false;
                }
            }
        }
        for l in &opened {
            tracing::info!(
                "Listening at: {} ({})",
                crate::tls::scheme(l.describe()),
                self.pid
            );
        }
        // In the new bind's order; what is left over was dropped.
        let mut old = std::mem::take(&mut self.listeners);
        let mut next = Vec::new();
        for b in &new.bind {
            for pool in [&mut old, &mut opened] {
                let (k, rest): (Vec<_>, Vec<_>) = std::mem::take(pool)
                    .into_iter()
                    .partition(|l| l.bind.as_deref() == Some(b.as_str()));
                *pool = rest;
                next.extend(k);
            }
        }
        let generation = self.sup.generation();
        for l in old {
            tracing::info!(
                "Reload: {} closes once the workers serving on it retire",
                l.describe()
            );
            self.dropped_listeners.push((generation, l));
        }
        self.listeners = next;
        true
    }

    /// Close the listeners a reload dropped once no worker of the
    /// generations that serve on them is still taking connections (they all
    /// retire, or are gone). `shutdown(2)` first: a connection attempt from
    /// then on is refused at once rather than queued where no worker will
    /// ever accept it; the retiring workers finish what they accepted.
    fn close_dropped_listeners(&mut self) {
        if self.dropped_listeners.is_empty() {
            return;
        }
        let serving = |g: u64| {
            self.sup.workers().any(|(_, w)| {
                w.generation <= g
                    && matches!(
                        w.state,
                        supervisor::WorkerState::Booting { .. }
                            | supervisor::WorkerState::Ready
                            | supervisor::WorkerState::Recycling
                    )
            })
        };
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.dropped_listeners)
            .into_iter()
            .partition(|(g, _)| !serving(*g));
        self.dropped_listeners = keep;
        for (_, l) in done {
            if matches!(l.kind, crate::sock::ListenerKind::Tcp(_)) && !l.shared {
                let _ = nix::sys::socket::shutdown(l.raw_fd(), nix::sys::socket::Shutdown::Read);
            }
            tracing::info!("Closed listener {} (dropped by a reload)", l.describe());
        }
    }

    /// Scale (SIGTTIN/SIGTTOU, `scale`): the new count survives reloads.
    pub fn scale(&mut self, n: usize) {
        let old = self.sup.target();
        let actions = self.sup.tick(now_ms(), vec![Event::Scale(n)]);
        let new = self.sup.target();
        if new != old {
            crate::hooks::nworkers_changed(&self.settings, new, old);
        }
        self.execute(actions);
    }

    /// Stop one worker gracefully (`kill-worker`); it is replaced.
    fn retire(&mut self, pid: Pid) {
        self.apply(vec![Event::Retire(pid)]);
    }

    /// SIGUSR2: start a new master from the binary on disk, handing it our
    /// listeners; the pidfile becomes `PIDFILE.oldbin` until it exits.
    fn reexec(&mut self) {
        if self.reexec_child.is_some() {
            tracing::warn!("USR2 ignored: a re-executed master is already running");
            return;
        }
        tracing::info!("Handling signal: usr2");
        if let Some(p) = &self.settings.pidfile {
            let old = oldbin(p);
            if let Err(e) = std::fs::rename(p, &old) {
                tracing::warn!("cannot rename pidfile to {}: {e}", old.display());
            }
        }
        let fds: Vec<String> = self
            .listeners
            .iter()
            .map(|l| l.raw_fd().to_string())
            .collect();
        let (exe, args) = crate::cli::reexec_command(&self.argv);
        let cexe = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes()).ok();
        let cargs: Vec<std::ffi::CString> = args
            .iter()
            .filter_map(|a| std::ffi::CString::new(a.as_bytes()).ok())
            .collect();
        let Some(cexe) = cexe else { return };
        // Everything the child needs is allocated before the fork.
        let env_fds = std::ffi::CString::new(format!("{REEXEC_FDS_ENV}={}", fds.join(","))).ok();
        let mut envp: Vec<std::ffi::CString> = std::env::vars_os()
            .filter(|(k, _)| k != REEXEC_FDS_ENV)
            .filter_map(|(k, v)| {
                let mut b = k.into_encoded_bytes();
                b.push(b'=');
                b.extend(v.into_encoded_bytes());
                std::ffi::CString::new(b).ok()
            })
            .collect();
        envp.extend(env_fds);
        // The manager's variables were taken out of our environment at
        // start; the new master needs them to take over as main process.
        envp.extend(
            self.sd
                .reexec_env()
                .into_iter()
                .filter_map(|(k, v)| std::ffi::CString::new(format!("{k}={v}")).ok()),
        );
        let listener_fds: Vec<i32> = self.listeners.iter().map(|l| l.raw_fd()).collect();
        // SAFETY: the master has one thread, so the child inherits no lock
        // held by a thread it does not have, and may run ordinary code
        // before exec, the `pre_exec` hook's Python included: when Python
        // is initialised, `python::fork` brackets the fork with
        // PyOS_BeforeFork/PyOS_AfterFork_Child, as os.fork() does.
        match unsafe { crate::python::fork() } {
            Ok(ForkResult::Child) => {
                for fd in &listener_fds {
                    // SAFETY: fcntl on our own open listener descriptors.
                    unsafe {
                        libc::fcntl(*fd, libc::F_SETFD, 0);
                    }
                }
                // The hook runs with the master's signals still blocked (a
                // TERM meant for the old master must not kill it half-way);
                // the new master starts with an empty mask.
                crate::hooks::pre_exec(&self.settings, self.sup.target());
                let _ = SigSet::empty().thread_set_mask();
                let _ = nix::unistd::execve(&cexe, &cargs, &envp);
                // SAFETY: exec failed; leave without running destructors.
                unsafe { libc::_exit(1) }
            }
            Ok(ForkResult::Parent { child }) => {
                tracing::info!("Started a new master (pid: {child})");
                self.reexec_child = Some(child);
                // It is the service's main process from now on (MAINPID=);
                // we fall silent, watchdog included.
                self.sd.handed_over(child.as_raw());
            }
            Err(e) => tracing::error!("USR2: fork failed: {e}"),
        }
    }

    /// SIGUSR1, `reopen-logs`.
    fn reopen_logs(&mut self) {
        tracing::info!("Handling signal: usr1");
        if let Err(e) = crate::logging::reopen() {
            tracing::error!("cannot reopen log files: {e}");
        }
        self.kill_all(Signal::SIGUSR1);
    }
}

/// A small random number for `--max-requests-jitter` (not security-sensitive).
fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    if getrandom_fill(&mut b).is_err() {
        return 0;
    }
    u64::from_le_bytes(b) % n.max(1)
}

fn getrandom_fill(b: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(b)
}
