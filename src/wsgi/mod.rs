//! The WSGI bridge (PEP 3333): builds the environ, calls the app, and turns
//! what it returns into an HTTP/1.1 response on the connection.
//!
//! One request runs in [`handle`], on the thread that holds the Python slot:
//! inline on the worker's only thread for `sync`, on a Python thread for
//! `gthread`. While the app runs, the connection is driven directly through
//! its file descriptor ([`fdio`]) with the GIL released around every wait, so
//! `wsgi.input` can be read lazily (and `Expect: 100-continue` answered only
//! when the app reads) and generators stream. What the client has not yet
//! taken when the app is done goes back to the async side as `pending_out`,
//! so a slow reader never holds the Python slot for a small response.

pub mod fdio;
pub mod flight;
mod forwarded;
mod input;
mod response;
pub mod spool;

use crate::http::{Request, Version};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use forwarded::ProxyPolicy;
pub use input::Input;
use response::Writer;
pub use response::{EarlyHints, ErrorStream, FileWrapper, StartResponse};

/// What the server knows about the socket a request came in on.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    pub server_name: String,
    pub server_port: String,
    pub url_scheme: &'static str,
    pub unix: bool,
}

/// Per-worker state the bridge reuses on every request: the constant part
/// of the environ and interned header keys.
pub struct Bridge {
    pub app: Py<PyAny>,
    templates: Vec<Py<PyDict>>,
    header_keys: Mutex<HashMap<Vec<u8>, Option<Py<PyString>>>>,
    script_name: String,
    pub io_timeout: Duration,
    pub server_software: String,
    /// What a front-end proxy may tell us (Gunicorn's defaults until the
    /// worker sets it from the settings).
    pub proxy: ProxyPolicy,
    /// pre_request / post_request, when the config file set either.
    pub request_hooks: Option<crate::hooks::RequestHooks>,
    /// The environ keys (lower case) the access-log format reads with
    /// `%({key}e)s`; empty (nothing captured) when it has none.
    pub access_environ: Vec<String>,
    /// The body rate rule (grace, bytes/s) for `wsgi.input`'s socket reads.
    pub body_rate: Option<(Duration, u64)>,
    /// Makes `environ['gunicorn.socket']` from the connection's descriptor
    /// (the gevent worker's `ConnSocket`): see [`handle`].
    pub conn_socket: Option<Py<PyAny>>,
    /// `ConnectionSocket.__new__` and the class (bootstrap.py), for
    /// `gunicorn.socket`.
    socket_new: Option<(Py<PyAny>, Py<PyAny>)>,
}

/// The peer of a connection, as REMOTE_ADDR / REMOTE_PORT. Shared strings:
/// `gthread` clones the peer for every request it hands to a Python thread.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    pub addr: Arc<str>,
    pub port: Arc<str>,
    /// The socket peer is in `forwarded_allow_ips` (always true on a Unix
    /// socket, as in Gunicorn): its scheme and forwarder headers count.
    /// Decided once per connection.
    pub trusted: bool,
    /// What a PROXY protocol header said (then `addr`/`port` are the client's).
    pub proxy_info: Option<Box<crate::http::proxy::ProxyInfo>>,
    /// The connection came over TLS (`certfile`): the scheme is `https`
    /// unless a trusted proxy's scheme header says otherwise, as in
    /// Gunicorn.
    pub tls: bool,
}

/// How one request ended, for the connection loop.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The connection may serve another request.
    pub keep_alive: bool,
    /// The app took the connection over (`gunicorn.socket`): the server
    /// writes nothing more on it and lets it go without a shutdown.
    pub taken_over: bool,
    /// Bytes read from the socket past this request (pipelined requests).
    pub leftover_in: Vec<u8>,
    /// Response bytes the client has not taken yet; the async side writes them.
    pub pending_out: Vec<u8>,
    /// Or, when it is large or the client is slow, the spool holding it
    /// (written after `pending_out`, which is then empty).
    pub spool: Option<spool::Spool>,
    pub status: u16,
    pub sent: u64,
    pub response_headers: Vec<(String, String)>,
    /// The values of `Bridge::access_environ` after the app ran.
    pub environ_atoms: Vec<Option<String>>,
}

impl Bridge {
    /// Prepare the per-worker constants: one environ template per listener.
    pub fn new(
        py: Python<'_>,
        app: Py<PyAny>,
        listeners: &[ListenerInfo],
        multithread: bool,
        multiprocess: bool,
        io_timeout: Duration,
    ) -> PyResult<Bridge> {
        let software = format!("rgunicorn/{}", env!("CARGO_PKG_VERSION"));
        let script_name = std::env::var("SCRIPT_NAME").unwrap_or_default();
        let errors = Py::new(py, ErrorStream)?;
        let wrapper = py.get_type::<FileWrapper>();
        let mut templates = Vec::with_capacity(listeners.len());
        for l in listeners {
            let d = PyDict::new(py);
            d.set_item("wsgi.version", (1, 0))?;
            d.set_item("wsgi.url_scheme", l.url_scheme)?;
            d.set_item("wsgi.multithread", multithread)?;
            d.set_item("wsgi.multiprocess", multiprocess)?;
            d.set_item("wsgi.run_once", false)?;
            d.set_item("wsgi.errors", errors.clone_ref(py))?;
            d.set_item("wsgi.file_wrapper", &wrapper)?;
            d.set_item("wsgi.input_terminated", true)?;
            d.set_item("SERVER_SOFTWARE", &software)?;
            d.set_item("SCRIPT_NAME", &script_name)?;
            d.set_item("SERVER_NAME", &l.server_name)?;
            d.set_item("SERVER_PORT", &l.server_port)?;
            templates.push(d.unbind());
        }
        let socket_new = match crate::python::bootstrap(py)
            .and_then(|b| b.getattr("ConnectionSocket"))
            .and_then(|cls| Ok((cls.getattr("__new__")?.unbind(), cls.unbind())))
        {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!("gunicorn.socket is not available: {e}");
                None
            }
        };
        Ok(Bridge {
            app,
            templates,
            header_keys: Mutex::new(HashMap::new()),
            script_name,
            io_timeout,
            server_software: software,
            proxy: ProxyPolicy::default(),
            request_hooks: None,
            access_environ: Vec::new(),
            body_rate: None,
            conn_socket: None,
            socket_new,
        })
    }

    /// `wsgi.url_scheme` of a listener before any proxy header.
    fn templates_scheme(&self, _listener: usize) -> &'static str {
        "http"
    }

    /// The environ key for a request header (`HTTP_USER_AGENT`), interned
    /// and cached; `None` for names Gunicorn drops (they contain `_`).
    fn header_key(&self, py: Python<'_>, name: &[u8]) -> Option<Py<PyString>> {
        let mut cache = self.header_keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = cache.get(name) {
            return k.as_ref().map(|k| k.clone_ref(py));
        }
        let key = if name.contains(&b'_') {
            None
        } else {
            let mut s = String::with_capacity(name.len() + 5);
            s.push_str("HTTP_");
            for &b in name {
                s.push(if b == b'-' {
                    '_'
                } else {
                    b.to_ascii_uppercase() as char
                });
            }
            Some(PyString::intern(py, &s).unbind())
        };
        // Bounded: a client inventing header names cannot grow it forever.
        if cache.len() < 512 {
            cache.insert(name.to_vec(), key.as_ref().map(|k| k.clone_ref(py)));
        }
        key
    }
}

/// Latin-1 decoding of header bytes, as PEP 3333 requires for native
/// strings: one character per byte, in one call (no UTF-8 check, no copy
/// through a Rust `String`, whatever the bytes).
fn latin1<'py>(py: Python<'py>, b: &[u8]) -> PyResult<Bound<'py, PyString>> {
    let len = pyo3::ffi::Py_ssize_t::try_from(b.len())
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("header too long"))?;
    // SAFETY: `b` is valid for `len` bytes for the whole call and the
    // attached `py` holds the GIL; PyUnicode_DecodeLatin1 returns a new
    // reference (a str, since every byte decodes) or NULL with an exception
    // set, which from_owned_ptr_or_err turns into the Err.
    unsafe {
        let ptr = pyo3::ffi::PyUnicode_DecodeLatin1(b.as_ptr().cast(), len, std::ptr::null());
        Ok(Bound::from_owned_ptr_or_err(py, ptr)?.cast_into_unchecked())
    }
}

/// `REQUEST_METHOD`: the common methods are interned once, others built.
fn method<'py>(py: Python<'py>, m: &str) -> Bound<'py, PyString> {
    let common = match m {
        "GET" => pyo3::intern!(py, "GET"),
        "POST" => pyo3::intern!(py, "POST"),
        "HEAD" => pyo3::intern!(py, "HEAD"),
        "PUT" => pyo3::intern!(py, "PUT"),
        "DELETE" => pyo3::intern!(py, "DELETE"),
        "PATCH" => pyo3::intern!(py, "PATCH"),
        "OPTIONS" => pyo3::intern!(py, "OPTIONS"),
        _ => return PyString::new(py, m),
    };
    common.clone()
}

/// Whether a trusted proxy's `secure_scheme_headers` say the request came
/// over HTTPS (the ASGI scope's `scheme`); `Err` when they disagree.
pub fn forwarded_https(
    policy: &ProxyPolicy,
    req: &Request,
    peer: &Peer,
) -> Result<bool, crate::http::ParseError> {
    forwarded::inspect(policy, req, peer).map(|f| f.https)
}

/// Build the environ for one request.
fn environ<'py>(
    py: Python<'py>,
    bridge: &Bridge,
    listener: usize,
    req: &Request,
    peer: &Peer,
    input: Bound<'py, Input>,
    fwd: &forwarded::Forwarded<'_>,
) -> PyResult<Bound<'py, PyDict>> {
    let tmpl = bridge.templates[listener].bind(py);
    let env = tmpl.copy()?;
    if fwd.https {
        env.set_item(pyo3::intern!(py, "wsgi.url_scheme"), "https")?;
    }
    env.set_item(pyo3::intern!(py, "REQUEST_METHOD"), method(py, &req.method))?;
    let protocol = match req.version {
        Version::Http11 => pyo3::intern!(py, "HTTP/1.1"),
        Version::Http10 => pyo3::intern!(py, "HTTP/1.0"),
    };
    env.set_item(pyo3::intern!(py, "SERVER_PROTOCOL"), protocol)?;
    env.set_item(pyo3::intern!(py, "RAW_URI"), &req.uri)?;
    env.set_item(pyo3::intern!(py, "QUERY_STRING"), &req.query)?;
    let path = if let Some(script_name) = fwd.script_name {
        // Checked by forwarded::inspect: the path starts with it.
        env.set_item(pyo3::intern!(py, "SCRIPT_NAME"), script_name)?;
        req.path.get(script_name.len()..).unwrap_or("")
    } else if !bridge.script_name.is_empty() {
        match req.path.strip_prefix(bridge.script_name.as_str()) {
            Some(rest) => rest,
            None => &req.path,
        }
    } else {
        &req.path
    };
    env.set_item(pyo3::intern!(py, "PATH_INFO"), path)?;
    if let Some(info) = &peer.proxy_info {
        forwarded::proxy_environ(py, &env, info)?;
    }
    env.set_item(pyo3::intern!(py, "REMOTE_ADDR"), &*peer.addr)?;
    env.set_item(pyo3::intern!(py, "REMOTE_PORT"), &*peer.port)?;
    env.set_item(pyo3::intern!(py, "wsgi.input"), input)?;
    for h in &req.headers {
        let name = h.name.as_slice();
        if name.eq_ignore_ascii_case(b"content-type") {
            env.set_item(pyo3::intern!(py, "CONTENT_TYPE"), latin1(py, &h.value)?)?;
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            env.set_item(pyo3::intern!(py, "CONTENT_LENGTH"), latin1(py, &h.value)?)?;
            continue;
        }
        let key = match bridge.header_key(py, name) {
            Some(k) => k,
            // A name with `_`: dropped, unless a trusted proxy may send it.
            None if fwd.forwarder_allowed(name) => forwarded::underscore_key(py, name),
            None => continue,
        };
        let key = key.bind(py);
        let value = latin1(py, &h.value)?;
        match env.get_item(key)? {
            Some(prev) => {
                // Repeated headers are joined with a comma, as Gunicorn does.
                let joined = format!("{},{}", prev.extract::<String>()?, value.to_str()?);
                env.set_item(key, joined)?;
            }
            None => env.set_item(key, value)?,
        }
    }
    Ok(env)
}

/// The environ entries Gunicorn adds beyond PEP 3333, in one place:
/// - `gunicorn.socket`: the connection as a `socket.socket`
///   (bootstrap.py's `ConnectionSocket`), bound to a duplicate descriptor
///   only when first used; returned with its claim, which the request's end
///   releases (see [`release_socket`]);
/// - `wsgi.early_hints` (Gunicorn >= 25): sends `103 Early Hints`.
fn gunicorn_extensions<'py>(
    py: Python<'py>,
    bridge: &Bridge,
    env: &Bound<'py, PyDict>,
    writer: &Writer,
    fd: RawFd,
    flight: &Arc<flight::Flight>,
) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, SocketClaim>)>> {
    env.set_item(
        pyo3::intern!(py, "wsgi.early_hints"),
        EarlyHints::new(writer.clone()),
    )?;
    // The gevent worker brings its own (`Bridge::conn_socket`).
    let (Some((new, cls)), None) = (&bridge.socket_new, &bridge.conn_socket) else {
        return Ok(None);
    };
    let sock = new.bind(py).call1((cls.bind(py),))?;
    let claim = Bound::new(py, SocketClaim::new(fd, flight.clone()))?;
    sock.setattr(pyo3::intern!(py, "_rg_claim"), &claim)?;
    env.set_item(pyo3::intern!(py, "gunicorn.socket"), &sock)?;
    Ok(Some((sock, claim)))
}

/// The request is over: a `gunicorn.socket` the app did not take over is
/// closed (when it was bound) and can no longer bind, so an app that kept
/// it cannot reach a descriptor the connection no longer owns. Returns
/// whether the app took the connection over.
fn release_socket(sock: &Bound<'_, PyAny>, claim: &Bound<'_, SocketClaim>) -> bool {
    let (close, taken) = claim.borrow().expire();
    if close {
        if let Err(e) = sock.call_method0(pyo3::intern!(sock.py(), "close")) {
            tracing::debug!("closing gunicorn.socket: {e}");
        }
    }
    taken
}

/// What `gunicorn.socket` asks the server (see bootstrap.py's
/// `ConnectionSocket`).
#[pyclass(module = "rgunicorn")]
pub struct SocketClaim {
    fd: RawFd,
    flight: Arc<flight::Flight>,
    state: Mutex<ClaimState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimState {
    /// No descriptor yet.
    Unbound,
    /// Bound to a duplicate, the app has not done I/O.
    Bound,
    /// The app did I/O: the connection is its own.
    Taken,
    /// Closed by the app, or the request ended without a takeover.
    Closed,
}

impl SocketClaim {
    fn new(fd: RawFd, flight: Arc<flight::Flight>) -> SocketClaim {
        SocketClaim {
            fd,
            flight,
            state: Mutex::new(ClaimState::Unbound),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClaimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The request ended: unless the app took the connection over, the
    /// socket may no longer bind. Returns (the socket is bound and must be
    /// closed with its Python `close()`, the app took the connection over).
    fn expire(&self) -> (bool, bool) {
        let mut st = self.lock();
        let was = *st;
        if was != ClaimState::Taken {
            *st = ClaimState::Closed;
        }
        (was == ClaimState::Bound, was == ClaimState::Taken)
    }
}

#[pymethods]
impl SocketClaim {
    /// The first time: a duplicate of the connection's descriptor for the
    /// socket to bind to. Then None.
    fn bind(&self) -> PyResult<Option<RawFd>> {
        let mut st = self.lock();
        match *st {
            ClaimState::Unbound => {
                // SAFETY: the connection task keeps the descriptor open while
                // its request runs, and the claim is expired when it ends.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
                let dup = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))
                    .map_err(|e| pyo3::exceptions::PyOSError::new_err((e as i32, e.desc())))?;
                *st = ClaimState::Bound;
                Ok(Some(dup))
            }
            ClaimState::Bound | ClaimState::Taken => Ok(None),
            ClaimState::Closed => Err(pyo3::exceptions::PyOSError::new_err((
                libc::EBADF,
                "gunicorn.socket is closed (its request is over)",
            ))),
        }
    }

    /// The app does I/O on the socket: the first time, the connection
    /// becomes its own (true: make the socket blocking).
    fn take(&self) -> bool {
        let mut st = self.lock();
        if *st != ClaimState::Bound {
            return false;
        }
        *st = ClaimState::Taken;
        self.flight.take();
        true
    }

    /// `close()`: true when the socket is bound and must close.
    fn close(&self) -> bool {
        let mut st = self.lock();
        let bound = matches!(*st, ClaimState::Bound | ClaimState::Taken);
        *st = match *st {
            ClaimState::Taken => ClaimState::Taken,
            _ => ClaimState::Closed,
        };
        bound
    }

    fn bound(&self) -> bool {
        matches!(*self.lock(), ClaimState::Bound | ClaimState::Taken)
    }
}

/// Serve one parsed request: call the app and write its response.
///
/// `prebuffered` holds the bytes already read after the request head (the
/// start of the body, maybe pipelined requests after it); `spill`, the body
/// the connection task pre-read into a file (then `prebuffered` is what
/// came after it).
#[allow(clippy::too_many_arguments)]
pub fn handle(
    py: Python<'_>,
    bridge: &Bridge,
    listener: usize,
    req: &Request,
    prebuffered: Vec<u8>,
    spill: Option<std::fs::File>,
    fd: RawFd,
    peer: &Peer,
) -> Outcome {
    // In the worker's registry until the app is done: the --timeout abort
    // answers it, gunicorn.socket hands it over (see flight.rs).
    let flight = flight::begin(fd);
    let input = Input::new(
        fd,
        req,
        prebuffered,
        bridge.io_timeout,
        spill,
        bridge.body_rate,
    );
    let input = match Bound::new(py, input) {
        Ok(i) => i,
        Err(e) => return internal_error(py, e, fd, req),
    };
    let writer = Writer::new(fd, req, bridge.io_timeout).with_flight(flight.0.clone());
    let fwd = match forwarded::inspect(&bridge.proxy, req, peer) {
        Ok(f) => f,
        Err(e) => return writer.fail(py, BodyError::BadRequest(e), &req.uri),
    };
    let start = match Bound::new(py, StartResponse::new(writer.clone())) {
        Ok(s) => s,
        Err(e) => return internal_error(py, e, fd, req),
    };
    let env = match environ(py, bridge, listener, req, peer, input.clone(), &fwd) {
        Ok(e) => e,
        Err(e) => return internal_error(py, e, fd, req),
    };
    let claim = match gunicorn_extensions(py, bridge, &env, &writer, fd, &flight.0) {
        Ok(c) => c,
        Err(e) => return internal_error(py, e, fd, req),
    };
    // The gevent worker's own `gunicorn.socket` (a gevent socket made on
    // first use): see `gevent_taken` below.
    let conn_socket = match &bridge.conn_socket {
        Some(make) => match make.call1(py, (fd,)).and_then(|s| {
            env.set_item(pyo3::intern!(py, "gunicorn.socket"), &s)
                .map(|()| s)
        }) {
            Ok(s) => Some(s),
            Err(e) => return internal_error(py, e, fd, req),
        },
        None => None,
    };

    let scheme = if fwd.https {
        "https"
    } else {
        bridge.templates_scheme(listener)
    };
    if let Some(h) = &bridge.request_hooks {
        h.pre(py, req, scheme, &peer.addr);
    }
    let result = bridge.app.bind(py).call1((&env, start));
    let failure = |e: BodyError| match input.borrow().framing_error() {
        // The client sent a malformed body: that is a 400, not a 500.
        Some(bad) => writer.fail(py, BodyError::BadRequest(bad), &req.uri),
        None => writer.fail(py, e, &req.uri),
    };
    // Under gevent, the app took the connection over when it raised
    // StopIteration (Gunicorn's "already handled", which Flask-Sock uses), or
    // used `gunicorn.socket` and never called start_response (a WebSocket
    // library that wrote its own handshake).
    if conn_socket.is_some_and(|s| {
        matches!(&result, Err(e) if e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py))
            || s.call_method0(py, pyo3::intern!(py, "_rgunicorn_taken"))
                .and_then(|t| t.is_truthy(py))
                .unwrap_or(true)
                && !writer.started()
    }) {
        flight.0.take();
    }
    let mut outcome = if flight.0.taken() {
        // The app owns the connection now: its result (or the exception by
        // which it says so, as Flask-Sock's StopIteration) is not a response.
        if let Ok(body) = &result {
            close_result(py, body);
        }
        Outcome {
            taken_over: true,
            status: writer.status(),
            ..Outcome::default()
        }
    } else {
        let outcome = match result {
            Ok(body) => {
                let r = send_body(py, &writer, &body);
                close_result(py, &body);
                match r {
                    Ok(()) => writer.finish(py, &req.uri),
                    Err(e) => failure(e),
                }
            }
            Err(e) => failure(BodyError::App(e)),
        };
        // The app may have taken the connection over while its response
        // was written (from another thread): then it is left alone too.
        Outcome {
            taken_over: flight.0.taken(),
            ..outcome
        }
    };
    if let Some((sock, claim)) = &claim {
        // Decided under the claim's lock: a thread of the app taking the
        // socket over right now either wins (and the connection is its
        // own) or finds the socket closed.
        outcome.taken_over |= release_socket(sock, claim);
    }
    if outcome.taken_over {
        outcome.keep_alive = false;
        outcome.pending_out.clear();
        outcome.spool = None;
    } else {
        // Whatever the app left unread of the body must be consumed (or the
        // connection closed) before the next request on it can be parsed.
        let (keep, leftover) = input.borrow().finish(py);
        outcome.keep_alive &= keep;
        outcome.leftover_in = leftover;
    }
    if !bridge.access_environ.is_empty() {
        outcome.environ_atoms = capture_environ(&env, &bridge.access_environ);
    }
    if let Some(h) = &bridge.request_hooks {
        h.post(
            py,
            req,
            scheme,
            &peer.addr,
            &env,
            outcome.status,
            &outcome.response_headers,
            outcome.sent,
        );
    }
    outcome
}

/// The environ values the access log's `e` atoms name, looked up without
/// regard to case as Gunicorn's atoms are, and shown with `str()`.
fn capture_environ(env: &Bound<'_, PyDict>, keys: &[String]) -> Vec<Option<String>> {
    let text = |v: Bound<'_, PyAny>| v.str().ok().map(|s| s.to_string_lossy().into_owned());
    keys.iter()
        .map(|k| {
            let upper = k.to_uppercase();
            if let Ok(Some(v)) = env.get_item(&upper) {
                return text(v);
            }
            if let Ok(Some(v)) = env.get_item(k) {
                return text(v);
            }
            env.iter()
                .find(|(ek, _)| {
                    ek.extract::<String>()
                        .is_ok_and(|ek| ek.to_lowercase() == *k)
                })
                .and_then(|(_, v)| text(v))
        })
        .collect()
}

fn internal_error(py: Python<'_>, e: PyErr, fd: RawFd, req: &Request) -> Outcome {
    let w = Writer::new(fd, req, Duration::from_secs(5));
    w.fail(py, BodyError::App(e), &req.uri)
}

/// Why a response could not be completed.
pub enum BodyError {
    /// The app (or its iterator) raised.
    App(PyErr),
    /// The client went away or stopped reading.
    Io(std::io::Error),
    /// The request body was malformed.
    BadRequest(crate::http::ParseError),
}

/// Iterate the app's result and write it out.
fn send_body(py: Python<'_>, w: &Writer, body: &Bound<'_, PyAny>) -> Result<(), BodyError> {
    // Fast paths: a list or tuple of bytes (the overwhelmingly common case).
    if let Ok(list) = body.cast_exact::<PyList>() {
        if list.len() == 1 {
            let item = list.get_item(0).map_err(BodyError::App)?;
            return w.last_chunk(py, as_bytes(&item)?);
        }
        for item in list.iter() {
            w.write(py, as_bytes(&item)?, false)?;
        }
        return Ok(());
    }
    if let Ok(t) = body.cast_exact::<PyTuple>() {
        for item in t.iter() {
            w.write(py, as_bytes(&item)?, false)?;
        }
        return Ok(());
    }
    if let Ok(fw) = body.cast_exact::<FileWrapper>() {
        if let Some(r) = response::try_sendfile(py, w, fw) {
            return r;
        }
    }
    let iter = body.try_iter().map_err(BodyError::App)?;
    for item in iter {
        let item = item.map_err(BodyError::App)?;
        // Each piece of a streamed body leaves as soon as it is produced.
        w.write(py, as_bytes(&item)?, true)?;
    }
    Ok(())
}

fn as_bytes<'a>(item: &'a Bound<'_, PyAny>) -> Result<&'a [u8], BodyError> {
    match item.cast::<PyBytes>() {
        Ok(b) => Ok(b.as_bytes()),
        Err(_) => Err(BodyError::App(PyTypeError::new_err(format!(
            "WSGI response body items must be bytes, not {}",
            item.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into())
        )))),
    }
}

/// PEP 3333: `close()` is called on the result whenever it has one, also
/// when the response failed.
fn close_result(py: Python<'_>, body: &Bound<'_, PyAny>) {
    if body.is_exact_instance_of::<PyList>() || body.is_exact_instance_of::<PyTuple>() {
        return;
    }
    if let Ok(close) = body.getattr(pyo3::intern!(py, "close")) {
        if let Err(e) = close.call0() {
            tracing::error!(
                "Error closing the response iterable:\n{}",
                crate::python::format_exception(py, &e).trim_end()
            );
        }
    }
}
