//! The arbiter as seen from the control socket: it implements
//! [`crate::control::server::Master`] by calling the very methods the
//! signals call (SIGHUP → [`Arbiter::reload`], SIGTTIN/SIGTTOU →
//! [`Arbiter::scale`], SIGTERM/SIGINT → `stop`, SIGUSR1 → `reopen_logs`), and
//! drives the [`ControlServer`] from the master's poll loop.

use super::{Arbiter, RunState, WState};
use crate::control::protocol::{
    self as proto, ErrorBody, ErrorCode, HealthData, MasterState, MetricsData, ScaleData, ScaleTo,
    StatusData, StopData, WorkerInfo, WorkerKillData, WorkerMetrics, WorkerState,
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
        if self.last_reload != self.notified_reload {
            if let Some(outcome) = &self.last_reload {
                ctl.complete_reload(&to_proto(outcome));
            }
            self.notified_reload = self.last_reload.clone();
        }
        self.control = Some(ctl);
    }

    /// When the control server next needs a turn.
    pub(super) fn control_deadline(&self) -> Option<Instant> {
        self.control.as_ref().and_then(|c| c.next_deadline())
    }

    fn master_state(&self) -> MasterState {
        if matches!(self.state, RunState::Stopping { .. }) {
            MasterState::Draining
        } else if self.reload.is_some() {
            MasterState::Reloading
        } else if self.serving_count() == 0 {
            MasterState::Booting
        } else {
            MasterState::Running
        }
    }

    /// Ready workers of any generation that are not retiring.
    fn serving_count(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.state == WState::Ready)
            .count()
    }

    fn worker_info(&self, pid: nix::unistd::Pid, w: &super::WorkerRec) -> WorkerInfo {
        let slot = self.scoreboard.slot(w.slot);
        let busy_since = slot.busy_since_ms.load(Ordering::Relaxed);
        // The sync worker marks only `busy_since`; gthread also counts.
        let active = slot
            .active
            .load(Ordering::Relaxed)
            .max(u32::from(busy_since != 0));
        let state = match w.state {
            WState::Booting => WorkerState::Booting,
            WState::Retiring { .. } => WorkerState::Retiring,
            WState::Ready if active > 0 || busy_since != 0 => WorkerState::Busy,
            WState::Ready => WorkerState::Idle,
        };
        WorkerInfo {
            pid: pid.as_raw(),
            generation: w.generation,
            state,
            age_s: w.born.elapsed().as_secs_f64(),
            requests: slot.requests.load(Ordering::Relaxed),
            active,
            current_request_s: (busy_since != 0)
                .then(|| now_ms().saturating_sub(busy_since) as f64 / 1000.0),
            rss_bytes: rss_of(pid.as_raw()),
            restarts: self.slot_restarts.get(w.slot).copied().unwrap_or(0),
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

fn to_proto(o: &super::ReloadOutcome) -> proto::ReloadOutcome {
    match o {
        super::ReloadOutcome::Succeeded { generation, took } => proto::ReloadOutcome {
            generation: *generation,
            status: proto::ReloadStatus::Succeeded,
            duration_s: Some(took.as_secs_f64()),
            error: None,
        },
        super::ReloadOutcome::Failed { generation, error } => proto::ReloadOutcome {
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
        let last_reload = match self.reload {
            Some(r) => Some(proto::ReloadOutcome {
                generation: r.generation,
                status: proto::ReloadStatus::InProgress,
                duration_s: None,
                error: None,
            }),
            None => self.last_reload.as_ref().map(to_proto),
        };
        StatusData {
            master_pid: self.pid.as_raw(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.uptime().as_secs_f64(),
            state: self.master_state(),
            generation: self.generation,
            listeners: self.listeners.iter().map(|l| l.describe()).collect(),
            workers_target: clamp_u32(self.target),
            workers_actual: clamp_u32(self.workers.len()),
            workers_ready: clamp_u32(self.ready_count()),
            last_reload,
            workers: self
                .workers
                .iter()
                .map(|(pid, w)| self.worker_info(*pid, w))
                .collect(),
        }
    }

    fn health(&mut self) -> HealthData {
        let state = self.master_state();
        let serving = self.serving_count();
        let reason = match state {
            MasterState::Draining => Some("the server is stopping (draining)".to_string()),
            _ if serving == 0 => Some("no worker is ready yet (booting)".to_string()),
            _ => None,
        };
        HealthData {
            healthy: reason.is_none(),
            state,
            workers_ready: clamp_u32(serving),
            workers_target: clamp_u32(self.target),
            reason,
        }
    }

    fn metrics(&mut self) -> MetricsData {
        let workers: Vec<WorkerMetrics> = self
            .workers
            .iter()
            .map(|(pid, w)| {
                let i = self.worker_info(*pid, w);
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
        let count = |s: WorkerState| clamp_u32(workers.iter().filter(|w| w.state == s).count());
        let live: u64 = workers.iter().map(|w| w.requests).sum();
        MetricsData {
            master_pid: self.pid.as_raw(),
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.uptime().as_secs_f64(),
            state: self.master_state(),
            generation: self.generation,
            requests_total: self.totals.retired_requests.saturating_add(live),
            requests_active: workers.iter().map(|w| u64::from(w.active)).sum(),
            workers_target: clamp_u32(self.target),
            workers_alive: clamp_u32(workers.len()),
            workers_ready: clamp_u32(self.ready_count()),
            workers_busy: count(WorkerState::Busy),
            workers_booting: count(WorkerState::Booting),
            workers_retiring: count(WorkerState::Retiring),
            worker_spawns_total: self.totals.spawns,
            worker_restarts_total: self.restarts,
            worker_timeouts_total: self.totals.timeouts,
            reloads_succeeded_total: self.totals.reloads_succeeded,
            reloads_failed_total: self.totals.reloads_failed,
            workers,
        }
    }

    fn reload(&mut self) -> Result<proto::ReloadOutcome, ErrorBody> {
        if self.state != RunState::Running {
            return Err(stopping());
        }
        let before = self.last_generation;
        Arbiter::reload(self);
        if let Some(r) = self.reload {
            if r.generation > before {
                return Ok(proto::ReloadOutcome {
                    generation: r.generation,
                    status: proto::ReloadStatus::InProgress,
                    duration_s: None,
                    error: None,
                });
            }
        }
        match &self.last_reload {
            Some(o @ super::ReloadOutcome::Failed { generation, .. }) if *generation > before => {
                // Failed before any worker was started (the config could
                // not be read): answered at once, and not again later.
                self.notified_reload = self.last_reload.clone();
                Ok(to_proto(o))
            }
            _ => Err(ErrorBody::new(
                ErrorCode::Internal,
                "the reload did not start".into(),
            )),
        }
    }

    fn scale(&mut self, to: ScaleTo) -> Result<ScaleData, ErrorBody> {
        if self.state != RunState::Running {
            return Err(stopping());
        }
        let previous = self.target;
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
            target: clamp_u32(self.target),
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
        match self.workers.get(&p).map(|w| w.state) {
            None => Err(ErrorBody::new(
                ErrorCode::NoSuchWorker,
                format!("no worker of this server has pid {pid}"),
            )),
            Some(WState::Retiring { .. }) => Ok(WorkerKillData { pid }),
            Some(_) => {
                tracing::info!("Control: stopping worker (pid:{pid})");
                self.retire(p);
                Ok(WorkerKillData { pid })
            }
        }
    }
}
