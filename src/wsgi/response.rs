//! The response side of WSGI: `start_response`, the `write()` callable,
//! `wsgi.errors`, `wsgi.file_wrapper`, and the [`Writer`] that feeds the
//! app's status, headers and body to [`crate::http::response`] (which
//! decides the framing and encodes them) and sends the bytes.

use super::{BodyError, Outcome};
use crate::http::response::{self, Exchange, Head, InvalidResponse, Response};
use crate::http::Request;
use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Buffered response bytes past which a streamed body is flushed.
const FLUSH_AT: usize = 64 * 1024;

struct State {
    /// The request's number in this worker (for the request id in logs).
    seq: u64,
    fd: RawFd,
    timeout: Duration,
    /// Framing, head and body encoding: the HTTP side of the response.
    resp: Response,
    /// Encoded bytes not yet sent.
    out: Vec<u8>,
    /// What the client has not taken yet (see `spool`).
    spool: Option<super::spool::Spool>,
    /// This request in the worker's registry: claimed before the first
    /// byte of the response is written (see [`super::flight`]).
    flight: Option<Arc<super::flight::Flight>>,
}

/// Requests this worker has started (for request ids).
static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The response being written; shared by the driver, `start_response` and
/// the `write()` callable.
#[derive(Clone)]
pub struct Writer(Arc<Mutex<State>>);

impl Writer {
    /// The response to `req` on `fd`; `flight`, its request's entry in the
    /// worker's registry, which the first byte of the response claims.
    pub fn new(
        fd: RawFd,
        req: &Request,
        timeout: Duration,
        flight: Option<Arc<super::flight::Flight>>,
    ) -> Writer {
        Writer(Arc::new(Mutex::new(State {
            seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            fd,
            timeout,
            resp: Response::new(Exchange::of(req)),
            out: Vec::new(),
            spool: None,
            flight,
        })))
    }

    /// The status the app set (0: none yet).
    pub fn status(&self, py: Python<'_>) -> u16 {
        self.lock(py).resp.head().map_or(0, |h| h.code)
    }

    /// `wsgi.early_hints`: send `103 Early Hints` with `headers` now,
    /// unless the final response has begun or the client speaks HTTP/1.0
    /// (then nothing happens, as in Gunicorn).
    pub fn early_hints(&self, py: Python<'_>, headers: Vec<(String, String)>) -> PyResult<()> {
        let st = self.lock(py);
        if st.resp.head_sent() || st.resp.exchange().version != crate::http::Version::Http11 {
            return Ok(());
        }
        let bytes = response::interim(103, "Early Hints", headers).map_err(invalid)?;
        let (fd, t) = (st.fd, st.timeout);
        let send = || py.detach(|| super::fdio::send_all(fd, &bytes, t));
        let sent = match &st.flight {
            Some(f) => f.interim(send),
            None => Some(send()),
        };
        match sent {
            Some(r) => r.map_err(|e| PyOSError::new_err(e.to_string())),
            None => Ok(()),
        }
    }

    /// The response's state, never waited for while holding the GIL: the
    /// thread that holds it may be sending with the GIL released (`flush`)
    /// and need the GIL back before it lets go, so a thread that waited
    /// for it attached (an app thread calling `write` or a stashed
    /// `wsgi.early_hints` of this request) would deadlock the worker.
    /// Under gevent every request is a greenlet of the one thread, and the
    /// GIL is never released around a wait: the lock is taken as it is.
    fn lock(&self, py: Python<'_>) -> MutexGuard<'_, State> {
        if super::fdio::cooperative() {
            return self.0.lock().unwrap_or_else(|p| p.into_inner());
        }
        loop {
            match self.0.try_lock() {
                Ok(g) => return g,
                Err(std::sync::TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    let m = &self.0;
                    py.detach(|| drop(m.lock()));
                }
            }
        }
    }

    /// `start_response` has been called.
    pub fn started(&self, py: Python<'_>) -> bool {
        self.lock(py).resp.head().is_some()
    }

    /// Write one piece of the body; `flush` sends it before returning.
    pub fn write(&self, py: Python<'_>, data: &[u8], flush: bool) -> Result<(), BodyError> {
        let mut st = self.lock(py);
        if !st.resp.head_sent() {
            st.send_head(None).map_err(BodyError::App)?;
        }
        let State { resp, out, .. } = &mut *st;
        resp.push_body(data, out);
        if flush || st.out.len() >= FLUSH_AT {
            st.flush(py).map_err(BodyError::Io)?;
        }
        Ok(())
    }

    /// The whole body in one piece (a one-item list): one write for all.
    pub fn last_chunk(&self, py: Python<'_>, data: &[u8]) -> Result<(), BodyError> {
        let mut st = self.lock(py);
        if st.resp.head_sent() {
            drop(st);
            return self.write(py, data, false);
        }
        st.send_head(Some(data.len() as u64))
            .map_err(BodyError::App)?;
        let State { resp, out, .. } = &mut *st;
        resp.push_body(data, out);
        Ok(())
    }

    /// The app is done: end the body and hand back what is left to send.
    pub fn finish(&self, py: Python<'_>, uri: &str) -> Outcome {
        let mut st = self.lock(py);
        if !st.resp.head_sent() {
            if let Err(e) = st.send_head(Some(0)) {
                drop(st);
                return self.fail(py, BodyError::App(e), uri);
            }
        }
        let State { resp, out, .. } = &mut *st;
        let mut keep_alive = resp.finish(out);
        let mut out = std::mem::take(&mut st.out);
        if !st.flight.as_ref().is_none_or(|f| f.start()) {
            // The worker is being aborted (it answered), or the app took the
            // connection over: write nothing.
            keep_alive = false;
            out.clear();
        }
        let (pending_out, spool) = match super::spool::finish(st.spool.take(), st.fd, out) {
            Ok(r) => r,
            Err(_) => {
                keep_alive = false;
                (Vec::new(), None)
            }
        };
        Outcome {
            keep_alive,
            taken_over: false,
            linger: false,
            leftover_in: Vec::new(),
            pending_out,
            spool,
            status: st.resp.code(),
            sent: st.resp.sent(),
            response_headers: match st.resp.head() {
                Some(h) if crate::logging::access_enabled() => h.headers.clone(),
                _ => Vec::new(),
            },
            environ_atoms: Vec::new(),
        }
    }

    /// The response failed: log why, answer 500 if nothing was sent yet,
    /// and close the connection.
    pub fn fail(&self, py: Python<'_>, e: BodyError, uri: &str) -> Outcome {
        let mut st = self.lock(py);
        let mut pending_out = Vec::new();
        let mut status = st.resp.code();
        let mut sent = st.resp.sent();
        // A spooled response cut short is only closed.
        let spooled = st.spool.take().is_some();
        match e {
            BodyError::App(e) => {
                // REQUEST_ID: this worker's pid and the request's number in
                // it; a structured field in the journal, plain text otherwise.
                let request_id = format!("{}-{}", std::process::id(), st.seq);
                if is_greenlet_exit(py, &e) {
                    // The request's greenlet was killed (`gevent.kill`, or
                    // the app raised GreenletExit): someone ended it on
                    // purpose, not an error of the app's, so no traceback
                    // (Gunicorn's gevent worker logs nothing), but the
                    // client still gets its 500 or a closed connection.
                    tracing::info!(
                        request_id = %request_id,
                        "Request greenlet killed (GreenletExit) handling {uri}; {}",
                        if st.resp.head_sent() {
                            "connection closed"
                        } else {
                            "answered 500"
                        }
                    );
                    tracing::debug!("{}", crate::python::format_exception(py, &e).trim_end());
                } else {
                    // Target `exception`: Gunicorn's log.exception (StatsD
                    // counts it).
                    tracing::error!(
                        target: "rgunicorn::exception",
                        request_id = %request_id,
                        "Error handling request {uri}\n{}",
                        crate::python::format_exception(py, &e).trim_end()
                    );
                }
                if st.resp.head_sent() {
                    // Truncate: what was promised can no longer be delivered.
                    if !spooled {
                        pending_out = std::mem::take(&mut st.out);
                    }
                } else {
                    status = 500;
                    pending_out = response::error(500, "Internal Server Error", "");
                    sent = 0;
                }
            }
            BodyError::Io(e) => {
                tracing::debug!("client went away ({uri}): {e}");
            }
            BodyError::BadRequest(e) => {
                tracing::debug!("invalid request body ({uri}): {e}");
                if !st.resp.head_sent() {
                    status = e.status();
                    pending_out = response::parse_error(&e);
                    sent = 0;
                }
            }
        }
        Outcome {
            keep_alive: false,
            taken_over: false,
            linger: false,
            leftover_in: Vec::new(),
            pending_out,
            spool: None,
            status,
            sent,
            response_headers: Vec::new(),
            environ_atoms: Vec::new(),
        }
    }
}

/// `e` is greenlet's `GreenletExit` (also `gevent.GreenletExit`), or a
/// subclass: looked up by name, so a worker without greenlet imports
/// nothing.
fn is_greenlet_exit(py: Python<'_>, e: &PyErr) -> bool {
    e.get_type(py).mro().iter().any(|c| {
        c.cast::<pyo3::types::PyType>().is_ok_and(|t| {
            t.name().is_ok_and(|n| n == "GreenletExit") && t.module().is_ok_and(|m| m == "greenlet")
        })
    })
}

impl State {
    /// Encode the status line and headers into `out`. `total` is the body
    /// length when the whole body is already known.
    fn send_head(&mut self, total: Option<u64>) -> PyResult<()> {
        self.resp
            .send_head(total, &mut self.out)
            .map_err(|e| PyAssertionError::new_err(e.to_string()))
    }

    fn flush(&mut self, py: Python<'_>) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        if !self.flight.as_ref().is_none_or(|f| f.start()) {
            self.out.clear();
            return Err(std::io::Error::other(
                "the connection is no longer the server's to write on",
            ));
        }
        let (fd, t) = (self.fd, self.timeout);
        let (out, spool) = (&self.out, &mut self.spool);
        // What the socket does not take now is spooled: the app goes on.
        let r = super::fdio::blocking(py, || super::spool::send(spool, fd, out, t));
        self.out.clear();
        r
    }
}

/// `start_response(status, headers, exc_info=None)`.
#[pyclass(module = "rgunicorn")]
pub struct StartResponse {
    w: Writer,
}

impl StartResponse {
    pub(super) fn new(w: Writer) -> StartResponse {
        StartResponse { w }
    }
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__(
        &self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<WriteCallable> {
        let exc_info = exc_info.filter(|e| !e.is_none());
        {
            let st = self.w.lock(py);
            match exc_info {
                Some(exc) if st.resp.head_sent() => {
                    // PEP 3333: too late to change the response; re-raise.
                    let value = exc.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                None if st.resp.head().is_some() => {
                    return Err(PyAssertionError::new_err("Response headers already set!"));
                }
                _ => {}
            }
        }
        let status: String = status
            .cast::<PyString>()
            .map_err(|_| PyTypeError::new_err("status must be a str, like '200 OK'"))?
            .to_str()?
            .to_string();
        let mut head = Head::new(status).map_err(invalid)?;
        if let Ok(list) = headers.cast::<PyList>() {
            head.headers.reserve(list.len());
        }
        for item in headers.try_iter()? {
            let item = item?;
            let t = item
                .cast::<PyTuple>()
                .map_err(|_| PyTypeError::new_err("each header must be a (name, value) tuple"))?;
            if t.len() != 2 {
                return Err(PyTypeError::new_err(
                    "each header must be a (name, value) tuple",
                ));
            }
            // Borrowed: only the fields kept are copied (by push_header).
            let (name, value) = (t.get_item(0)?, t.get_item(1)?);
            let name =
                as_str(&name).ok_or_else(|| PyTypeError::new_err("header names must be str"))?;
            let value = as_str(&value).ok_or_else(|| {
                PyTypeError::new_err(format!("header {name:?}: value must be a str"))
            })?;
            // Latin-1 (PEP 3333), a token name, no control characters: a
            // header that cannot go on the wire is the app's error (a 500).
            head.push_header(name, value).map_err(invalid)?;
        }
        self.w.lock(py).resp.set_head(head);
        let _ = py;
        Ok(WriteCallable { w: self.w.clone() })
    }
}

/// A `str`'s text, borrowed (None: not a str, or not encodable as UTF-8,
/// e.g. a lone surrogate).
fn as_str<'a>(o: &'a Bound<'_, PyAny>) -> Option<&'a str> {
    o.cast::<PyString>().ok()?.to_str().ok()
}

fn invalid(e: InvalidResponse) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// The legacy `write(data)` callable start_response returns.
#[pyclass(module = "rgunicorn")]
pub struct WriteCallable {
    w: Writer,
}

#[pymethods]
impl WriteCallable {
    fn __call__(&self, py: Python<'_>, data: &Bound<'_, PyBytes>) -> PyResult<()> {
        match self.w.write(py, data.as_bytes(), true) {
            Ok(()) => Ok(()),
            Err(BodyError::App(e)) => Err(e),
            Err(BodyError::Io(e)) => Err(PyOSError::new_err(e.to_string())),
            Err(BodyError::BadRequest(e)) => Err(PyOSError::new_err(e.to_string())),
        }
    }
}

/// A header name or value given to `wsgi.early_hints` as `str`, or as
/// `bytes` taken as latin-1.
pub(super) fn latin1_text(v: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(b.as_bytes().iter().map(|&c| c as char).collect());
    }
    v.extract::<String>()
        .map_err(|_| PyTypeError::new_err("early hint names and values must be str or bytes"))
}

/// `wsgi.errors`: text written here goes to the error log.
#[pyclass(module = "rgunicorn")]
pub struct ErrorStream;

#[pymethods]
impl ErrorStream {
    fn write(&self, s: &str) -> usize {
        crate::logging::error_log_raw(s.as_bytes());
        s.len()
    }
    fn writelines(&self, lines: &Bound<'_, PyAny>) -> PyResult<()> {
        for l in lines.try_iter()? {
            let l = l?;
            crate::logging::error_log_raw(l.extract::<String>()?.as_bytes());
        }
        Ok(())
    }
    fn flush(&self) {}
}

/// `wsgi.file_wrapper(filelike, blksize=8192)`: iterates the file; when it
/// has a real descriptor the server sends it with sendfile(2) instead.
#[pyclass(module = "rgunicorn")]
pub struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=8192))]
    fn new(filelike: Py<PyAny>, blksize: usize) -> FileWrapper {
        FileWrapper {
            filelike,
            blksize: blksize.max(1),
        }
    }
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }
    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self
            .filelike
            .bind(py)
            .call_method1("read", (self.blksize,))?;
        if data.len()? == 0 {
            Ok(None)
        } else {
            Ok(Some(data))
        }
    }
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr("close")? {
            f.call_method0("close")?;
        }
        Ok(())
    }
}

/// Send a file_wrapper body with sendfile(2). None: not possible here (no
/// real descriptor, or the body is already chunked): iterate instead.
pub fn try_sendfile(
    py: Python<'_>,
    w: &Writer,
    fw: &Bound<'_, FileWrapper>,
) -> Option<Result<(), BodyError>> {
    let filelike = fw.borrow().filelike.clone_ref(py);
    let f = filelike.bind(py);
    let fileno: RawFd = f.call_method0("fileno").ok()?.extract().ok()?;
    // SAFETY: the descriptor belongs to the Python file object, which we
    // hold a reference to for the whole call; we only borrow it.
    let bfd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fileno) };
    let stat = nix::sys::stat::fstat(bfd).ok()?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return None;
    }
    // Python may have buffered ahead; its idea of the position wins.
    let offset: i64 = f
        .call_method0("tell")
        .ok()
        .and_then(|t| t.extract().ok())
        .unwrap_or(0);
    let size = u64::try_from(stat.st_size - offset).unwrap_or(0);
    let mut st = w.lock(py);
    if st.resp.head_sent() {
        return None;
    }
    let app_length = st.resp.head().and_then(|h| h.app.content_length);
    let count = app_length.map_or(size, |cl| cl.min(size));
    if let Err(e) = st.send_head(Some(count)) {
        return Some(Err(BodyError::App(e)));
    }
    if let Err(e) = st.flush(py) {
        return Some(Err(BodyError::Io(e)));
    }
    let (fd, t) = (st.fd, st.timeout);
    if st.resp.body_mut().filter(|b| b.has_body()).is_none() {
        return Some(Ok(()));
    }
    let spool = &mut st.spool;
    if let Err(e) = super::fdio::blocking(py, || super::spool::drain(spool, fd, t)) {
        return Some(Err(BodyError::Io(e)));
    }
    let spool = &mut st.spool;
    match super::fdio::blocking(py, || {
        super::spool::sendfile(spool, fd, fileno, offset, count, t)
    }) {
        Ok(n) => {
            if let Some(body) = st.resp.body_mut() {
                body.sent_directly(n);
            }
            Some(Ok(()))
        }
        Err(e) => Some(Err(BodyError::Io(e))),
    }
}
