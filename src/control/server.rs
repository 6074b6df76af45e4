//! The control socket's server: non-blocking and single-threaded, driven by
//! the master's `poll(2)` loop. It owns no thread and never blocks; the
//! master asks it which descriptors to watch ([`ControlServer::poll_fds`])
//! and until when ([`ControlServer::next_deadline`]), then hands it what
//! became ready ([`ControlServer::on_ready`]) and calls
//! [`ControlServer::on_timer`] on every turn.
//!
//! Commands are carried out through the [`Master`] trait, which the arbiter
//! implements (and the unit tests fake). A `reload` that waits for the new
//! generation is answered later, when the master calls
//! [`ControlServer::complete_reload`].
//!
//! Invariants that keep the master's loop safe from its clients:
//! - every socket is non-blocking; a read or a write that would block waits
//!   for the next `poll`;
//! - a request line is at most [`MAX_LINE`] bytes: the length of the
//!   partial line is checked before more is read; a longer line gets
//!   `line_too_long` and the connection is closed;
//! - at most [`ServerOptions::max_clients`] connections; one more gets
//!   `too_many_clients` (best effort) and is closed at once;
//! - a client that sends no complete request, or does not read its
//!   answers, for [`ServerOptions::idle_timeout`] gets `idle_timeout` and is
//!   closed; one waiting for a reload is exempt (the master bounds reloads);
//! - a client's unsent answers are buffered; past [`WBUF_CAP`] its requests
//!   are not read until it has read its answers.
//!
//! Access: the peer's kernel credentials (`SO_PEERCRED`, and its
//! supplementary groups via `SO_PEERGROUPS`) are checked once per
//! connection, see [`access_of`].

use super::protocol::{
    parse_request, Access, Command, ErrorBody, ErrorCode, HealthData, MetricsData, ReloadOutcome,
    ReloadStatus, Response, ScaleData, ScaleTo, StatusData, StopData, WorkerKillData, MAX_LINE,
};
use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::stat::Mode;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Unsent answers above this size stop the reading of a client's requests.
pub const WBUF_CAP: usize = 1 << 20;

/// How much one read takes from a client.
const READ_CHUNK: usize = 64 * 1024;

/// Connections accepted per wake-up, so a flood cannot starve the loop.
const ACCEPTS_PER_WAKEUP: usize = 64;

/// What the arbiter does for the control socket. Each method is the very
/// method the matching signal calls (SIGHUP → `reload`, SIGTTIN → `scale`,
/// SIGTERM → `stop`, SIGUSR1 → `reopen_logs`).
pub trait Master {
    /// Live figures for `status`.
    fn status(&mut self) -> StatusData;
    /// Fitness for traffic, for `health`.
    fn health(&mut self) -> HealthData;
    /// Counters and gauges for `metrics`.
    fn metrics(&mut self) -> MetricsData;
    /// Start a reload. `in_progress` defers a waiting client's answer until
    /// [`ControlServer::complete_reload`] reports that generation; any other
    /// status is answered at once.
    fn reload(&mut self) -> Result<ReloadOutcome, ErrorBody>;
    /// Change the target number of workers (never below 1).
    fn scale(&mut self, to: ScaleTo) -> Result<ScaleData, ErrorBody>;
    /// Stop, gracefully or quickly.
    fn stop(&mut self, quick: bool) -> Result<StopData, ErrorBody>;
    /// Reopen log files in the master and the workers.
    fn reopen_logs(&mut self) -> Result<(), ErrorBody>;
    /// Stop one worker gracefully; the master replaces it.
    fn kill_worker(&mut self, pid: i32) -> Result<WorkerKillData, ErrorBody>;
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: another server is listening there")]
    InUse { path: PathBuf },
    #[error("control socket {path}: a file that is not a socket is in the way")]
    NotASocket { path: PathBuf },
    #[error("control socket directory {path}: {why}")]
    UnsafeDir { path: PathBuf, why: String },
    #[error("control socket {path}: cannot {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// How the server is set up.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub path: PathBuf,
    /// The socket file's mode (who may connect at all).
    pub mode: u32,
    /// Uids allowed everything (besides root and the server's own uid).
    pub allow_uid: Vec<u32>,
    /// Gids whose members are allowed everything.
    pub allow_gid: Vec<u32>,
    /// Gids whose members may only run read-only commands.
    pub readonly_gid: Vec<u32>,
    pub idle_timeout: Duration,
    pub max_clients: usize,
    /// Replace a socket even if a server still listens on it: a master
    /// re-executed by SIGUSR2 takes over from its parent, which leaves the
    /// file alone on exit because it is no longer its own.
    pub take_over: bool,
}

impl ServerOptions {
    /// Options with the defaults for everything but the path and mode.
    pub fn new(path: PathBuf, mode: u32) -> ServerOptions {
        ServerOptions {
            path,
            mode,
            allow_uid: Vec::new(),
            allow_gid: Vec::new(),
            readonly_gid: Vec::new(),
            idle_timeout: Duration::from_secs(10),
            max_clients: 128,
            take_over: false,
        }
    }
}

/// What a caller may do, from its uid and groups (primary first):
/// root and `server_uid` may do everything, as may `allow_uid` and members
/// of `allow_gid`; members of `readonly_gid` may run read-only commands;
/// anyone else nothing (`None`).
pub fn access_of(uid: u32, gids: &[u32], server_uid: u32, o: &ServerOptions) -> Option<Access> {
    let member = |list: &[u32]| gids.iter().any(|g| list.contains(g));
    if uid == 0 || uid == server_uid || o.allow_uid.contains(&uid) || member(&o.allow_gid) {
        Some(Access::Write)
    } else if member(&o.readonly_gid) {
        Some(Access::ReadOnly)
    } else {
        None
    }
}

/// The peer's credentials: (pid, uid, groups with the primary gid first).
fn peer_credentials(s: &UnixStream) -> std::io::Result<(i32, u32, Vec<u32>)> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let cred = getsockopt(s, PeerCredentials).map_err(std::io::Error::from)?;
    let mut gids = vec![cred.gid()];
    gids.extend(peer_groups(s.as_raw_fd()));
    Ok((cred.pid(), cred.uid(), gids))
}

/// The peer's supplementary groups (`SO_PEERGROUPS`, Linux 4.13+); empty
/// where unavailable.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "s390x",
        target_arch = "loongarch64"
    )
))]
fn peer_groups(fd: RawFd) -> Vec<u32> {
    // asm-generic/socket.h
    const SO_PEERGROUPS: libc::c_int = 59;
    let mut buf = vec![0 as libc::gid_t; 64];
    for _ in 0..2 {
        let mut len = (buf.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `buf` is valid for `len` bytes and outlives the call; the
        // kernel writes at most `len` bytes and updates `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            buf.truncate(n.min(buf.len()));
            return buf;
        }
        if Errno::last() != Errno::ERANGE || n <= buf.len() || n > 65536 {
            return Vec::new();
        }
        buf.resize(n, 0);
    }
    Vec::new()
}

#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "s390x",
        target_arch = "loongarch64"
    )
)))]
fn peer_groups(_fd: RawFd) -> Vec<u32> {
    Vec::new()
}

struct Client {
    stream: UnixStream,
    /// `None`: the caller may do nothing; its first request is refused.
    access: Option<Access>,
    uid: u32,
    pid: i32,
    rbuf: Vec<u8>,
    /// `rbuf[..scanned]` holds no newline.
    scanned: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    deadline: Instant,
    /// The peer shut its writing side: answer what was asked, then close.
    eof: bool,
    /// Close once `wbuf` is sent (after a fatal error, or EOF).
    closing: bool,
    /// A `reload` waiting for this generation: (request id, generation).
    waiting_reload: Option<(Value, u64)>,
    /// Requests may wait in `rbuf` (held back by a reload that is now
    /// answered): [`ControlServer::on_timer`] processes them.
    resume: bool,
}

impl Client {
    fn pending_out(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    fn push(&mut self, r: &Response) {
        if self.wpos > 0 && self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        self.wbuf.extend_from_slice(&r.to_line());
    }

    /// Write what the socket takes. Err: the connection is gone.
    fn flush(&mut self) -> std::io::Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Ok(())
    }

    /// Whether the client is done and may be dropped.
    fn finished(&self) -> bool {
        (self.closing || self.eof)
            && self.pending_out() == 0
            && self.waiting_reload.is_none()
            && !self.resume
    }
}

/// Where the socket came from, for clean-up.
enum Origin {
    /// Bound here: unlink on drop if the file is still this socket.
    Bound { dev: u64, ino: u64 },
    /// Handed over (socket activation): never unlinked.
    Inherited,
}

/// The control socket and its clients.
pub struct ControlServer {
    listener: UnixListener,
    opts: ServerOptions,
    origin: Origin,
    server_uid: u32,
    clients: BTreeMap<RawFd, Client>,
}

impl ControlServer {
    /// Create the socket at `opts.path`: make the private directory if the
    /// path is the per-user default, replace a stale socket file left by a
    /// killed server, refuse to replace a live one, and apply `opts.mode`.
    pub fn bind(opts: ServerOptions) -> Result<ControlServer, ControlError> {
        let path = opts.path.clone();
        let uid = nix::unistd::geteuid().as_raw();
        if let Some(dir) = path.parent() {
            if super::path::is_in_private_dir(&path, uid) {
                ensure_private_dir(dir, uid)?;
            }
        }
        if opts.take_over {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ControlError::Io {
                        path: path.clone(),
                        op: "replace",
                        source,
                    })
                }
            }
        }
        remove_stale(&path)?;
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| ControlError::Io { path, op, source }
        };
        // The master is single-threaded: the umask change is seen by no one
        // else. It makes the socket private from the very first instant.
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(&path);
        nix::sys::stat::umask(old);
        let listener = bound.map_err(io("bind"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(opts.mode & 0o7777))
            .map_err(io("set the mode of"))?;
        let meta = std::fs::symlink_metadata(&path).map_err(io("stat"))?;
        listener.set_nonblocking(true).map_err(io("configure"))?;
        Ok(ControlServer {
            listener,
            opts,
            origin: Origin::Bound {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            server_uid: uid,
            clients: BTreeMap::new(),
        })
    }

    /// Use an inherited listening socket (socket activation,
    /// `LISTEN_FDNAMES=control`); the file is left alone on exit.
    pub fn from_listener(fd: OwnedFd, opts: ServerOptions) -> Result<ControlServer, ControlError> {
        let listener = UnixListener::from(fd);
        listener
            .set_nonblocking(true)
            .map_err(|source| ControlError::Io {
                path: opts.path.clone(),
                op: "configure",
                source,
            })?;
        Ok(ControlServer {
            listener,
            opts,
            origin: Origin::Inherited,
            server_uid: nix::unistd::geteuid().as_raw(),
            clients: BTreeMap::new(),
        })
    }

    /// In a freshly forked worker: close the listener and every client
    /// connection (a worker holding them would keep a dead master's socket
    /// "alive"), without answering anyone or removing the file.
    pub fn close_in_child(mut self) {
        self.origin = Origin::Inherited;
        self.clients.clear();
    }

    /// The socket's path (as configured).
    pub fn path(&self) -> &Path {
        &self.opts.path
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// The descriptors to poll and for what. The listener comes last: the
    /// caller handles ready descriptors in this order, so clients that hung
    /// up in the same turn free their places before new ones are accepted
    /// (else a client connecting just after 128 others left would be told
    /// `too_many_clients`).
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut out = Vec::with_capacity(1 + self.clients.len());
        for c in self.clients.values() {
            let mut f = PollFlags::empty();
            let reading = !c.eof && !c.closing && c.waiting_reload.is_none();
            if reading && c.pending_out() < WBUF_CAP {
                f |= PollFlags::POLLIN;
            }
            if c.pending_out() > 0 {
                f |= PollFlags::POLLOUT;
            }
            out.push((c.stream.as_fd(), f));
        }
        out.push((self.listener.as_fd(), PollFlags::POLLIN));
        out
    }

    /// The earliest instant [`ControlServer::on_timer`] has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        self.clients
            .values()
            .filter(|c| c.waiting_reload.is_none())
            .map(|c| if c.resume { now } else { c.deadline })
            .min()
    }

    /// Handle `revents` on `fd` (one of [`ControlServer::poll_fds`]).
    pub fn on_ready(&mut self, fd: RawFd, revents: PollFlags, master: &mut dyn Master) {
        if revents.is_empty() {
            return;
        }
        if fd == self.listener.as_raw_fd() {
            self.accept_clients();
            return;
        }
        let Some(mut c) = self.clients.remove(&fd) else {
            return;
        };
        // POLLHUP on a Unix stream: the peer closed both directions. Its
        // last requests are still carried out, but nobody reads answers.
        let hup = revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL);
        let mut alive = true;
        if revents.contains(PollFlags::POLLOUT) && !hup {
            alive = self.write_some(&mut c);
        }
        if alive && (revents.contains(PollFlags::POLLIN) || hup) && !c.eof && !c.closing {
            // After a hang-up, read what is left (bounded by the line cap).
            let reads = if hup { (MAX_LINE / READ_CHUNK) + 2 } else { 1 };
            for _ in 0..reads {
                match read_some(&mut c) {
                    None => alive = false,
                    Some(0) => break,
                    Some(_) => {}
                }
                if !alive || c.eof || c.closing {
                    break;
                }
            }
            if hup {
                c.eof = true;
            }
        }
        if alive {
            self.process(&mut c, master);
            alive = !hup && self.write_some(&mut c);
        }
        if alive && !c.finished() {
            self.clients.insert(fd, c);
        }
    }

    /// Answer requests held back by a finished reload; close clients past
    /// their idle deadline.
    pub fn on_timer(&mut self, master: &mut dyn Master) {
        let resumed: Vec<RawFd> = self
            .clients
            .iter()
            .filter(|(_, c)| c.resume)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in resumed {
            if let Some(mut c) = self.clients.remove(&fd) {
                c.resume = false;
                self.process(&mut c, master);
                if self.write_some(&mut c) && !c.finished() {
                    self.clients.insert(fd, c);
                }
            }
        }
        let now = Instant::now();
        let expired: Vec<RawFd> = self
            .clients
            .iter()
            .filter(|(_, c)| c.waiting_reload.is_none() && now >= c.deadline)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in expired {
            if let Some(mut c) = self.clients.remove(&fd) {
                tracing::debug!("control: closing idle client (pid {})", c.pid);
                c.push(&Response::failure(
                    Value::Null,
                    ErrorBody::new(
                        ErrorCode::IdleTimeout,
                        format!(
                            "no complete request (or unread answers) for {} s; closing",
                            self.opts.idle_timeout.as_secs_f64()
                        ),
                    ),
                ));
                let _ = c.flush();
            }
        }
    }

    /// Answer the clients waiting for a reload up to `outcome.generation`
    /// (an older reload folded into a newer one gets the newer's outcome).
    /// `in_progress` and `superseded` outcomes answer no one.
    pub fn complete_reload(&mut self, outcome: &ReloadOutcome) {
        if matches!(
            outcome.status,
            ReloadStatus::InProgress | ReloadStatus::Superseded
        ) {
            return;
        }
        let fds: Vec<RawFd> = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(&c.waiting_reload, Some((_, g)) if *g <= outcome.generation))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in fds {
            if let Some(mut c) = self.clients.remove(&fd) {
                if let Some((id, _)) = c.waiting_reload.take() {
                    c.push(&reload_response(id, outcome.clone()));
                }
                c.resume = true;
                c.deadline = Instant::now() + self.opts.idle_timeout;
                if self.write_some(&mut c) && !c.finished() {
                    self.clients.insert(fd, c);
                }
            }
        }
    }

    /// The master is going away: tell reload waiters, send what can be
    /// sent without blocking.
    pub fn shutdown(&mut self) {
        for c in self.clients.values_mut() {
            if let Some((id, _)) = c.waiting_reload.take() {
                c.push(&Response::failure(
                    id,
                    ErrorBody::new(
                        ErrorCode::Stopping,
                        "the server stopped before the reload finished".into(),
                    ),
                ));
            }
            let _ = c.flush();
        }
        self.clients.clear();
    }

    fn accept_clients(&mut self) {
        for _ in 0..ACCEPTS_PER_WAKEUP {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the next turn tries again.
                    tracing::warn!("control socket: accept failed: {e}");
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.clients.len() >= self.opts.max_clients {
                let line = Response::failure(
                    Value::Null,
                    ErrorBody::new(
                        ErrorCode::TooManyClients,
                        format!(
                            "{} control clients already connected; try again",
                            self.clients.len()
                        ),
                    ),
                )
                .to_line();
                let _ = (&stream).write(&line);
                continue;
            }
            let (pid, uid, gids) = match peer_credentials(&stream) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("control socket: cannot read the caller's credentials: {e}");
                    continue;
                }
            };
            let access = access_of(uid, &gids, self.server_uid, &self.opts);
            if access.is_none() {
                tracing::warn!("control socket: refusing pid {pid} (uid {uid}, gids {gids:?})");
            }
            let fd = stream.as_raw_fd();
            self.clients.insert(
                fd,
                Client {
                    stream,
                    access,
                    uid,
                    pid,
                    rbuf: Vec::new(),
                    scanned: 0,
                    wbuf: Vec::new(),
                    wpos: 0,
                    deadline: Instant::now() + self.opts.idle_timeout,
                    eof: false,
                    closing: false,
                    waiting_reload: None,
                    resume: false,
                },
            );
        }
    }

    /// Flush; a successful write extends the deadline. False: gone.
    fn write_some(&self, c: &mut Client) -> bool {
        let before = c.pending_out();
        if before == 0 {
            return true;
        }
        if c.flush().is_err() {
            return false;
        }
        if c.pending_out() < before {
            c.deadline = Instant::now() + self.opts.idle_timeout;
        }
        true
    }

    /// Answer the complete lines in `c.rbuf`, as long as the client is
    /// reading its answers and no reload is pending.
    fn process(&mut self, c: &mut Client, master: &mut dyn Master) {
        while !c.closing && c.waiting_reload.is_none() && c.pending_out() < WBUF_CAP {
            let nl = c.rbuf[c.scanned..]
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| c.scanned + i);
            let line_end = match nl {
                Some(i) => i,
                None => {
                    c.scanned = c.rbuf.len();
                    if c.rbuf.len() > MAX_LINE {
                        refuse_line_too_long(c);
                        return;
                    }
                    // At EOF a last line without a newline still counts.
                    if c.eof && !c.rbuf.is_empty() {
                        c.rbuf.len()
                    } else {
                        return;
                    }
                }
            };
            if line_end > MAX_LINE {
                refuse_line_too_long(c);
                return;
            }
            let mut line: Vec<u8> = c.rbuf.drain(..line_end).collect();
            if !c.rbuf.is_empty() {
                c.rbuf.remove(0); // the newline
            }
            c.scanned = 0;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are ignored (handy with socat)
            }
            c.deadline = Instant::now() + self.opts.idle_timeout;
            self.handle_line(c, &line, master);
        }
    }

    fn handle_line(&mut self, c: &mut Client, line: &[u8], master: &mut dyn Master) {
        let (id, cmd) = match parse_request(line) {
            Ok(x) => x,
            Err((id, e)) => {
                c.push(&Response::failure(id, e));
                return;
            }
        };
        match c.access {
            None => {
                c.push(&Response::failure(
                    id,
                    ErrorBody::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "permission denied: uid {} may not use this control socket",
                            c.uid
                        ),
                    ),
                ));
                c.closing = true;
                return;
            }
            Some(Access::ReadOnly) if cmd.access() == Access::Write => {
                c.push(&Response::failure(
                    id,
                    ErrorBody::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "permission denied: uid {} may only run read-only commands (status, health), not `{}`",
                            c.uid,
                            cmd.name()
                        ),
                    ),
                ));
                return;
            }
            Some(_) => {}
        }
        if cmd.access() == Access::Write {
            tracing::info!(
                "control: `{}` from pid {} (uid {})",
                cmd.name(),
                c.pid,
                c.uid
            );
        }
        let result: Result<Value, ErrorBody> = match cmd {
            Command::Status => Ok(to_value(&master.status())),
            Command::Health => Ok(to_value(&master.health())),
            Command::Metrics => Ok(to_value(&master.metrics())),
            Command::Reload { wait } => match master.reload() {
                Ok(outcome) if wait && outcome.status == ReloadStatus::InProgress => {
                    c.waiting_reload = Some((id, outcome.generation));
                    return;
                }
                Ok(outcome) => {
                    c.push(&reload_response(id, outcome));
                    return;
                }
                Err(e) => Err(e),
            },
            Command::Scale(to) => master.scale(to).map(|d| to_value(&d)),
            Command::Stop { quick } => master.stop(quick).map(|d| to_value(&d)),
            Command::ReopenLogs => master.reopen_logs().map(|()| serde_json::json!({})),
            Command::WorkerKill { pid } => master.kill_worker(pid).map(|d| to_value(&d)),
        };
        c.push(&match result {
            Ok(data) => Response::success(id, data),
            Err(e) => Response::failure(id, e),
        });
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
        if let Origin::Bound { dev, ino } = self.origin {
            // Only our own socket: a newer server may have replaced it.
            if let Ok(m) = std::fs::symlink_metadata(&self.opts.path) {
                if m.dev() == dev && m.ino() == ino {
                    let _ = std::fs::remove_file(&self.opts.path);
                }
            }
        }
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn reload_response(id: Value, outcome: ReloadOutcome) -> Response {
    match outcome.status {
        ReloadStatus::Failed => {
            let why = outcome
                .error
                .clone()
                .unwrap_or_else(|| "the new generation did not boot".into());
            let mut e = ErrorBody::new(
                ErrorCode::ReloadFailed,
                format!(
                    "reload to generation {} failed: {why}; the previous generation keeps serving",
                    outcome.generation
                ),
            );
            e.data = Some(to_value(&outcome));
            Response::failure(id, e)
        }
        _ => Response::success(id, to_value(&outcome)),
    }
}

fn refuse_line_too_long(c: &mut Client) {
    c.rbuf = Vec::new();
    c.scanned = 0;
    c.push(&Response::failure(
        Value::Null,
        ErrorBody::new(
            ErrorCode::LineTooLong,
            format!("request line longer than {MAX_LINE} bytes; closing"),
        ),
    ));
    c.closing = true;
}

/// One read into `c.rbuf`, never past the line cap: the bytes read (0 at
/// EOF, when nothing is there, or when the line is refused), or `None` when
/// the connection failed.
fn read_some(c: &mut Client) -> Option<usize> {
    // The partial line may not grow past MAX_LINE (+1 to see that it did):
    // checked before anything more is read or allocated.
    if c.rbuf.len() > MAX_LINE && !c.rbuf.contains(&b'\n') {
        refuse_line_too_long(c);
        return Some(0);
    }
    let mut buf = [0u8; READ_CHUNK];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => {
                c.eof = true;
                return Some(0);
            }
            Ok(n) => {
                c.rbuf.extend_from_slice(&buf[..n]);
                return Some(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(0),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// Create (if needed) and check the private per-user directory: a real
/// directory, owned by `uid`, with no access for group or others. Anything
/// else may be someone else's trap in a shared /tmp.
fn ensure_private_dir(dir: &Path, uid: u32) -> Result<(), ControlError> {
    match nix::unistd::mkdir(dir, Mode::from_bits_truncate(0o700)) {
        // The umask may have taken bits off (a 0177 one leaves 0600, which
        // even we cannot enter): the directory we made is 0700, exactly.
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| ControlError::Io {
                path: dir.to_path_buf(),
                op: "set the mode of",
                source,
            },
        )?,
        Err(Errno::EEXIST) => {}
        Err(e) => {
            return Err(ControlError::Io {
                path: dir.to_path_buf(),
                op: "create the directory",
                source: e.into(),
            })
        }
    }
    let m = std::fs::symlink_metadata(dir).map_err(|source| ControlError::Io {
        path: dir.to_path_buf(),
        op: "stat",
        source,
    })?;
    let unsafe_dir = |why: String| ControlError::UnsafeDir {
        path: dir.to_path_buf(),
        why,
    };
    if !m.file_type().is_dir() {
        return Err(unsafe_dir("not a directory".into()));
    }
    if m.uid() != uid {
        return Err(unsafe_dir(format!("owned by uid {}, not {uid}", m.uid())));
    }
    if m.mode() & 0o077 != 0 {
        return Err(unsafe_dir(format!(
            "mode {:04o} lets others in (want 0700)",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// A socket file at `path` whose server is gone is removed; one with a live
/// server is an error; so is any other kind of file.
fn remove_stale(path: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::FileTypeExt;
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Io {
                path: path.to_path_buf(),
                op: "stat",
                source,
            })
        }
    };
    if !m.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ControlError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!("removing stale control socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| ControlError::Io {
                path: path.to_path_buf(),
                op: "remove the stale socket",
                source,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ControlError::Io {
            path: path.to_path_buf(),
            op: "probe",
            source,
        }),
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
