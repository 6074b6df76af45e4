//! A cross-thread hand-off from the worker's I/O thread to an event loop
//! that owns the main thread (gevent's hub, an asyncio loop): a queue of
//! items plus ONE wake-up descriptor the loop watches (gevent `loop.io`,
//! asyncio `loop.add_reader`).
//!
//! The I/O thread [`Sender::push`]es items (requests to start, completions,
//! whatever the loop needs); only the push that finds no wake-up pending
//! writes the descriptor, so a burst of N items costs one write and one
//! wake-up of the loop, not N. The loop's reader callback calls
//! [`Receiver::drain`], which takes the whole batch at once. Nothing here
//! knows about Python or about any one loop.
//!
//! The loop's liveness comes for free: [`Sender::wake`] is a ping without
//! an item (the heartbeat sends one every tick), and
//! [`Sender::stalled_since`] is when the oldest wake-up the loop has not
//! drained yet was sent. A loop blocked by its own code (a greenlet in a
//! CPU loop) stops draining, and that time then feeds `--timeout`.
//!
//! Ordering: the receiver clears `armed` before it takes the queue, and a
//! sender pushes before it tests `armed`; so an item pushed while a batch is
//! being taken is either in that batch or has its own wake-up.
//!
//! The way back is batched too: an [`Outbox`] holds the replies (tokio
//! oneshots) the loop produced during one turn, and the loop sends them all
//! at the end of the turn. Sent back to back, they wake the I/O thread once
//! (tokio writes its wake-up descriptor only to a parked thread), where one
//! send per request the moment it completes woke it once per request.

use crate::scoreboard::now_ms;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

struct Shared<T> {
    queue: Mutex<Vec<T>>,
    /// A wake-up is written and not drained yet.
    armed: AtomicBool,
    closed: AtomicBool,
    /// When the pending wake-up was written (ms since the epoch, 0: none).
    woken_at: AtomicU64,
    /// Read end (eventfd: the same descriptor as `write`).
    read: OwnedFd,
    write: OwnedFd,
}

/// The I/O thread's end. Cloneable; closing is explicit ([`Sender::close`])
/// or happens when the last clone is dropped.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
    _last: Arc<CloseOnDrop<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            shared: self.shared.clone(),
            _last: self._last.clone(),
        }
    }
}

/// Closes the hand-off when the last `Sender` goes (an I/O thread that
/// died must not leave the loop waiting forever).
struct CloseOnDrop<T>(Arc<Shared<T>>);
impl<T> Drop for CloseOnDrop<T> {
    fn drop(&mut self) {
        close(&self.0);
    }
}

/// The loop's end: watch [`Receiver::fd`] for readability, then
/// [`Receiver::drain`].
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Reused between batches (keeps its capacity).
    spare: Mutex<Vec<T>>,
}

/// A new hand-off.
pub fn channel<T>() -> io::Result<(Sender<T>, Receiver<T>)> {
    let (read, write) = wake_fds()?;
    let shared = Arc::new(Shared {
        queue: Mutex::new(Vec::with_capacity(64)),
        armed: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        woken_at: AtomicU64::new(0),
        read,
        write,
    });
    Ok((
        Sender {
            shared: shared.clone(),
            _last: Arc::new(CloseOnDrop(shared.clone())),
        },
        Receiver {
            shared,
            spare: Mutex::new(Vec::with_capacity(64)),
        },
    ))
}

#[cfg(target_os = "linux")]
fn wake_fds() -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd(2) with valid flags; the descriptor returned is new
    // and owned by nobody else.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created above and is owned only here.
    let read = unsafe { OwnedFd::from_raw_fd(fd) };
    let write = read.try_clone()?;
    Ok((read, write))
}

#[cfg(not(target_os = "linux"))]
fn wake_fds() -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    Ok((r, w))
}

fn ring<T>(s: &Shared<T>) {
    let one = 1u64.to_ne_bytes();
    // A full pipe or a saturated eventfd already means "wake up": the
    // error is nothing to act on.
    let _ = nix::unistd::write(s.write.as_fd(), &one);
}

fn close<T>(s: &Shared<T>) {
    if !s.closed.swap(true, Ordering::SeqCst) {
        ring(s);
    }
}

impl<T> Sender<T> {
    /// Queue an item for the loop; wakes it unless a wake-up is already
    /// pending. `Err` gives the item back when the loop end is closed.
    pub fn push(&self, item: T) -> Result<(), T> {
        let s = &*self.shared;
        if s.closed.load(Ordering::Acquire) {
            return Err(item);
        }
        s.queue.lock().unwrap_or_else(|p| p.into_inner()).push(item);
        self.wake();
        Ok(())
    }

    /// Wake the loop (once, however many items or pings come before it
    /// drains). Also a liveness ping: see [`Sender::stalled_since`].
    pub fn wake(&self) {
        let s = &*self.shared;
        if !s.armed.swap(true, Ordering::SeqCst) {
            s.woken_at.store(now_ms(), Ordering::Relaxed);
            ring(s);
        }
    }

    /// When the oldest wake-up the loop has not drained was sent (ms since
    /// the epoch), or 0 when it is keeping up.
    pub fn stalled_since(&self) -> u64 {
        if self.shared.armed.load(Ordering::SeqCst) {
            self.shared.woken_at.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// No more items: the loop's next [`Receiver::drain`] reports the end
    /// once the queue is empty. Idempotent.
    pub fn close(&self) {
        close(&self.shared);
    }
}

impl<T> Receiver<T> {
    /// The descriptor to watch for readability.
    pub fn fd(&self) -> RawFd {
        self.shared.read.as_raw_fd()
    }

    /// Take every item queued so far, in order, appending them to `out`.
    /// Returns false once the hand-off is closed and nothing is left.
    /// Never blocks; a spurious call finds nothing.
    pub fn drain(&self, out: &mut Vec<T>) -> bool {
        let s = &*self.shared;
        let before = out.len();
        let mut buf = [0u8; 8];
        // Reset the counter (eventfd) or empty the pipe; EAGAIN is fine.
        while let Ok(n) = nix::unistd::read(s.read.as_fd(), &mut buf) {
            if n < buf.len() {
                break;
            }
            if cfg!(target_os = "linux") {
                break;
            }
        }
        s.armed.store(false, Ordering::SeqCst);
        {
            let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
            {
                let mut q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::swap(&mut *q, &mut *spare);
            }
            out.append(&mut spare);
        }
        let closed = s.closed.load(Ordering::SeqCst);
        if closed {
            // Items pushed before `close` are taken above; push refuses
            // after it, but one racing with it may have landed since.
            let mut q = s.queue.lock().unwrap_or_else(|p| p.into_inner());
            out.append(&mut q);
        }
        !(closed && out.len() == before)
    }

    /// Whether the sender closed the hand-off (items may still be queued).
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }
}

/// Replies held back until the end of the loop's turn (see the module
/// comment). The loop's code pushes; whoever saw [`Outbox::push`] return
/// true schedules one [`Outbox::flush`] at the end of the turn. The flush
/// hands the batch to a courier task on the I/O thread (one cross-thread
/// wake-up), which sends the oneshots there (local wake-ups, no system
/// call): on a current-thread runtime every oneshot sent from another
/// thread would write the runtime's wake-up descriptor once.
pub struct Outbox<T> {
    /// This turn's replies (the loop's thread).
    held: Mutex<Vec<(oneshot::Sender<T>, T)>>,
    /// Flushed, for the courier to send.
    sent: Mutex<Vec<(oneshot::Sender<T>, T)>>,
    notify: tokio::sync::Notify,
    courier: AtomicBool,
}

impl<T: Send + 'static> Outbox<T> {
    pub const fn new() -> Outbox<T> {
        Outbox {
            held: Mutex::new(Vec::new()),
            sent: Mutex::new(Vec::new()),
            notify: tokio::sync::Notify::const_new(),
            courier: AtomicBool::new(false),
        }
    }

    /// Start the courier on the current tokio runtime (the I/O thread's),
    /// once; until then a flush sends the replies itself.
    pub fn start_courier(&'static self) {
        if self.courier.load(Ordering::Relaxed) || self.courier.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(async move {
            let mut batch = Vec::new();
            loop {
                self.notify.notified().await;
                std::mem::swap(
                    &mut *self.sent.lock().unwrap_or_else(|p| p.into_inner()),
                    &mut batch,
                );
                for (reply, value) in batch.drain(..) {
                    // A receiver that is gone (its connection closed) is
                    // nothing to act on.
                    let _ = reply.send(value);
                }
            }
        });
    }

    /// Hold a reply; true when the outbox was empty (schedule a flush).
    pub fn push(&self, reply: oneshot::Sender<T>, value: T) -> bool {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.push((reply, value));
        held.len() == 1
    }

    /// Send every reply held, in order: through the courier (one wake-up of
    /// the I/O thread), or here when there is none.
    pub fn flush(&self) {
        let mut batch = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        if self.courier.load(Ordering::SeqCst) {
            self.sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .append(&mut batch);
            self.notify.notify_one();
            return;
        }
        for (reply, value) in batch {
            let _ = reply.send(value);
        }
    }
}

impl<T: Send + 'static> Default for Outbox<T> {
    fn default() -> Self {
        Outbox::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::BorrowedFd;
    use std::time::Duration;

    fn readable(fd: RawFd, ms: u16) -> bool {
        // SAFETY: the receiver keeps the descriptor open for the test.
        let b = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut fds = [PollFd::new(b, PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
    }

    /// Counts the wake-up writes: the eventfd counter is the number of
    /// writes since the last read.
    #[cfg(target_os = "linux")]
    fn pending_writes<T>(r: &Receiver<T>) -> u64 {
        let mut buf = [0u8; 8];
        match nix::unistd::read(r.shared.read.as_fd(), &mut buf) {
            Ok(8) => {
                let n = u64::from_ne_bytes(buf);
                // Put the wake-up back as one write.
                let _ = nix::unistd::write(r.shared.write.as_fd(), &n.to_ne_bytes());
                n
            }
            _ => 0,
        }
    }

    #[test]
    fn a_batch_costs_one_wake_up_and_is_drained_whole_in_order() {
        let (tx, rx) = channel::<u32>().expect("channel");
        assert!(!readable(rx.fd(), 0));
        for i in 0..100 {
            tx.push(i).expect("open");
        }
        assert!(readable(rx.fd(), 0));
        #[cfg(target_os = "linux")]
        assert_eq!(pending_writes(&rx), 1, "one write per batch");
        let mut out = Vec::new();
        assert!(rx.drain(&mut out));
        assert_eq!(out, (0..100).collect::<Vec<_>>());
        assert!(!readable(rx.fd(), 0), "drained: no wake-up left");
        // The next item wakes again.
        tx.push(7).expect("open");
        assert!(readable(rx.fd(), 0));
        out.clear();
        assert!(rx.drain(&mut out));
        assert_eq!(out, [7]);
    }

    #[test]
    fn close_wakes_the_loop_and_ends_it_after_the_last_items() {
        let (tx, rx) = channel::<&str>().expect("channel");
        tx.push("a").expect("open");
        tx.close();
        assert_eq!(tx.push("b"), Err("b"), "refused once closed");
        let mut out = Vec::new();
        assert!(rx.drain(&mut out), "items left: not the end yet");
        assert_eq!(out, ["a"]);
        out.clear();
        assert!(!rx.drain(&mut out));
        assert!(rx.is_closed());
    }

    #[test]
    fn dropping_every_sender_closes() {
        let (tx, rx) = channel::<u8>().expect("channel");
        let tx2 = tx.clone();
        drop(tx);
        assert!(!rx.is_closed(), "a clone is still alive");
        drop(tx2);
        assert!(rx.is_closed());
        assert!(readable(rx.fd(), 0));
        assert!(!rx.drain(&mut Vec::new()));
    }

    #[test]
    fn a_loop_that_does_not_drain_is_seen_stalled_since_the_first_ping() {
        let (tx, rx) = channel::<()>().expect("channel");
        assert_eq!(tx.stalled_since(), 0);
        let before = now_ms();
        tx.wake();
        let first = tx.stalled_since();
        assert!(first >= before && first != 0);
        std::thread::sleep(Duration::from_millis(5));
        tx.wake();
        assert_eq!(tx.stalled_since(), first, "the oldest ping counts");
        rx.drain(&mut Vec::new());
        assert_eq!(tx.stalled_since(), 0, "drained: keeping up");
    }

    #[test]
    fn an_outbox_holds_replies_until_flushed_and_asks_for_one_flush_per_batch() {
        let ob = Outbox::new();
        let (t1, mut r1) = oneshot::channel();
        let (t2, mut r2) = oneshot::channel();
        let (t3, r3) = oneshot::channel::<u8>();
        assert!(ob.push(t1, 1), "the first reply asks for a flush");
        assert!(!ob.push(t2, 2), "one flush is already due");
        drop(r3);
        assert!(!ob.push(t3, 3));
        assert!(r1.try_recv().is_err(), "held until the flush");
        ob.flush();
        assert_eq!(r1.try_recv().ok(), Some(1));
        assert_eq!(r2.try_recv().ok(), Some(2));
        let (t4, mut r4) = oneshot::channel();
        assert!(ob.push(t4, 4), "flushed: the next batch asks again");
        ob.flush();
        assert_eq!(r4.try_recv().ok(), Some(4));
    }

    #[test]
    fn a_flushed_batch_reaches_the_runtime_through_its_courier() {
        static OB: Outbox<u32> = Outbox::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let got = rt.block_on(async {
            OB.start_courier();
            let mut rxs = Vec::new();
            let mut txs = Vec::new();
            for i in 0..50u32 {
                let (tx, rx) = oneshot::channel();
                txs.push((tx, i));
                rxs.push(rx);
            }
            // The loop: another thread pushes a batch and flushes it.
            let lp = std::thread::spawn(move || {
                for (tx, i) in txs {
                    OB.push(tx, i);
                }
                OB.flush();
            });
            let mut got = Vec::new();
            for rx in rxs {
                got.push(rx.await.expect("sent"));
            }
            lp.join().expect("loop thread");
            got
        });
        assert_eq!(got, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn items_from_another_thread_all_arrive_without_lost_wake_ups() {
        let (tx, rx) = channel::<u32>().expect("channel");
        const N: u32 = 20_000;
        let producer = std::thread::spawn(move || {
            for i in 0..N {
                tx.push(i).expect("open");
                if i % 1000 == 0 {
                    std::thread::yield_now();
                }
            }
            tx.close();
        });
        let mut got = Vec::new();
        let mut batches = 0;
        loop {
            // Every item must come with a wake-up: wait for one (bounded).
            assert!(readable(rx.fd(), 5000), "a wake-up was lost");
            batches += 1;
            if !rx.drain(&mut got) && rx.is_closed() {
                break;
            }
            if rx.is_closed() && got.len() == N as usize {
                let mut rest = Vec::new();
                assert!(!rx.drain(&mut rest));
                break;
            }
        }
        producer.join().expect("producer");
        assert_eq!(got, (0..N).collect::<Vec<_>>());
        assert!(batches <= N as usize);
    }
}
