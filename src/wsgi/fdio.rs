//! Blocking I/O on a connection's (non-blocking) socket descriptor, for the
//! thread that runs the app: wait with `poll(2)` (bounded by a timeout),
//! then read or send. Callers go through [`blocking`], which releases the
//! GIL around these calls.
//!
//! A worker whose requests run as greenlets on one thread (gevent) sets a
//! cooperative wait once ([`set_cooperative`]): then the GIL is kept (the
//! hub needs it, and pyo3's GIL bookkeeping is per thread, not per
//! greenlet, so it must not be released across a greenlet switch) and each
//! wait calls the Python function given (`gevent.socket.wait_read` /
//! `wait_write`), which blocks only the calling greenlet. The reads and
//! sends themselves are the same non-blocking calls either way.
//!
//! The descriptor belongs to the connection's async task, which is parked
//! awaiting this request's outcome and does not touch the socket until the
//! request is done; so the descriptor stays open and unshared while we use it.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};
use pyo3::marker::Ungil;
use pyo3::prelude::*;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `wait(fd, for_write, timeout_seconds)`, when requests run as greenlets.
static COOPERATIVE: OnceLock<Py<PyAny>> = OnceLock::new();

/// From now on, this process waits for clients through `wait` (see the
/// module comment). Set once, before the first request.
pub fn set_cooperative(wait: Py<PyAny>) {
    let _ = COOPERATIVE.set(wait);
}

/// Requests run as greenlets (set by [`set_cooperative`]).
pub fn cooperative() -> bool {
    COOPERATIVE.get().is_some()
}

/// Run `f`, which may wait for the client through this module: with the
/// GIL released, or, when waits are cooperative, holding it.
pub fn blocking<R: Ungil>(py: Python<'_>, f: impl FnOnce() -> R + Ungil) -> R {
    if COOPERATIVE.get().is_some() {
        f()
    } else {
        py.detach(f)
    }
}

/// A cooperative wait: the Python function blocks this greenlet only. An
/// exception it raises (a timeout, or one thrown into the greenlet, such as
/// `gevent.Timeout`) comes back inside the `io::Error`, and turns back into
/// the same exception where the error reaches Python.
fn wait_cooperative(wait: &Py<PyAny>, fd: RawFd, write: bool, left: Duration) -> io::Result<()> {
    // The caller holds the GIL (`blocking` did not release it): this only
    // counts the nesting.
    Python::attach(|py| {
        wait.call1(py, (fd, write, left.as_secs_f64()))
            .map(|_| ())
            .map_err(io::Error::from)
    })
}

fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: see the module comment: the connection task keeps the socket
    // open for as long as the request that uses this descriptor runs.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

fn wait(fd: RawFd, flags: PollFlags, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out waiting for the client",
            ));
        }
        if let Some(w) = COOPERATIVE.get() {
            return wait_cooperative(w, fd, flags.contains(PollFlags::POLLOUT), left);
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(borrow(fd), flags)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Read at least one byte (0 = end of stream), waiting up to `timeout`.
pub fn read(fd: RawFd, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        match nix::unistd::read(borrow(fd), buf) {
            Ok(n) => return Ok(n),
            Err(nix::errno::Errno::EAGAIN) => wait(fd, PollFlags::POLLIN, deadline)?,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Send what the socket takes right now, without waiting.
pub fn try_send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let mut off = 0;
    while off < data.len() {
        match send(fd, &data[off..], MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => off += n,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(off)
}

/// Send all of `data`, waiting up to `timeout` for the client each time it
/// stops taking bytes.
pub fn send_all(fd: RawFd, data: &[u8], timeout: Duration) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        match send(fd, &data[off..], MsgFlags::MSG_NOSIGNAL) {
            Ok(n) => off += n,
            Err(nix::errno::Errno::EAGAIN) => {
                wait(fd, PollFlags::POLLOUT, Instant::now() + timeout)?
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Copy `count` bytes of the file `file_fd` from `offset` to the socket with
/// sendfile(2).
pub fn sendfile_all(
    fd: RawFd,
    file_fd: RawFd,
    mut offset: i64,
    mut count: u64,
    timeout: Duration,
) -> io::Result<u64> {
    let mut sent = 0u64;
    while count > 0 {
        let chunk = usize::try_from(count.min(1 << 30)).unwrap_or(1 << 30);
        match nix::sys::sendfile::sendfile(borrow(fd), borrow(file_fd), Some(&mut offset), chunk) {
            Ok(0) => break, // the file is shorter than promised
            Ok(n) => {
                sent += n as u64;
                count -= n as u64;
            }
            Err(nix::errno::Errno::EAGAIN) => {
                wait(fd, PollFlags::POLLOUT, Instant::now() + timeout)?
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(sent)
}
