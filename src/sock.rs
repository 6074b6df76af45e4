//! Listening sockets: parsing Gunicorn's `--bind` forms and creating the
//! listeners the master owns and every worker inherits.
//!
//! Accepted forms, as Gunicorn accepts them: `HOST:PORT`, `HOST` (port
//! 8000), `[IPv6]:PORT`, `unix:PATH`, `fd://N`.

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

/// One `--bind` value, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindAddr {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
    Fd(RawFd),
}

impl BindAddr {
    /// Parse a `--bind` value the way Gunicorn does.
    pub fn parse(s: &str) -> Result<BindAddr> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                bail!("bind `{s}`: empty unix socket path");
            }
            return Ok(BindAddr::Unix(PathBuf::from(path)));
        }
        if let Some(n) = s.strip_prefix("fd://") {
            let fd: RawFd =
                n.parse().ok().filter(|fd| *fd >= 0).with_context(|| {
                    format!("bind `{s}`: `{n}` is not a file descriptor number")
                })?;
            return Ok(BindAddr::Fd(fd));
        }
        if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .with_context(|| format!("bind `{s}`: missing `]` after an IPv6 address"))?;
            let port = match after {
                "" => 8000,
                p => parse_port(s, p.strip_prefix(':').unwrap_or(p))?,
            };
            host.parse::<std::net::Ipv6Addr>()
                .with_context(|| format!("bind `{s}`: `{host}` is not an IPv6 address"))?;
            return Ok(BindAddr::Tcp {
                host: host.to_string(),
                port,
            });
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => Ok(BindAddr::Tcp {
                host: host.to_string(),
                port: parse_port(s, port)?,
            }),
            Some(_) => bail!("bind `{s}`: write IPv6 addresses in brackets, e.g. [::1]:8000"),
            None if s.is_empty() => bail!("bind: empty address"),
            None => Ok(BindAddr::Tcp {
                host: s.to_string(),
                port: 8000,
            }),
        }
    }
}

fn parse_port(whole: &str, p: &str) -> Result<u16> {
    p.parse::<u16>()
        .with_context(|| format!("bind `{whole}`: `{p}` is not a port number (0-65535)"))
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            BindAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            BindAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            BindAddr::Fd(fd) => write!(f, "fd://{fd}"),
        }
    }
}

/// What kind of socket a listener is; decides REMOTE_ADDR handling and
/// whether the path is removed at exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerKind {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A bound, listening socket owned by the master.
#[derive(Debug)]
pub struct Listener {
    pub fd: OwnedFd,
    pub kind: ListenerKind,
    /// Remove the socket file at exit (we created it).
    pub unlink_on_exit: bool,
    /// Another process holds this socket too (the service manager's socket
    /// unit or fd store, an `fd://` parent): a stop must leave it
    /// listening, since `shutdown(2)` on a listening socket would close it
    /// for them as well.
    pub shared: bool,
    /// The `--bind` entry it was opened for (a reload that drops the entry
    /// closes it); None when it was handed to us (socket activation, a
    /// parent master's USR2), which a reload leaves alone.
    pub bind: Option<String>,
}

impl Listener {
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Connections waiting in the accept queue of a TCP listener: on a
    /// listening socket, TCP_INFO's `tcpi_unacked` is that queue's length
    /// (Gunicorn's `get_backlog`, `ss -lt`'s Recv-Q). None for a Unix
    /// socket, or when it cannot be read.
    pub fn backlog(&self) -> Option<u32> {
        if !matches!(self.kind, ListenerKind::Tcp(_)) {
            return None;
        }
        // SAFETY: tcp_info is plain integers, for which all zeroes is a
        // valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt on our own open socket, writing at most `len`
        // bytes into `info`, which is that large.
        let r = unsafe {
            libc::getsockopt(
                self.raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        let wrote_unacked = len as usize >= std::mem::offset_of!(libc::tcp_info, tcpi_unacked) + 4;
        (r == 0 && wrote_unacked).then_some(info.tcpi_unacked)
    }

    /// Human-readable address, as Gunicorn logs it ("Listening at: ...").
    pub fn describe(&self) -> String {
        match &self.kind {
            ListenerKind::Tcp(a) => format!("http://{a}"),
            ListenerKind::Unix(p) => format!("unix:{}", p.display()),
        }
    }

    /// SERVER_NAME and SERVER_PORT for the WSGI environ when the request has
    /// no Host header.
    pub fn server_name_port(&self) -> (String, String) {
        match &self.kind {
            ListenerKind::Tcp(a) => (a.ip().to_string(), a.port().to_string()),
            ListenerKind::Unix(p) => (p.display().to_string(), String::new()),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Only the process that created the file removes it; workers forget
        // their copies with mem::forget or never own a Listener.
        if self.unlink_on_exit {
            if let ListenerKind::Unix(p) = &self.kind {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Options shared by every bind.
#[derive(Debug, Clone, Copy)]
pub struct BindOptions {
    pub backlog: i32,
    pub reuse_port: bool,
    /// `--umask`, applied while a Unix socket file is created (as Gunicorn).
    pub umask: u32,
    /// Owner given to Unix socket files (`--user`/`--group`), so workers
    /// that dropped privileges can still use them.
    pub owner: Option<(Option<nix::unistd::Uid>, Option<nix::unistd::Gid>)>,
}

/// Create (or adopt) the listener for one bind address.
pub fn bind(addr: &BindAddr, opts: BindOptions) -> Result<Vec<Listener>> {
    match addr {
        BindAddr::Tcp { host, port } => {
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, *port)],
                Err(_) => (host.as_str(), *port)
                    .to_socket_addrs()
                    .with_context(|| format!("bind {addr}: cannot resolve `{host}`"))?
                    .collect(),
            };
            let first = addrs
                .first()
                .with_context(|| format!("bind {addr}: `{host}` resolves to no address"))?;
            // Gunicorn binds the first address a name resolves to.
            Ok(vec![
                bind_tcp(*first, opts).with_context(|| format!("cannot bind {addr}"))?
            ])
        }
        BindAddr::Unix(path) => Ok(vec![
            bind_unix(path, opts).with_context(|| format!("cannot bind {addr}"))?
        ]),
        BindAddr::Fd(fd) => Ok(vec![
            adopt_fd(*fd).with_context(|| format!("cannot use {addr}"))?
        ]),
    }
}

fn bind_tcp(addr: SocketAddr, opts: BindOptions) -> Result<Listener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if opts.reuse_port {
        sock.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        // As Gunicorn: an IPv6 bind serves IPv6 only, so `-b [::]:80 -b 0.0.0.0:80` works.
        sock.set_only_v6(true)?;
    }
    sock.bind(&SockAddr::from(addr))?;
    set_defer_accept(&sock);
    sock.listen(opts.backlog)?;
    let local = sock
        .local_addr()?
        .as_socket()
        .context("bound TCP socket has no IP address")?;
    Ok(Listener {
        fd: OwnedFd::from(sock),
        kind: ListenerKind::Tcp(local),
        unlink_on_exit: false,
        shared: false,
        bind: None,
    })
}

/// TCP_DEFER_ACCEPT: wake an accepting worker only once the client has sent
/// something (HTTP clients speak first). A sync worker then reads the
/// request at accept time and is busy with it before it could accept a
/// second client that another, idle worker should take.
fn set_defer_accept(sock: &Socket) {
    let secs: libc::c_int = 1;
    // SAFETY: setsockopt on our own socket with a c_int option value of the
    // right size; failure only means the option is not applied.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!(
            "TCP_DEFER_ACCEPT not applied: {}",
            std::io::Error::last_os_error()
        );
    }
}

fn bind_unix(path: &std::path::Path, opts: BindOptions) -> Result<Listener> {
    // A socket file left behind by a killed server would make bind fail with
    // EADDRINUSE; remove it when nothing listens there any more. Never
    // remove something that is not a socket.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("{} exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another server", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let sock = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(
        opts.umask as libc::mode_t,
    ));
    let bound = sock.bind(&SockAddr::unix(path)?);
    nix::sys::stat::umask(old);
    bound?;
    if let Some((uid, gid)) = opts.owner {
        nix::unistd::chown(path, uid, gid)
            .with_context(|| format!("cannot chown {}", path.display()))?;
    }
    sock.listen(opts.backlog)?;
    Ok(Listener {
        fd: OwnedFd::from(sock),
        kind: ListenerKind::Unix(path.to_path_buf()),
        unlink_on_exit: true,
        shared: false,
        bind: None,
    })
}

/// Adopt an inherited, already listening socket (`fd://N`, socket activation).
pub fn adopt_fd(fd: RawFd) -> Result<Listener> {
    // Check the descriptor is open before taking ownership of it.
    // SAFETY: borrowed only for this one fcntl(2); F_GETFD on a closed
    // descriptor fails with EBADF and touches nothing.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFD)
        .with_context(|| format!("file descriptor {fd} is not open"))?;
    // SAFETY: the descriptor is open (checked above) and handed to us by our
    // parent for exactly this purpose; nothing else in this process owns it.
    let sock = unsafe { Socket::from_raw_fd(fd) };
    let ty = sock.r#type();
    if !matches!(ty, Ok(t) if t == Type::STREAM) {
        std::mem::forget(sock);
        bail!("file descriptor {fd} is not a stream socket");
    }
    let local = sock.local_addr()?;
    let kind = if let Some(a) = local.as_socket() {
        ListenerKind::Tcp(a)
    } else {
        let p = local
            .as_pathname()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from(format!("fd://{fd}")));
        ListenerKind::Unix(p)
    };
    // Make sure it listens (listen() on a listening socket only updates the backlog).
    if !sock.is_listener().unwrap_or(false) {
        sock.listen(2048)?;
    }
    sock.set_cloexec(true)?;
    Ok(Listener {
        fd: OwnedFd::from(sock),
        kind,
        unlink_on_exit: false,
        shared: true,
        bind: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_gunicorn_bind_forms() {
        let t = |h: &str, p| BindAddr::Tcp {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            BindAddr::parse("0.0.0.0:8000").ok(),
            Some(t("0.0.0.0", 8000))
        );
        assert_eq!(
            BindAddr::parse("localhost").ok(),
            Some(t("localhost", 8000))
        );
        assert_eq!(BindAddr::parse("[::1]:9000").ok(), Some(t("::1", 9000)));
        assert_eq!(BindAddr::parse("[::1]").ok(), Some(t("::1", 8000)));
        assert_eq!(
            BindAddr::parse("unix:/tmp/x.sock").ok(),
            Some(BindAddr::Unix("/tmp/x.sock".into()))
        );
        assert_eq!(BindAddr::parse("fd://3").ok(), Some(BindAddr::Fd(3)));
        for bad in [
            "", "unix:", "fd://x", "fd://-1", "h:99999", "::1:80", "[::1", "[zz]:1",
        ] {
            assert!(BindAddr::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
