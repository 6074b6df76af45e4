//! The master process (Gunicorn's "arbiter"): owns the listeners, forks
//! workers and supervises them. It never serves a request.
//!
//! One thread, one `poll(2)` loop over: a signalfd (every signal below is
//! blocked and read from it, so handlers never run), the pipe workers write
//! to (ready, retire), and a timer. No other thread ever exists here, so a
//! fork never copies a lock held by a thread the child does not have.
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

mod control;

mod sd;

use crate::config::Settings;
use crate::scoreboard::{now_ms, Scoreboard, SlotState, MAX_SLOTS};
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
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WState {
    Booting,
    Ready,
    /// Told to stop; killed outright at the deadline.
    Retiring {
        kill_at: Instant,
    },
}

#[derive(Debug)]
struct WorkerRec {
    slot: usize,
    generation: u64,
    state: WState,
    /// A worker that asked to retire (max-requests) and awaits its replacement.
    wants_retire: bool,
    /// Timed out: killed with SIGKILL at this instant if still alive.
    timed_out_kill_at: Option<Instant>,
    /// SIGKILL already sent: only its reaping is awaited (no timer, no resend).
    killed: bool,
    /// When it was forked.
    born: Instant,
}

/// How the last reload ended (reported by `status`, sent to systemd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new generation is ready; the old one retires.
    Succeeded { generation: u64, took: Duration },
    /// The new generation could not boot (or the config could not be
    /// read); the previous generation keeps serving.
    Failed { generation: u64, error: String },
}

/// A reload in progress.
#[derive(Debug, Clone, Copy)]
struct Reload {
    generation: u64,
    previous: u64,
    started: Instant,
}

/// Running totals for `metrics`; they only go up while the master lives.
#[derive(Debug, Default)]
struct Totals {
    /// Requests served by workers already reaped: each one's last count,
    /// read from its scoreboard slot before the slot is reused. Plus the
    /// live workers' counts, this is the server's requests served.
    retired_requests: u64,
    /// Worker processes forked.
    spawns: u64,
    /// Workers aborted by `--timeout`.
    timeouts: u64,
    reloads_succeeded: u64,
    reloads_failed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Stopping { deadline: Instant, quick: bool },
}

pub struct Arbiter {
    settings: Settings,
    app_uri: String,
    argv: Vec<String>,
    listeners: Vec<Listener>,
    scoreboard: Scoreboard,
    free_slots: Vec<usize>,
    workers: BTreeMap<Pid, WorkerRec>,
    target: usize,
    generation: u64,
    /// The highest generation number handed out (numbers are never reused).
    last_generation: u64,
    state: RunState,
    sigfd: SignalFd,
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    preloaded: Option<Py<PyAny>>,
    /// Some worker has reported ready since start.
    ever_ready: bool,
    exit_code: i32,
    /// Consecutive workers that died before becoming ready.
    boot_failures: u32,
    next_spawn_at: Instant,
    pid: Pid,
    /// The worker count was changed at run time (TTIN/TTOU, `scale`): a
    /// reload keeps it instead of taking `workers` from the config again.
    scaled: bool,
    reload: Option<Reload>,
    last_reload: Option<ReloadOutcome>,
    /// A new master started by SIGUSR2, sharing our listeners.
    reexec_child: Option<Pid>,
    /// Times a worker had to be replaced because it died unexpectedly.
    restarts: u64,
    /// The other running totals `metrics` reports.
    totals: Totals,
    started_at: Instant,
    /// Per scoreboard slot: workers in that position that died unexpectedly
    /// and were replaced (`status` reports it per worker).
    slot_restarts: Vec<u64>,
    /// The control socket, served from the loop.
    control: Option<crate::control::server::ControlServer>,
    /// The reload outcome the control server was last told about.
    notified_reload: Option<ReloadOutcome>,
    /// What the service manager is told (READY, STATUS, WATCHDOG, ...).
    sd: crate::systemd::Service,
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
        let target = settings.workers.clamp(1, MAX_SLOTS);
        Ok(Arbiter {
            settings,
            app_uri,
            argv,
            listeners,
            scoreboard,
            free_slots: (0..MAX_SLOTS).rev().collect(),
            workers: BTreeMap::new(),
            target,
            generation: 1,
            last_generation: 1,
            state: RunState::Running,
            sigfd,
            pipe_r,
            pipe_w,
            preloaded,
            ever_ready: false,
            exit_code: 0,
            boot_failures: 0,
            next_spawn_at: Instant::now(),
            pid: nix::unistd::getpid(),
            scaled: false,
            reload: None,
            last_reload: None,
            reexec_child: None,
            restarts: 0,
            totals: Totals::default(),
            started_at: Instant::now(),
            slot_restarts: vec![0; MAX_SLOTS],
            control: None,
            notified_reload: None,
            sd: crate::systemd::Service::from_env(),
        })
    }

    /// Run until stopped; returns the process exit code.
    pub fn run(mut self) -> i32 {
        tracing::info!("Starting rgunicorn {}", env!("CARGO_PKG_VERSION"));
        for l in &self.listeners {
            tracing::info!("Listening at: {} ({})", l.describe(), self.pid);
        }
        tracing::info!(
            "Using worker: {}",
            match self.settings.effective_worker_class() {
                crate::config::WorkerClass::Sync => "sync",
                crate::config::WorkerClass::Gthread => "gthread",
            }
        );
        crate::proctitle::set("master", &self.settings);
        if !crate::hooks::when_ready(&self.settings, self.target) {
            return 1;
        }
        self.manage_workers();
        loop {
            let timeout = self.poll_timeout();
            let ctl_fds = self.control_poll_fds();
            let (sig_ready, pipe_ready, ctl_ready) = {
                let mut fds = vec![
                    PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.pipe_r.as_fd(), PollFlags::POLLIN),
                ];
                // SAFETY: the control server owns these descriptors and
                // keeps them open until `handle_control` runs below.
                fds.extend(ctl_fds.iter().map(|(fd, f)| {
                    PollFd::new(unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) }, *f)
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
            if pipe_ready {
                self.handle_worker_messages();
            }
            self.reap_children();
            self.murder_workers();
            self.sd_tick();
            self.handle_control(&ctl_ready);
            if let RunState::Stopping { deadline, .. } = self.state {
                if self.workers.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    self.kill_all(Signal::SIGKILL);
                }
                continue;
            }
            self.manage_workers();
            self.sd_tick();
        }
        tracing::info!("Shutting down: Master");
        // Answers still owed are sent (best effort) and the socket removed.
        drop(self.control.take());
        crate::hooks::on_exit(&self.settings);
        self.exit_code
    }

    /// How long this master has been running.
    pub fn uptime(&self) -> Duration {
        self.started_at.elapsed()
    }

    /// How the last reload ended, if there was one.
    pub fn last_reload(&self) -> Option<&ReloadOutcome> {
        self.last_reload.as_ref()
    }

    fn poll_timeout(&self) -> PollTimeout {
        let mut wait = Duration::from_millis(1000);
        let now = Instant::now();
        if let RunState::Stopping { deadline, .. } = self.state {
            wait = wait.min(deadline.saturating_duration_since(now));
        }
        if self.next_spawn_at > now && self.live_count() < self.target {
            wait = wait.min(self.next_spawn_at - now);
        }
        for w in self.workers.values().filter(|w| !w.killed) {
            if let WState::Retiring { kill_at } = w.state {
                wait = wait.min(kill_at.saturating_duration_since(now));
            }
            if let Some(at) = w.timed_out_kill_at {
                wait = wait.min(at.saturating_duration_since(now));
            }
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
                Signal::SIGTTIN => self.scale(self.target.saturating_add(1)),
                Signal::SIGTTOU => self.scale(self.target.saturating_sub(1)),
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

    fn handle_worker_messages(&mut self) {
        let mut buf = [0u8; msg::LEN * 64];
        loop {
            match nix::unistd::read(&self.pipe_r, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    for rec in buf[..n].chunks_exact(msg::LEN) {
                        if let Some((kind, slot)) = msg::decode(rec) {
                            self.on_worker_message(kind, slot);
                        }
                    }
                }
            }
        }
    }

    fn pid_of_slot(&self, slot: usize) -> Option<Pid> {
        self.workers
            .iter()
            .find(|(_, w)| w.slot == slot)
            .map(|(p, _)| *p)
    }

    fn on_worker_message(&mut self, kind: msg::Msg, slot: usize) {
        let Some(pid) = self.pid_of_slot(slot) else {
            return;
        };
        match kind {
            msg::Msg::Ready => {
                let mut replacement = false;
                if let Some(w) = self.workers.get_mut(&pid) {
                    if w.state == WState::Booting {
                        w.state = WState::Ready;
                    }
                    replacement = w.generation == self.generation;
                }
                self.ever_ready = true;
                self.boot_failures = 0;
                // Only a worker of the current generation replaces one: an
                // old-generation worker that reports ready just after a HUP
                // must not make another old worker retire with nothing new
                // ready to take over.
                if replacement {
                    self.retire_replaced();
                }
                self.check_reload_done();
            }
            msg::Msg::Retire => {
                if let Some(w) = self.workers.get_mut(&pid) {
                    w.wants_retire = true;
                }
            }
        }
    }

    /// Workers of the current generation that are not retiring.
    fn live_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| {
                w.generation == self.generation && !matches!(w.state, WState::Retiring { .. })
            })
            .filter(|w| !w.wants_retire)
            .count()
    }

    fn ready_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| {
                w.generation == self.generation && w.state == WState::Ready && !w.wants_retire
            })
            .count()
    }

    /// One ready replacement retires one old worker (old generation, or one
    /// that asked to retire); once the current generation is complete, all
    /// remaining old workers go.
    fn retire_replaced(&mut self) {
        let retirable = self.retirable();
        let n = if self.ready_count() >= self.target {
            retirable.len()
        } else {
            1
        };
        for pid in retirable.into_iter().take(n) {
            self.retire(pid);
        }
    }

    fn retire(&mut self, pid: Pid) {
        let kill_at = Instant::now() + Duration::from_secs(self.settings.graceful_timeout);
        if let Some(w) = self.workers.get_mut(&pid) {
            w.state = WState::Retiring { kill_at };
            let _ = kill(pid, Signal::SIGTERM);
        }
    }

    /// Old-generation or retire-requesting workers still serving, oldest first.
    fn retirable(&self) -> Vec<Pid> {
        self.workers
            .iter()
            .filter(|(_, w)| {
                (w.generation != self.generation || w.wants_retire)
                    && !matches!(w.state, WState::Retiring { .. })
            })
            .map(|(p, _)| *p)
            .collect()
    }

    fn manage_workers(&mut self) {
        if self.state != RunState::Running {
            return;
        }
        // Too many: retire the oldest of the current generation.
        while self.live_count() > self.target {
            let victim = self
                .workers
                .iter()
                .filter(|(_, w)| {
                    w.generation == self.generation
                        && !matches!(w.state, WState::Retiring { .. })
                        && !w.wants_retire
                })
                .map(|(p, _)| *p)
                .next();
            let Some(pid) = victim else { break };
            self.retire(pid);
        }
        if self.ready_count() >= self.target {
            self.retire_replaced();
        }
        // Too few: spawn, with backoff after boot failures.
        while self.live_count() < self.target {
            if Instant::now() < self.next_spawn_at {
                break;
            }
            if let Err(e) = self.spawn_worker() {
                tracing::error!("cannot start a worker: {e:#}");
                self.next_spawn_at = Instant::now() + Duration::from_secs(1);
                break;
            }
        }
        crate::logging::workers_gauge(self.live_count());
    }

    fn spawn_worker(&mut self) -> Result<()> {
        let slot_index = self.free_slots.pop().context("no free worker slot")?;
        let slot = self.scoreboard.slot(slot_index);
        slot.reset(0);
        crate::hooks::pre_fork(&self.settings, self.target, slot_index);
        // SAFETY: the master is single-threaded (see the module doc), and the
        // child goes straight into worker::run, which never returns.
        let forked = unsafe { crate::python::fork() };
        match forked {
            Err(e) => {
                self.free_slots.push(slot_index);
                Err(e).context("fork failed")
            }
            Ok(ForkResult::Parent { child }) => {
                self.totals.spawns += 1;
                slot.pid
                    .store(child.as_raw(), std::sync::atomic::Ordering::Relaxed);
                self.workers.insert(
                    child,
                    WorkerRec {
                        slot: slot_index,
                        generation: self.generation,
                        state: WState::Booting,
                        wants_retire: false,
                        timed_out_kill_at: None,
                        killed: false,
                        born: Instant::now(),
                    },
                );
                Ok(())
            }
            Ok(ForkResult::Child) => self.become_worker(slot_index),
        }
    }

    /// In the child: drop the master's machinery, then run the worker.
    fn become_worker(&mut self, slot_index: usize) -> ! {
        let _ = SigSet::empty().thread_set_mask();
        let _ = nix::unistd::close(self.sigfd.as_raw_fd());
        let _ = nix::unistd::close(self.pipe_r.as_raw_fd());
        if let Some(c) = self.control.take() {
            c.close_in_child();
        }
        // If the master dies, stop too (TERM: finish what is in flight).
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
        if nix::unistd::getppid() != self.pid {
            std::process::exit(0);
        }
        crate::hooks::post_fork(&self.settings, self.target, slot_index);
        let slot = self.scoreboard.slot(slot_index);
        slot.pid.store(
            std::process::id() as i32,
            std::sync::atomic::Ordering::Relaxed,
        );
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
            multiprocess: self.target > 1,
            argv: &self.argv,
        })
    }

    fn reap_children(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("waitpid failed: {e}");
                    return;
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
            let Some(w) = self.workers.remove(&pid) else {
                // Not a worker: an orphan we adopted as PID 1 or subreaper.
                tracing::debug!("reaped child {pid}: {status:?}");
                continue;
            };
            // Its count stays in the slot until the slot's next worker is
            // forked: keep it in the total before the slot is reused.
            let served = self
                .scoreboard
                .slot(w.slot)
                .requests
                .load(std::sync::atomic::Ordering::Relaxed);
            self.totals.retired_requests = self.totals.retired_requests.saturating_add(served);
            self.free_slots.push(w.slot);
            self.scoreboard.slot(w.slot).set_state(SlotState::Free);
            let age = w.slot;
            self.on_worker_exit(pid, w, status);
            crate::hooks::child_exit(&self.settings, self.target, pid.as_raw(), age);
        }
    }

    fn on_worker_exit(&mut self, pid: Pid, w: WorkerRec, status: WaitStatus) {
        let expected =
            matches!(w.state, WState::Retiring { .. }) || self.state != RunState::Running;
        match status {
            WaitStatus::Exited(_, 0) if expected => {
                tracing::debug!("worker {pid} exited");
            }
            WaitStatus::Exited(_, code) => {
                if w.state == WState::Booting
                    && (code == EXIT_WORKER_BOOT_ERROR || code == EXIT_APP_LOAD_ERROR)
                {
                    let reason = if code == EXIT_APP_LOAD_ERROR {
                        "App failed to load."
                    } else {
                        "Worker failed to boot."
                    };
                    tracing::error!("Worker (pid:{pid}) exited with code {code}.");
                    let error = self
                        .scoreboard
                        .take_error(w.slot)
                        .unwrap_or_else(|| reason.to_string());
                    self.sd.boot_error(&error);
                    if self.reload.is_some_and(|r| r.generation == w.generation) {
                        self.reload_failed(error);
                        return;
                    }
                    if !self.ever_ready {
                        // Nothing has ever served: a broken app must not
                        // fork-loop. Stop with Gunicorn's exit code.
                        tracing::error!("Reason: {reason}");
                        self.exit_code = code;
                        self.stop(true);
                        return;
                    }
                    self.boot_failed();
                } else if !expected {
                    tracing::error!("Worker (pid:{pid}) exited with code {code}.");
                    self.restarts += 1;
                    self.slot_restarts[w.slot] += 1;
                    if w.state == WState::Booting {
                        self.boot_failed();
                    }
                }
            }
            WaitStatus::Signaled(_, sig, _) => {
                if expected {
                    tracing::info!("Worker (pid:{pid}) exited on {sig}");
                } else if sig == Signal::SIGKILL {
                    tracing::error!("Worker (pid:{pid}) was sent SIGKILL! Perhaps out of memory?");
                } else {
                    tracing::error!("Worker (pid:{pid}) was sent {sig}!");
                }
                if !expected {
                    self.restarts += 1;
                    self.slot_restarts[w.slot] += 1;
                    if w.state == WState::Booting {
                        self.boot_failed();
                    }
                }
            }
            other => tracing::info!("Worker (pid:{pid}) ended: {other:?}"),
        }
    }

    /// A worker died before becoming ready: back off before the next spawn
    /// (0.1 s doubling to 10 s), so a broken deploy never becomes a fork storm.
    fn boot_failed(&mut self) {
        self.boot_failures = self.boot_failures.saturating_add(1);
        let ms = 100u64
            .saturating_mul(1 << self.boot_failures.min(7))
            .min(10_000);
        self.next_spawn_at = Instant::now() + Duration::from_millis(ms);
    }

    /// `--timeout`: a worker whose request runs too long is aborted (SIGABRT),
    /// then killed; a worker whose event loop stopped turning is killed.
    fn murder_workers(&mut self) {
        let now = Instant::now();
        let mut to_kill = Vec::new();
        for (pid, w) in &self.workers {
            if w.killed {
                continue;
            }
            let timed_out = w.timed_out_kill_at.is_some_and(|at| now >= at);
            let overdue = matches!(w.state, WState::Retiring { kill_at } if now >= kill_at);
            if timed_out || overdue {
                to_kill.push(*pid);
            }
        }
        for pid in to_kill {
            let _ = kill(pid, Signal::SIGKILL);
            if let Some(w) = self.workers.get_mut(&pid) {
                w.killed = true;
            }
        }
        if self.settings.timeout == 0 {
            return;
        }
        let limit_ms = self.settings.timeout.saturating_mul(1000);
        let now_ms = now_ms();
        let mut expired = Vec::new();
        for (pid, w) in &self.workers {
            if w.timed_out_kill_at.is_some() || w.state != WState::Ready {
                continue;
            }
            let slot = self.scoreboard.slot(w.slot);
            let since = slot
                .busy_since_ms
                .load(std::sync::atomic::Ordering::Relaxed);
            if since != 0 && now_ms.saturating_sub(since) > limit_ms {
                expired.push(*pid);
            }
        }
        for pid in expired {
            crate::critical!("WORKER TIMEOUT (pid:{pid})");
            self.totals.timeouts += 1;
            let _ = kill(pid, Signal::SIGABRT);
            if let Some(w) = self.workers.get_mut(&pid) {
                w.timed_out_kill_at = Some(now + Duration::from_secs(2));
            }
        }
    }

    /// Stop (SIGTERM: graceful, SIGINT/SIGQUIT: quick; `stop [--quick]`).
    fn stop(&mut self, quick: bool) {
        if let RunState::Stopping { quick: q, .. } = self.state {
            if q || !quick {
                return;
            }
        }
        let (sig, grace) = if quick {
            (Signal::SIGQUIT, Duration::from_secs(1))
        } else {
            (
                Signal::SIGTERM,
                Duration::from_secs(self.settings.graceful_timeout),
            )
        };
        tracing::info!(
            "Handling signal: {}",
            if quick { "int/quit" } else { "term" }
        );
        self.state = RunState::Stopping {
            deadline: Instant::now() + grace,
            quick,
        };
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
        self.kill_all(sig);
    }

    fn kill_all(&mut self, sig: Signal) {
        for pid in self.workers.keys() {
            let _ = kill(*pid, sig);
        }
    }

    /// Reload (SIGHUP, `reload`): read the settings again and start a new
    /// generation of workers, which import the app afresh; each old worker
    /// retires once a new one is ready. Listeners stay open throughout.
    pub fn reload(&mut self) {
        if self.state != RunState::Running {
            return;
        }
        tracing::info!("Handling signal: hup");
        self.sd.reloading();
        let args: Vec<std::ffi::OsString> = self.argv.iter().skip(1).map(Into::into).collect();
        match crate::python::config::load_settings(args, &self.argv) {
            Ok(new) => {
                if new.bind != self.settings.bind {
                    tracing::warn!("Reload: a changed bind takes effect only on restart");
                }
                if !self.scaled {
                    self.target = new.workers.clamp(1, MAX_SLOTS);
                }
                self.settings = new;
                crate::hooks::on_reload(&self.settings, self.target);
            }
            Err(e) => {
                let error = match e {
                    crate::python::config::LoadError::Config(e) => e.to_string(),
                    crate::python::config::LoadError::File(e) => format!("{e:#}"),
                };
                tracing::error!("Reload failed: cannot read the configuration: {error}");
                self.sd.reload_failed(&error);
                self.last_generation += 1;
                self.totals.reloads_failed += 1;
                self.last_reload = Some(ReloadOutcome::Failed {
                    generation: self.last_generation,
                    error,
                });
                return;
            }
        }
        let previous = match self.reload {
            // A reload during a reload: the newest code wins; the half-booted
            // generation is simply superseded.
            Some(r) => r.previous,
            None => self.generation,
        };
        self.last_generation += 1;
        self.generation = self.last_generation;
        self.reload = Some(Reload {
            generation: self.generation,
            previous,
            started: Instant::now(),
        });
        tracing::info!("Reloading: starting generation {}", self.generation);
    }

    /// The reload ends once the new generation has `target` ready workers.
    fn check_reload_done(&mut self) {
        let Some(r) = self.reload else { return };
        if self.ready_count() >= self.target {
            let took = r.started.elapsed();
            tracing::info!(
                "Reload complete: generation {} ready in {:.2} s",
                r.generation,
                took.as_secs_f64()
            );
            self.reload = None;
            self.totals.reloads_succeeded += 1;
            self.last_reload = Some(ReloadOutcome::Succeeded {
                generation: r.generation,
                took,
            });
        }
    }

    /// A worker of the new generation could not boot: keep the previous
    /// generation serving. New workers that did boot stay, as part of it.
    fn reload_failed(&mut self, error: String) {
        let Some(r) = self.reload.take() else { return };
        tracing::error!(
            "Reload failed: generation {} could not boot; generation {} keeps serving\n{}",
            r.generation,
            r.previous,
            error.trim_end()
        );
        for (pid, w) in self.workers.iter_mut() {
            if w.generation == r.generation {
                if w.state == WState::Booting {
                    let _ = kill(*pid, Signal::SIGKILL);
                    w.state = WState::Retiring {
                        kill_at: Instant::now(),
                    };
                }
                w.generation = r.previous;
            }
        }
        self.generation = r.previous;
        self.sd.reload_failed(&error);
        self.totals.reloads_failed += 1;
        self.last_reload = Some(ReloadOutcome::Failed {
            generation: r.generation,
            error,
        });
    }

    /// Scale (SIGTTIN/SIGTTOU, `scale`): the new count survives reloads.
    pub fn scale(&mut self, n: usize) {
        let n = n.clamp(1, MAX_SLOTS);
        self.scaled = true;
        if n != self.target {
            tracing::info!("Scaling workers: {} -> {n}", self.target);
            let old = std::mem::replace(&mut self.target, n);
            crate::hooks::nworkers_changed(&self.settings, n, old);
        }
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
        // SAFETY: single-threaded master; the child only does
        // async-signal-safe work (fcntl, sigprocmask, execve) before exec.
        match unsafe { crate::python::fork() } {
            Ok(ForkResult::Child) => {
                for fd in &listener_fds {
                    // SAFETY: fcntl on our own open listener descriptors.
                    unsafe {
                        libc::fcntl(*fd, libc::F_SETFD, 0);
                    }
                }
                let _ = SigSet::empty().thread_set_mask();
                crate::hooks::pre_exec(&self.settings, self.target);
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
