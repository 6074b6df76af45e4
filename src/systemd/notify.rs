//! `sd_notify(3)`: the datagrams the master sends to the service manager
//! (READY, RELOADING, STOPPING, STATUS, WATCHDOG, MAINPID,
//! EXTEND_TIMEOUT_USEC, FDSTORE, FDSTOREREMOVE).
//!
//! Why not the `sd-notify` crate: it connects with
//! `UnixDatagram::send_to(path)`, which cannot address an abstract socket
//! (`NOTIFY_SOCKET=@name`, what systemd uses inside containers and what
//! `systemd-run --user` hands out), and it cannot pass file descriptors for
//! the fd store. This module sends with `sendmsg(2)` to a `UnixAddr` that
//! is either a path or an abstract name, with `SCM_RIGHTS` when a
//! descriptor goes along. It is about a hundred lines and has no state
//! besides the socket.
//!
//! Only the master notifies: the socket is close-on-exec and the
//! environment variables are removed before any worker exists (see
//! [`super::env`]).

use nix::sys::socket::{
    sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    sock: OwnedFd,
    addr: UnixAddr,
    /// The `NOTIFY_SOCKET` value, for messages and for a re-exec'd master.
    socket_name: String,
}

/// Parse a `NOTIFY_SOCKET` value: an absolute path, or `@name` for an
/// abstract socket.
pub fn parse_notify_socket(value: &str) -> io::Result<UnixAddr> {
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={value:?}: {why}"),
        )
    };
    if let Some(name) = value.strip_prefix('@') {
        if name.is_empty() {
            return Err(invalid("empty abstract socket name"));
        }
        UnixAddr::new_abstract(name.as_bytes()).map_err(io::Error::from)
    } else if value.starts_with('/') {
        UnixAddr::new(value).map_err(io::Error::from)
    } else {
        Err(invalid(
            "neither an absolute path nor an abstract (@) name (vsock is not supported)",
        ))
    }
}

impl Notifier {
    /// A notifier for the socket named by a `NOTIFY_SOCKET` value.
    pub fn new(notify_socket: &str) -> io::Result<Notifier> {
        let addr = parse_notify_socket(notify_socket)?;
        let sock = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        Ok(Notifier {
            sock,
            addr,
            socket_name: notify_socket.to_string(),
        })
    }

    /// The notifier for this process, from the `NOTIFY_SOCKET` captured at
    /// start ([`super::env::Environment`]); `None` when not run by a
    /// service manager (or when the value is unusable, which is logged).
    pub fn from_env() -> Option<Notifier> {
        let value = super::env::get().notify_socket.as_deref()?;
        match Notifier::new(value) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!("not notifying the service manager: {e}");
                None
            }
        }
    }

    /// The `NOTIFY_SOCKET` value this notifier sends to.
    pub fn socket_name(&self) -> &str {
        &self.socket_name
    }

    /// Send one datagram of newline-separated `KEY=VALUE` assignments.
    pub fn send(&self, state: &str) -> io::Result<()> {
        self.send_with_fd(state, None)
    }

    fn send_with_fd(&self, state: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let iov = [IoSlice::new(state.as_bytes())];
        let fds = fd.map(|f| [f.as_raw_fd()]);
        let cmsgs: Vec<ControlMessage<'_>> = match &fds {
            Some(f) => vec![ControlMessage::ScmRights(f)],
            None => Vec::new(),
        };
        loop {
            match sendmsg(
                self.sock.as_raw_fd(),
                &iov,
                &cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                Some(&self.addr),
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `READY=1`: startup (or a reload) is complete, requests are served.
    pub fn ready(&self) -> io::Result<()> {
        self.send("READY=1")
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (CLOCK_MONOTONIC now), in one
    /// datagram, as `Type=notify-reload` requires.
    pub fn reloading(&self) -> io::Result<()> {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    /// `STOPPING=1`: a stop has begun.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    /// `STATUS=`: one line of free text shown by `systemctl status`.
    pub fn status(&self, text: &str) -> io::Result<()> {
        // A newline would end the assignment; keep the status one line.
        let line: String = text
            .chars()
            .map(|c| if c == '\n' { ' ' } else { c })
            .collect();
        self.send(&format!("STATUS={line}"))
    }

    /// `WATCHDOG=1`: the keep-alive ping.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    /// `MAINPID=`: the service's main process is now `pid` (after a
    /// SIGUSR2 re-exec).
    pub fn mainpid(&self, pid: i32) -> io::Result<()> {
        self.send(&format!("MAINPID={pid}"))
    }

    /// `EXTEND_TIMEOUT_USEC=`: give the current start, reload or stop
    /// `by` more time, counted from now.
    pub fn extend_timeout(&self, by: Duration) -> io::Result<()> {
        self.send(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()))
    }

    /// `FDSTORE=1` with `FDNAME=`: keep `fd` for our next start.
    pub fn fdstore(&self, fd: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        self.send_with_fd(&format!("FDSTORE=1\nFDNAME={name}"), Some(fd))
    }

    /// `FDSTOREREMOVE=1` with `FDNAME=`: drop a stored descriptor.
    pub fn fdstore_remove(&self, name: &str) -> io::Result<()> {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"))
    }
}

/// CLOCK_MONOTONIC now, in microseconds (what `MONOTONIC_USEC=` carries).
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

/// The watchdog interval the manager expects pings within: `WATCHDOG_USEC`,
/// when `WATCHDOG_PID` is unset or names `pid`.
pub fn watchdog_interval(
    watchdog_usec: Option<&str>,
    watchdog_pid: Option<&str>,
    pid: u32,
) -> Option<Duration> {
    if let Some(p) = watchdog_pid {
        if p.trim().parse::<u32>().ok() != Some(pid) {
            return None;
        }
    }
    let usec: u64 = watchdog_usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn parses_path_and_abstract_sockets() {
        assert!(parse_notify_socket("/run/systemd/notify").is_ok());
        let a = parse_notify_socket("@foo/bar").expect("abstract");
        assert_eq!(a.as_abstract(), Some(&b"foo/bar"[..]));
        for bad in ["", "@", "relative", "vsock:2:1234"] {
            assert!(parse_notify_socket(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn watchdog_honours_pid() {
        let d = Some(Duration::from_secs(2));
        assert_eq!(watchdog_interval(Some("2000000"), None, 7), d);
        assert_eq!(watchdog_interval(Some("2000000"), Some("7"), 7), d);
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("rgunicorn-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes());
        use std::os::linux::net::SocketAddrExt;
        let addr = addr.expect("abstract address");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind");
        let n = Notifier::new(&format!("@{name}")).expect("notifier");
        n.reloading().expect("send");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).expect("recv");
        let text = String::from_utf8_lossy(&buf[..len]).to_string();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
    }
}
