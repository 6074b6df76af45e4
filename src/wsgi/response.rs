//! The response side of WSGI: `start_response`, the `write()` callable,
//! `wsgi.errors`, `wsgi.file_wrapper`, and the writer that frames the body
//! (Content-Length when known, chunked otherwise, nothing for HEAD/204/304).

use super::{BodyError, Outcome};
use crate::http::{Request, Version};
use pyo3::exceptions::{PyAssertionError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Buffered response bytes past which a streamed body is flushed.
const FLUSH_AT: usize = 64 * 1024;

/// Headers an app must not set: they describe the connection, which is
/// the server's (RFC 9110 §7.6.1). Gunicorn drops them too.
fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

struct State {
    /// The request's number in this worker (for the request id in logs).
    seq: u64,
    fd: RawFd,
    timeout: Duration,
    version: Version,
    head_request: bool,
    req_keep_alive: bool,
    status: Option<String>,
    code: u16,
    headers: Vec<(String, String)>,
    content_length: Option<u64>,
    app_close: bool,
    headers_sent: bool,
    no_body: bool,
    chunked: bool,
    close_delimited: bool,
    remaining: Option<u64>,
    sent: u64,
    out: Vec<u8>,
    /// What the client has not taken yet (see `spool`).
    spool: Option<super::spool::Spool>,
}

/// Requests this worker has started (for request ids).
static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The response being written; shared by the driver, `start_response` and
/// the `write()` callable.
#[derive(Clone)]
pub struct Writer(Arc<Mutex<State>>);

impl Writer {
    pub fn new(fd: RawFd, req: &Request, timeout: Duration) -> Writer {
        Writer(Arc::new(Mutex::new(State {
            seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            fd,
            timeout,
            version: req.version,
            head_request: req.method == "HEAD",
            req_keep_alive: req.keep_alive,
            status: None,
            code: 0,
            headers: Vec::new(),
            content_length: None,
            app_close: false,
            headers_sent: false,
            no_body: false,
            chunked: false,
            close_delimited: false,
            remaining: None,
            sent: 0,
            out: Vec::new(),
            spool: None,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write one piece of the body; `flush` sends it before returning.
    pub fn write(&self, py: Python<'_>, data: &[u8], flush: bool) -> Result<(), BodyError> {
        let mut st = self.lock();
        if !st.headers_sent {
            st.send_head(None).map_err(BodyError::App)?;
        }
        st.push_body(data);
        if flush || st.out.len() >= FLUSH_AT {
            st.flush(py).map_err(BodyError::Io)?;
        }
        Ok(())
    }

    /// The whole body in one piece (a one-item list): one write for all.
    pub fn last_chunk(&self, py: Python<'_>, data: &[u8]) -> Result<(), BodyError> {
        let mut st = self.lock();
        if st.headers_sent {
            drop(st);
            return self.write(py, data, false);
        }
        st.send_head(Some(data.len() as u64))
            .map_err(BodyError::App)?;
        st.push_body(data);
        Ok(())
    }

    /// The app is done: end the body and hand back what is left to send.
    pub fn finish(&self, py: Python<'_>, uri: &str) -> Outcome {
        let mut st = self.lock();
        if !st.headers_sent {
            if let Err(e) = st.send_head(Some(0)) {
                drop(st);
                return self.fail(py, BodyError::App(e), uri);
            }
        }
        if st.chunked {
            st.out.extend_from_slice(b"0\r\n\r\n");
        }
        let mut keep_alive = st.keep_alive();
        if st.remaining.is_some_and(|r| r > 0) {
            // Fewer bytes than the Content-Length promised: the client can
            // only tell the response ended when the connection closes.
            keep_alive = false;
        }
        let out = std::mem::take(&mut st.out);
        let (pending_out, spool) = match super::spool::finish(st.spool.take(), st.fd, out) {
            Ok(r) => r,
            Err(_) => {
                keep_alive = false;
                (Vec::new(), None)
            }
        };
        Outcome {
            keep_alive,
            leftover_in: Vec::new(),
            pending_out,
            spool,
            status: st.code,
            sent: st.sent,
            response_headers: if crate::logging::access_enabled() {
                st.headers.clone()
            } else {
                Vec::new()
            },
            environ_atoms: Vec::new(),
        }
    }

    /// The response failed: log why, answer 500 if nothing was sent yet,
    /// and close the connection.
    pub fn fail(&self, py: Python<'_>, e: BodyError, uri: &str) -> Outcome {
        let mut st = self.lock();
        let mut pending_out = Vec::new();
        // A spooled response cut short is only closed.
        let spooled = st.spool.take().is_some();
        match e {
            BodyError::App(e) => {
                // REQUEST_ID: this worker's pid and the request's number in
                // it; a structured field in the journal, plain text otherwise.
                // Target `exception`: Gunicorn's log.exception (StatsD counts it).
                let request_id = format!("{}-{}", std::process::id(), st.seq);
                tracing::error!(
                    target: "rgunicorn::exception",
                    request_id = %request_id,
                    "Error handling request {uri}\n{}",
                    crate::python::format_exception(py, &e).trim_end()
                );
                if st.headers_sent {
                    // Truncate: what was promised can no longer be delivered.
                    if !spooled {
                        pending_out = std::mem::take(&mut st.out);
                    }
                } else {
                    st.code = 500;
                    pending_out = super::error_response(500, "Internal Server Error", true);
                    st.sent = 0;
                }
            }
            BodyError::Io(e) => {
                tracing::debug!("client went away ({uri}): {e}");
            }
            BodyError::BadRequest(e) => {
                tracing::debug!("invalid request body ({uri}): {e}");
                if !st.headers_sent {
                    st.code = e.status();
                    pending_out = super::error_response(e.status(), e.reason(), true);
                    st.sent = 0;
                }
            }
        }
        Outcome {
            keep_alive: false,
            leftover_in: Vec::new(),
            pending_out,
            spool: None,
            status: st.code,
            sent: st.sent,
            response_headers: Vec::new(),
            environ_atoms: Vec::new(),
        }
    }
}

impl State {
    fn keep_alive(&self) -> bool {
        self.req_keep_alive && !self.app_close && !self.close_delimited
    }

    /// Serialise the status line and headers into `out`. `total` is the
    /// body length when the whole body is already known.
    fn send_head(&mut self, total: Option<u64>) -> PyResult<()> {
        let Some(status) = self.status.as_deref() else {
            return Err(PyAssertionError::new_err(
                "the application returned without calling start_response",
            ));
        };
        let code = self.code;
        self.no_body = self.head_request || code < 200 || code == 204 || code == 304;
        let bodyless_status = code < 200 || code == 204 || code == 304;
        let mut length = self.content_length;
        if length.is_none() && !bodyless_status {
            if let Some(t) = total {
                if !self.head_request || t > 0 {
                    length = Some(t);
                }
            } else if !self.no_body {
                if self.version == Version::Http11 {
                    self.chunked = true;
                } else {
                    self.close_delimited = true;
                }
            }
        }
        if !self.no_body {
            self.remaining = length;
        }
        let keep_alive = self.keep_alive();
        let out = &mut self.out;
        out.reserve(256);
        out.extend_from_slice(match self.version {
            Version::Http10 => b"HTTP/1.0 ",
            Version::Http11 => b"HTTP/1.1 ",
        });
        out.extend_from_slice(status.as_bytes());
        out.extend_from_slice(b"\r\nServer: rgunicorn\r\nDate: ");
        out.extend_from_slice(crate::http_date::now().as_bytes());
        out.extend_from_slice(b"\r\n");
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if self.version == Version::Http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(n) = length {
            if !bodyless_status {
                out.extend_from_slice(b"Content-Length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        if self.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.headers_sent = true;
        Ok(())
    }

    fn push_body(&mut self, data: &[u8]) {
        if self.no_body || data.is_empty() {
            return;
        }
        let data = match self.remaining {
            Some(r) => {
                let n = usize::try_from(r).unwrap_or(usize::MAX).min(data.len());
                self.remaining = Some(r - n as u64);
                &data[..n]
            }
            None => data,
        };
        if data.is_empty() {
            return;
        }
        self.sent += data.len() as u64;
        if self.chunked {
            let mut hex = [0u8; 16];
            let hex = hex_len(data.len(), &mut hex);
            self.out.extend_from_slice(hex);
            self.out.extend_from_slice(b"\r\n");
            self.out.extend_from_slice(data);
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.out.extend_from_slice(data);
        }
    }

    fn flush(&mut self, py: Python<'_>) -> std::io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let (fd, t) = (self.fd, self.timeout);
        let (out, spool) = (&self.out, &mut self.spool);
        // What the socket does not take now is spooled: the app goes on.
        let r = py.detach(|| super::spool::send(spool, fd, out, t));
        self.out.clear();
        r
    }
}

fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
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
            let st = self.w.lock();
            match exc_info {
                Some(exc) if st.headers_sent => {
                    // PEP 3333: too late to change the response; re-raise.
                    let value = exc.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
                None if st.status.is_some() => {
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
        let code = parse_status(&status)?;
        let mut list = Vec::new();
        let mut content_length = None;
        let mut app_close = false;
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
            let name: String = t
                .get_item(0)?
                .extract()
                .map_err(|_| PyTypeError::new_err("header names must be str"))?;
            let value: String = t.get_item(1)?.extract().map_err(|_| {
                PyTypeError::new_err(format!("header {name:?}: value must be a str"))
            })?;
            if !is_token(&name) {
                return Err(PyValueError::new_err(format!(
                    "invalid header name {name:?}"
                )));
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(PyValueError::new_err(format!(
                    "header {name:?}: value contains CR, LF or NUL"
                )));
            }
            if is_hop_by_hop(&name) {
                if name.eq_ignore_ascii_case("connection")
                    && value
                        .split(',')
                        .any(|v| v.trim().eq_ignore_ascii_case("close"))
                {
                    app_close = true;
                }
                continue;
            }
            if name.eq_ignore_ascii_case("content-length") {
                let n = value.trim().parse::<u64>().map_err(|_| {
                    PyValueError::new_err(format!("invalid Content-Length {value:?}"))
                })?;
                content_length = Some(n);
                continue;
            }
            list.push((name, value));
        }
        let mut st = self.w.lock();
        st.status = Some(status);
        st.code = code;
        st.headers = list;
        st.content_length = content_length;
        st.app_close = app_close;
        let _ = py;
        Ok(WriteCallable { w: self.w.clone() })
    }
}

fn parse_status(s: &str) -> PyResult<u16> {
    let b = s.as_bytes();
    let ok = b.len() >= 3
        && b[..3].iter().all(u8::is_ascii_digit)
        && (b.len() == 3 || b[3] == b' ')
        && !s.bytes().any(|c| c == b'\r' || c == b'\n');
    match s.get(..3).and_then(|c| c.parse::<u16>().ok()) {
        Some(code) if ok && code >= 100 => Ok(code),
        _ => Err(PyValueError::new_err(format!(
            "invalid status {s:?}: expected e.g. '200 OK'"
        ))),
    }
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
    let mut st = w.lock();
    if st.headers_sent {
        return None;
    }
    let count = st.content_length.map_or(size, |cl| cl.min(size));
    if let Err(e) = st.send_head(Some(count)) {
        return Some(Err(BodyError::App(e)));
    }
    if let Err(e) = st.flush(py) {
        return Some(Err(BodyError::Io(e)));
    }
    if st.no_body {
        return Some(Ok(()));
    }
    let (fd, t) = (st.fd, st.timeout);
    let spool = &mut st.spool;
    if let Err(e) = py.detach(|| super::spool::drain(spool, fd, t)) {
        return Some(Err(BodyError::Io(e)));
    }
    let spool = &mut st.spool;
    match py.detach(|| super::spool::sendfile(spool, fd, fileno, offset, count, t)) {
        Ok(n) => {
            st.sent += n;
            st.remaining = st.remaining.map(|r| r.saturating_sub(n));
            Some(Ok(()))
        }
        Err(e) => Some(Err(BodyError::Io(e))),
    }
}
