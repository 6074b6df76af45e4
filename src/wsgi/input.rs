//! `wsgi.input`: the request body as a Python file-like object.
//!
//! It reads from the socket only when the app asks, never past the end of
//! the body (Content-Length or the last chunk), and sends `100 Continue`
//! before its first read from the socket when the client asked for it.
//! A body the connection task pre-read (`worker::body`) is in the buffered
//! bytes or in a spill file, read before the socket; reads from the socket
//! follow the body rate rule (`http::rate`), a client too slow for it
//! makes the request a 408.

use super::fdio;
use crate::http::rate::RateClock;
use crate::http::{BodyFraming, ChunkedDecoder, Request, Version};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use std::os::fd::RawFd;
use std::sync::Mutex;
use std::time::Duration;

/// Most a finished request's unread body is drained by, to keep the
/// connection; past it the connection is closed instead.
const MAX_DRAIN: u64 = 1 << 20;

enum Framing {
    Length(u64),
    Chunked(ChunkedDecoder),
}

struct State {
    fd: RawFd,
    timeout: Duration,
    /// Raw bytes from the socket not yet consumed.
    raw: Vec<u8>,
    raw_pos: usize,
    /// Decoded body bytes ready for the app.
    body: Vec<u8>,
    body_pos: usize,
    framing: Framing,
    send_continue: bool,
    /// The client closed the connection before the body ended.
    truncated: bool,
    error: Option<String>,
    /// The body's framing was invalid (bad chunk): the request is answered
    /// with this error's status, never passed off as the app's fault.
    framing_error: Option<crate::http::ParseError>,
    /// The pre-read body's spill file, read before anything else, and the
    /// bytes read after the body, which follow it.
    spill: Option<std::fs::File>,
    after_spill: Vec<u8>,
    /// The body rate rule (grace, bytes/s) for reads from the socket, and
    /// its clock, started at the first such read.
    rate: Option<(Duration, u64)>,
    clock: Option<RateClock>,
}

#[pyclass(module = "rgunicorn")]
pub struct Input {
    st: Mutex<State>,
}

impl Input {
    /// The body of `req`: `prebuffered` holds the bytes read after the
    /// head; when the body was pre-read into `spill` (from its start), they
    /// are what came after it. `rate`: the rate rule for socket reads.
    pub fn new(
        fd: RawFd,
        req: &Request,
        prebuffered: Vec<u8>,
        timeout: Duration,
        spill: Option<std::fs::File>,
        rate: Option<(Duration, u64)>,
    ) -> Input {
        let framing = match req.body {
            BodyFraming::None => Framing::Length(0),
            BodyFraming::Length(n) => Framing::Length(n),
            BodyFraming::Chunked => Framing::Chunked(ChunkedDecoder::new()),
        };
        let has_body = !matches!(framing, Framing::Length(0));
        let (raw, after_spill) = match spill {
            Some(_) => (Vec::new(), prebuffered),
            None => (prebuffered, Vec::new()),
        };
        Input {
            st: Mutex::new(State {
                fd,
                timeout,
                raw,
                raw_pos: 0,
                body: Vec::new(),
                body_pos: 0,
                framing,
                send_continue: has_body && req.expect_continue && req.version == Version::Http11,
                truncated: false,
                error: None,
                framing_error: None,
                spill,
                after_spill,
                rate,
                clock: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The framing error met while reading the body, if any.
    pub fn framing_error(&self) -> Option<crate::http::ParseError> {
        self.lock().framing_error
    }

    /// After the response: drain what the app left unread, if that is cheap.
    /// Returns (connection reusable, bytes after the body).
    pub fn finish(&self, py: Python<'_>) -> (bool, Vec<u8>) {
        let mut st = self.lock();
        if st.spill.is_some() && matches!(st.framing, Framing::Length(_)) {
            // A Content-Length body is spilled whole: what follows it is
            // already here, nothing to drain.
            return (true, std::mem::take(&mut st.after_spill));
        }
        if !st.done() {
            // A client still waiting for `100 Continue` has not sent its body:
            // closing is the only safe way to end the exchange.
            if st.send_continue || st.error.is_some() {
                return (false, Vec::new());
            }
            if let Framing::Length(n) = st.framing {
                if n > MAX_DRAIN {
                    return (false, Vec::new());
                }
            }
            let mut drained = 0u64;
            while !st.done() && drained <= MAX_DRAIN {
                let before = st.body.len() - st.body_pos;
                if st.fill(py).is_err() || st.truncated {
                    return (false, Vec::new());
                }
                drained += (st.body.len() - st.body_pos - before) as u64;
                st.body.clear();
                st.body_pos = 0;
            }
            if !st.done() {
                return (false, Vec::new());
            }
        }
        let pos = st.raw_pos;
        let mut raw = std::mem::take(&mut st.raw);
        raw.drain(..pos);
        if st.spill.take().is_some() {
            // The body ended inside the spill file: what came after it.
            raw.extend_from_slice(&st.after_spill);
        }
        (true, raw)
    }
}

impl State {
    fn done(&self) -> bool {
        match &self.framing {
            Framing::Length(n) => *n == 0,
            Framing::Chunked(d) => d.is_done(),
        }
    }

    fn available(&self) -> usize {
        self.body.len() - self.body_pos
    }

    /// Move more body bytes into `body`: from `raw` if it has any, else
    /// from the socket (GIL released while waiting). Ok(false) = body ended.
    fn fill(&mut self, py: Python<'_>) -> PyResult<bool> {
        if self.done() {
            return Ok(false);
        }
        if self.decode_raw()? {
            return Ok(true);
        }
        self.read_more(py)?;
        self.decode_raw()?;
        Ok(true)
    }

    /// Decode what `raw` holds into `body`; true if any raw byte was used.
    fn decode_raw(&mut self) -> PyResult<bool> {
        if self.body_pos > 0 && self.body_pos == self.body.len() {
            self.body.clear();
            self.body_pos = 0;
        }
        let src = &self.raw[self.raw_pos..];
        if src.is_empty() {
            return Ok(false);
        }
        let used = match &mut self.framing {
            Framing::Length(n) => {
                let take = usize::try_from(*n).unwrap_or(usize::MAX).min(src.len());
                self.body.extend_from_slice(&src[..take]);
                *n -= take as u64;
                take
            }
            Framing::Chunked(d) => match d.decode(src, &mut self.body) {
                Ok(used) => used,
                Err(e) => {
                    let msg = format!("invalid chunked request body: {e}");
                    self.error = Some(msg.clone());
                    self.framing_error = Some(e);
                    return Err(PyOSError::new_err(msg));
                }
            },
        };
        self.raw_pos += used;
        Ok(used > 0)
    }

    /// Append more bytes from the socket to `raw` (never past a
    /// Content-Length body's end).
    fn read_more(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.spill.is_some() && self.read_spill(py)? {
            return Ok(());
        }
        if self.send_continue {
            self.send_continue = false;
            let (fd, t) = (self.fd, self.timeout);
            fdio::blocking(py, || {
                fdio::send_all(fd, crate::http::response::CONTINUE, t)
            })
            .map_err(|e| self.io_error(e))?;
        }
        let pos = self.raw_pos;
        self.raw.drain(..pos);
        self.raw_pos = 0;
        let want = match self.framing {
            Framing::Length(n) => usize::try_from(n).unwrap_or(usize::MAX).clamp(1, 64 * 1024),
            Framing::Chunked(_) => 64 * 1024,
        };
        let old = self.raw.len();
        self.raw.resize(old + want, 0);
        let (fd, mut t) = (self.fd, self.timeout);
        if let (None, Some((grace, rate))) = (&self.clock, self.rate) {
            self.clock = Some(RateClock::start(grace, rate));
        }
        if let Some(c) = &self.clock {
            t = t.min(c.left());
        }
        let buf = &mut self.raw[old..];
        let n = fdio::blocking(py, || fdio::read(fd, buf, t));
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                self.raw.truncate(old);
                if e.kind() == std::io::ErrorKind::TimedOut && self.clock.is_some() {
                    // Too slow for the rate rule: a 408, not the app's fault.
                    self.framing_error = Some(crate::http::ParseError::BodyTimeout);
                }
                return Err(self.io_error(e));
            }
        };
        if let Some(c) = &mut self.clock {
            c.add(n);
        }
        self.raw.truncate(old + n);
        if n == 0 {
            self.truncated = true;
            return Err(self.io_error(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "client closed the connection before the request body was complete",
            )));
        }
        Ok(())
    }

    /// Append the next bytes of the spill file to `raw`; at its end, the
    /// bytes that followed the body. false: nothing left there.
    fn read_spill(&mut self, py: Python<'_>) -> PyResult<bool> {
        use std::io::Read;
        let pos = self.raw_pos;
        self.raw.drain(..pos);
        self.raw_pos = 0;
        let old = self.raw.len();
        self.raw.resize(old + 64 * 1024, 0);
        let Some(f) = self.spill.as_mut() else {
            self.raw.truncate(old);
            return Ok(false);
        };
        let buf = &mut self.raw[old..];
        let r = py.detach(|| f.read(buf));
        match r {
            Ok(0) => {
                self.raw.truncate(old);
                self.spill = None;
                let after = std::mem::take(&mut self.after_spill);
                self.raw.extend_from_slice(&after);
                Ok(!after.is_empty())
            }
            Ok(n) => {
                self.raw.truncate(old + n);
                Ok(true)
            }
            Err(e) => {
                self.raw.truncate(old);
                Err(self.io_error(e))
            }
        }
    }

    fn io_error(&mut self, e: std::io::Error) -> PyErr {
        let msg = e.to_string();
        self.error = Some(msg.clone());
        // An exception thrown into the greenlet while it waited for the
        // socket (a `gevent.Timeout`, the GreenletExit of `gevent.kill`)
        // reaches the app as itself, not as an OSError, so `with
        // gevent.Timeout(...)` catches its own timeout and a kill ends the
        // request as one (see `fdio::wait_cooperative`).
        if e.get_ref().is_some_and(|i| i.is::<PyErr>()) {
            let err = PyErr::from(e);
            if !Python::attach(|py| err.is_instance_of::<PyOSError>(py)) {
                return err;
            }
        }
        PyOSError::new_err(msg)
    }

    /// Make at least `n` bytes available, or as many as the body has.
    fn want(&mut self, py: Python<'_>, n: usize) -> PyResult<()> {
        while self.available() < n {
            if !self.fill(py)? {
                break;
            }
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.available());
        let s = &self.body[self.body_pos..self.body_pos + n];
        self.body_pos += n;
        s
    }

    /// The next `n` bytes of a Content-Length body (fewer at its end)
    /// straight from `raw` when nothing decoded is pending and `raw` holds
    /// them all: what `want(n)` + `take(n)` would give, without copying
    /// them into `body` first (a 16 KiB POST read in one call is copied
    /// once, into the bytes object, instead of twice). None: not the case.
    fn take_raw(&mut self, n: usize) -> Option<&[u8]> {
        let pending = self.available();
        let Framing::Length(left) = &mut self.framing else {
            return None;
        };
        let k = usize::try_from(*left).unwrap_or(usize::MAX).min(n);
        let start = self.raw_pos;
        if pending > 0 || k == 0 || self.raw.len() - start < k {
            return None;
        }
        *left -= k as u64;
        self.raw_pos += k;
        Some(&self.raw[start..start + k])
    }

    fn read_all(&mut self, py: Python<'_>) -> PyResult<Vec<u8>> {
        while self.fill(py)? {}
        let v = self.body[self.body_pos..].to_vec();
        self.body.clear();
        self.body_pos = 0;
        Ok(v)
    }

    fn readline(&mut self, py: Python<'_>, limit: Option<usize>) -> PyResult<Vec<u8>> {
        let mut scanned = 0;
        loop {
            let avail = &self.body[self.body_pos..];
            if let Some(i) = avail[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + i + 1;
                let n = limit.map_or(end, |l| l.min(end));
                return Ok(self.take(n).to_vec());
            }
            scanned = avail.len();
            if limit.is_some_and(|l| scanned >= l) {
                let n = limit.unwrap_or(scanned);
                return Ok(self.take(n).to_vec());
            }
            if !self.fill(py)? {
                let n = self.available();
                return Ok(self.take(n).to_vec());
            }
        }
    }
}

fn size_arg(size: Option<i64>) -> Option<usize> {
    size.filter(|s| *s >= 0)
        .map(|s| usize::try_from(s).unwrap_or(usize::MAX))
}

#[pymethods]
impl Input {
    #[pyo3(signature = (size=None))]
    fn read<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let mut st = self.lock();
        match size_arg(size) {
            None => {
                let v = st.read_all(py)?;
                Ok(PyBytes::new(py, &v))
            }
            Some(n) => {
                if let Some(s) = st.take_raw(n) {
                    return Ok(PyBytes::new(py, s));
                }
                st.want(py, n)?;
                Ok(PyBytes::new(py, st.take(n)))
            }
        }
    }

    #[pyo3(signature = (size=None))]
    fn readline<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let mut st = self.lock();
        let v = st.readline(py, size_arg(size))?;
        Ok(PyBytes::new(py, &v))
    }

    #[pyo3(signature = (hint=None))]
    fn readlines<'py>(&self, py: Python<'py>, hint: Option<i64>) -> PyResult<Bound<'py, PyList>> {
        let mut st = self.lock();
        let hint = size_arg(hint).filter(|h| *h > 0);
        let out = PyList::empty(py);
        let mut total = 0;
        loop {
            let line = st.readline(py, None)?;
            if line.is_empty() {
                break;
            }
            total += line.len();
            out.append(PyBytes::new(py, &line))?;
            if hint.is_some_and(|h| total >= h) {
                break;
            }
        }
        Ok(out)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let mut st = self.lock();
        let line = st.readline(py, None)?;
        if line.is_empty() {
            Ok(None)
        } else {
            Ok(Some(PyBytes::new(py, &line)))
        }
    }
}
