//! The scoreboard: a shared-memory table, one slot per worker, that workers
//! write with plain atomic stores and the master reads each turn of its
//! loop (`--timeout`: the heartbeat and the oldest request) and for
//! `status` and `metrics`. It replaces Gunicorn's per-request `fchmod` of a
//! temporary file: no system call on the request path.
//!
//! It is mapped `MAP_SHARED | MAP_ANONYMOUS` by the master before any fork,
//! so every worker sees the same pages.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

/// Most workers one server can have at once.
pub const MAX_SLOTS: usize = 1024;

/// One worker's figures. 64 bytes: one cache line, so workers never share one.
#[repr(C, align(64))]
pub struct Slot {
    pub pid: AtomicI32,
    /// Connections open right now (read by the other workers, which leave
    /// new connections to the least loaded one: `worker::balance`).
    pub conns: AtomicU32,
    /// Requests being served right now.
    pub active: AtomicU32,
    /// 1 while the worker takes new connections: it has a free slot and is
    /// not retiring.
    pub accepting: AtomicU32,
    /// Requests served since the worker started.
    pub requests: AtomicU64,
    /// Monotonic milliseconds at which the oldest running request began; 0 = idle.
    pub busy_since_ms: AtomicU64,
    /// Monotonic milliseconds of the worker's last heartbeat: the fork time
    /// until its event loop runs, then written by the loop every 500 ms.
    /// A worker whose loop stops beating for `--timeout` while no request
    /// runs is aborted; one still booting that long is killed.
    pub heartbeat_ms: AtomicU64,
    /// Connections taken since the worker started (`worker::balance`).
    pub accepted: AtomicU64,
    /// `--reload`: monotonic milliseconds at which the worker first saw the
    /// last change to the app's files it reported (`Msg::CodeChanged`).
    pub code_changed_ms: AtomicU64,
    _pad2: [u64; 1],
}

impl Slot {
    /// Reset for a new worker (master, before the fork).
    pub fn reset(&self, pid: i32) {
        self.pid.store(pid, Ordering::Relaxed);
        self.active.store(0, Ordering::Relaxed);
        self.conns.store(0, Ordering::Relaxed);
        self.accepting.store(0, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
        self.accepted.store(0, Ordering::Relaxed);
        self.code_changed_ms.store(0, Ordering::Relaxed);
        self.busy_since_ms.store(0, Ordering::Relaxed);
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// Monotonic milliseconds, comparable across processes (CLOCK_MONOTONIC).
pub fn now_ms() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC);
    t.map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// Bytes of boot-error text (a traceback's tail) one slot can carry.
pub const ERROR_TEXT: usize = 4096;

/// The mapping. Created once, never unmapped (it lives as long as the process).
///
/// Layout: `MAX_SLOTS` [`Slot`]s, then `MAX_SLOTS` error-text areas of
/// [`ERROR_TEXT`] bytes, each written only by its worker before it exits
/// and read by the master after reaping it (the pages are touched only on
/// use, so the area costs nothing until a worker fails).
#[derive(Clone)]
pub struct Scoreboard {
    base: NonNull<Slot>,
}

// SAFETY: the mapping is only ever accessed through atomics, and it is never
// unmapped, so the pointer may move to and be shared with any thread.
unsafe impl Send for Scoreboard {}
// SAFETY: as for Send: every access to the shared pages is atomic.
unsafe impl Sync for Scoreboard {}

impl Scoreboard {
    pub fn new() -> nix::Result<Scoreboard> {
        use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
        let len = std::num::NonZeroUsize::new(Self::len()).ok_or(nix::errno::Errno::EINVAL)?;
        // SAFETY: a fresh anonymous mapping, zero-filled by the kernel; an
        // all-zero Slot is a valid value (atomics and integers).
        let p = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )?
        };
        Ok(Scoreboard { base: p.cast() })
    }

    fn len() -> usize {
        MAX_SLOTS * (std::mem::size_of::<Slot>() + ERROR_TEXT)
    }

    fn error_area(&self, i: usize) -> *mut u8 {
        assert!(i < MAX_SLOTS, "scoreboard slot out of range");
        // SAFETY: the error areas follow the slots inside the same mapping.
        unsafe {
            (self.base.as_ptr() as *mut u8)
                .add(MAX_SLOTS * std::mem::size_of::<Slot>() + i * ERROR_TEXT)
        }
    }

    /// Worker side: leave why it could not boot (the tail of `text`).
    pub fn set_error(&self, i: usize, text: &str) {
        let b = text.as_bytes();
        let tail = &b[b.len().saturating_sub(ERROR_TEXT - 4)..];
        let p = self.error_area(i);
        // SAFETY: the area is ERROR_TEXT bytes long and only this worker
        // writes it; the master reads it only after the worker has exited.
        unsafe {
            std::ptr::copy_nonoverlapping((tail.len() as u32).to_le_bytes().as_ptr(), p, 4);
            std::ptr::copy_nonoverlapping(tail.as_ptr(), p.add(4), tail.len());
        }
    }

    /// Master side: take the error text a dead worker left (and clear it).
    pub fn take_error(&self, i: usize) -> Option<String> {
        let p = self.error_area(i);
        // SAFETY: see set_error; the writer has exited.
        unsafe {
            let mut len = [0u8; 4];
            std::ptr::copy_nonoverlapping(p, len.as_mut_ptr(), 4);
            let len = (u32::from_le_bytes(len) as usize).min(ERROR_TEXT - 4);
            if len == 0 {
                return None;
            }
            let text = std::slice::from_raw_parts(p.add(4), len);
            let s = String::from_utf8_lossy(text).into_owned();
            std::ptr::write_bytes(p, 0, 4);
            Some(s)
        }
    }

    /// Master side, on reaping a worker: it takes no more connections (one
    /// killed outright could not say so itself).
    pub fn vacate(&self, i: usize) {
        let slot = self.slot(i);
        slot.accepting.store(0, Ordering::Relaxed);
        slot.conns.store(0, Ordering::Relaxed);
    }

    pub fn slot(&self, i: usize) -> &Slot {
        assert!(i < MAX_SLOTS, "scoreboard slot out of range");
        // SAFETY: i is in range of the mapping, which is never unmapped.
        unsafe { &*self.base.as_ptr().add(i) }
    }
}
