//! The supervisor driven by hand: a fake clock, fake pids, no process.

use super::*;

const LIMITS: Limits = Limits {
    timeout: 30_000,
    graceful: 30_000,
};

/// A supervisor plus the fake "loop": it performs the Spawn actions by
/// handing out pids and slots, as the real loop does after each fork, and
/// like the real loop it reports every worker's scoreboard each turn: a
/// worker a test does not report itself beats as a healthy one does
/// (booting workers do not beat: their slot keeps the fork time).
struct Harness {
    sup: Supervisor,
    now: Ms,
    next_pid: i32,
    free_slots: Vec<usize>,
    /// Every signal sent so far, in order.
    signals: Vec<(Pid, Signal)>,
    /// Every other action so far (Spawn excluded).
    other: Vec<Action>,
}

impl Harness {
    fn new(workers: usize, limits: Limits) -> Harness {
        let mut h = Harness {
            sup: Supervisor::new(workers, limits),
            now: 1_000_000,
            next_pid: 100,
            free_slots: (0..MAX_SLOTS).rev().collect(),
            signals: Vec::new(),
            other: Vec::new(),
        };
        h.tick(vec![]);
        h
    }

    /// Tick with `events`; perform the actions. Returns the pids spawned.
    fn tick(&mut self, events: Vec<Event>) -> Vec<Pid> {
        self.tick_freeing(events, None)
    }

    /// Tick; `freed` (a reaped worker's slot) is free again before any fork.
    fn tick_freeing(&mut self, mut events: Vec<Event>, freed: Option<usize>) -> Vec<Pid> {
        let reported: Vec<Pid> = events
            .iter()
            .filter_map(|e| match e {
                Event::Seen { pid, .. } => Some(*pid),
                _ => None,
            })
            .collect();
        for (pid, w) in self.sup.workers() {
            if !reported.contains(&pid) {
                let beat = match w.state {
                    WorkerState::Booting { since } => since,
                    _ => self.now,
                };
                events.push(Event::Seen {
                    pid,
                    heartbeat_ms: beat,
                    busy_since_ms: 0,
                });
            }
        }
        let actions = self.sup.tick(self.now, events);
        self.free_slots.extend(freed);
        let mut spawned = Vec::new();
        for a in actions {
            match a {
                Action::Spawn => {
                    let pid = Pid::from_raw(self.next_pid);
                    self.next_pid += 1;
                    let slot = self.free_slots.pop().expect("a free slot");
                    self.sup.spawned(self.now, pid, slot);
                    spawned.push(pid);
                }
                Action::Signal(pid, sig) => self.signals.push((pid, sig)),
                other => self.other.push(other),
            }
        }
        spawned
    }

    fn advance(&mut self, ms: Ms) {
        self.now += ms;
    }

    fn slot(&self, pid: Pid) -> usize {
        self.sup.worker(pid).expect("a worker").slot
    }

    fn ready(&mut self, pids: &[Pid]) -> Vec<Pid> {
        let ev = pids
            .iter()
            .map(|p| Event::Message {
                slot: self.slot(*p),
                msg: Msg::Ready,
            })
            .collect();
        self.tick(ev)
    }

    /// The worker exits; its slot is freed, as the loop does after reaping.
    fn exit(&mut self, pid: Pid, exit: Exit) -> Vec<Pid> {
        self.exit_with(pid, exit, None)
    }

    fn exit_with(&mut self, pid: Pid, exit: Exit, error: Option<&str>) -> Vec<Pid> {
        let slot = self.slot(pid);
        self.tick_freeing(
            vec![Event::Exited {
                pid,
                exit,
                error: error.map(str::to_string),
            }],
            Some(slot),
        )
    }

    fn pids(&self) -> Vec<Pid> {
        self.sup.workers().map(|(p, _)| p).collect()
    }

    fn state(&self, pid: Pid) -> WorkerState {
        self.sup.worker(pid).expect("a worker").state
    }

    fn signalled(&self, pid: Pid) -> Vec<Signal> {
        self.signals
            .iter()
            .filter(|(p, _)| *p == pid)
            .map(|(_, s)| *s)
            .collect()
    }

    /// Start `n` workers and make them ready.
    fn booted(n: usize, limits: Limits) -> (Harness, Vec<Pid>) {
        let mut h = Harness::new(n, limits);
        let pids = h.pids();
        assert_eq!(pids.len(), n, "the first tick spawns the target");
        h.ready(&pids);
        (h, pids)
    }
}

fn reload(workers: usize) -> Event {
    Event::Reload {
        workers,
        limits: LIMITS,
    }
}

#[test]
fn first_tick_spawns_the_target_and_nothing_more() {
    let mut h = Harness::new(3, LIMITS);
    assert_eq!(h.pids().len(), 3);
    assert!(h.tick(vec![]).is_empty(), "booting workers count");
    assert_eq!(h.sup.booting_count(), 3);
    let pids = h.pids();
    h.ready(&pids);
    assert_eq!(h.sup.ready_count(), 3);
    assert!(h.signals.is_empty());
}

#[test]
fn reload_starts_a_new_generation_and_retires_the_old_one_as_it_gets_ready() {
    let (mut h, old) = Harness::booted(2, LIMITS);
    let new = h.tick(vec![reload(2)]);
    assert_eq!(new.len(), 2, "the new generation is spawned at once");
    assert_eq!(h.sup.generation(), 2);
    assert!(h.sup.reload_in_progress().is_some());
    assert!(h.signals.is_empty(), "old workers serve while the new boot");

    h.advance(300);
    h.ready(&new[..1]);
    // One new worker ready: exactly one old one retires.
    assert_eq!(h.signals, vec![(old[0], Signal::SIGTERM)]);
    assert!(h.sup.reload_in_progress().is_some());

    h.ready(&new[1..]);
    assert_eq!(
        h.signals,
        vec![(old[0], Signal::SIGTERM), (old[1], Signal::SIGTERM)]
    );
    assert_eq!(h.sup.reload_in_progress(), None);
    assert_eq!(
        h.sup.last_reload(),
        Some(&ReloadOutcome::Succeeded {
            generation: 2,
            took: Duration::from_millis(300)
        })
    );
    assert_eq!(h.sup.counters().reloads_succeeded, 1);
    // The old workers leave cleanly: nothing is respawned, nothing counted.
    for p in &old {
        assert!(h.exit(*p, Exit::Code(0)).is_empty());
    }
    assert_eq!(h.sup.counters().restarts, 0);
    assert_eq!(h.pids(), new);
}

#[test]
fn failed_reload_keeps_the_old_generation_serving_and_reports_why() {
    let (mut h, old) = Harness::booted(2, LIMITS);
    let new = h.tick(vec![reload(2)]);
    // The new code cannot be imported.
    let again = h.exit_with(
        new[0],
        Exit::Code(msg::APP_LOAD_ERROR),
        Some("ImportError: no module named nope"),
    );
    assert!(again.is_empty(), "no respawn of the broken generation");
    // The other new worker, still booting, is killed; the old ones stay.
    assert_eq!(h.signals, vec![(new[1], Signal::SIGKILL)]);
    assert_eq!(h.sup.generation(), 1);
    assert_eq!(h.sup.reload_in_progress(), None);
    assert_eq!(
        h.sup.last_reload(),
        Some(&ReloadOutcome::Failed {
            generation: 2,
            error: "ImportError: no module named nope".into()
        })
    );
    assert!(h.other.contains(&Action::ReloadFailed(
        "ImportError: no module named nope".into()
    )));
    assert_eq!(h.sup.counters().reloads_failed, 1);
    assert!(h.sup.is_running(), "a failed reload never stops the server");
    // The killed one is reaped as expected; the old generation is complete.
    assert!(h.exit(new[1], Exit::Signal(Signal::SIGKILL)).is_empty());
    assert_eq!(h.sup.counters().restarts, 0);
    assert_eq!(h.pids(), old);
    assert_eq!(h.sup.ready_count(), 2);
    for p in &old {
        assert!(h.signalled(*p).is_empty());
    }
    // The next reload gets a fresh generation number.
    h.tick(vec![reload(2)]);
    assert_eq!(h.sup.generation(), 3);
}

#[test]
fn unreadable_config_on_reload_changes_nothing_but_the_outcome() {
    let (mut h, old) = Harness::booted(2, LIMITS);
    let spawned = h.tick(vec![Event::ReloadUnreadable {
        error: "SyntaxError".into(),
    }]);
    assert!(spawned.is_empty());
    assert_eq!(h.sup.generation(), 1);
    assert!(matches!(
        h.sup.last_reload(),
        Some(ReloadOutcome::Failed { generation: 2, .. })
    ));
    assert_eq!(h.pids(), old);
    assert!(h.signals.is_empty());
}

#[test]
fn ttin_ttou_count_survives_a_reload() {
    let (mut h, _) = Harness::booted(2, LIMITS);
    let more = h.tick(vec![Event::Scale(3)]);
    assert_eq!(more.len(), 1);
    h.ready(&more);
    assert_eq!(h.sup.ready_count(), 3);
    // TTOU twice: down to 1, the oldest of the generation retires.
    h.tick(vec![Event::Scale(2), Event::Scale(1)]);
    assert_eq!(h.sup.target(), 1);
    assert_eq!(h.signals.len(), 2);
    assert!(h.signals.iter().all(|(_, s)| *s == Signal::SIGTERM));
    // Scaling never goes below one.
    h.tick(vec![Event::Scale(0)]);
    assert_eq!(h.sup.target(), 1);

    // The config still says 2: a reload keeps the count set at run time.
    let new = h.tick(vec![reload(2)]);
    assert_eq!(new.len(), 1, "the new generation has the scaled count");
    assert_eq!(h.sup.target(), 1);
    h.ready(&new);
    assert_eq!(h.sup.ready_count(), 1);
    assert_eq!(h.sup.reload_in_progress(), None);
}

#[test]
fn without_scaling_a_reload_takes_the_new_worker_count() {
    let (mut h, _) = Harness::booted(2, LIMITS);
    let new = h.tick(vec![reload(4)]);
    assert_eq!(new.len(), 4);
    assert_eq!(h.sup.target(), 4);
}

#[test]
fn scale_during_a_reload_applies_to_the_new_generation() {
    let (mut h, _) = Harness::booted(2, LIMITS);
    let new = h.tick(vec![reload(2)]);
    let more = h.tick(vec![Event::Scale(3)]);
    assert_eq!(more.len(), 1);
    let all: Vec<Pid> = new.iter().chain(&more).copied().collect();
    h.ready(&all);
    assert_eq!(h.sup.ready_count(), 3);
    assert_eq!(h.sup.reload_in_progress(), None);
    assert_eq!(h.signals.len(), 2, "both old workers retired");
}

#[test]
fn boot_failures_back_off_instead_of_fork_looping() {
    let (mut h, pids) = Harness::booted(1, LIMITS);
    // A release that crashes at import (exit 1) once the first worker died.
    let mut victim = pids[0];
    let mut spawned = h.exit(victim, Exit::Signal(Signal::SIGKILL));
    assert_eq!(
        spawned.len(),
        1,
        "a crash of a ready worker is replaced at once"
    );
    let mut gaps = Vec::new();
    for _ in 0..10 {
        victim = spawned[0];
        let died_at = h.now;
        assert!(
            h.exit(victim, Exit::Code(1)).is_empty(),
            "no respawn at once"
        );
        // Advance in 10 ms steps until the supervisor spawns again.
        loop {
            h.advance(10);
            spawned = h.tick(vec![]);
            if !spawned.is_empty() {
                break;
            }
            assert!(h.now - died_at <= BACKOFF_MAX, "backoff is bounded");
        }
        gaps.push(h.now - died_at);
    }
    assert_eq!(&gaps[..4], &[200, 400, 800, 1600]);
    assert!(gaps.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(*gaps.last().expect("gaps"), BACKOFF_MAX);
    assert!(
        h.sup.is_running(),
        "an app that once served keeps being retried"
    );
    assert_eq!(h.sup.counters().restarts, 11);
    // Fixed: the next worker boots, and the backoff is forgotten.
    h.ready(&spawned);
    let next = h.exit(spawned[0], Exit::Signal(Signal::SIGSEGV));
    assert_eq!(next.len(), 1);
    assert!(h.exit(next[0], Exit::Code(1)).is_empty());
    h.advance(200);
    assert_eq!(h.tick(vec![]).len(), 1, "back to the first step");
}

#[test]
fn app_that_never_booted_stops_the_server_with_gunicorns_code() {
    let mut h = Harness::new(2, LIMITS);
    let pids = h.pids();
    h.exit_with(pids[0], Exit::Code(msg::APP_LOAD_ERROR), Some("Traceback"));
    assert!(!h.sup.is_running());
    assert_eq!(h.sup.exit_code(), msg::APP_LOAD_ERROR);
    assert!(h.other.contains(&Action::BootError("Traceback".into())));
    assert!(h.other.contains(&Action::Stopping { quick: true }));
    assert_eq!(h.signals, vec![(pids[1], Signal::SIGQUIT)]);
    assert!(h.exit(pids[1], Exit::Code(0)).is_empty());
    assert!(h.sup.finished());
}

#[test]
fn max_requests_retires_the_worker_once_its_replacement_is_ready() {
    let (mut h, pids) = Harness::booted(2, LIMITS);
    let tired = pids[1];
    let slot = h.slot(tired);
    let new = h.tick(vec![Event::Message {
        slot,
        msg: Msg::Retire,
    }]);
    assert_eq!(new.len(), 1, "the replacement starts at once");
    assert_eq!(h.state(tired), WorkerState::Recycling);
    assert!(
        h.signals.is_empty(),
        "it serves until the replacement is ready"
    );
    assert_eq!(h.sup.serving_count(), 2);
    h.ready(&new);
    assert_eq!(h.signals, vec![(tired, Signal::SIGTERM)]);
    // Retired once: further ticks and messages send nothing more.
    h.tick(vec![Event::Message {
        slot,
        msg: Msg::Retire,
    }]);
    assert_eq!(h.signalled(tired), vec![Signal::SIGTERM]);
    assert!(h.exit(tired, Exit::Code(0)).is_empty());
    assert_eq!(h.sup.counters().restarts, 0);
    assert_eq!(h.pids().len(), 2);
}

#[test]
fn retiring_worker_is_killed_at_the_graceful_timeout() {
    let limits = Limits {
        timeout: 0,
        graceful: 5_000,
    };
    let (mut h, pids) = Harness::booted(1, limits);
    h.tick(vec![Event::Retire(pids[0])]);
    assert_eq!(h.signals, vec![(pids[0], Signal::SIGTERM)]);
    let new = h.tick(vec![]);
    assert!(new.is_empty(), "already replaced in the same tick");
    assert_eq!(h.sup.next_deadline(h.now), Some(h.now + 5_000));
    h.advance(4_999);
    h.tick(vec![]);
    assert_eq!(h.signals.len(), 1);
    h.advance(1);
    h.tick(vec![]);
    assert_eq!(h.signalled(pids[0]), vec![Signal::SIGTERM, Signal::SIGKILL]);
    h.advance(1_000);
    h.tick(vec![]);
    assert_eq!(h.signals.len(), 2, "SIGKILL is sent once");
    h.exit(pids[0], Exit::Signal(Signal::SIGKILL));
    assert_eq!(h.sup.counters().restarts, 0, "an expected end");
}

#[test]
fn busy_worker_past_the_timeout_is_aborted_then_killed() {
    let limits = Limits {
        timeout: 2_000,
        graceful: 30_000,
    };
    let (mut h, pids) = Harness::booted(2, limits);
    let stuck = pids[0];
    let started = h.now;
    for _ in 0..4 {
        h.advance(500);
        let mut ev: Vec<Event> = vec![Event::Seen {
            pid: pids[1],
            heartbeat_ms: h.now,
            busy_since_ms: 0,
        }];
        // A sync worker's loop does not beat while the request runs.
        ev.push(Event::Seen {
            pid: stuck,
            heartbeat_ms: started,
            busy_since_ms: started,
        });
        h.tick(ev);
    }
    assert!(h.signals.is_empty(), "exactly the timeout is not past it");
    h.advance(1);
    h.tick(vec![Event::Seen {
        pid: stuck,
        heartbeat_ms: started,
        busy_since_ms: started,
    }]);
    assert_eq!(h.signals, vec![(stuck, Signal::SIGABRT)]);
    assert!(matches!(h.state(stuck), WorkerState::Aborting { .. }));
    assert_eq!(h.sup.counters().timeouts, 1);
    assert_eq!(h.sup.live_count(), 2, "replaced once it is gone");
    // It did not exit in time (stuck in C code): killed.
    h.advance(ABORT_GRACE);
    h.tick(vec![]);
    assert_eq!(h.signalled(stuck), vec![Signal::SIGABRT, Signal::SIGKILL]);
    let new = h.exit(stuck, Exit::Signal(Signal::SIGKILL));
    assert_eq!(new.len(), 1);
    assert_eq!(h.sup.counters().restarts, 1);
    assert!(
        h.signalled(pids[1]).is_empty(),
        "the other worker serves on"
    );
}

#[test]
fn aborted_worker_that_exits_is_replaced_without_a_kill() {
    let limits = Limits {
        timeout: 1_000,
        graceful: 30_000,
    };
    let (mut h, pids) = Harness::booted(1, limits);
    let t = h.now;
    h.advance(1_500);
    h.tick(vec![Event::Seen {
        pid: pids[0],
        heartbeat_ms: t,
        busy_since_ms: t,
    }]);
    assert_eq!(h.signals, vec![(pids[0], Signal::SIGABRT)]);
    // It logs its stack and exits 1.
    let new = h.exit(pids[0], Exit::Code(1));
    assert_eq!(new.len(), 1);
    h.ready(&new);
    h.advance(ABORT_GRACE);
    h.tick(vec![]);
    assert_eq!(h.signals.len(), 1);
}

#[test]
fn long_request_then_idle_is_not_a_stuck_loop() {
    let limits = Limits {
        timeout: 2_000,
        graceful: 30_000,
    };
    let (mut h, pids) = Harness::booted(1, limits);
    let pid = pids[0];
    let last_beat = h.now;
    let started = h.now + 400;
    // A 1.9 s request (under the timeout): the loop is blocked meanwhile.
    for _ in 0..5 {
        h.advance(400);
        h.tick(vec![Event::Seen {
            pid,
            heartbeat_ms: last_beat,
            busy_since_ms: started,
        }]);
    }
    // The request ended just before this turn; the loop has not beaten yet.
    h.advance(900);
    h.tick(vec![Event::Seen {
        pid,
        heartbeat_ms: last_beat,
        busy_since_ms: 0,
    }]);
    assert!(h.signals.is_empty(), "{:?}", h.signals);
}

#[test]
fn idle_worker_whose_event_loop_stops_beating_is_aborted() {
    let limits = Limits {
        timeout: 2_000,
        graceful: 30_000,
    };
    let (mut h, pids) = Harness::booted(1, limits);
    let pid = pids[0];
    let last_beat = h.now;
    // E.g. a coroutine blocking the loop: no request marked busy, no beat.
    for _ in 0..4 {
        h.advance(500);
        h.tick(vec![Event::Seen {
            pid,
            heartbeat_ms: last_beat,
            busy_since_ms: 0,
        }]);
    }
    assert!(h.signals.is_empty());
    h.advance(500);
    h.tick(vec![Event::Seen {
        pid,
        heartbeat_ms: last_beat,
        busy_since_ms: 0,
    }]);
    assert_eq!(h.signals, vec![(pid, Signal::SIGABRT)]);
}

#[test]
fn beating_worker_is_never_timed_out() {
    let limits = Limits {
        timeout: 1_000,
        graceful: 30_000,
    };
    let (mut h, _) = Harness::booted(2, limits);
    for _ in 0..100 {
        h.advance(700);
        h.tick(vec![]);
    }
    assert!(h.signals.is_empty());
    assert_eq!(h.sup.counters().timeouts, 0);
}

#[test]
fn worker_hanging_at_boot_is_killed_after_the_timeout_and_replaced() {
    let limits = Limits {
        timeout: 2_000,
        graceful: 30_000,
    };
    let mut h = Harness::new(1, limits);
    let hung = h.pids()[0];
    h.advance(2_000);
    h.tick(vec![]); // no beat while booting: its slot keeps the fork time
    assert!(h.signals.is_empty());
    h.advance(1);
    h.tick(vec![]);
    assert_eq!(h.signals, vec![(hung, Signal::SIGKILL)]);
    assert_eq!(h.state(hung), WorkerState::Killed(Kill::BootTimeout));
    assert_eq!(h.sup.counters().timeouts, 1);
    assert!(h.tick(vec![]).is_empty(), "replaced once reaped");
    // Reaped: replaced after the boot-failure backoff, and the server runs on.
    assert!(h.exit(hung, Exit::Signal(Signal::SIGKILL)).is_empty());
    assert!(h.sup.is_running());
    h.advance(200);
    let new = h.tick(vec![]);
    assert_eq!(new.len(), 1);
    h.ready(&new);
    assert_eq!(h.sup.ready_count(), 1);
}

#[test]
fn no_timeout_when_it_is_zero() {
    let limits = Limits {
        timeout: 0,
        graceful: 30_000,
    };
    let mut h = Harness::new(1, limits);
    let pid = h.pids()[0];
    h.advance(3_600_000);
    h.tick(vec![]);
    h.ready(&[pid]);
    h.advance(3_600_000);
    h.tick(vec![Event::Seen {
        pid,
        heartbeat_ms: 1,
        busy_since_ms: 1,
    }]);
    assert!(h.signals.is_empty());
}

#[test]
fn graceful_stop_waits_for_the_graceful_timeout_then_kills() {
    let limits = Limits {
        timeout: 30_000,
        graceful: 10_000,
    };
    let (mut h, pids) = Harness::booted(2, limits);
    h.tick(vec![Event::Stop { quick: false }]);
    assert_eq!(h.other, vec![Action::Stopping { quick: false }]);
    assert_eq!(
        h.signals,
        vec![(pids[0], Signal::SIGTERM), (pids[1], Signal::SIGTERM)]
    );
    assert!(!h.sup.is_running());
    // One finishes its request and leaves: not replaced.
    assert!(h.exit(pids[0], Exit::Code(0)).is_empty());
    assert!(!h.sup.finished());
    // A second TERM changes nothing.
    h.tick(vec![Event::Stop { quick: false }]);
    assert_eq!(h.signals.len(), 2);
    assert_eq!(h.sup.next_deadline(h.now), Some(h.now + 10_000));
    h.advance(9_999);
    h.tick(vec![]);
    assert_eq!(h.signals.len(), 2);
    h.advance(1);
    h.tick(vec![]);
    assert_eq!(h.signalled(pids[1]), vec![Signal::SIGTERM, Signal::SIGKILL]);
    h.tick(vec![]);
    assert_eq!(h.signals.len(), 3, "SIGKILL once");
    assert_eq!(
        h.sup.next_deadline(h.now),
        None,
        "no timer while awaiting reaping"
    );
    assert!(h.exit(pids[1], Exit::Signal(Signal::SIGKILL)).is_empty());
    assert!(h.sup.finished());
    assert_eq!(h.sup.exit_code(), 0);
    assert_eq!(h.sup.counters().restarts, 0);
}

#[test]
fn quick_stop_overtakes_a_graceful_one() {
    let (mut h, pids) = Harness::booted(1, LIMITS);
    h.tick(vec![Event::Stop { quick: false }]);
    h.tick(vec![Event::Stop { quick: true }]);
    assert_eq!(h.signalled(pids[0]), vec![Signal::SIGTERM, Signal::SIGQUIT]);
    h.advance(QUICK_STOP_GRACE);
    h.tick(vec![]);
    assert_eq!(
        h.signalled(pids[0]),
        vec![Signal::SIGTERM, Signal::SIGQUIT, Signal::SIGKILL]
    );
    // And a graceful one does not undo a quick one.
    h.tick(vec![Event::Stop { quick: false }]);
    assert_eq!(h.signals.len(), 3);
}

#[test]
fn nothing_is_spawned_or_reloaded_while_stopping() {
    let (mut h, pids) = Harness::booted(2, LIMITS);
    h.tick(vec![Event::Stop { quick: false }]);
    assert!(h.tick(vec![reload(2)]).is_empty());
    assert_eq!(h.sup.generation(), 1);
    assert!(h.exit(pids[0], Exit::Signal(Signal::SIGKILL)).is_empty());
    assert_eq!(
        h.sup.counters().restarts,
        0,
        "ends while stopping are expected"
    );
}

#[test]
fn crashed_worker_is_counted_and_replaced() {
    let (mut h, pids) = Harness::booted(2, LIMITS);
    let slot = h.slot(pids[1]);
    let new = h.exit(pids[1], Exit::Signal(Signal::SIGSEGV));
    assert_eq!(new.len(), 1);
    assert_eq!(h.sup.counters().restarts, 1);
    assert_eq!(h.sup.slot_restarts(slot), 1);
    assert_eq!(h.slot(new[0]), slot, "the slot is reused");
}

#[test]
fn messages_from_unknown_slots_and_exits_of_strangers_are_ignored() {
    let (mut h, pids) = Harness::booted(1, LIMITS);
    assert!(h
        .tick(vec![
            Event::Message {
                slot: 999,
                msg: Msg::Retire
            },
            Event::Exited {
                pid: Pid::from_raw(4242),
                exit: Exit::Code(1),
                error: None
            },
        ])
        .is_empty());
    assert_eq!(h.pids(), pids);
    assert!(h.signals.is_empty());
}

#[test]
fn old_generation_ready_late_does_not_retire_anything() {
    let mut h = Harness::new(2, LIMITS);
    let old = h.pids();
    h.ready(&old[..1]);
    let new = h.tick(vec![reload(2)]);
    // An old worker that was still booting reports ready after the HUP.
    h.ready(&old[1..]);
    assert!(h.signals.is_empty());
    h.ready(&new);
    assert_eq!(h.signals.len(), 2);
}

#[test]
fn fork_failure_is_retried_a_second_later() {
    let mut sup = Supervisor::new(1, LIMITS);
    assert_eq!(sup.tick(0, vec![]), vec![Action::Spawn]);
    sup.spawn_failed(0);
    assert!(sup.tick(500, vec![]).is_empty());
    assert_eq!(sup.next_deadline(500), Some(1_000));
    assert_eq!(sup.tick(1_000, vec![]), vec![Action::Spawn]);
}

/// `--reload`: these workers report a change they first saw at `at`;
/// how many reloads the loop is asked for.
fn code_changed(h: &mut Harness, pids: &[Pid], at: Ms) -> usize {
    let before = h.other.len();
    let ev = pids
        .iter()
        .map(|p| Event::CodeChanged {
            slot: h.slot(*p),
            at,
        })
        .collect();
    h.tick(ev);
    h.other[before..]
        .iter()
        .filter(|a| **a == Action::Reload)
        .count()
}

#[test]
fn a_save_reloads_once_and_a_later_one_again_even_after_a_failed_reload() {
    let (mut h, old) = Harness::booted(2, LIMITS);
    h.advance(1_000);
    let save = h.now - 100;
    // Both workers saw the same save: one reload.
    assert_eq!(code_changed(&mut h, &old, save), 1);
    h.advance(5);
    assert_eq!(
        code_changed(&mut h, &old[1..], save + 2),
        0,
        "the same save"
    );
    let new = h.tick(vec![reload(2)]);
    // The new generation's workers are still booting: they do not ask.
    h.advance(100);
    let during = h.now;
    assert_eq!(code_changed(&mut h, &new, during), 0);
    // The new code does not import: the old generation keeps serving; a
    // late report of the first save changes nothing...
    h.exit_with(new[0], Exit::Code(msg::APP_LOAD_ERROR), Some("SyntaxError"));
    h.exit(new[1], Exit::Signal(Signal::SIGKILL));
    assert_eq!(h.sup.generation(), 1);
    assert_eq!(code_changed(&mut h, &old[1..], save + 3), 0);
    // ...and the fix, seen by it, reloads again.
    h.advance(2_000);
    let fix = h.now - 100;
    assert_eq!(code_changed(&mut h, &old[..1], fix), 1);
    let fixed = h.tick(vec![reload(2)]);
    h.ready(&fixed);
    // The fixed generation serves and watches: its next change reloads.
    h.advance(2_000);
    let next = h.now - 100;
    assert_eq!(code_changed(&mut h, &fixed[..1], next), 1);
}

#[test]
fn a_code_change_while_stopping_or_from_a_stranger_does_nothing() {
    let (mut h, old) = Harness::booted(2, LIMITS);
    h.advance(1_000);
    let at = h.now;
    h.tick(vec![Event::CodeChanged { slot: 57, at }]);
    assert!(!h.other.contains(&Action::Reload));
    h.tick(vec![Event::Stop { quick: false }]);
    assert_eq!(code_changed(&mut h, &old, at), 0);
}
