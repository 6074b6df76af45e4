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
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyString, PyTuple};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::worker::linger::{self, Release};
pub use forwarded::ProxyPolicy;
pub use input::Input;
use response::Writer;
pub use response::{ErrorStream, FileWrapper, StartResponse};

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
    /// Under gevent: makes the socket behind `environ['gunicorn.socket']`
    /// from the connection's descriptor (bootstrap.py's `gevent_socket`),
    /// for a [`GeventSocket`]: see [`handle`].
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
    /// The request came as an HTTP/2 stream (see `crate::http2`): it
    /// reaches the worker as HTTP/1.1 over a socketpair, but the app sees
    /// `SERVER_PROTOCOL` `HTTP/2.0` (as Gunicorn) and ASGI `http_version`
    /// `"2"`.
    pub http2: bool,
    /// What the WSGI bridge keeps from one request to the next.
    pub conn: ConnState,
}

/// How one request ended, for the connection loop.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The connection may serve another request.
    pub keep_alive: bool,
    /// The app took the connection over (`gunicorn.socket`): the server
    /// writes nothing more on it and lets it go without a shutdown.
    pub taken_over: bool,
    /// Taken over, and the app has closed its socket: the server's
    /// descriptor is the connection's last, so the server ends it with a
    /// lingering close (a FIN, then what the client still sends is read and
    /// dropped for a moment), not a close that resets a connection with
    /// unread bytes, which can destroy what the app sent last.
    pub linger: bool,
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
        let mut templates = Vec::with_capacity(listeners.len());
        for l in listeners {
            let d = PyDict::new(py);
            // Interned keys: the request's own (`intern!`) and an app's
            // string literals then find them by identity.
            let set = |k: &str, v: &Bound<'_, PyAny>| d.set_item(PyString::intern(py, k), v);
            set("wsgi.version", (1, 0).into_pyobject(py)?.as_any())?;
            set("wsgi.url_scheme", &PyString::new(py, l.url_scheme))?;
            set("wsgi.multithread", &PyBool::new(py, multithread))?;
            set("wsgi.multiprocess", &PyBool::new(py, multiprocess))?;
            set("wsgi.run_once", &PyBool::new(py, false))?;
            set("wsgi.errors", errors.bind(py).as_any())?;
            set("wsgi.file_wrapper", wrapper.as_any())?;
            set("wsgi.input_terminated", &PyBool::new(py, true))?;
            set("SERVER_SOFTWARE", &PyString::new(py, &software))?;
            set("SCRIPT_NAME", &PyString::new(py, &script_name))?;
            set("SERVER_NAME", &PyString::new(py, &l.server_name))?;
            set("SERVER_PORT", &PyString::new(py, &l.server_port))?;
            // Every key each request sets is in the template too (replaced
            // by the request's value): a copy of the template then has room
            // for them and the request's headers (up to 42 keys in all),
            // so building the environ never grows the dict.
            let mut per_request = vec![
                "REQUEST_METHOD",
                "SERVER_PROTOCOL",
                "RAW_URI",
                "QUERY_STRING",
                "PATH_INFO",
                "REMOTE_ADDR",
                "REMOTE_PORT",
                "wsgi.input",
                "wsgi.early_hints",
            ];
            if socket_new.is_some() {
                per_request.push("gunicorn.socket");
            }
            for k in per_request {
                set(k, &py.None().into_bound(py))?;
            }
            templates.push(d.unbind());
        }
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
        if let Some(k) = common_header_key(py, name) {
            return Some(k.clone().unbind());
        }
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

/// The environ keys of the headers most requests carry, interned once:
/// found without the cache's lock and hash (the same strings the cache
/// would give: both are interned).
fn common_header_key<'py>(py: Python<'py>, name: &[u8]) -> Option<&'py Bound<'py, PyString>> {
    macro_rules! known {
        ($($name:literal => $key:literal),+) => {{
            $(if name.eq_ignore_ascii_case($name) {
                return Some(pyo3::intern!(py, $key));
            })+
        }};
    }
    match name.len() {
        4 => known!(b"host" => "HTTP_HOST"),
        6 => {
            known!(b"accept" => "HTTP_ACCEPT", b"cookie" => "HTTP_COOKIE", b"origin" => "HTTP_ORIGIN")
        }
        7 => known!(b"referer" => "HTTP_REFERER"),
        10 => known!(b"user-agent" => "HTTP_USER_AGENT", b"connection" => "HTTP_CONNECTION"),
        13 => known!(
            b"authorization" => "HTTP_AUTHORIZATION",
            b"cache-control" => "HTTP_CACHE_CONTROL"
        ),
        15 => known!(
            b"accept-encoding" => "HTTP_ACCEPT_ENCODING",
            b"accept-language" => "HTTP_ACCEPT_LANGUAGE",
            b"x-forwarded-for" => "HTTP_X_FORWARDED_FOR"
        ),
        _ => {}
    }
    None
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
        _ if peer.http2 => pyo3::intern!(py, "HTTP/2.0"),
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
            // A name with `_`: dropped, unless a trusted proxy may send it
            // or `header_map` is `dangerous`.
            None if fwd.maps_underscored(name) => forwarded::underscore_key(py, name),
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

/// What the bridge keeps for a connection from one request to the next
/// (see [`handle`]); shared by the clones of its [`Peer`] (gthread and
/// gevent hand a clone to the thread that runs each request). Empty until
/// the connection's first request.
#[derive(Clone, Default)]
pub struct ConnState(Arc<Mutex<Option<ConnWsgi>>>);

impl std::fmt::Debug for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnState")
    }
}

struct ConnWsgi {
    fd: RawFd,
    /// The connection's entry in the worker's registry (flight.rs): idle
    /// between requests, removed when the connection is dropped.
    flight: flight::Guard,
    /// `wsgi.early_hints` (which also holds `gunicorn.socket`'s claim) and
    /// `gunicorn.socket`: made by the connection's first request, and again
    /// after a request that used the socket without taking the connection
    /// over (that one is closed). A request the app never touches them in
    /// makes nothing.
    ext: Option<(Py<EarlyHints>, Option<Py<PyAny>>)>,
}

impl ConnState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ConnWsgi>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request's share of its connection's state: the registry entry, and
/// `wsgi.early_hints` and `gunicorn.socket`, the environ entries Gunicorn
/// adds beyond PEP 3333:
/// - `gunicorn.socket`: the connection as a `socket.socket` (bootstrap.py's
///   `ConnectionSocket`), bound to a duplicate descriptor only when first
///   used; the gevent worker brings its own (`Bridge::conn_socket`);
/// - `wsgi.early_hints` (Gunicorn >= 25): sends `103 Early Hints`.
///
/// A `ConnectionSocket` is a Python object made by calling
/// `socket.socket.__new__`: per connection, not per request.
#[allow(clippy::type_complexity)]
#[inline(never)]
fn connection<'py>(
    py: Python<'py>,
    bridge: &Bridge,
    peer: &Peer,
    fd: RawFd,
) -> PyResult<(
    Arc<flight::Flight>,
    Bound<'py, EarlyHints>,
    Option<Bound<'py, PyAny>>,
)> {
    let mut st = peer.conn.lock();
    if st.as_ref().is_some_and(|c| c.fd != fd) {
        *st = None;
    }
    let conn = st.get_or_insert_with(|| ConnWsgi {
        fd,
        flight: flight::register(fd),
        ext: None,
    });
    let flight = conn.flight.0.clone();
    let (hints, sock) = match &conn.ext {
        Some((hints, sock)) => (
            hints.bind(py).clone(),
            sock.as_ref().map(|s| s.bind(py).clone()),
        ),
        None => {
            let hints = Bound::new(py, EarlyHints::new(fd, flight.clone()))?;
            let sock = match (&bridge.socket_new, &bridge.conn_socket) {
                (Some((new, cls)), None) => {
                    let sock = new.bind(py).call1((cls.bind(py),))?;
                    sock.setattr(pyo3::intern!(py, "_rg_claim"), &hints)?;
                    Some(sock)
                }
                _ => None,
            };
            conn.ext = Some((
                hints.clone().unbind(),
                sock.as_ref().map(|s| s.clone().unbind()),
            ));
            (hints, sock)
        }
    };
    Ok((flight, hints, sock))
}

/// The request is over: a `gunicorn.socket` the app did not take over can
/// no longer bind; one it used is closed (and the connection's next request
/// gets a new one), so an app that kept it cannot reach a descriptor the
/// connection no longer owns. Returns whether the app took the connection
/// over.
fn release_socket(peer: &Peer, hints: &EarlyHints, sock: Option<&Bound<'_, PyAny>>) -> bool {
    let (bound, taken) = hints.expire();
    if bound {
        if let Some(sock) = sock {
            if let Err(e) = sock.call_method0(pyo3::intern!(sock.py(), "close")) {
                tracing::debug!("closing gunicorn.socket: {e}");
            }
        }
        if let Some(conn) = peer.conn.lock().as_mut() {
            conn.ext = None;
        }
    }
    taken
}

/// Ends a request's part in its connection's state however `handle`
/// returns: the claim expires, the registry entry goes idle.
struct Running<'a> {
    flight: &'a flight::Flight,
    hints: &'a EarlyHints,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.hints.expire();
        self.flight.done();
    }
}

/// `wsgi.early_hints(headers)` (Gunicorn >= 25): sends `103 Early Hints`
/// with `headers` (an iterable of `(name, value)`, `str` or latin-1
/// `bytes`) before the final response. Ignored once the final response has
/// begun, and for HTTP/1.0 clients, as in Gunicorn; may be called more than
/// once. A header that could split the response raises `ValueError`.
///
/// One per connection, re-armed by each request: it also holds what
/// `gunicorn.socket` (bootstrap.py's `ConnectionSocket`, whose `_rg_claim`
/// it is) asks the server, through the `_claim_*` methods.
#[pyclass(module = "rgunicorn", frozen)]
pub struct EarlyHints {
    fd: RawFd,
    flight: Arc<flight::Flight>,
    state: Mutex<LinkState>,
}

struct LinkState {
    claim: ClaimState,
    /// Which of the app and the server closes the connection last.
    release: Release,
    /// The response of the request running now (None between requests).
    writer: Option<Writer>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimState {
    /// No descriptor yet.
    Unbound,
    /// Bound to a duplicate, the app has not done I/O.
    Bound,
    /// The app did I/O: the connection is its own.
    Taken,
    /// Closed by the app, or between requests.
    Closed,
}

impl EarlyHints {
    fn new(fd: RawFd, flight: Arc<flight::Flight>) -> EarlyHints {
        EarlyHints {
            fd,
            flight,
            state: Mutex::new(LinkState {
                claim: ClaimState::Closed,
                release: Release::default(),
                writer: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request starts: hints go to its response, the socket may bind.
    fn arm(&self, writer: Writer) {
        let mut st = self.lock();
        if st.claim == ClaimState::Closed {
            st.claim = ClaimState::Unbound;
        }
        st.release = Release::default();
        st.writer = Some(writer);
    }

    /// The server leaves the connection the app took over: true when it
    /// must linger (see [`Release::server_leaves`]).
    fn server_leaves(&self) -> bool {
        self.lock().release.server_leaves()
    }

    /// The request ended: unless the app took the connection over, the
    /// socket may no longer bind. Returns (the socket is bound and must be
    /// closed with its Python `close()`, the app took the connection over).
    fn expire(&self) -> (bool, bool) {
        let mut st = self.lock();
        st.writer = None;
        let was = st.claim;
        if was != ClaimState::Taken {
            st.claim = ClaimState::Closed;
        }
        (was == ClaimState::Bound, was == ClaimState::Taken)
    }
}

#[pymethods]
impl EarlyHints {
    fn __call__(&self, py: Python<'_>, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut list = Vec::new();
        for item in headers.try_iter()? {
            let item = item?;
            let (name, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
                item.extract().map_err(|_| {
                    PyTypeError::new_err("each early hint must be a (name, value) pair")
                })?;
            list.push((
                response::latin1_text(&name)?,
                response::latin1_text(&value)?,
            ));
        }
        let writer = self.lock().writer.clone();
        match writer {
            Some(w) => w.early_hints(py, list),
            // The request is over.
            None => Ok(()),
        }
    }

    /// The first time: a duplicate of the connection's descriptor for the
    /// socket to bind to. Then None.
    fn _claim_bind(&self) -> PyResult<Option<RawFd>> {
        let mut st = self.lock();
        match st.claim {
            ClaimState::Unbound => {
                // SAFETY: the connection task keeps the descriptor open while
                // its request runs, and the claim is expired when it ends.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
                let dup = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))
                    .map_err(|e| pyo3::exceptions::PyOSError::new_err((e as i32, e.desc())))?;
                st.claim = ClaimState::Bound;
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
    fn _claim_take(&self) -> bool {
        let mut st = self.lock();
        if st.claim != ClaimState::Bound {
            return false;
        }
        st.claim = ClaimState::Taken;
        self.flight.take();
        true
    }

    /// `close()`: true when the socket is bound and must close.
    fn _claim_close(&self) -> bool {
        let mut st = self.lock();
        let bound = matches!(st.claim, ClaimState::Bound | ClaimState::Taken);
        if st.claim != ClaimState::Taken {
            st.claim = ClaimState::Closed;
        }
        bound
    }

    /// The socket's descriptor `fd` is about to close (no file object of
    /// `makefile()` keeps it open any more).
    fn _claim_closing(&self, fd: RawFd) {
        if self.lock().release.app_closing() {
            linger::spawn(fd);
        }
    }

    /// `dup()` or `detach()`: a descriptor the claim does not see.
    fn _claim_escaped(&self) {
        self.lock().release.app_escaped();
    }

    fn _claim_bound(&self) -> bool {
        matches!(self.lock().claim, ClaimState::Bound | ClaimState::Taken)
    }
}

/// `environ['gunicorn.socket']` under gevent: stands for the connection's
/// socket, which it makes (bootstrap.py's `gevent_socket`: a gevent socket
/// on a duplicate of the descriptor) the first time the app uses it, and
/// to which it then hands every attribute. An app that used it and never
/// called start_response owns the connection (WebSockets): the server
/// writes nothing more on it (see [`handle`]).
///
/// One per request, made in Rust (no Python frame): most apps never touch
/// it, and every request pays for it.
#[pyclass(module = "rgunicorn", frozen)]
pub struct GeventSocket {
    fd: RawFd,
    /// `gevent_socket`.
    make: Py<PyAny>,
    /// The socket, and what its close tells the server.
    sock: pyo3::sync::PyOnceLock<(Py<PyAny>, Py<SocketRelease>)>,
}

impl GeventSocket {
    fn new(fd: RawFd, make: Py<PyAny>) -> GeventSocket {
        GeventSocket {
            fd,
            make,
            sock: pyo3::sync::PyOnceLock::new(),
        }
    }

    /// The app has used the socket.
    fn used(&self, py: Python<'_>) -> bool {
        self.sock.get(py).is_some()
    }

    /// The server leaves the connection the app took over: true when it
    /// must linger (see [`Release::server_leaves`]); always when the app
    /// never made the socket, whose descriptor is then the only one.
    fn server_leaves(&self, py: Python<'_>) -> bool {
        match self.sock.get(py) {
            Some((_, release)) => release.get().lock().server_leaves(),
            None => true,
        }
    }
}

/// The `_rg_claim` of a gevent `gunicorn.socket` (bootstrap.py's
/// `gevent_socket`): its close and its escapes, for the lingering close
/// (see [`linger`]). Apart from [`GeventSocket`], which holds the socket,
/// so that the two make no reference cycle.
#[pyclass(module = "rgunicorn", frozen)]
#[derive(Default)]
pub struct SocketRelease(Mutex<Release>);

impl SocketRelease {
    fn lock(&self) -> std::sync::MutexGuard<'_, Release> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[pymethods]
impl SocketRelease {
    /// The socket's descriptor `fd` is about to close.
    fn _claim_closing(&self, fd: RawFd) {
        if self.lock().app_closing() {
            linger::spawn(fd);
        }
    }

    /// `dup()` or `detach()`: a descriptor the server does not see.
    fn _claim_escaped(&self) {
        self.lock().app_escaped();
    }
}

#[pymethods]
impl GeventSocket {
    /// Called for the attributes the class itself lacks: all the socket's.
    fn __getattr__<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyString>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (sock, _) = self.sock.get_or_try_init(py, || {
            let release = Py::new(py, SocketRelease::default())?;
            let sock = self.make.call1(py, (self.fd, release.clone_ref(py)))?;
            Ok::<_, PyErr>((sock, release))
        })?;
        sock.bind(py).getattr(name)
    }

    fn __repr__(&self) -> String {
        format!("<rgunicorn connection socket fd={}>", self.fd)
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
    // The connection's entry in the worker's registry runs until the app is
    // done: the --timeout abort answers it, gunicorn.socket hands it over
    // (see flight.rs).
    let (flight, hints, sock) = match connection(py, bridge, peer, fd) {
        Ok(c) => c,
        Err(e) => return internal_error(py, e, fd, req),
    };
    flight.run();
    let hints_ref = hints.get();
    let _running = Running {
        flight: &flight,
        hints: hints_ref,
    };
    // The work before and after the app is in functions of their own: the
    // stack under the app holds only this frame, and under gevent every
    // switch of the request's greenlet copies that stack (greenlet saves
    // and restores it by memcpy).
    let r = match prepare(
        py,
        bridge,
        listener,
        req,
        prebuffered,
        spill,
        fd,
        peer,
        &flight,
        &hints,
        sock.as_ref(),
    ) {
        Ok(r) => r,
        Err(outcome) => return *outcome,
    };
    let result = bridge.app.bind(py).call1((&r.env, &r.start));
    complete(
        py,
        bridge,
        req,
        peer,
        &flight,
        hints_ref,
        sock.as_ref(),
        r,
        result,
    )
}

/// What [`prepare`] made for the app and [`complete`] needs after it.
struct Prepared<'py> {
    input: Bound<'py, Input>,
    writer: Writer,
    start: Bound<'py, StartResponse>,
    env: Bound<'py, PyDict>,
    conn_socket: Option<Bound<'py, GeventSocket>>,
    scheme: &'static str,
}

/// [`handle`] before the app: `wsgi.input`, the response, the environ, the
/// pre_request hook. `Err`: the request is answered already (boxed: it is
/// rare, and the common result stays small).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn prepare<'py>(
    py: Python<'py>,
    bridge: &Bridge,
    listener: usize,
    req: &Request,
    prebuffered: Vec<u8>,
    spill: Option<std::fs::File>,
    fd: RawFd,
    peer: &Peer,
    flight: &Arc<flight::Flight>,
    hints: &Bound<'py, EarlyHints>,
    sock: Option<&Bound<'py, PyAny>>,
) -> Result<Prepared<'py>, Box<Outcome>> {
    let hints_ref = hints.get();
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
        Err(e) => return Err(Box::new(internal_error(py, e, fd, req))),
    };
    let writer = Writer::new(fd, req, bridge.io_timeout, Some(flight.clone()));
    let fwd = match forwarded::inspect(&bridge.proxy, req, peer) {
        Ok(f) => f,
        Err(e) => {
            return Err(Box::new(writer.fail(
                py,
                BodyError::BadRequest(e),
                &req.uri,
            )))
        }
    };
    hints_ref.arm(writer.clone());
    let start = match Bound::new(py, StartResponse::new(writer.clone())) {
        Ok(s) => s,
        Err(e) => return Err(Box::new(internal_error(py, e, fd, req))),
    };
    let env = match environ(py, bridge, listener, req, peer, input.clone(), &fwd) {
        Ok(e) => e,
        Err(e) => return Err(Box::new(internal_error(py, e, fd, req))),
    };
    let extensions = env
        .set_item(pyo3::intern!(py, "wsgi.early_hints"), hints)
        .and_then(|()| match sock {
            Some(s) => env.set_item(pyo3::intern!(py, "gunicorn.socket"), s),
            None => Ok(()),
        });
    if let Err(e) = extensions {
        return Err(Box::new(internal_error(py, e, fd, req)));
    }
    // The gevent worker's own `gunicorn.socket` (a gevent socket made on
    // first use): see the take-over test below.
    let conn_socket = match &bridge.conn_socket {
        Some(make) => {
            match Bound::new(py, GeventSocket::new(fd, make.clone_ref(py))).and_then(|s| {
                env.set_item(pyo3::intern!(py, "gunicorn.socket"), &s)
                    .map(|()| s)
            }) {
                Ok(s) => Some(s),
                Err(e) => return Err(Box::new(internal_error(py, e, fd, req))),
            }
        }
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
    Ok(Prepared {
        input,
        writer,
        start,
        env,
        conn_socket,
        scheme,
    })
}

/// [`handle`] after the app: its response written (or the connection
/// left to it), the body's rest consumed, the post_request hook.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn complete(
    py: Python<'_>,
    bridge: &Bridge,
    req: &Request,
    peer: &Peer,
    flight: &flight::Flight,
    hints_ref: &EarlyHints,
    sock: Option<&Bound<'_, PyAny>>,
    r: Prepared<'_>,
    result: PyResult<Bound<'_, PyAny>>,
) -> Outcome {
    let Prepared {
        input,
        writer,
        start,
        env,
        conn_socket,
        scheme,
    } = r;
    // Gone as soon as the app returns, as when it was the call's argument.
    drop(start);
    let failure = |e: BodyError| match input.borrow().framing_error() {
        // The client sent a malformed body: that is a 400, not a 500.
        Some(bad) => writer.fail(py, BodyError::BadRequest(bad), &req.uri),
        None => writer.fail(py, e, &req.uri),
    };
    // Under gevent, the app took the connection over when it raised
    // StopIteration (Gunicorn's "already handled", which Flask-Sock uses), or
    // used `gunicorn.socket` and never called start_response (a WebSocket
    // library that wrote its own handshake).
    if conn_socket.as_ref().is_some_and(|s| {
        matches!(&result, Err(e) if e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py))
            || s.get().used(py) && !writer.started(py)
    }) {
        flight.take();
    }
    let mut outcome = if flight.taken() {
        // The app owns the connection now: its result (or the exception by
        // which it says so, as Flask-Sock's StopIteration) is not a response.
        if let Ok(body) = &result {
            close_result(py, body);
        }
        Outcome {
            taken_over: true,
            status: writer.status(py),
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
            taken_over: flight.taken(),
            ..outcome
        }
    };
    // Decided under the claim's lock: a thread of the app taking the
    // socket over right now either wins (and the connection is its own) or
    // finds the socket closed.
    outcome.taken_over |= release_socket(peer, hints_ref, sock);
    if outcome.taken_over {
        outcome.keep_alive = false;
        outcome.linger = match &conn_socket {
            Some(s) => s.get().server_leaves(py),
            None => hints_ref.server_leaves(),
        };
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

#[cold]
#[inline(never)]
fn internal_error(py: Python<'_>, e: PyErr, fd: RawFd, req: &Request) -> Outcome {
    let w = Writer::new(fd, req, Duration::from_secs(5), None);
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
