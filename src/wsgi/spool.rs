//! Response bytes a slow client has not taken yet, held by Rust so the
//! app's slot is freed before the client has read its response.
//!
//! While the app runs, each piece it produces is sent at once if the socket
//! takes it; what the socket does not take goes to the connection's
//! [`Spool`]: in memory up to `response_buffer_size`, then in an unlinked
//! temporary file (as Nginx's proxy buffering does). Every byte spooled in
//! the worker counts against `response_spool_max`; past that the app's
//! write waits for the client, as it did without a spool. Once the app's
//! iterable is exhausted and closed, the slot is free and the connection
//! task writes the spool at the client's pace ([`Spool::write_to`]),
//! cutting off a client slower than `response_min_rate` once
//! `response_timeout` has passed (`http::rate`).
//!
//! Nothing here runs for a response the socket takes whole: no file, no
//! copy, no extra syscall.

use super::fdio;
use crate::http::rate::RateClock;
use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The worker's spool settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// Bytes per connection kept in memory before a file is used.
    pub memory_max: usize,
    /// Bytes spooled in the whole worker before writes wait.
    pub worker_max: u64,
    pub grace: Duration,
    pub min_rate: u64,
}

static CONFIG: OnceLock<Config> = OnceLock::new();
/// Bytes held in every spool of this worker.
static HELD: AtomicU64 = AtomicU64::new(0);

/// Set once at worker start; without it nothing is spooled.
pub fn configure(c: Config) {
    let _ = CONFIG.set(c);
}

fn config() -> Option<&'static Config> {
    CONFIG.get().filter(|c| c.worker_max > 0)
}

/// Bytes spooled in this worker now.
pub fn held() -> u64 {
    HELD.load(Ordering::Relaxed)
}

/// Reserve `n` bytes of the worker's cap; false: over it.
fn reserve(n: u64, max: u64) -> bool {
    HELD.fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
        h.checked_add(n).filter(|t| *t <= max)
    })
    .is_ok()
}

fn release(n: u64) {
    HELD.fetch_sub(n, Ordering::AcqRel);
}

/// One connection's unsent response bytes: `mem[pos..]`, then the file
/// from `file_pos` to its end.
#[derive(Debug, Default)]
pub struct Spool {
    mem: Vec<u8>,
    pos: usize,
    file: Option<File>,
    file_len: u64,
    file_pos: u64,
    /// Bytes counted in `HELD` for this spool.
    held: u64,
    /// The file is the app's (`wsgi.file_wrapper`, duplicated): sent from,
    /// never written to.
    borrowed: bool,
}

impl Drop for Spool {
    fn drop(&mut self) {
        release(self.held);
    }
}

impl Spool {
    pub fn is_empty(&self) -> bool {
        self.pos == self.mem.len() && self.file_pos == self.file_len
    }

    /// Bytes still to send.
    pub fn len(&self) -> u64 {
        (self.mem.len() - self.pos) as u64 + (self.file_len - self.file_pos)
    }

    fn sent(&mut self, n: usize) {
        let n = n as u64;
        let back = n.min(self.held);
        self.held -= back;
        release(back);
    }

    /// Append bytes (within the worker's cap, already reserved).
    fn append(&mut self, data: &[u8], memory_max: usize) -> io::Result<()> {
        if self.file.is_none() && self.mem.len() - self.pos + data.len() <= memory_max {
            if self.pos > 0 && self.pos == self.mem.len() {
                self.mem.clear();
                self.pos = 0;
            }
            self.mem.extend_from_slice(data);
            return Ok(());
        }
        if self.borrowed {
            return Err(io::Error::other("response bytes after a file body"));
        }
        let f = match self.file.as_mut() {
            Some(f) => f,
            None => self.file.insert(crate::worker::unlinked_tempfile()?),
        };
        f.write_all_at(data, self.file_len)?;
        self.file_len += data.len() as u64;
        Ok(())
    }

    /// Send what the socket takes now, without waiting.
    fn try_flush(&mut self, fd: RawFd) -> io::Result<()> {
        if self.pos < self.mem.len() {
            let n = fdio::try_send(fd, &self.mem[self.pos..])?;
            self.pos += n;
            self.sent(n);
            if self.pos < self.mem.len() {
                return Ok(());
            }
        }
        if let Some(file_fd) = self.file.as_ref().map(std::os::fd::AsRawFd::as_raw_fd) {
            while self.file_pos < self.file_len {
                let mut off = i64::try_from(self.file_pos).unwrap_or(i64::MAX);
                let count = usize::try_from(self.file_len - self.file_pos).unwrap_or(1 << 30);
                // SAFETY: both descriptors are open for the whole call: the
                // socket is the connection's, the file is ours.
                let (sock, file) = unsafe {
                    (
                        std::os::fd::BorrowedFd::borrow_raw(fd),
                        std::os::fd::BorrowedFd::borrow_raw(file_fd),
                    )
                };
                match nix::sys::sendfile::sendfile(sock, file, Some(&mut off), count.min(1 << 30)) {
                    Ok(0) => break,
                    Ok(n) => {
                        self.file_pos += n as u64;
                        self.sent(n);
                    }
                    Err(nix::errno::Errno::EAGAIN) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// Send everything, waiting for the client (on the app's thread, GIL
    /// released by the caller).
    fn drain_blocking(&mut self, fd: RawFd, timeout: Duration) -> io::Result<()> {
        if self.pos < self.mem.len() {
            fdio::send_all(fd, &self.mem[self.pos..], timeout)?;
            let n = self.mem.len() - self.pos;
            self.pos = self.mem.len();
            self.sent(n);
        }
        if let Some(f) = &self.file {
            use std::os::fd::AsRawFd;
            let off = i64::try_from(self.file_pos).unwrap_or(i64::MAX);
            let n = fdio::sendfile_all(
                fd,
                f.as_raw_fd(),
                off,
                self.file_len - self.file_pos,
                timeout,
            )?;
            self.file_pos += n;
            self.sent(usize::try_from(n).unwrap_or(usize::MAX));
        }
        Ok(())
    }

    /// Write the rest to the client at its pace (the connection task, after
    /// the slot is free). Err: the client is gone or too slow; close.
    pub async fn write_to<S: AsyncWrite + Unpin>(&mut self, s: &mut S) -> io::Result<()> {
        let Some(c) = config() else {
            return Err(io::Error::other("no spool configured"));
        };
        let mut clock = RateClock::start(c.grace, c.min_rate);
        while self.pos < self.mem.len() {
            let n = write_some(s, &self.mem[self.pos..], &clock).await?;
            clock.add(n);
            self.pos += n;
            self.sent(n);
        }
        self.mem = Vec::new();
        self.pos = 0;
        if let Some(f) = self.file.take() {
            let mut buf = vec![0u8; 64 * 1024];
            while self.file_pos < self.file_len {
                let want = usize::try_from(self.file_len - self.file_pos)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let got = f.read_at(&mut buf[..want], self.file_pos)?;
                if got == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let mut off = 0;
                while off < got {
                    let n = write_some(s, &buf[off..got], &clock).await?;
                    clock.add(n);
                    off += n;
                    self.file_pos += n as u64;
                    self.sent(n);
                }
            }
        }
        s.flush().await
    }
}

async fn write_some<S: AsyncWrite + Unpin>(
    s: &mut S,
    data: &[u8],
    clock: &RateClock,
) -> io::Result<usize> {
    match tokio::time::timeout_at(clock.deadline().into(), s.write(data)).await {
        Ok(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client reads the response too slowly",
        )),
    }
}

/// Send `data` on `fd` after whatever `spool` holds: at once if the socket
/// takes it, else into the spool. When the worker's cap is reached, waits
/// for the client instead (empties the spool and sends `data`, blocking).
/// Call with the GIL released.
pub fn send(
    spool: &mut Option<Spool>,
    fd: RawFd,
    data: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    let Some(c) = config() else {
        return fdio::send_all(fd, data, timeout);
    };
    let mut data = data;
    if let Some(sp) = spool.as_mut() {
        sp.try_flush(fd)?;
    }
    if spool.as_ref().is_none_or(Spool::is_empty) {
        let n = fdio::try_send(fd, data)?;
        data = &data[n..];
        if data.is_empty() {
            return Ok(());
        }
    }
    if reserve(data.len() as u64, c.worker_max) {
        let sp = spool.get_or_insert_with(Spool::default);
        sp.held += data.len() as u64;
        return sp.append(data, c.memory_max);
    }
    // Over the worker's cap: the slot waits, as without a spool.
    if let Some(sp) = spool.as_mut() {
        sp.drain_blocking(fd, timeout)?;
    }
    fdio::send_all(fd, data, timeout)
}

/// Send `count` bytes of the app's file `file_fd` from `offset` (a
/// `wsgi.file_wrapper` body): what the socket does not take now is left to
/// the connection task, from a duplicate of the descriptor, so the slot is
/// free before a slow client has the file. Call with the GIL released and
/// the spool empty. Returns the bytes sent or to be sent.
pub fn sendfile(
    spool: &mut Option<Spool>,
    fd: RawFd,
    file_fd: RawFd,
    offset: i64,
    count: u64,
    timeout: Duration,
) -> io::Result<u64> {
    if config().is_none() {
        return fdio::sendfile_all(fd, file_fd, offset, count, timeout);
    }
    // SAFETY: the app's file object holds the descriptor open during this
    // call; the duplicate is ours.
    let dup = unsafe { std::os::fd::BorrowedFd::borrow_raw(file_fd) }.try_clone_to_owned()?;
    let start = u64::try_from(offset).unwrap_or(0);
    let mut sp = Spool::default();
    sp.file = Some(File::from(dup));
    sp.file_pos = start;
    sp.file_len = start + count;
    sp.borrowed = true;
    sp.try_flush(fd)?;
    if !sp.is_empty() {
        *spool = Some(sp);
    }
    Ok(count)
}

/// Empty the spool, waiting for the client (before a body that bypasses
/// it, such as sendfile). Call with the GIL released.
pub fn drain(spool: &mut Option<Spool>, fd: RawFd, timeout: Duration) -> io::Result<()> {
    if let Some(sp) = spool.as_mut() {
        sp.drain_blocking(fd, timeout)?;
    }
    *spool = None;
    Ok(())
}

/// The app is done; `out` is the response's last bytes. Sends what the
/// socket takes now and returns what is left: a plain buffer when it is
/// small and nothing is spooled (the fast path: one send, as before), else
/// the spool, which the connection task writes at the client's pace.
pub fn finish(
    mut spool: Option<Spool>,
    fd: RawFd,
    out: Vec<u8>,
) -> io::Result<(Vec<u8>, Option<Spool>)> {
    if let Some(sp) = spool.as_mut() {
        sp.try_flush(fd)?;
        if sp.is_empty() {
            spool = None;
        }
    }
    let rest: &[u8] = if spool.is_none() {
        let n = fdio::try_send(fd, &out)?;
        &out[n..]
    } else {
        &out
    };
    let Some(c) = config() else {
        return Ok((rest.to_vec(), None));
    };
    if spool.is_none() && rest.len() <= c.memory_max {
        return Ok((rest.to_vec(), None));
    }
    let mut sp = spool.unwrap_or_default();
    if !rest.is_empty() {
        // Counted even past the cap: the app is done, this frees its slot.
        HELD.fetch_add(rest.len() as u64, Ordering::AcqRel);
        sp.held += rest.len() as u64;
        sp.append(rest, c.memory_max)?;
    }
    Ok((Vec::new(), Some(sp)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn setup() {
        configure(Config {
            memory_max: 1000,
            worker_max: 1 << 30,
            grace: Duration::from_secs(5),
            min_rate: 1,
        });
    }

    fn small_pair() -> (UnixStream, UnixStream) {
        let (a, b) = UnixStream::pair().expect("pair");
        a.set_nonblocking(true).expect("nonblocking");
        let fd = a.as_raw_fd();
        let v: libc::c_int = 4096;
        // SAFETY: a valid socket and a c_int option value.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        (a, b)
    }

    #[test]
    fn fast_path_spools_nothing() {
        setup();
        let (a, mut b) = small_pair();
        let mut sp = None;
        send(&mut sp, a.as_raw_fd(), b"hello", Duration::from_secs(1)).expect("send");
        assert!(sp.is_none());
        let mut got = [0u8; 5];
        b.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello");
    }

    #[test]
    fn unread_response_goes_to_memory_then_file_and_arrives_whole() {
        setup();
        let (a, mut b) = small_pair();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let mut sp = None;
        for piece in data.chunks(10_000) {
            send(&mut sp, a.as_raw_fd(), piece, Duration::from_secs(1)).expect("send");
        }
        let (rest, sp) = finish(sp, a.as_raw_fd(), Vec::new()).expect("finish");
        assert!(rest.is_empty());
        let mut sp = sp.expect("a spool: the client reads nothing");
        assert!(sp.file.is_some(), "past 1000 bytes it is a file");
        assert!(held() >= sp.len());
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).expect("read");
            got
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let mut s = tokio::net::UnixStream::from_std(a).expect("tokio");
            sp.write_to(&mut s).await.expect("written");
            assert!(sp.is_empty());
            drop(s);
        });
        assert_eq!(reader.join().expect("reader"), data);
    }

    #[test]
    fn file_body_is_left_to_the_connection_task() {
        setup();
        let (a, mut b) = small_pair();
        let data: Vec<u8> = (0..500_000u32).map(|i| (i % 241) as u8).collect();
        let mut f = crate::worker::unlinked_tempfile().expect("tmp");
        std::io::Write::write_all(&mut f, &data).expect("write");
        let mut sp = None;
        let n = sendfile(
            &mut sp,
            a.as_raw_fd(),
            f.as_raw_fd(),
            100,
            400_000,
            Duration::from_secs(1),
        )
        .expect("sendfile");
        assert_eq!(n, 400_000);
        drop(f); // the app closes its file: the spool has its own descriptor
        let (_, sp) = finish(sp, a.as_raw_fd(), Vec::new()).expect("finish");
        let mut sp = sp.expect("the client took nothing yet");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).expect("read");
            got
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let mut s = tokio::net::UnixStream::from_std(a).expect("tokio");
            sp.write_to(&mut s).await.expect("written");
        });
        assert_eq!(reader.join().expect("reader"), &data[100..400_100]);
    }

    #[test]
    fn a_client_that_never_reads_is_cut_off() {
        configure(Config {
            memory_max: 1000,
            worker_max: 1 << 30,
            grace: Duration::from_millis(200),
            min_rate: 1,
        });
        // CONFIG is set once per process: use its grace, whatever it is.
        let (a, _b) = small_pair();
        let mut sp = None;
        let data = vec![7u8; 200_000];
        send(&mut sp, a.as_raw_fd(), &data, Duration::from_secs(1)).expect("send");
        let mut sp = sp.expect("spooled");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let r = rt.block_on(async {
            let mut s = tokio::net::UnixStream::from_std(a).expect("tokio");
            tokio::time::timeout(Duration::from_secs(20), sp.write_to(&mut s)).await
        });
        let r = r.expect("cut off before the test's own timeout");
        assert_eq!(r.expect_err("too slow").kind(), io::ErrorKind::TimedOut);
    }
}
