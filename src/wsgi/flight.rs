//! The requests running the app in this worker ("in flight"), for what
//! must reach a request from outside the thread that runs it:
//!
//! - the `--timeout` abort ([`abort_unstarted`], called by the worker's
//!   signal watcher before it exits): each request whose response has not
//!   started gets Gunicorn's `500` and a clean close, instead of an empty
//!   reply;
//! - `gunicorn.socket` takeover ([`Flight::take`]): once the app does I/O on
//!   the connection itself, the server writes nothing more on it, and under
//!   `gthread` the request no longer counts for `--timeout`
//!   ([`oldest_running`]).
//!
//! Each request's state is one atomic; the response writer claims it
//! ([`Flight::start`]) before the first byte of the final response, so the
//! abort and the writer never both write a status line.
//!
//! An entry belongs to a connection ([`register`], once, by its first
//! request) and is idle between its requests ([`Flight::run`] and
//! [`Flight::done`] bracket each): a keep-alive request takes no lock and
//! allocates nothing here.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Nothing of the final response has been written.
const RUNNING: u8 = 0;
/// The final response has begun (its head is on the wire, or going).
const STARTED: u8 = 1;
/// The worker is being aborted and answered this request with a 500.
const ABORTED: u8 = 2;
/// The app took the connection over through `gunicorn.socket`.
const TAKEN: u8 = 3;
/// An interim response (`103 Early Hints`) is being written.
const INTERIM: u8 = 4;
/// The connection is between requests: nothing to answer or time out.
const IDLE: u8 = 5;

/// A connection's request running the app (or none: idle).
#[derive(Debug)]
pub struct Flight {
    fd: RawFd,
    since_ms: AtomicU64,
    state: AtomicU8,
}

static FLIGHTS: Mutex<Vec<Arc<Flight>>> = Mutex::new(Vec::new());

fn flights() -> std::sync::MutexGuard<'static, Vec<Arc<Flight>>> {
    FLIGHTS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a connection for as long as it lives.
#[derive(Debug)]
pub struct Guard(pub Arc<Flight>);

impl Drop for Guard {
    fn drop(&mut self) {
        let mut f = flights();
        if let Some(i) = f.iter().position(|x| Arc::ptr_eq(x, &self.0)) {
            f.swap_remove(i);
        }
    }
}

/// The connection on `fd` enters the registry, idle.
pub fn register(fd: RawFd) -> Guard {
    let f = Arc::new(Flight {
        fd,
        since_ms: AtomicU64::new(0),
        state: AtomicU8::new(IDLE),
    });
    flights().push(f.clone());
    Guard(f)
}

/// A request on `fd` starts running the app (a connection of one request).
#[cfg(test)]
fn begin(fd: RawFd) -> Guard {
    let g = register(fd);
    g.0.run();
    g
}

impl Flight {
    /// A request on the connection starts running the app. (Not after a
    /// takeover, which ends the connection, nor once the worker is being
    /// aborted: then the request stays unanswerable.)
    pub fn run(&self) {
        self.since_ms
            .store(crate::scoreboard::now_ms(), Ordering::Relaxed);
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != ABORTED && s != TAKEN).then_some(RUNNING)
            });
    }

    /// The request is over: the connection is idle again (unless the app
    /// took it over or the worker is being aborted).
    pub fn done(&self) {
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                matches!(s, RUNNING | STARTED).then_some(IDLE)
            });
    }

    /// Claim the connection for the final response, before its first byte
    /// is written. false: the server must not write (the worker is being
    /// aborted and already answered, or the app owns the connection).
    pub fn start(&self) -> bool {
        loop {
            match self
                .state
                .compare_exchange(RUNNING, STARTED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) | Err(STARTED) => return true,
                Err(INTERIM) => std::thread::yield_now(),
                Err(_) => return false,
            }
        }
    }

    /// Claim the connection for an interim response; `done` is called with
    /// it claimed. false: the final response has begun, or the server may no
    /// longer write.
    pub fn interim<T>(&self, done: impl FnOnce() -> T) -> Option<T> {
        self.state
            .compare_exchange(RUNNING, INTERIM, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        let r = done();
        let _ = self
            .state
            .compare_exchange(INTERIM, RUNNING, Ordering::AcqRel, Ordering::Acquire);
        Some(r)
    }

    /// The app does its own I/O on the connection from now on.
    pub fn take(&self) {
        // From any state but ABORTED: a response the server began is the
        // app's to finish or abandon once it writes on the socket itself.
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != ABORTED).then_some(TAKEN)
            });
    }

    /// The app took the connection over.
    pub fn taken(&self) -> bool {
        self.state.load(Ordering::Acquire) == TAKEN
    }
}

/// When the oldest request still subject to `--timeout` began (0: none):
/// a connection the app took over is its own, as long as it lasts.
pub fn oldest_running() -> u64 {
    flights()
        .iter()
        .filter(|f| matches!(f.state.load(Ordering::Acquire), RUNNING | STARTED | INTERIM))
        .map(|f| f.since_ms.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0)
}

/// The worker is being aborted (`--timeout`): answer `response` on every
/// request whose response has not started, then close each cleanly (what
/// the client sent and we did not read is drained for up to 200 ms, so the
/// close is a FIN, not a reset that could destroy the answer). Returns how
/// many got it. The descriptors stay open meanwhile: each request's
/// connection task keeps its socket open while the request is registered,
/// and the process exits right after.
pub fn abort_unstarted(response: &[u8]) -> usize {
    let claimed: Vec<RawFd> = {
        let f = flights();
        f.iter()
            .filter(|f| {
                // An interim response being written finishes first (briefly).
                for _ in 0..1000 {
                    match f.state.compare_exchange(
                        RUNNING,
                        ABORTED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return true,
                        Err(INTERIM) => std::thread::sleep(Duration::from_millis(1)),
                        Err(_) => return false,
                    }
                }
                false
            })
            .map(|f| f.fd)
            .collect()
    };
    for &fd in &claimed {
        // A few hundred bytes: the socket takes them at once unless the
        // client stopped reading altogether; then it gets what fits.
        let _ = super::fdio::try_send(fd, response);
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Write);
    }
    drain_input(&claimed, Instant::now() + Duration::from_millis(200));
    claimed.len()
}

/// Read (and drop) what the clients sent, until each closes or `until`.
fn drain_input(fds: &[RawFd], until: Instant) {
    let mut open: Vec<RawFd> = fds.to_vec();
    let mut buf = [0u8; 16 * 1024];
    while !open.is_empty() && Instant::now() < until {
        open.retain(|&fd| loop {
            // SAFETY: see `abort_unstarted`.
            let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            match nix::unistd::read(bfd, &mut buf) {
                Ok(0) => return false,
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => return true,
                Err(_) => return false,
            }
        });
        if !open.is_empty() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_started_response_is_not_answered_again_and_a_running_one_is_and_interims_go_first() {
        let (a, mut client_a) = std::os::unix::net::UnixStream::pair().expect("pair");
        let (b, mut client_b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let (c, _client_c) = std::os::unix::net::UnixStream::pair().expect("pair");
        // As the connection tasks' sockets are.
        for s in [&a, &b, &c] {
            s.set_nonblocking(true).expect("nonblocking");
        }
        let started = begin(a.as_raw_fd());
        assert!(started.0.start());
        let running = begin(b.as_raw_fd());
        let taken = begin(c.as_raw_fd());
        taken.0.take();
        let since = |g: &Guard| g.0.since_ms.load(Ordering::Relaxed);
        assert_eq!(oldest_running(), since(&started).min(since(&running)));
        assert_eq!(abort_unstarted(b"HTTP/1.1 500 X\r\n\r\n"), 1);
        let mut got = Vec::new();
        client_b.read_to_end(&mut got).expect("read");
        assert_eq!(got, b"HTTP/1.1 500 X\r\n\r\n");
        // The aborted one may no longer write; the taken one is the app's.
        assert!(!running.0.start());
        assert!(!taken.0.start());
        assert!(taken.0.taken());
        drop((started, running, taken));
        client_a.set_nonblocking(true).expect("nb");
        assert!(client_a.read(&mut [0u8; 8]).is_err(), "nothing written");
        assert!(!flights().iter().any(|f| f.fd == a.as_raw_fd()));

        // (One test: the registry is per process.) An interim response
        // only goes before the final one.
        let g = begin(a.as_raw_fd());
        assert_eq!(g.0.interim(|| 7), Some(7));
        assert!(g.0.start());
        assert_eq!(g.0.interim(|| 7), None);

        // The entry outlives its request: idle between requests, it is
        // neither answered by an abort nor counted for --timeout, and the
        // next request starts afresh.
        g.0.done();
        assert_eq!(oldest_running(), 0);
        assert_eq!(abort_unstarted(b"HTTP/1.1 500 X\r\n\r\n"), 0);
        g.0.run();
        assert!(oldest_running() > 0);
        assert_eq!(g.0.interim(|| 8), Some(8));
        assert!(g.0.start());
        g.0.done();
        // A takeover is for good.
        g.0.run();
        g.0.take();
        g.0.done();
        g.0.run();
        assert!(g.0.taken());
    }
}
