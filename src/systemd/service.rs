//! What the master tells the service manager, and when: a small state
//! machine the arbiter's loop drives with [`Service::tick`] and a few
//! events (reload, stop, boot error, re-exec). It sends nothing itself
//! outside those calls, never sleeps and owns no thread; the arbiter adds
//! [`Service::next_deadline`] to its poll timeout.
//!
//! | moment                                   | datagram                                   |
//! |------------------------------------------|--------------------------------------------|
//! | initial workers all report ready         | `READY=1`                                  |
//! | workers still booting at start or reload | `EXTEND_TIMEOUT_USEC=` every 5 s (10 min at most) |
//! | reload begins                            | `RELOADING=1` + `MONOTONIC_USEC=` (one datagram) |
//! | new generation all ready (or reload failed, old one serving) | `READY=1`              |
//! | stop begins                              | `STOPPING=1`                               |
//! | after `READY=1`, every half `WATCHDOG_USEC` while the loop turns | `WATCHDOG=1`        |
//! | worker count, req/s or boot error change | `STATUS=` (at most once a second)          |
//! | SIGUSR2 re-exec started a new master     | `MAINPID=` (then this master falls silent) |
//!
//! The watchdog is only fed from the loop: a master that is stopped
//! (SIGSTOP), stuck or busy-looping sends nothing and the manager kills it.

use super::notify::{watchdog_interval, Notifier};
use std::time::{Duration, Instant};

/// How often EXTEND_TIMEOUT_USEC is sent while workers boot, and by how much.
const EXTEND_EVERY: Duration = Duration::from_secs(5);
const EXTEND_BY: Duration = Duration::from_secs(15);
/// A boot that takes longer than this gets no more extensions.
const EXTEND_AT_MOST: Duration = Duration::from_secs(600);
/// Least time between two STATUS= updates, and the req/s window.
const STATUS_EVERY: Duration = Duration::from_secs(1);
const RATE_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Initial workers booting; READY=1 not yet sent.
    Starting,
    Running,
    /// RELOADING=1 sent; READY=1 due when the new generation is ready.
    Reloading,
    Stopping,
    /// Another master took over (MAINPID sent): say nothing more.
    HandedOver,
}

/// The worker table as the arbiter sees it at one loop turn.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Ready workers of the current generation.
    pub ready: usize,
    /// Wanted worker count.
    pub target: usize,
    /// Workers alive but not ready yet (any generation).
    pub booting: usize,
    /// Requests served so far, summed over the scoreboard.
    pub requests: u64,
}

/// The master's side of the sd_notify conversation.
#[derive(Debug)]
pub struct Service {
    notifier: Option<Notifier>,
    watchdog: Option<Duration>,
    phase: Phase,
    next_watchdog: Option<Instant>,
    /// When the current start/reload began; when the next extension is due.
    boot_began: Instant,
    next_extend: Instant,
    last_status: String,
    next_status: Instant,
    boot_error: Option<String>,
    rate_mark: Option<(Instant, u64)>,
    rate: f64,
}

impl Service {
    /// From the environment captured at start; a silent `Service` when no
    /// service manager is listening.
    pub fn from_env() -> Service {
        let env = super::env::get();
        let notifier = Notifier::from_env();
        let watchdog = notifier.as_ref().and_then(|_| {
            watchdog_interval(
                env.watchdog_usec.as_deref(),
                env.watchdog_pid.as_deref(),
                std::process::id(),
            )
        });
        Service::new(notifier, watchdog)
    }

    pub fn new(notifier: Option<Notifier>, watchdog: Option<Duration>) -> Service {
        let now = Instant::now();
        Service {
            notifier,
            watchdog,
            phase: Phase::Starting,
            next_watchdog: None,
            boot_began: now,
            next_extend: now,
            last_status: String::new(),
            next_status: now,
            boot_error: None,
            rate_mark: None,
            rate: 0.0,
        }
    }

    /// Is a service manager listening?
    pub fn is_active(&self) -> bool {
        self.notifier.is_some() && self.phase != Phase::HandedOver
    }

    /// The notification socket, for a re-exec'd master's environment.
    pub fn notifier(&self) -> Option<&Notifier> {
        self.notifier.as_ref()
    }

    /// The watchdog interval the manager asked for, if any.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Variables a re-exec'd master (SIGUSR2) needs to go on talking to the
    /// manager once it is the main process.
    pub fn reexec_env(&self) -> Vec<(String, String)> {
        let mut v = Vec::new();
        if let Some(n) = &self.notifier {
            v.push(("NOTIFY_SOCKET".to_string(), n.socket_name().to_string()));
            if let Some(w) = self.watchdog {
                v.push(("WATCHDOG_USEC".to_string(), w.as_micros().to_string()));
            }
        }
        v
    }

    fn send(&self, what: &str, r: impl FnOnce(&Notifier) -> std::io::Result<()>) {
        if self.phase == Phase::HandedOver {
            return;
        }
        if let Some(n) = &self.notifier {
            if let Err(e) = r(n) {
                tracing::debug!("sd_notify {what} to {} failed: {e}", n.socket_name());
            }
        }
    }

    /// One loop turn: READY, extensions, watchdog and status as due.
    pub fn tick(&mut self, now: Instant, s: &Snapshot) {
        if self.notifier.is_none() || self.phase == Phase::HandedOver {
            return;
        }
        self.update_rate(now, s.requests);
        match self.phase {
            Phase::Starting | Phase::Reloading => {
                if s.target > 0 && s.ready >= s.target {
                    self.send("READY=1", |n| n.ready());
                    self.phase = Phase::Running;
                    self.boot_error = None;
                    self.next_status = now; // say so at once
                    if self.next_watchdog.is_none() {
                        self.ping(now);
                    }
                } else if s.booting > 0
                    && now >= self.next_extend
                    && now.duration_since(self.boot_began) < EXTEND_AT_MOST
                {
                    self.send("EXTEND_TIMEOUT_USEC", |n| n.extend_timeout(EXTEND_BY));
                    self.next_extend = now + EXTEND_EVERY;
                }
            }
            Phase::Running | Phase::Stopping | Phase::HandedOver => {}
        }
        if let Some(at) = self.next_watchdog {
            if now >= at {
                self.ping(now);
            }
        }
        if now >= self.next_status {
            let text = self.status_text(s);
            if text != self.last_status {
                self.send("STATUS", |n| n.status(&text));
                self.last_status = text;
                self.next_status = now + STATUS_EVERY;
            }
        }
    }

    fn ping(&mut self, now: Instant) {
        if let Some(w) = self.watchdog {
            self.send("WATCHDOG=1", |n| n.watchdog());
            self.next_watchdog = Some(now + w / 2);
        }
    }

    fn update_rate(&mut self, now: Instant, total: u64) {
        match self.rate_mark {
            None => self.rate_mark = Some((now, total)),
            Some((t0, n0)) if now.duration_since(t0) >= RATE_WINDOW => {
                let dt = now.duration_since(t0).as_secs_f64();
                // A worker that exited took its counter with it: count from 0.
                self.rate = total.saturating_sub(n0) as f64 / dt;
                self.rate_mark = Some((now, total));
            }
            Some(_) => {}
        }
    }

    fn status_text(&self, s: &Snapshot) -> String {
        let workers = format!("{}/{} workers ready", s.ready.min(s.target), s.target);
        match (self.phase, &self.boot_error) {
            (Phase::Stopping, Some(e)) => format!("Stopping; boot error: {e}"),
            (Phase::Stopping, None) => "Stopping".to_string(),
            (_, Some(e)) => format!("{workers}; boot error: {e}"),
            (Phase::Starting, None) => format!("Booting: {workers}"),
            (Phase::Reloading, None) => format!("Reloading: {workers}"),
            _ => format!("Serving: {workers}, {:.1} req/s", self.rate),
        }
    }

    /// When the loop must turn next for us (watchdog, extension, status).
    pub fn next_deadline(&self, now: Instant) -> Option<Duration> {
        if !self.is_active() {
            return None;
        }
        let mut at: Option<Instant> = self.next_watchdog;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if matches!(self.phase, Phase::Starting | Phase::Reloading) {
            consider(self.next_extend);
        }
        consider(self.next_status.max(now + STATUS_EVERY));
        at.map(|t| t.saturating_duration_since(now))
    }

    /// A reload begins: RELOADING=1 with MONOTONIC_USEC, in one datagram.
    pub fn reloading(&mut self) {
        if matches!(self.phase, Phase::Stopping | Phase::HandedOver) {
            return;
        }
        self.send("RELOADING=1", |n| n.reloading());
        self.phase = Phase::Reloading;
        self.boot_began = Instant::now();
        self.next_extend = self.boot_began;
        self.next_status = self.boot_began;
    }

    /// The new generation could not boot and the old one goes on serving:
    /// the reload is over (READY=1), with the reason in STATUS=.
    pub fn reload_failed(&mut self, why: &str) {
        if self.phase != Phase::Reloading {
            return;
        }
        self.boot_error = Some(format!("reload failed: {why}"));
        self.send("STATUS", |n| {
            n.status(&format!(
                "Serving the previous generation; reload failed: {why}"
            ))
        });
        self.send("READY=1", |n| n.ready());
        self.phase = Phase::Running;
        self.next_status = Instant::now() + STATUS_EVERY;
    }

    /// A stop begins.
    pub fn stopping(&mut self) {
        if matches!(self.phase, Phase::Stopping | Phase::HandedOver) {
            return;
        }
        self.send("STOPPING=1", |n| n.stopping());
        self.phase = Phase::Stopping;
        self.next_status = Instant::now();
    }

    /// A worker failed to boot; shown in STATUS= until workers are ready.
    pub fn boot_error(&mut self, why: &str) {
        self.boot_error = Some(why.to_string());
        let text = format!("Boot error: {why}");
        self.send("STATUS", |n| n.status(&text));
        self.last_status = text;
    }

    /// A re-exec'd master (SIGUSR2) is now the service's main process.
    pub fn handed_over(&mut self, new_master: i32) {
        self.send("MAINPID", |n| n.mainpid(new_master));
        self.phase = Phase::HandedOver;
        self.next_watchdog = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    fn pair() -> (Service, UnixDatagram, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("notify");
        let rx = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind: {e}"));
        rx.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
        let n = Notifier::new(&path.display().to_string()).ok();
        (Service::new(n, Some(Duration::from_secs(2))), rx, dir)
    }

    fn drain(rx: &UnixDatagram) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(n) = rx.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "rgunicorn-sd-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                let _ = std::fs::create_dir_all(&p);
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn ready_only_when_all_workers_are_ready_then_watchdog() {
        let (mut s, rx, _d) = pair();
        let t0 = Instant::now();
        let snap = |ready, booting| Snapshot {
            ready,
            target: 2,
            booting,
            requests: 0,
        };
        s.tick(t0, &snap(1, 1));
        let msgs = drain(&rx);
        assert!(
            !msgs.iter().any(|m| m == "READY=1" || m == "WATCHDOG=1"),
            "{msgs:?}"
        );
        assert!(
            msgs.iter().any(|m| m.starts_with("EXTEND_TIMEOUT_USEC=")),
            "{msgs:?}"
        );
        s.tick(t0, &snap(2, 0));
        let msgs = drain(&rx);
        assert_eq!(
            msgs.first().map(String::as_str),
            Some("READY=1"),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m == "WATCHDOG=1"), "{msgs:?}");
        // Next ping at half the interval, not before.
        s.tick(t0 + Duration::from_millis(900), &snap(2, 0));
        assert!(!drain(&rx).iter().any(|m| m == "WATCHDOG=1"));
        s.tick(t0 + Duration::from_millis(1000), &snap(2, 0));
        assert!(drain(&rx).iter().any(|m| m == "WATCHDOG=1"));
    }

    #[test]
    fn reload_sends_reloading_then_ready() {
        let (mut s, rx, _d) = pair();
        let t0 = Instant::now();
        let ready = Snapshot {
            ready: 1,
            target: 1,
            booting: 0,
            requests: 0,
        };
        s.tick(t0, &ready);
        drain(&rx);
        s.reloading();
        let msgs = drain(&rx);
        assert!(
            msgs[0].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{msgs:?}"
        );
        let booting = Snapshot {
            ready: 0,
            booting: 1,
            ..ready
        };
        s.tick(t0, &booting);
        assert!(!drain(&rx).iter().any(|m| m == "READY=1"));
        s.tick(t0, &ready);
        assert!(drain(&rx).iter().any(|m| m == "READY=1"));
        s.stopping();
        assert!(drain(&rx).iter().any(|m| m == "STOPPING=1"));
    }
}
