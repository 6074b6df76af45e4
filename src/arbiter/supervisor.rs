//! Worker supervision as a state machine, apart from the processes it
//! supervises: it owns each worker's state, the worker count, generations
//! and reloads, boot-failure backoff, `--timeout` and the stop deadlines.
//!
//! It never forks, signals or reads a clock. The master's loop
//! (`arbiter/mod.rs`) turns what it read (signals, pipe messages, reaped
//! children, the scoreboard) into [`Event`]s, calls [`Supervisor::tick`]
//! with the time, and performs the [`Action`]s it gets back; after each
//! [`Action::Spawn`] it reports the fork with [`Supervisor::spawned`] or
//! [`Supervisor::spawn_failed`]. So every rule here is unit-tested below
//! without a process (the shape of Horust's `handle_event -> Vec<Event>`).
//!
//! Time is monotonic milliseconds ([`Ms`], the scoreboard's clock), so the
//! heartbeats workers write compare directly with `now`.
//!
//! `--timeout` covers three cases, one clock each:
//! - a request running longer (the scoreboard's `busy_since_ms`): SIGABRT,
//!   which makes the worker log its stack, then SIGKILL after [`ABORT_GRACE`];
//! - an event loop that stopped turning while no request runs (the
//!   heartbeat the worker's loop writes every 500 ms has not moved): the
//!   same. A request blocks a sync worker's loop on purpose, so the
//!   heartbeat is only judged from the last moment the worker was seen idle;
//! - a worker still booting (importing the app) that long after its fork:
//!   SIGKILL (no stack handler is installed yet), then a respawn with the
//!   boot-failure backoff, as for any worker that died before it was ready.

use crate::scoreboard::MAX_SLOTS;
use crate::worker::msg::{self, Msg};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::time::Duration;

/// Monotonic milliseconds ([`crate::scoreboard::now_ms`]).
pub type Ms = u64;

/// How long an aborted (timed-out) worker has to log its stack and exit
/// before it is killed.
pub const ABORT_GRACE: Ms = 2_000;
/// How long a quick stop (INT, QUIT) waits before killing.
pub const QUICK_STOP_GRACE: Ms = 1_000;
/// Longest and first pause before spawning again after a boot failure.
const BACKOFF_MAX: Ms = 10_000;
const BACKOFF_FIRST: Ms = 100;

/// The settings supervision depends on (taken again at each reload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--timeout` in ms; 0 = never.
    pub timeout: Ms,
    /// `--graceful-timeout` in ms.
    pub graceful: Ms,
}

impl Limits {
    pub fn from_settings(s: &crate::config::Settings) -> Limits {
        Limits {
            timeout: s.timeout.saturating_mul(1000),
            graceful: s.graceful_timeout.saturating_mul(1000),
        }
    }
}

/// Why the supervisor sent a worker SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// Retiring, and still alive at the end of `--graceful-timeout`.
    Overdue,
    /// Aborted for `--timeout`, and still alive after [`ABORT_GRACE`].
    Timeout,
    /// Still booting after `--timeout`.
    BootTimeout,
    /// Booting in a generation whose reload failed.
    Superseded,
    /// Still alive at the end of a stop.
    Stop,
}

/// One worker's life, as the master sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Forked; importing the app.
    Booting { since: Ms },
    /// Serving.
    Ready,
    /// Serving, but it asked (`--max-requests`) to be replaced: it is told
    /// to stop once its replacement is ready.
    Recycling,
    /// Told to stop (SIGTERM); killed at `until`.
    Retiring { until: Ms },
    /// Timed out and told to abort (SIGABRT); killed at `until`.
    Aborting { until: Ms },
    /// SIGKILL sent: only its reaping is awaited.
    Killed(Kill),
}

/// One worker.
#[derive(Debug, Clone)]
pub struct Worker {
    pub slot: usize,
    pub generation: u64,
    pub state: WorkerState,
    /// When it was forked.
    pub born: Ms,
    /// Its last sign of life: the fork, ready, a heartbeat, or being seen
    /// busy with a request.
    last_seen: Ms,
    /// When its oldest running request began, as last seen; 0 = idle.
    busy_since: Ms,
}

/// How a worker process ended (from `waitpid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

/// What the loop read, for [`Supervisor::tick`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A worker wrote to the master's pipe.
    Message { slot: usize, msg: Msg },
    /// `--reload`: the worker in `slot` saw the app's files change, first
    /// at `at` (monotonic ms, from its scoreboard slot).
    CodeChanged { slot: usize, at: Ms },
    /// A worker was reaped; `error` is the boot-error text it left.
    Exited {
        pid: Pid,
        exit: Exit,
        error: Option<String>,
    },
    /// A worker's scoreboard figures, read this turn.
    Seen {
        pid: Pid,
        heartbeat_ms: Ms,
        busy_since_ms: Ms,
    },
    /// Reload with the configuration read again (SIGHUP, `reload`).
    Reload { workers: usize, limits: Limits },
    /// Reload asked, but the configuration could not be read.
    ReloadUnreadable { error: String },
    /// One worker more or fewer, or a count (TTIN, TTOU, `scale`).
    Scale(usize),
    /// TERM (graceful) or INT/QUIT (quick).
    Stop { quick: bool },
    /// Stop this worker gracefully (`kill-worker`).
    Retire(Pid),
}

/// What the loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Fork one worker of the current generation, then call
    /// [`Supervisor::spawned`] or [`Supervisor::spawn_failed`].
    Spawn,
    /// Send a signal to a worker.
    Signal(Pid, Signal),
    /// The server begins to stop: close the listeners, tell systemd.
    Stopping { quick: bool },
    /// A worker could not boot (tell systemd why).
    BootError(String),
    /// A reload failed (tell systemd why).
    ReloadFailed(String),
    /// `--reload`: a worker saw the app's code change. Reload as SIGHUP
    /// does (the settings are read again, then [`Event::Reload`]).
    Reload,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reload {
    pub generation: u64,
    pub previous: u64,
    pub started: Ms,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Running,
    Stopping { deadline: Ms, quick: bool },
}

/// Running totals for `metrics`; they only go up.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Workers replaced because they died unexpectedly.
    pub restarts: u64,
    /// Workers timed out (`--timeout`).
    pub timeouts: u64,
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
}

/// The supervisor: see the module doc.
#[derive(Debug)]
pub struct Supervisor {
    limits: Limits,
    workers: BTreeMap<Pid, Worker>,
    target: usize,
    /// The count was changed at run time (TTIN/TTOU, `scale`): a reload
    /// keeps it instead of taking `workers` from the config again.
    scaled: bool,
    generation: u64,
    /// The highest generation number handed out (numbers are never reused).
    last_generation: u64,
    reload: Option<Reload>,
    last_reload: Option<ReloadOutcome>,
    /// `--reload`: when the last reload for a code change was asked. Every
    /// change seen before then is in the code that reload imports (each
    /// worker reports the same save; one reload is enough).
    code_reload_asked: Ms,
    run: Run,
    /// Some worker has reported ready since start.
    ever_ready: bool,
    exit_code: i32,
    /// Consecutive workers that died before becoming ready.
    boot_failures: u32,
    next_spawn_at: Ms,
    /// Per scoreboard slot: workers in that position that died unexpectedly.
    slot_restarts: Vec<u64>,
    counters: Counters,
}

impl Supervisor {
    pub fn new(workers: usize, limits: Limits) -> Supervisor {
        Supervisor {
            limits,
            workers: BTreeMap::new(),
            target: workers.clamp(1, MAX_SLOTS),
            scaled: false,
            generation: 1,
            last_generation: 1,
            reload: None,
            last_reload: None,
            code_reload_asked: 0,
            run: Run::Running,
            ever_ready: false,
            exit_code: 0,
            boot_failures: 0,
            next_spawn_at: 0,
            slot_restarts: Vec::new(),
            counters: Counters::default(),
        }
    }

    // ---- what the loop and the control socket read ----

    pub fn workers(&self) -> impl Iterator<Item = (Pid, &Worker)> {
        self.workers.iter().map(|(p, w)| (*p, w))
    }
    pub fn worker(&self, pid: Pid) -> Option<&Worker> {
        self.workers.get(&pid)
    }
    pub fn target(&self) -> usize {
        self.target
    }
    pub fn generation(&self) -> u64 {
        self.generation
    }
    pub fn last_generation(&self) -> u64 {
        self.last_generation
    }
    pub fn reload_in_progress(&self) -> Option<Reload> {
        self.reload
    }
    pub fn last_reload(&self) -> Option<&ReloadOutcome> {
        self.last_reload.as_ref()
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    pub fn slot_restarts(&self, slot: usize) -> u64 {
        self.slot_restarts.get(slot).copied().unwrap_or(0)
    }
    /// Some worker has reported ready since the master started.
    pub fn ever_ready(&self) -> bool {
        self.ever_ready
    }
    pub fn is_running(&self) -> bool {
        self.run == Run::Running
    }
    /// Stopping, and every worker is gone: the master may exit.
    pub fn finished(&self) -> bool {
        !self.is_running() && self.workers.is_empty()
    }
    /// The master's exit code (Gunicorn's, when no worker could ever boot).
    pub fn exit_code(&self) -> i32 {
        self.exit_code
    }

    /// Workers of the current generation that are ready and not recycling.
    pub fn ready_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.generation == self.generation && w.state == WorkerState::Ready)
            .count()
    }

    /// Workers of any generation that serve (ready, possibly recycling).
    pub fn serving_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Ready | WorkerState::Recycling))
            .count()
    }

    pub fn booting_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Booting { .. }))
            .count()
    }

    /// Workers of the current generation that count towards the target:
    /// not told to go, and not replaced yet (a timed-out worker is
    /// replaced once it is reaped).
    pub fn live_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.generation == self.generation)
            .filter(|w| {
                matches!(
                    w.state,
                    WorkerState::Booting { .. }
                        | WorkerState::Ready
                        | WorkerState::Aborting { .. }
                        | WorkerState::Killed(Kill::Timeout | Kill::BootTimeout)
                )
            })
            .count()
    }

    pub fn pid_of_slot(&self, slot: usize) -> Option<Pid> {
        self.workers
            .iter()
            .find(|(_, w)| w.slot == slot)
            .map(|(p, _)| *p)
    }

    /// The next instant a timer here fires, if any (the loop's poll timeout).
    pub fn next_deadline(&self, now: Ms) -> Option<Ms> {
        let mut at: Option<Ms> = None;
        let mut at_least = |t: Ms| at = Some(at.map_or(t, |a| a.min(t)));
        if let Run::Stopping { deadline, .. } = self.run {
            // Once all are killed, only their reaping (SIGCHLD) is awaited.
            if self
                .workers
                .values()
                .any(|w| !matches!(w.state, WorkerState::Killed(_)))
            {
                at_least(deadline);
            }
        } else if self.next_spawn_at > now && self.live_count() < self.target {
            at_least(self.next_spawn_at);
        }
        for w in self.workers.values() {
            if let WorkerState::Retiring { until } | WorkerState::Aborting { until } = w.state {
                at_least(until);
            }
        }
        at
    }

    // ---- the loop's side ----

    /// A worker was forked into `slot` for the current generation.
    pub fn spawned(&mut self, now: Ms, pid: Pid, slot: usize) {
        self.workers.insert(
            pid,
            Worker {
                slot,
                generation: self.generation,
                state: WorkerState::Booting { since: now },
                born: now,
                last_seen: now,
                busy_since: 0,
            },
        );
    }

    /// The fork failed: try again in a second.
    pub fn spawn_failed(&mut self, now: Ms) {
        self.next_spawn_at = now + 1_000;
    }

    /// Apply what happened, run the timers, and say what to do.
    pub fn tick(&mut self, now: Ms, events: impl IntoIterator<Item = Event>) -> Vec<Action> {
        let mut out = Vec::new();
        for ev in events {
            self.on_event(now, ev, &mut out);
        }
        self.run_timers(now, &mut out);
        self.manage(now, &mut out);
        out
    }

    fn on_event(&mut self, now: Ms, ev: Event, out: &mut Vec<Action>) {
        match ev {
            Event::Message { slot, msg } => {
                let Some(pid) = self.pid_of_slot(slot) else {
                    return;
                };
                match msg {
                    Msg::Ready => self.on_ready(now, pid, out),
                    Msg::Retire => {
                        if let Some(w) = self.workers.get_mut(&pid) {
                            if w.state == WorkerState::Ready {
                                w.state = WorkerState::Recycling;
                            }
                        }
                    }
                    // Read with its time: Event::CodeChanged.
                    Msg::CodeChanged => {}
                }
            }
            Event::CodeChanged { slot, at } => {
                if let Some(pid) = self.pid_of_slot(slot) {
                    self.on_code_changed(now, pid, at, out);
                }
            }
            Event::Exited { pid, exit, error } => self.on_exit(now, pid, exit, error, out),
            Event::Seen {
                pid,
                heartbeat_ms,
                busy_since_ms,
            } => {
                if let Some(w) = self.workers.get_mut(&pid) {
                    w.last_seen = w.last_seen.max(heartbeat_ms);
                    w.busy_since = busy_since_ms;
                    if busy_since_ms != 0 {
                        // A request may block the loop (sync): the request's
                        // own clock judges it, not the heartbeat.
                        w.last_seen = w.last_seen.max(now);
                    }
                }
            }
            Event::Reload { workers, limits } => {
                if !self.is_running() {
                    return;
                }
                if !self.scaled {
                    self.target = workers.clamp(1, MAX_SLOTS);
                }
                self.limits = limits;
                let previous = match self.reload {
                    // A reload during a reload: the newest code wins; the
                    // half-booted generation is simply superseded.
                    Some(r) => r.previous,
                    None => self.generation,
                };
                self.last_generation += 1;
                self.generation = self.last_generation;
                self.reload = Some(Reload {
                    generation: self.generation,
                    previous,
                    started: now,
                });
                tracing::info!("Reloading: starting generation {}", self.generation);
            }
            Event::ReloadUnreadable { error } => {
                if !self.is_running() {
                    return;
                }
                tracing::error!("Reload failed: cannot read the configuration: {error}");
                out.push(Action::ReloadFailed(error.clone()));
                self.last_generation += 1;
                self.counters.reloads_failed += 1;
                self.last_reload = Some(ReloadOutcome::Failed {
                    generation: self.last_generation,
                    error,
                });
            }
            Event::Scale(n) => {
                let n = n.clamp(1, MAX_SLOTS);
                self.scaled = true;
                if n != self.target {
                    tracing::info!("Scaling workers: {} -> {n}", self.target);
                    self.target = n;
                }
            }
            Event::Stop { quick } => self.stop(now, quick, out),
            Event::Retire(pid) => {
                let serving = self.workers.get(&pid).is_some_and(|w| {
                    matches!(
                        w.state,
                        WorkerState::Booting { .. } | WorkerState::Ready | WorkerState::Recycling
                    )
                });
                if serving {
                    self.retire(now, pid, out);
                }
            }
        }
    }

    fn on_ready(&mut self, now: Ms, pid: Pid, out: &mut Vec<Action>) {
        let mut replacement = false;
        if let Some(w) = self.workers.get_mut(&pid) {
            if matches!(w.state, WorkerState::Booting { .. }) {
                w.state = WorkerState::Ready;
            }
            w.last_seen = w.last_seen.max(now);
            replacement = w.generation == self.generation;
        }
        self.ever_ready = true;
        self.boot_failures = 0;
        // Only a worker of the current generation replaces one: an
        // old-generation worker that reports ready just after a HUP must
        // not make another old worker retire with nothing new to take over.
        if replacement && self.is_running() {
            self.retire_replaced(now, out);
        }
        self.check_reload_done(now);
    }

    fn on_exit(
        &mut self,
        now: Ms,
        pid: Pid,
        exit: Exit,
        error: Option<String>,
        out: &mut Vec<Action>,
    ) {
        let Some(w) = self.workers.remove(&pid) else {
            return;
        };
        let expected = !self.is_running()
            || matches!(
                w.state,
                WorkerState::Retiring { .. }
                    | WorkerState::Killed(Kill::Overdue | Kill::Superseded | Kill::Stop)
            );
        let booting = matches!(
            w.state,
            WorkerState::Booting { .. } | WorkerState::Killed(Kill::BootTimeout)
        );
        let unexpected = |s: &mut Supervisor| {
            s.counters.restarts += 1;
            if s.slot_restarts.len() <= w.slot {
                s.slot_restarts.resize(w.slot + 1, 0);
            }
            s.slot_restarts[w.slot] += 1;
            if booting {
                s.boot_failed(now);
            }
        };
        match exit {
            Exit::Code(0) if expected => tracing::debug!("worker {pid} exited"),
            Exit::Code(code)
                if booting && (code == msg::WORKER_BOOT_ERROR || code == msg::APP_LOAD_ERROR) =>
            {
                let reason = if code == msg::APP_LOAD_ERROR {
                    "App failed to load."
                } else {
                    "Worker failed to boot."
                };
                tracing::error!("Worker (pid:{pid}) exited with code {code}.");
                let error = error.unwrap_or_else(|| reason.to_string());
                out.push(Action::BootError(error.clone()));
                if self.reload.is_some_and(|r| r.generation == w.generation) {
                    self.reload_failed(error, out);
                    return;
                }
                if !self.ever_ready {
                    // Nothing has ever served: a broken app must not
                    // fork-loop. Stop with Gunicorn's exit code.
                    tracing::error!("Reason: {reason}");
                    self.exit_code = code;
                    self.stop(now, true, out);
                    return;
                }
                self.boot_failed(now);
            }
            Exit::Code(code) => {
                if !expected {
                    tracing::error!("Worker (pid:{pid}) exited with code {code}.");
                    unexpected(self);
                }
            }
            Exit::Signal(sig) => {
                if expected {
                    tracing::info!("Worker (pid:{pid}) exited on {sig}");
                } else {
                    match (sig, w.state) {
                        (
                            Signal::SIGKILL,
                            WorkerState::Killed(Kill::Timeout | Kill::BootTimeout),
                        ) => {
                            tracing::error!("Worker (pid:{pid}) was killed after WORKER TIMEOUT")
                        }
                        (Signal::SIGKILL, _) => tracing::error!(
                            "Worker (pid:{pid}) was sent SIGKILL! Perhaps out of memory?"
                        ),
                        _ => tracing::error!("Worker (pid:{pid}) was sent {sig}!"),
                    }
                    unexpected(self);
                }
            }
        }
    }

    /// A worker died before becoming ready: back off before the next spawn
    /// (0.2 s doubling to 10 s), so a broken deploy never becomes a fork storm.
    fn boot_failed(&mut self, now: Ms) {
        self.boot_failures = self.boot_failures.saturating_add(1);
        let ms = BACKOFF_FIRST
            .saturating_mul(1 << self.boot_failures.min(7))
            .min(BACKOFF_MAX);
        self.next_spawn_at = now + ms;
    }

    /// The kill deadlines, and `--timeout` (see the module doc).
    fn run_timers(&mut self, now: Ms, out: &mut Vec<Action>) {
        if let Run::Stopping { deadline, .. } = self.run {
            if now >= deadline {
                for (pid, w) in self.workers.iter_mut() {
                    if !matches!(w.state, WorkerState::Killed(_)) {
                        out.push(Action::Signal(*pid, Signal::SIGKILL));
                        w.state = WorkerState::Killed(Kill::Stop);
                    }
                }
            }
        }
        let limit = self.limits.timeout;
        for (pid, w) in self.workers.iter_mut() {
            let pid = *pid;
            match w.state {
                WorkerState::Retiring { until } if now >= until => {
                    out.push(Action::Signal(pid, Signal::SIGKILL));
                    w.state = WorkerState::Killed(Kill::Overdue);
                }
                WorkerState::Aborting { until } if now >= until => {
                    out.push(Action::Signal(pid, Signal::SIGKILL));
                    w.state = WorkerState::Killed(Kill::Timeout);
                }
                WorkerState::Booting { .. } if limit > 0 && now - w.last_seen.min(now) > limit => {
                    crate::critical!(
                        "WORKER TIMEOUT (pid:{pid}): still booting after {} s",
                        limit / 1000
                    );
                    self.counters.timeouts += 1;
                    out.push(Action::Signal(pid, Signal::SIGKILL));
                    w.state = WorkerState::Killed(Kill::BootTimeout);
                }
                WorkerState::Ready | WorkerState::Recycling if limit > 0 => {
                    let request = w.busy_since != 0 && now.saturating_sub(w.busy_since) > limit;
                    let stuck = w.busy_since == 0 && now.saturating_sub(w.last_seen) > limit;
                    if request {
                        crate::critical!("WORKER TIMEOUT (pid:{pid})");
                    } else if stuck {
                        crate::critical!(
                            "WORKER TIMEOUT (pid:{pid}): its event loop has not turned for {} s",
                            now.saturating_sub(w.last_seen) / 1000
                        );
                    } else {
                        continue;
                    }
                    self.counters.timeouts += 1;
                    out.push(Action::Signal(pid, Signal::SIGABRT));
                    w.state = WorkerState::Aborting {
                        until: now + ABORT_GRACE,
                    };
                }
                _ => {}
            }
        }
    }

    /// Spawn up to the target, retire what is too many or replaced.
    fn manage(&mut self, now: Ms, out: &mut Vec<Action>) {
        if !self.is_running() {
            return;
        }
        // Too many: retire the oldest of the current generation.
        while self.live_count() > self.target {
            let victim = self
                .workers
                .iter()
                .filter(|(_, w)| w.generation == self.generation)
                .find(|(_, w)| matches!(w.state, WorkerState::Booting { .. } | WorkerState::Ready))
                .map(|(p, _)| *p);
            let Some(pid) = victim else { break };
            self.retire(now, pid, out);
        }
        if self.ready_count() >= self.target {
            self.retire_replaced(now, out);
        }
        // Too few: spawn, unless backing off after boot failures.
        if now >= self.next_spawn_at {
            let missing = self.target.saturating_sub(self.live_count());
            out.extend(std::iter::repeat_n(Action::Spawn, missing));
        }
    }

    /// One ready replacement retires one old worker (old generation, or one
    /// recycling); once the current generation is complete, all remaining
    /// old workers go.
    fn retire_replaced(&mut self, now: Ms, out: &mut Vec<Action>) {
        let retirable: Vec<Pid> = self
            .workers
            .iter()
            .filter(|(_, w)| match w.state {
                WorkerState::Recycling => true,
                WorkerState::Booting { .. } | WorkerState::Ready => w.generation != self.generation,
                _ => false,
            })
            .map(|(p, _)| *p)
            .collect();
        let n = if self.ready_count() >= self.target {
            retirable.len()
        } else {
            1
        };
        for pid in retirable.into_iter().take(n) {
            self.retire(now, pid, out);
        }
    }

    fn retire(&mut self, now: Ms, pid: Pid, out: &mut Vec<Action>) {
        if let Some(w) = self.workers.get_mut(&pid) {
            w.state = WorkerState::Retiring {
                until: now + self.limits.graceful,
            };
            out.push(Action::Signal(pid, Signal::SIGTERM));
        }
    }

    /// `--reload`: worker `pid` saw a source file change at `at`. A change
    /// seen before the last code reload was asked is in the code that
    /// reload imports: the same save reported by the other workers is
    /// dropped. A later one reloads again, even during a reload (the newest
    /// code wins) or after one that failed because the code did not import
    /// (the previous generation serves on and sees the fix).
    fn on_code_changed(&mut self, now: Ms, pid: Pid, at: Ms, out: &mut Vec<Action>) {
        let Some(w) = self.workers.get(&pid) else {
            return;
        };
        let serving = matches!(w.state, WorkerState::Ready | WorkerState::Recycling);
        if !self.is_running() || !serving || at <= self.code_reload_asked {
            return;
        }
        self.code_reload_asked = now;
        out.push(Action::Reload);
    }

    /// The reload ends once the new generation has `target` ready workers.
    fn check_reload_done(&mut self, now: Ms) {
        let Some(r) = self.reload else { return };
        if self.ready_count() >= self.target {
            let took = Duration::from_millis(now.saturating_sub(r.started));
            tracing::info!(
                "Reload complete: generation {} ready in {:.2} s",
                r.generation,
                took.as_secs_f64()
            );
            self.reload = None;
            self.counters.reloads_succeeded += 1;
            self.last_reload = Some(ReloadOutcome::Succeeded {
                generation: r.generation,
                took,
            });
        }
    }

    /// A worker of the new generation could not boot: keep the previous
    /// generation serving. New workers that did boot stay, as part of it.
    fn reload_failed(&mut self, error: String, out: &mut Vec<Action>) {
        let Some(r) = self.reload.take() else { return };
        tracing::error!(
            "Reload failed: generation {} could not boot; generation {} keeps serving\n{}",
            r.generation,
            r.previous,
            error.trim_end()
        );
        for (pid, w) in self.workers.iter_mut() {
            if w.generation == r.generation {
                if matches!(w.state, WorkerState::Booting { .. }) {
                    out.push(Action::Signal(*pid, Signal::SIGKILL));
                    w.state = WorkerState::Killed(Kill::Superseded);
                }
                w.generation = r.previous;
            }
        }
        self.generation = r.previous;
        out.push(Action::ReloadFailed(error.clone()));
        self.counters.reloads_failed += 1;
        self.last_reload = Some(ReloadOutcome::Failed {
            generation: r.generation,
            error,
        });
    }

    /// Stop: graceful (TERM, `--graceful-timeout`) or quick (QUIT, 1 s);
    /// a quick stop may overtake a graceful one, not the other way round.
    fn stop(&mut self, now: Ms, quick: bool, out: &mut Vec<Action>) {
        if let Run::Stopping { quick: q, .. } = self.run {
            if q || !quick {
                return;
            }
        }
        let (sig, grace) = if quick {
            (Signal::SIGQUIT, QUICK_STOP_GRACE)
        } else {
            (Signal::SIGTERM, self.limits.graceful)
        };
        self.run = Run::Stopping {
            deadline: now + grace,
            quick,
        };
        out.push(Action::Stopping { quick });
        for pid in self.workers.keys() {
            out.push(Action::Signal(*pid, sig));
        }
    }
}

#[cfg(test)]
mod tests;
