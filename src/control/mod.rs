//! The control interface: a Unix socket in the master that speaks
//! newline-delimited JSON, and the pieces `rgunicornctl` shares with it.
//!
//! - [`protocol`]: the wire types (requests, responses, error codes, the
//!   status and health payloads) used by both the server and the client, so
//!   the two cannot drift apart. No Python, no I/O.
//! - [`path`]: where the socket lives by default, computed the same way by
//!   the server (to bind) and the client (to find it).
//! - [`prometheus`]: `metrics` as Prometheus text, for `rgunicornctl`.
//! - [`server`]: a non-blocking, single-threaded server driven by the
//!   master's `poll(2)` loop. It checks each caller's credentials, frames and
//!   parses requests, and calls the [`server::Master`] trait, which the
//!   arbiter implements.
//!
//! The protocol is documented for users in `docs/control-protocol.md`.
//!
//! This module must never use pyo3: `rgunicornctl` links it and must not
//! link libpython.

pub mod path;
pub mod prometheus;
pub mod protocol;
pub mod server;

use std::os::fd::{FromRawFd, OwnedFd};

/// The name a socket-activated control socket carries in `LISTEN_FDNAMES`
/// (systemd: `FileDescriptorName=control` in the `.socket` unit).
pub const ACTIVATION_NAME: &str = "control";

/// The socket-activated descriptor named [`ACTIVATION_NAME`], when systemd
/// passed one to this process (`LISTEN_PID`, `LISTEN_FDS`,
/// `LISTEN_FDNAMES`). Call it once: the descriptor is owned afterwards.
pub fn activated_listener(env: &dyn Fn(&str) -> Option<String>) -> Option<OwnedFd> {
    const SD_LISTEN_FDS_START: i32 = 3;
    let pid: u32 = env("LISTEN_PID")?.trim().parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let n: i32 = env("LISTEN_FDS")?.trim().parse().ok()?;
    let names = env("LISTEN_FDNAMES")?;
    let i = names.split(':').position(|n| n == ACTIVATION_NAME)?;
    let i = i32::try_from(i).ok()?;
    if i >= n {
        return None;
    }
    let fd = SD_LISTEN_FDS_START + i;
    // It must really be a listening Unix stream socket.
    let is_unix_listener = nix::sys::socket::getsockopt(
        // SAFETY: only borrowed for the check; fd is open (systemd passed it).
        &unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::sys::socket::sockopt::AcceptConn,
    )
    .unwrap_or(false);
    if !is_unix_listener {
        return None;
    }
    // SAFETY: systemd passed this descriptor to this process (LISTEN_PID)
    // under the name "control"; nothing else in rgunicorn adopts named
    // "control" descriptors, so ownership is taken exactly once.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}
