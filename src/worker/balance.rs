//! Spreading new connections evenly over the workers.
//!
//! Every worker waits for connections on the same listening sockets, and
//! the kernel wakes all of them for each one: whichever accepts first gets
//! it. The winner is whichever worker's I/O thread happens to be running,
//! so one worker often takes most of a burst of new keep-alive
//! connections (1 and 49 of 50 were seen with `wrk -c50` and two workers).
//! It then serves most of the load on its one event loop or hub while
//! the other idles, for as long as those connections live.
//!
//! So each worker publishes its open connections in its scoreboard slot,
//! the connections it has taken so far, and whether it takes new ones
//! (`Slot::accepting`: it has a free slot and is not retiring). Before
//! accepting, a worker that is ahead of the least loaded worker that
//! accepts, by more than [`margin`], watches the listener without
//! accepting ([`Gate`]): a pending connection is left to the others, woken
//! by the same connection, for as long as they take connections. If in
//! [`PATIENCE`] looks, [`DEFER`] apart, they took nothing, it accepts the
//! connection itself and stops balancing for [`PAUSE_MS`]: the others are
//! too busy to take connections promptly (a load that saturates every
//! worker), and waiting would only add to the clients' latency. A
//! connection never waits for a worker that does not come.
//!
//! A worker whose recent connections were short ([`short_lived`]:
//! `Connection: close`) does not balance either.
//!
//! Only the classes whose one loop serves all of a worker's connections
//! balance (`Class::BALANCE`: gevent, asgi). sync and gthread accept only
//! while a thread is free, which spreads the work already.

use crate::scoreboard::{now_ms, Scoreboard, Slot, MAX_SLOTS};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How often a worker that is ahead looks whether the others took the
/// pending connection, and how many times before it takes it itself: a
/// worker woken on a busy machine may take a couple of milliseconds to run.
const DEFER: Duration = Duration::from_millis(1);
const PATIENCE: u32 = 3;

/// After a connection left to the others was still there when the wait
/// ended, the worker stops leaving connections for this long: under a
/// load that keeps every worker busy, the others take connections late,
/// and each wait would only add to the clients' latency.
const PAUSE_MS: u64 = 1_000;

/// A worker whose heartbeat is older than this is not counted (it is stuck
/// or gone, and would not take the connection).
const STALE_MS: u64 = 2_000;

pub(super) struct Balance {
    board: Scoreboard,
    me: usize,
    /// The other workers' slots, found by [`Balance::refresh`].
    peers: Mutex<Vec<usize>>,
    /// Monotonic milliseconds until which the worker does not balance.
    paused_until_ms: AtomicU64,
    /// This worker's connections that ended, and the requests they
    /// carried, all told ([`Balance::ended`]).
    ended: AtomicU64,
    ended_requests: AtomicU64,
    /// Those two at the last refresh, and whether the connections that
    /// ended since then were short (see [`short_lived`]).
    seen: Mutex<(u64, u64)>,
    short: AtomicBool,
}

impl Balance {
    pub fn new(board: Scoreboard, me: usize) -> Balance {
        Balance {
            board,
            me,
            peers: Mutex::new(Vec::new()),
            paused_until_ms: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            ended_requests: AtomicU64::new(0),
            seen: Mutex::new((0, 0)),
            short: AtomicBool::new(false),
        }
    }

    fn me(&self) -> &Slot {
        self.board.slot(self.me)
    }

    /// Whether this worker takes new connections now.
    pub fn set_accepting(&self, on: bool) {
        self.me().accepting.store(u32::from(on), Ordering::Relaxed);
    }

    /// Count a connection as open, for the other workers to see.
    pub fn opened(&self) {
        let me = self.me();
        me.conns.fetch_add(1, Ordering::Relaxed);
        me.accepted.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection counted by [`Balance::opened`] closed.
    pub fn closed(&self) {
        self.me().conns.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection's exchange ended after `requests` requests (a count
    /// taken when it ends: one taken while its requests are still coming
    /// would make any new keep-alive connection look short).
    pub fn ended(&self, requests: u64) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        self.ended_requests.fetch_add(requests, Ordering::Relaxed);
    }

    /// How many connections the other workers have taken, all told: it
    /// grows while they take what this one leaves them.
    pub fn others_accepted(&self) -> u64 {
        let Ok(peers) = self.peers.lock() else {
            return 0;
        };
        peers
            .iter()
            .map(|&i| self.board.slot(i).accepted.load(Ordering::Relaxed))
            .sum()
    }

    /// A connection left to the others was not taken: stop leaving them
    /// for [`PAUSE_MS`].
    pub fn pause(&self) {
        self.paused_until_ms
            .store(now_ms() + PAUSE_MS, Ordering::Relaxed);
    }

    /// Look for the other workers' slots again (on every heartbeat: workers
    /// come and go with reloads and scaling).
    pub fn refresh(&self) {
        let found: Vec<usize> = (0..MAX_SLOTS)
            .filter(|&i| i != self.me && self.board.slot(i).pid.load(Ordering::Relaxed) != 0)
            .collect();
        if let Ok(mut peers) = self.peers.lock() {
            *peers = found;
        }
        let now = (
            self.ended_requests.load(Ordering::Relaxed),
            self.ended.load(Ordering::Relaxed),
        );
        if let Ok(mut seen) = self.seen.lock() {
            let (requests, ended) = (now.0 - seen.0.min(now.0), now.1 - seen.1.min(now.1));
            self.short
                .store(short_lived(requests, ended), Ordering::Relaxed);
            *seen = now;
        }
    }

    /// Whether this worker should leave the next connection to another one
    /// for a moment: it has more connections open than the least loaded
    /// worker that accepts, by more than [`margin`].
    pub fn ahead(&self) -> bool {
        let Ok(peers) = self.peers.lock() else {
            return false;
        };
        if peers.is_empty() {
            return false;
        }
        let now = now_ms();
        if now < self.paused_until_ms.load(Ordering::Relaxed) || self.short.load(Ordering::Relaxed)
        {
            return false;
        }
        let least = peers
            .iter()
            .map(|&i| self.board.slot(i))
            .filter(|s| {
                s.accepting.load(Ordering::Relaxed) == 1
                    && now.saturating_sub(s.heartbeat_ms.load(Ordering::Relaxed)) < STALE_MS
            })
            .map(|s| s.conns.load(Ordering::Relaxed))
            .min();
        match least {
            Some(least) => self.me().conns.load(Ordering::Relaxed) > least + margin(least),
            None => false,
        }
    }
}

/// A listening socket watched without accepting from it: a worker that is
/// ahead waits here until a connection is pending, leaves it to the
/// others for [`DEFER`], and accepts it only if it is still there.
pub(super) struct Gate {
    fd: AsyncFd<OwnedFd>,
}

impl Gate {
    /// Watch `listener` (through a duplicate: the accept loop's own
    /// registration of the listener stays as it is).
    pub fn new(listener: BorrowedFd<'_>) -> std::io::Result<Gate> {
        let dup = listener.try_clone_to_owned()?;
        // SAFETY: tokio asks that the descriptor stay open and the same for
        // the AsyncFd's life: it is an OwnedFd the AsyncFd owns, closed only
        // when it drops.
        let fd = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Gate { fd })
    }

    /// Return once a connection is pending that no other worker took while
    /// this one was ahead; pause `balance` when one was left to the others
    /// in vain.
    pub async fn wait_turn(&self, balance: &Balance) -> std::io::Result<()> {
        let listener = self.fd.get_ref().as_fd();
        loop {
            if pending(listener) {
                if !balance.ahead() {
                    return Ok(());
                }
                let before = balance.others_accepted();
                let mut waited = 0;
                let taken = loop {
                    tokio::time::sleep(DEFER).await;
                    waited += 1;
                    if !pending(listener) || balance.others_accepted() != before {
                        break true;
                    }
                    if waited == PATIENCE {
                        break false;
                    }
                };
                if !taken {
                    // Nobody took anything: the others are too busy to
                    // take connections promptly, and leaving more to them
                    // would only make clients wait. (When they did take
                    // some, what is pending now may be the next ones of a
                    // burst: look again.)
                    balance.pause();
                    return Ok(());
                }
                continue;
            }
            // Nothing waits: wait for the next connection. The readiness is
            // cleared before the next look, so one arriving after that look
            // still wakes us.
            self.fd.readable().await?.clear_ready();
        }
    }
}

/// Whether a connection waits in `listener`'s queue (a look, not an accept).
fn pending(listener: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(listener, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Whether the connections of a worker that ended in the last heartbeat
/// period (`ended`, which carried `requests` in all) were short: about
/// one request each, as with `Connection: close`. Such connections end
/// before any imbalance matters, and the accept queue already goes to
/// whichever worker is free: waiting there only cost throughput (10% of
/// the `Connection: close` rate). Too few connections to tell is not
/// short. (Counting the connections accepted and the requests served in
/// the period instead made a burst of new keep-alive connections look
/// short whenever a heartbeat fell between their accepts and their
/// requests, and the next burst then went unbalanced.)
fn short_lived(requests: u64, ended: u64) -> bool {
    ended >= 16 && requests < 2 * ended
}

/// How far ahead a worker may be before it leaves connections to others:
/// some slack, so that two workers at about the same count do not both
/// wait, and a burst of connections ends within an eighth of even.
fn margin(least: u32) -> u32 {
    2 + least / 8
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::task::Poll;

    fn board() -> Scoreboard {
        Scoreboard::new().expect("scoreboard")
    }

    /// Slot 0 (this worker) with `open` connections, slot 1 an idle worker
    /// that accepts.
    fn ahead_of_an_idle_worker(open: u32) -> (Scoreboard, Balance) {
        let b = board();
        b.slot(0).reset(100);
        b.slot(1).reset(101);
        b.slot(1).accepting.store(1, Ordering::Relaxed);
        let me = Balance::new(b.clone(), 0);
        me.refresh();
        for _ in 0..open {
            me.opened();
        }
        (b, me)
    }

    #[test]
    fn the_least_loaded_accepting_worker_sets_the_bar() {
        let b = board();
        for (i, pid) in [(0, 100), (1, 101), (2, 102)] {
            b.slot(i).reset(pid);
        }
        let me = Balance::new(b.clone(), 0);
        me.refresh();
        me.set_accepting(true);
        // Alone ahead of nobody: the others do not accept.
        for _ in 0..10 {
            me.opened();
        }
        assert!(!me.ahead(), "no other worker accepts");
        b.slot(1).accepting.store(1, Ordering::Relaxed);
        b.slot(1).conns.store(9, Ordering::Relaxed);
        assert!(!me.ahead(), "10 against 9 is even");
        b.slot(2).accepting.store(1, Ordering::Relaxed);
        b.slot(2).conns.store(7, Ordering::Relaxed);
        assert!(me.ahead(), "10 against 7 is ahead");
        me.pause();
        assert!(!me.ahead(), "paused after a connection was left in vain");
        me.paused_until_ms.store(0, Ordering::Relaxed);
        assert!(me.ahead());
        // A worker that stopped beating does not count.
        b.slot(2).heartbeat_ms.store(1, Ordering::Relaxed);
        assert!(!me.ahead());
        // Nor one that was reaped.
        b.slot(2).heartbeat_ms.store(now_ms(), Ordering::Relaxed);
        b.vacate(2);
        assert!(!me.ahead());
        me.closed();
        assert_eq!(b.slot(0).conns.load(Ordering::Relaxed), 9);
    }

    #[tokio::test]
    async fn the_gate_leaves_connections_the_others_take_and_pauses_when_they_do_not() {
        let (b, me) = ahead_of_an_idle_worker(10);
        assert!(me.ahead());
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("addr");
        let gate = Gate::new(l.as_fd()).expect("gate");
        assert!(!pending(l.as_fd()));
        // A connection the other worker takes while this one waits: the
        // gate does not return for it, and keeps balancing. The first poll
        // sees it pending with this worker ahead, so the gate waits; the
        // other worker takes it during that wait.
        let _c1 = std::net::TcpStream::connect(addr).expect("connect");
        assert!(pending(l.as_fd()));
        let mut turn = std::pin::pin!(gate.wait_turn(&me));
        let first = std::future::poll_fn(|cx| Poll::Ready(turn.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "returned at once although ahead");
        l.accept().expect("the other worker takes it");
        b.slot(1).accepted.fetch_add(1, Ordering::Relaxed);
        let r = tokio::time::timeout(Duration::from_millis(300), turn).await;
        assert!(r.is_err(), "returned for a connection that was taken");
        assert!(me.ahead(), "still balancing");
        // The next one nobody takes: the gate returns after the wait, and
        // the worker stops waiting for a while.
        let _c2 = std::net::TcpStream::connect(addr).expect("connect");
        tokio::time::timeout(Duration::from_secs(5), gate.wait_turn(&me))
            .await
            .expect("returns")
            .expect("ok");
        assert!(!me.ahead(), "paused after a wait in vain");
        assert!(l.accept().is_ok());
    }

    #[test]
    fn short_connections_are_not_balanced() {
        assert!(short_lived(20, 20), "Connection: close");
        assert!(!short_lived(400, 20), "keep-alive");
        assert!(!short_lived(0, 3), "too few to tell");
        let (_b, me) = ahead_of_an_idle_worker(40);
        // A heartbeat between a burst's accepts and its requests: nothing
        // ended yet, so nothing looks short.
        me.refresh();
        assert!(me.ahead(), "40 new connections, none ended yet");
        for _ in 0..40 {
            me.ended(1);
        }
        me.refresh();
        assert!(!me.ahead(), "40 connections ended, one request each");
        me.refresh();
        assert!(me.ahead(), "then none ended");
        // Keep-alive connections that carried a few requests each.
        for _ in 0..40 {
            me.ended(4);
        }
        me.refresh();
        assert!(me.ahead(), "40 connections ended, four requests each");
    }

    #[test]
    fn the_margin_grows_with_the_load() {
        assert_eq!(margin(0), 2);
        assert_eq!(margin(100), 14);
    }
}
