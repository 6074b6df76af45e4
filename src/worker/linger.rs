//! The lingering close of a connection the app took over (`gunicorn.socket`:
//! websockets through Flask-Sock and the like).
//!
//! Such a connection has two kinds of descriptor: the server's own, and the
//! app's duplicate. Whichever closes last ends the TCP connection, and a
//! close with bytes the client sent still unread answers with a reset,
//! which can destroy the app's last bytes (a websocket's close frame) before
//! the client reads them: the client sees an abnormal close (1006). So the
//! last one closes the way Gunicorn's and Nginx's lingering close do: a FIN,
//! then what the client still sends is read and dropped until it closes or
//! [`LINGER`] passes.
//!
//! Which one is last is decided under the claim's lock ([`Release`]): the
//! server, leaving the request, lingers on its own descriptor when the app
//! has already closed its socket; otherwise the app's close, later, hands a
//! duplicate of its descriptor to [`spawn`], which lingers on the worker's
//! I/O runtime.

use nix::sys::socket::SockaddrLike;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a lingering close reads what the client still sends.
pub const LINGER: Duration = Duration::from_secs(2);

/// The worker's I/O runtime, for the closes that happen on the app's
/// threads (set once the runtime exists).
static IO_RUNTIME: OnceLock<tokio::runtime::Handle> = OnceLock::new();

pub fn set_runtime(handle: tokio::runtime::Handle) {
    let _ = IO_RUNTIME.set(handle);
}

/// Who closes a taken-over connection last, for one request's socket.
#[derive(Debug, Default, Clone, Copy)]
pub struct Release {
    /// The app closed its socket, and no other descriptor of it is left in
    /// Python.
    released: bool,
    /// The app made a descriptor the server does not see (`dup()`,
    /// `detach()`): nobody knows which close is the last, nobody lingers.
    escaped: bool,
    /// The request is over and the server closed its own descriptor
    /// without lingering: the app's close is the last.
    server_left: bool,
}

impl Release {
    /// The app closes its socket: true when its descriptor is the last and
    /// the caller must linger on a duplicate of it.
    pub fn app_closing(&mut self) -> bool {
        self.released = !self.escaped;
        self.released && self.server_left
    }

    pub fn app_escaped(&mut self) {
        self.escaped = true;
        self.released = false;
    }

    /// The server leaves a taken-over connection: true when the app's
    /// socket is closed already, so the server's descriptor is the last
    /// and it lingers on it.
    pub fn server_leaves(&mut self) -> bool {
        if self.released {
            return true;
        }
        self.server_left = true;
        false
    }
}

/// The app closes `fd`, the last descriptor of a connection the server has
/// left: linger on a duplicate of it on the I/O runtime (the app closes its
/// own right after). Without a runtime (the worker is going away), nothing.
pub fn spawn(fd: RawFd) {
    let Some(rt) = IO_RUNTIME.get() else {
        return;
    };
    // SAFETY: the app's socket keeps `fd` open during this call (it is
    // closing it and calls us first).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let Ok(dup) = borrowed.try_clone_to_owned() else {
        return;
    };
    if nonblocking(&dup).is_err() {
        return;
    }
    let raw = dup.as_raw_fd();
    let unix = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(raw)
        .map(|a| a.family() == Some(nix::sys::socket::AddressFamily::Unix))
        .unwrap_or(false);
    rt.spawn(async move {
        if unix {
            let std = std::os::unix::net::UnixStream::from(dup);
            if let Ok(mut s) = tokio::net::UnixStream::from_std(std) {
                close(raw, &mut s).await;
            }
        } else {
            let std = std::net::TcpStream::from(dup);
            if let Ok(mut s) = tokio::net::TcpStream::from_std(std) {
                close(raw, &mut s).await;
            }
        }
    });
}

/// The app set the connection blocking (Gunicorn's socket is); the last
/// descriptor is the server's alone now, and must not block its runtime.
fn nonblocking(fd: &impl AsFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The server's own descriptor is the last: a FIN, then read and drop
/// what the client sends until it closes or [`LINGER`] passes.
pub async fn close<S: AsyncRead + Unpin>(fd: RawFd, s: &mut S) {
    // SAFETY: `s` owns `fd` and keeps it open for this call.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    // Read below only when ready: a descriptor the app set blocking would
    // otherwise stall the runtime on a stale readiness.
    let _ = nonblocking(&borrowed);
    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write);
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_to_close_lingers_and_only_one_does() {
        // The app closes first: the server lingers when it leaves.
        let mut r = Release::default();
        assert!(!r.app_closing());
        assert!(r.server_leaves());
        // The server leaves first: the app's close lingers.
        let mut r = Release::default();
        assert!(!r.server_leaves());
        assert!(r.app_closing());
        // A descriptor the server cannot see: nobody lingers.
        let mut r = Release::default();
        r.app_escaped();
        assert!(!r.server_leaves());
        assert!(!r.app_closing());
    }
}
