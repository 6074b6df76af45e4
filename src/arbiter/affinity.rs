//! `worker_cpu_affinity`: the CPU each worker runs on.
//!
//! With `auto`, the master picks a CPU for every worker it forks (of those
//! it may itself run on, so a cpuset or `taskset` around the master is
//! respected): the one the fewest live workers hold, the lowest on a tie.
//! The master binds itself to that CPU for the fork and then takes its own
//! set back, so the child is born on its CPU: there is no moment in which a
//! listed worker (`taskset -p`, `rgunicornctl status`) may still run
//! anywhere. Every thread it starts later (the `io` thread, the gthread pool,
//! the app's own threads) inherits it. A worker's I/O thread
//! and Python thread then wake each other on one CPU instead of across two.
//! Off by default: measured on a 2-vCPU machine the gain is not reliable
//! (docs/architecture.md, "Process model", has the figures).

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPU each worker slot was given (`None`: none, or the slot is free).
#[derive(Default)]
pub struct Affinity {
    cpu_of_slot: Vec<Option<usize>>,
}

/// Whether `worker_cpu_affinity` asks for pinning (the value was checked
/// when the settings were read: off or auto).
pub fn enabled(mode: &str) -> bool {
    mode.trim().eq_ignore_ascii_case("auto")
}

impl Affinity {
    /// In the master, before forking the worker of `slot`: the CPU it is to
    /// run on, or `None` when pinning is off or the CPUs cannot be read.
    pub fn assign(&mut self, mode: &str, slot: usize) -> Option<usize> {
        self.release(slot);
        if !enabled(mode) {
            return None;
        }
        let allowed = allowed_cpus()?;
        let held = |cpu: usize| self.cpu_of_slot.iter().filter(|c| **c == Some(cpu)).count();
        let cpu = allowed.into_iter().min_by_key(|&c| (held(c), c))?;
        if self.cpu_of_slot.len() <= slot {
            self.cpu_of_slot.resize(slot + 1, None);
        }
        self.cpu_of_slot[slot] = Some(cpu);
        Some(cpu)
    }

    /// The worker of `slot` is gone (or its fork failed): its CPU is free.
    pub fn release(&mut self, slot: usize) {
        if let Some(c) = self.cpu_of_slot.get_mut(slot) {
            *c = None;
        }
    }
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Option<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).ok()?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

/// In the master, right before the fork: run on `cpu` only, so the child
/// inherits it from its first instruction. Returns the set to take back
/// with [`restore`] once forked.
pub fn pin_for_fork(cpu: usize) -> nix::Result<CpuSet> {
    let mine = sched_getaffinity(Pid::from_raw(0))?;
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(mine)
}

/// In the master, after the fork (or its failure): the CPUs it had before.
pub fn restore(mine: &CpuSet) {
    if let Err(e) = sched_setaffinity(Pid::from_raw(0), mine) {
        tracing::warn!("Cannot give the master back its CPUs: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_spread_over_the_allowed_cpus_and_a_freed_cpu_is_taken_first() {
        let Some(cpus) = allowed_cpus() else { return };
        let mut a = Affinity::default();
        assert_eq!(a.assign("off", 0), None);
        let first: Vec<_> = (0..cpus.len()).map(|s| a.assign("auto", s)).collect();
        assert_eq!(first, cpus.iter().map(|&c| Some(c)).collect::<Vec<_>>());
        // One more worker than CPUs: the lowest CPU gets a second one.
        assert_eq!(a.assign("AUTO", cpus.len()), Some(cpus[0]));
        // The last CPU's worker exits: its replacement takes that CPU.
        let last = cpus.len() - 1;
        a.release(last);
        assert_eq!(a.assign("auto", last + 7), Some(cpus[last]));
    }
}
