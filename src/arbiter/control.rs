//! The arbiter as seen from the control socket: it implements
//! [`crate::control::server::Master`] by calling the very methods the
//! signals call (SIGHUP → [`Arbiter::reload`], SIGTTIN/SIGTTOU →
//! [`Arbiter::scale`], SIGTERM/SIGINT → `stop`, SIGUSR1 → `reopen_logs`), and
//! drives the [`ControlServer`] from the master's poll loop.

use super::supervisor::{Worker, WorkerState};
use super::{Arbiter, ReloadOutcome};
use crate::control::protocol::{
    self as proto, ErrorBody, ErrorCode, HealthData, MasterState, MetricsData, ScaleData, ScaleTo,
    StatusData, StopData, WorkerInfo, WorkerKillData, WorkerMetrics,
};
use crate::control::server::{ControlServer, Master};
use crate::scoreboard::{now_ms, MAX_SLOTS};
use nix::poll::PollFlags;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Arbiter {
    /// Serve the control socket from this master's loop.
    pub fn set_control(&mut self, server: ControlServer) {
        tracing::info!("Control socket: {}", server.path().display());
        self.control = Some(server);
    }

    /// The control server's descriptors, for the loop's `poll`.
    pub(super) fn control_poll_fds(&self) -> Vec<(RawFd, PollFlags)> {
        self.control
            .as_ref()
            .map(|c| {
                c.poll_fds()
                    .into_iter()
                    .map(|(fd, f)| (fd.as_raw_fd(), f))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Hand the control server what `poll` found, run its timers, and tell
    /// it about a reload that ended since the last turn.
    pub(super) fn handle_control(&mut self, ready: &[(RawFd, PollFlags)]) {
        let Some(mut ctl) = self.control.take() else {
            return;
        };
        for (fd, revents) in ready {
            ctl.on_ready(*fd, *revents, self);
        }
        ctl.on_timer(self);
        if self.sup.last_reload() != self.notified_reload.as_ref() {
            if let Some(outcome) = self.sup.last_reload() {
                ctl.complete_reload(&to_proto(outcome));
            }
            self.notified_reload = self.sup.last_reload().cloned();
        }
        self.control = Some(ctl);
    }

    /// When the control server next needs a turn.
    pub(super) fn control_deadline(&self) -> Option<Instant> {
        self.control.as_ref().and_then(|c| c.next_deadline())
    }

    fn master_state(&self) -> MasterState {
        if !self.sup.is_running() {
            MasterState::Draining
        } else if self.sup.reload_in_progress().is_some() {
            MasterState::Reloading
        } else if self.sup.serving_count() == 0 {
            MasterState::Booting
        } else {
            MasterState::Running
        }
    }

    fn worker_info(&self, pid: nix::unistd::Pid, w: &Worker) -> WorkerInfo {
        let slot = self.scoreboard.slot(w.slot);
        let busy_since = slot.busy_since_ms.load(Ordering::Relaxed);
        // The sync worker marks only `busy_since`; gthread also counts.
        let active = slot
            .active
            .load(Ordering::Relaxed)
            .max(u32::from(busy_since != 0));
        let state = match w.state {
            WorkerState::Booting { .. } => proto::WorkerState::Booting,
            WorkerState::Retiring { .. } | WorkerState::Killed(_) => proto::WorkerState::Retiring,
            // Aborted for a request past --timeout (or a stuck loop): busy.
            WorkerState::Aborting { .. } => proto::WorkerState::Busy,
            WorkerState::Ready | WorkerState::Recycling if active > 0 || busy_since != 0 => {
                proto::WorkerState::Busy
            }
            WorkerState::Ready | WorkerState::Recycling => proto::WorkerState::Idle,
        };
        WorkerInfo {
            pid: pid.as_raw(),
            generation: w.generation,
            state,
            age_s: now_ms().saturating_sub(w.born) as f64 / 1000.0,
            requests: slot.requests.load(Ordering::Relaxed),
            active,
            current_request_s: (busy_since != 0)
                .then(|| now_ms().saturating_sub(busy_since) as f64 / 1000.0),
            rss_bytes: rss_of(pid.as_raw()),
            restarts: self.sup.slot_restarts(w.slot),
        }
    }
}

/// Resident set size from /proc/PID/statm (pages → bytes).
fn rss_of(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = text.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|p| u64::try_from(p).ok())
        .unwrap_or(4096);
    Some(pages.saturating_mul(page))
}

fn to_proto(o: &ReloadOutcome) -> proto::ReloadOutcome {
    match o {
        ReloadOutcome::Succeeded { generation, took } => proto::ReloadOutcome {
            generation: *generation,
            status: proto::ReloadStatus::Succeeded,
            duration_s: Some(took.as_secs_f64()),
            error: None,
        },
        ReloadOutcome::Failed { generation, error } => proto::ReloadOutcome {
            generation: *generation,
            status: proto::ReloadStatus::Failed,
            duration_s: None,
            error: Some(error.clone()),
        },
    }
}

fn stopping() -> ErrorBody {
    ErrorBody::new(
        ErrorCode::Stopping,
        "the server is stopping; it takes no such command any more".into(),
    )
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Master for Arbiter {
    fn status(&mut self) -> StatusData {
        let last_reload = match self.sup.reload_in_progress() {
            Some(r) => Some(proto::ReloadOutcome {
                generation: r.generation,
                status: proto::ReloadStatus::InProgress,
                duration_s: None,
                error: None,
            }),
            None => self.sup.last_reload().map(to_proto),
        };
        StatusData {
            master_pid: self.pid.as_raw(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.uptime().as_secs_f64(),
            state: self.master_state(),
            generation: self.sup.generation(),
            listeners: self.listeners.iter().map(|l| l.describe()).collect(),
            workers_target: clamp_u32(self.sup.target()),
            workers_actual: clamp_u32(self.sup.workers().count()),
            workers_ready: clamp_u32(self.sup.ready_count()),
            last_reload,
            workers: self
                .sup
                .workers()
                .map(|(pid, w)| self.worker_info(pid, w))
                .collect(),
        }
    }

    fn health(&mut self) -> HealthData {
        let state = self.master_state();
        let serving = self.sup.serving_count();
        let reason = match state {
            MasterState::Draining => Some("the server is stopping (draining)".to_string()),
            _ if serving == 0 => Some("no worker is ready yet (booting)".to_string()),
            _ => None,
        };
        HealthData {
            healthy: reason.is_none(),
            state,
            workers_ready: clamp_u32(serving),
            workers_target: clamp_u32(self.sup.target()),
            reason,
        }
    }

    fn metrics(&mut self) -> MetricsData {
        let workers: Vec<WorkerMetrics> = self
            .sup
            .workers()
            .map(|(pid, w)| {
                let i = self.worker_info(pid, w);
                WorkerMetrics {
                    pid: i.pid,
                    slot: clamp_u32(w.slot),
                    generation: i.generation,
                    state: i.state,
                    requests: i.requests,
                    active: i.active,
                    age_s: i.age_s,
                    rss_bytes: i.rss_bytes,
                }
            })
            .collect();
        let count =
            |s: proto::WorkerState| clamp_u32(workers.iter().filter(|w| w.state == s).count());
        let live: u64 = workers.iter().map(|w| w.requests).sum();
        MetricsData {
            master_pid: self.pid.as_raw(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.uptime().as_secs_f64(),
            state: self.master_state(),
            generation: self.sup.generation(),
            requests_total: self.totals.retired_requests.saturating_add(live),
            requests_active: workers.iter().map(|w| u64::from(w.active)).sum(),
            connections_queued: self.connections_queued(),
            workers_target: clamp_u32(self.sup.target()),
            workers_alive: clamp_u32(workers.len()),
            workers_ready: clamp_u32(self.sup.ready_count()),
            workers_busy: count(proto::WorkerState::Busy),
            workers_booting: count(proto::WorkerState::Booting),
            workers_retiring: count(proto::WorkerState::Retiring),
            worker_spawns_total: self.totals.spawns,
            worker_restarts_total: self.sup.counters().restarts,
            worker_timeouts_total: self.sup.counters().timeouts,
            reloads_succeeded_total: self.sup.counters().reloads_succeeded,
            reloads_failed_total: self.sup.counters().reloads_failed,
            workers,
        }
    }

    fn reload(&mut self) -> Result<proto::ReloadOutcome, ErrorBody> {
        if !self.sup.is_running() {
            return Err(stopping());
        }
        let before = self.sup.last_generation();
        Arbiter::reload(self);
        if let Some(r) = self.sup.reload_in_progress() {
            if r.generation > before {
                return Ok(proto::ReloadOutcome {
                    generation: r.generation,
                    status: proto::ReloadStatus::InProgress,
                    duration_s: None,
                    error: None,
                });
            }
        }
        match self.sup.last_reload() {
            Some(o @ ReloadOutcome::Failed { generation, .. }) if *generation > before => {
                // Failed before any worker was started (the config could
                // not be read): answered at once, and not again later.
                let answer = to_proto(o);
                self.notified_reload = Some(o.clone());
                Ok(answer)
            }
            _ => Err(ErrorBody::new(
                ErrorCode::Internal,
                "the reload did not start".into(),
            )),
        }
    }

    fn scale(&mut self, to: ScaleTo) -> Result<ScaleData, ErrorBody> {
        if !self.sup.is_running() {
            return Err(stopping());
        }
        let previous = self.sup.target();
        let n = match to {
            ScaleTo::Absolute(n) => usize::try_from(n).unwrap_or(MAX_SLOTS),
            ScaleTo::Relative(d) if d >= 0 => {
                previous.saturating_add(usize::try_from(d).unwrap_or(MAX_SLOTS))
            }
            ScaleTo::Relative(d) => {
                previous.saturating_sub(usize::try_from(d.unsigned_abs()).unwrap_or(MAX_SLOTS))
            }
        };
        Arbiter::scale(self, n);
        Ok(ScaleData {
            previous: clamp_u32(previous),
            target: clamp_u32(self.sup.target()),
        })
    }

    fn stop(&mut self, quick: bool) -> Result<StopData, ErrorBody> {
        Arbiter::stop(self, quick);
        Ok(StopData { quick })
    }

    fn reopen_logs(&mut self) -> Result<(), ErrorBody> {
        Arbiter::reopen_logs(self);
        Ok(())
    }

    fn kill_worker(&mut self, pid: i32) -> Result<WorkerKillData, ErrorBody> {
        let p = nix::unistd::Pid::from_raw(pid);
        match self.sup.worker(p).map(|w| w.state) {
            None => Err(ErrorBody::new(
                ErrorCode::NoSuchWorker,
                format!("no worker of this server has pid {pid}"),
            )),
            // Already on its way out.
            Some(
                WorkerState::Retiring { .. }
                | WorkerState::Aborting { .. }
                | WorkerState::Killed(_),
            ) => Ok(WorkerKillData { pid }),
            Some(_) => {
                tracing::info!("Control: stopping worker (pid:{pid})");
                self.retire(p);
                Ok(WorkerKillData { pid })
            }
        }
    }
}
