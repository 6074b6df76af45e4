//! Request bodies read whole by Rust before the app is called, so a client
//! that trickles its body never holds a Python slot.
//!
//! [`preread`] runs on the connection task, after the head is parsed and
//! before the request is dispatched:
//! - no body, or the whole body already read with the head: nothing to do
//!   (the fast path: no extra read, copy or syscall);
//! - a body up to `body_preread_size` (Content-Length, or chunked as it
//!   arrives): read to its end, in memory up to `body_buffer_size`, past
//!   that in an unlinked temporary file; `wsgi.input` then reads it from
//!   there and never waits on the socket;
//! - a larger Content-Length body is left to `wsgi.input` to stream, as
//!   before, under the same rate rule (see `wsgi::input`); a chunked body
//!   that turns out larger is streamed from where the pre-read stopped.
//!
//! The body must arrive at `body_min_rate` bytes/s on average once
//! `body_timeout` seconds have passed (see [`crate::http::rate`]). A client
//! slower than that, or silent for the whole timeout, gets `408 Request
//! Timeout` and the connection closes: Python never sees the request.
//!
//! `Expect: 100-continue`: when the body is pre-read, rgunicorn sends the
//! `100 Continue` itself before reading (the app could not refuse the body
//! any more once it is called). A body too large to pre-read keeps the
//! old behaviour: `100 Continue` goes out on the app's first read of
//! `wsgi.input`, so the app can still answer 413 without reading.

use crate::config::Settings;
use crate::http::rate::RateClock;
use crate::http::{BodyFraming, ChunkedDecoder, ParseError, Request, Version};
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How request bodies are pre-read (from the settings).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Largest body read whole before the app is called; 0 = never.
    pub preread_max: u64,
    /// Largest pre-read body kept in memory; larger ones go to a file.
    pub memory_max: usize,
    /// Grace period of the rate rule (and the idle timeout when
    /// `min_rate` is 0).
    pub timeout: Duration,
    /// Minimum average bytes/s after `timeout`.
    pub min_rate: u64,
}

impl Policy {
    pub fn from_settings(s: &Settings) -> Policy {
        Policy {
            preread_max: s.body_preread_size,
            memory_max: s.body_buffer_size,
            timeout: Duration::from_secs(s.body_timeout.max(1)),
            min_rate: s.body_min_rate,
        }
    }

    /// The rate clock for a body starting now.
    pub fn clock(&self) -> RateClock {
        RateClock::start(self.timeout, self.min_rate)
    }
}

/// Where the pre-read body is.
#[derive(Debug)]
pub enum Preread {
    /// In the bytes after the head (whole, or to be streamed by `wsgi.input`).
    InBuffer,
    /// Its first part (usually all of it) is in this unlinked file,
    /// positioned at its start; the bytes after the head then hold only
    /// what came after the body (a pipelined request).
    Spilled(File),
}

/// Why the request cannot be dispatched.
#[derive(Debug)]
pub enum Refused {
    /// The client closed the connection (or it failed): close quietly.
    Closed,
    /// Answer with this error and close (408 for a slow body, 400 for a
    /// malformed chunked one).
    Answer(ParseError),
}

/// Finds the end of the body in the raw bytes as they arrive.
enum Scan {
    Length(u64),
    Chunked(ChunkedDecoder, Vec<u8>),
}

impl Scan {
    /// How many bytes of `raw` belong to the body.
    fn feed(&mut self, raw: &[u8]) -> Result<usize, ParseError> {
        match self {
            Scan::Length(left) => {
                let n = usize::try_from(*left).map_or(raw.len(), |l| l.min(raw.len()));
                *left -= n as u64;
                Ok(n)
            }
            Scan::Chunked(d, scratch) => {
                let used = d.decode(raw, scratch);
                scratch.clear();
                used
            }
        }
    }

    fn done(&self) -> bool {
        match self {
            Scan::Length(left) => *left == 0,
            Scan::Chunked(d, _) => d.is_done(),
        }
    }
}

/// The bytes after the head, split off `buf`, in a buffer already large
/// enough for a Content-Length body that will be pre-read in memory (so
/// reading the rest of it neither reallocates nor copies again).
pub fn split_rest(p: &Policy, req: &Request, buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    let have = buf.len() - n;
    let want = match req.body {
        BodyFraming::Length(len) if len <= p.memory_max as u64 && len <= p.preread_max => {
            usize::try_from(len).unwrap_or(0).max(have)
        }
        _ => have,
    };
    if want == have {
        return buf.split_off(n);
    }
    let mut rest = Vec::with_capacity(want);
    rest.extend_from_slice(&buf[n..]);
    buf.truncate(n);
    rest
}

/// Read the request's body before it is dispatched, when it is small enough
/// (see the module comment). `rest` holds the bytes read after the head.
pub async fn preread<S>(
    p: &Policy,
    s: &mut S,
    req: &mut Request,
    rest: &mut Vec<u8>,
) -> Result<Preread, Refused>
where
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin,
{
    let mut scan = match req.body {
        BodyFraming::None => return Ok(Preread::InBuffer),
        BodyFraming::Length(n) => {
            if rest.len() as u64 >= n || n > p.preread_max {
                return Ok(Preread::InBuffer);
            }
            Scan::Length(n)
        }
        BodyFraming::Chunked => Scan::Chunked(ChunkedDecoder::new(), Vec::new()),
    };
    let mut clock = p.clock();
    let mut total = scan.feed(rest).map_err(Refused::Answer)? as u64;
    if scan.done() || p.preread_max == 0 {
        return Ok(Preread::InBuffer);
    }
    clock.add(rest.len());
    if req.expect_continue && req.version == Version::Http11 {
        let w = tokio::time::timeout(p.timeout, s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n"));
        if !matches!(w.await, Ok(Ok(()))) {
            return Err(Refused::Closed);
        }
        // Sent: wsgi.input must not send it again.
        req.expect_continue = false;
    }
    let mut file: Option<File> = None;
    let mut staging: Vec<u8> = Vec::new();
    loop {
        // A Content-Length body goes to a file at once if it cannot fit in
        // memory; a chunked one once memory is full.
        let (want, spill) = match scan {
            Scan::Length(left) => {
                let left = usize::try_from(left).unwrap_or(usize::MAX);
                (
                    left.min(64 * 1024),
                    rest.len().saturating_add(left) > p.memory_max,
                )
            }
            Scan::Chunked(..) if file.is_some() => (64 * 1024, false),
            Scan::Chunked(..) => {
                let room = p.memory_max.saturating_sub(rest.len());
                (room.clamp(1, 16 * 1024), room == 0)
            }
        };
        if file.is_none() && spill {
            let mut f = unlinked_tempfile().map_err(|e| {
                tracing::warn!("cannot spool a request body to a temporary file: {e}");
                Refused::Closed
            })?;
            f.write_all(rest).map_err(|_| Refused::Closed)?;
            rest.clear();
            rest.shrink_to(8192);
            file = Some(f);
        }
        let target = if file.is_some() {
            staging.clear();
            &mut staging
        } else {
            &mut *rest
        };
        let old = target.len();
        target.reserve(want);
        let n = read_some(s, target, &clock).await?;
        if n == 0 {
            return Err(match scan {
                // The client ended its side inside a chunked body: it may
                // still read, so say what was wrong, as Gunicorn does
                // (`ChunkMissingTerminator`, 400).
                Scan::Chunked(..) => Refused::Answer(ParseError::MissingChunkTerminator),
                // Short of its Content-Length: nothing to answer, as
                // Gunicorn does (`NoMoreData`).
                Scan::Length(_) => Refused::Closed,
            });
        }
        clock.add(n);
        let used = scan.feed(&target[old..]).map_err(Refused::Answer)?;
        total += used as u64;
        if let Some(f) = file.as_mut() {
            f.write_all(&staging[..used]).map_err(|_| Refused::Closed)?;
            if scan.done() {
                rest.extend_from_slice(&staging[used..]);
            }
        }
        // A chunked body past the limit: wsgi.input streams the rest.
        if scan.done() || total > p.preread_max {
            break;
        }
    }
    match file {
        None => Ok(Preread::InBuffer),
        Some(mut f) => {
            use std::io::Seek;
            f.rewind().map_err(|_| Refused::Closed)?;
            Ok(Preread::Spilled(f))
        }
    }
}

/// One read of at least a byte into `buf`'s spare capacity, within the
/// clock's deadline; 0 at the end of the client's input. Tries the socket directly first: the bytes are usually
/// there already, and tokio would first wait for a readiness event.
async fn read_some<S>(s: &mut S, buf: &mut Vec<u8>, clock: &RateClock) -> Result<usize, Refused>
where
    S: AsyncRead + AsRawFd + Unpin,
{
    let len = buf.len();
    let spare = buf.spare_capacity_mut();
    // SAFETY: the connection task owns the socket and keeps it open; read(2)
    // writes at most `spare.len()` bytes into the vector's spare capacity,
    // and only the bytes it reports are marked initialised.
    let r = unsafe { libc::read(s.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
    match r {
        0 => return Ok(0),
        n if n > 0 => {
            let n = n as usize;
            // SAFETY: read(2) initialised these n bytes (see above).
            unsafe { buf.set_len(len + n) };
            return Ok(n);
        }
        _ => {
            let e = std::io::Error::last_os_error().raw_os_error();
            if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
                return Err(Refused::Closed);
            }
        }
    }
    match tokio::time::timeout_at(clock.deadline().into(), s.read_buf(buf)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(_)) => Err(Refused::Closed),
        Err(_) => Err(Refused::Answer(ParseError::BodyTimeout)),
    }
}

/// A new temporary file with no name (O_TMPFILE where the filesystem has
/// it, else created and unlinked at once), in `$TMPDIR` or /tmp.
pub fn unlinked_tempfile() -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let tmp = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir);
    if let Ok(f) = tmp {
        return Ok(f);
    }
    let template = dir.join("rgunicorn-XXXXXX");
    let (fd, path) = nix::unistd::mkstemp(&template)?;
    let _ = std::fs::remove_file(&path);
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn policy(preread: u64, memory: usize) -> Policy {
        Policy {
            preread_max: preread,
            memory_max: memory,
            timeout: Duration::from_millis(300),
            min_rate: 1000,
        }
    }

    fn request(raw: &[u8]) -> (Request, Vec<u8>) {
        let limits = crate::http::Limits {
            request_line: 4094,
            fields: 100,
            field_size: 8190,
        };
        let (req, n) = crate::http::parse_head(raw, &limits)
            .expect("valid head")
            .expect("complete head");
        (req, raw[n..].to_vec())
    }

    /// A connected pair: the server side as a tokio stream, the client side
    /// as a blocking std stream.
    fn pair() -> (tokio::net::UnixStream, std::os::unix::net::UnixStream) {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        (
            tokio::net::UnixStream::from_std(a).expect("tokio stream"),
            b,
        )
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn whole_body_already_read_is_left_alone() {
        rt().block_on(async {
            let (mut s, _c) = pair();
            let (mut req, mut rest) =
                request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET");
            let r = preread(&policy(1 << 20, 1024), &mut s, &mut req, &mut rest).await;
            assert!(matches!(r, Ok(Preread::InBuffer)));
            assert_eq!(rest, b"helloGET");
        });
    }

    #[test]
    fn body_read_into_memory_with_100_continue() {
        rt().block_on(async {
            let (mut s, mut c) = pair();
            let (mut req, mut rest) = request(
                b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\nab",
            );
            let client = std::thread::spawn(move || {
                let mut got = [0u8; 25];
                c.read_exact(&mut got).expect("100 Continue");
                assert_eq!(&got, b"HTTP/1.1 100 Continue\r\n\r\n");
                c.write_all(b"cdefghijGET / ").expect("send");
                c
            });
            let r = preread(&policy(1 << 20, 1024), &mut s, &mut req, &mut rest).await;
            assert!(matches!(r, Ok(Preread::InBuffer)), "{r:?}");
            assert_eq!(&rest[..10], b"abcdefghij");
            assert!(!req.expect_continue, "wsgi.input must not send it again");
            drop(client.join());
        });
    }

    #[test]
    fn large_body_spills_to_a_file_and_keeps_what_follows() {
        rt().block_on(async {
            let (mut s, mut c) = pair();
            let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let head = format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let (mut req, mut rest) = request(head.as_bytes());
            let sent = body.clone();
            let client = std::thread::spawn(move || {
                c.write_all(&sent).expect("send");
                c.write_all(b"NEXT").expect("send");
                c
            });
            let r = preread(&policy(1 << 20, 4096), &mut s, &mut req, &mut rest).await;
            let Ok(Preread::Spilled(mut f)) = r else {
                panic!("expected a spill: {r:?}");
            };
            let mut got = Vec::new();
            f.read_to_end(&mut got).expect("read spill");
            assert_eq!(got, body);
            drop(client.join());
            // NEXT may still be in flight; what arrived with the body is kept.
            assert!(b"NEXT".starts_with(&rest), "{rest:?}");
        });
    }

    #[test]
    fn chunked_body_is_read_to_its_end() {
        rt().block_on(async {
            let (mut s, mut c) = pair();
            let (mut req, mut rest) = request(
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc",
            );
            let client = std::thread::spawn(move || {
                c.write_all(b"\r\n0\r\n\r\n").expect("send");
                c
            });
            let r = preread(&policy(1 << 20, 1024), &mut s, &mut req, &mut rest).await;
            assert!(matches!(r, Ok(Preread::InBuffer)), "{r:?}");
            assert_eq!(rest, b"3\r\nabc\r\n0\r\n\r\n");
            drop(client.join());
        });
    }

    #[test]
    fn bad_chunk_is_a_400() {
        rt().block_on(async {
            let (mut s, _c) = pair();
            let (mut req, mut rest) =
                request(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
            let r = preread(&policy(1 << 20, 1024), &mut s, &mut req, &mut rest).await;
            assert!(
                matches!(r, Err(Refused::Answer(e)) if e.status() == 400),
                "{r:?}"
            );
        });
    }

    #[test]
    fn trickling_body_gets_408() {
        rt().block_on(async {
            let (mut s, mut c) = pair();
            let (mut req, mut rest) =
                request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n");
            let client = std::thread::spawn(move || {
                for _ in 0..4 {
                    if c.write_all(b"x").is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                c
            });
            let t = std::time::Instant::now();
            let r = preread(&policy(1 << 20, 1024), &mut s, &mut req, &mut rest).await;
            assert!(
                matches!(r, Err(Refused::Answer(ParseError::BodyTimeout))),
                "{r:?}"
            );
            assert!(t.elapsed() < Duration::from_secs(2));
            drop(client.join());
        });
    }

    #[test]
    fn too_large_for_preread_is_streamed() {
        rt().block_on(async {
            let (mut s, _c) = pair();
            let (mut req, mut rest) = request(
                b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
            );
            let r = preread(&policy(1000, 100), &mut s, &mut req, &mut rest).await;
            assert!(matches!(r, Ok(Preread::InBuffer)));
            assert!(req.expect_continue, "the app decides when to send 100");
        });
    }

    #[test]
    fn closed_mid_body_is_closed_quietly() {
        rt().block_on(async {
            let (mut s, c) = pair();
            let (mut req, mut rest) =
                request(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc");
            drop(c);
            let r = preread(&policy(1 << 20, 1024), &mut s, &mut req, &mut rest).await;
            assert!(matches!(r, Err(Refused::Closed)), "{r:?}");
        });
    }

    #[test]
    fn chunked_body_cut_short_is_answered_400() {
        rt().block_on(async {
            let (mut s, c) = pair();
            let (mut req, mut rest) =
                request(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n");
            drop(c);
            let r = preread(&policy(1 << 20, 1024), &mut s, &mut req, &mut rest).await;
            assert!(
                matches!(r, Err(Refused::Answer(ParseError::MissingChunkTerminator))),
                "{r:?}"
            );
        });
    }
}
