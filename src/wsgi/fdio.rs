//! Blocking I/O on a connection's (non-blocking) socket descriptor, for the
//! thread that runs the app: wait with `poll(2)` (bounded by a timeout),
//! then read or send. Callers release the GIL around these calls.
//!
//! The descriptor belongs to the connection's async task, which is parked
//! awaiting this request's outcome and does not touch the socket until the
//! request is done; so the descriptor stays open and unshared while we use it.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::{Duration, Instant};

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
