//! The `asgi` worker class (`-k asgi`, `uvicorn.workers.UvicornWorker`):
//! an ASGI 3 app (ASGI 2 double callables are adapted) on an asyncio or
//! uvloop event loop that runs on the worker's main thread, while the
//! shared connection loop (`conn.rs`: accept, parsing, limits, keep-alive,
//! pre-read of small bodies, the drain) runs on its own I/O thread.
//!
//! The request path, and where the GIL is held:
//! 1. The I/O thread parses a request head (no GIL) and [`Asgi::dispatch`]
//!    pushes it on a `handoff.rs` queue: a burst of requests costs the loop
//!    one eventfd wake-up.
//! 2. The loop (main thread, GIL held) wakes, takes the whole batch
//!    ([`Server::take`]), builds each scope in Rust (a copy of a per-listener
//!    template dict) and starts one task per request (`asgi.py`).
//! 3. The app's `receive` and `send` work on the socket directly, without
//!    another hand-off: a [`Conn`] reads the rest of the body and writes the
//!    response with non-blocking calls on the connection's descriptor, and
//!    only when the socket would block does the task wait for it with the
//!    loop's own `add_reader`/`add_writer` (backpressure both ways). While
//!    the request is in Python the I/O thread does not touch the socket.
//!    The app's `send` is [`Conn::send`] itself: the message is read in
//!    Rust and, when the socket took the bytes, a ready awaitable
//!    ([`Done`]) is returned, so the usual response runs no Python of ours
//!    and no coroutine per message.
//! 4. When the response is complete the outcome goes back to the I/O
//!    thread (a tokio oneshot), with any bytes the client has not taken
//!    yet; the I/O thread writes those, logs the access and reads the next
//!    request. A background task of the app may still be running.
//!
//! The heartbeat pings the loop through the same hand-off; a ping it has
//! not taken is published as the busy time `--timeout` watches, so a
//! coroutine that blocks the loop gets the worker aborted (with every
//! task's stack in the report, see `asgi.py`'s `task_stacks`).
//!
//! The lifespan startup runs on the main thread before the connection loop
//! starts, so READY (sent by the I/O thread) means the app has started.
//!
//! A WebSocket handshake comes the same way; [`Server::take`] checks it and
//! starts the app on it through the driver's `_websocket` callback, with a
//! `WsConn` (`asgi/websocket.rs`: tungstenite's frames on the descriptor)
//! instead of a [`Conn`]. It holds its request slot until the WebSocket is
//! over, and a retiring worker closes it with 1001 ([`Class::draining`]).

use super::boot::{listener_info, Booted};
use super::handoff;
use super::msg::WORKER_BOOT_ERROR;
use super::{Call, Class, Job};
use crate::http::rate::RateClock;
use crate::http::response::{Exchange, Head, Response};
use crate::http::{self, BodyFraming, ChunkedDecoder, Request, Version};
use crate::scoreboard::Slot;
use crate::wsgi::{Outcome, Peer, ProxyPolicy};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;
use tokio::sync::oneshot;

mod websocket;
use websocket::WsConn;

/// A response larger than this still waiting for the client makes `send`
/// wait until the socket has taken it all (backpressure).
const HIGH_WATER: usize = 64 * 1024;
/// Largest piece of request body one `receive` returns.
const READ_MAX: usize = 64 * 1024;

/// The class as the I/O thread sees it.
pub(super) struct Asgi {
    tx: handoff::Sender<Job>,
    /// The driver (`asgi.py`'s `Driver`), whose `serve` is the main loop.
    driver: Py<PyAny>,
    slots: usize,
    slot: &'static Slot,
    drain: Arc<Drain>,
}

/// When a retiring worker closes the WebSockets still open: set by the I/O
/// thread when the drain begins, read by the loop on its next wake-up.
#[derive(Default)]
struct Drain {
    at: Mutex<Option<Instant>>,
    /// Set with `at`; the loop clears it when it has scheduled the closes.
    news: AtomicBool,
}

impl Class for Asgi {
    const INLINE: bool = false;
    const MAIN_LOOP: bool = true;
    const BALANCE: bool = true;

    fn slots(&self) -> usize {
        self.slots
    }

    fn body_policy(&self, p: super::body::Policy) -> super::body::Policy {
        // Only small bodies are read before the app is called (so a
        // trickling client still never reaches Python for them); a larger
        // one streams through `receive` at the app's pace.
        super::body::Policy {
            preread_max: p.preread_max.min(p.memory_max as u64 / 2),
            ..p
        }
    }

    async fn dispatch<'a>(&'a self, call: Call<'a>) -> Option<(Request, Outcome)> {
        let (job, rx) = call.into_job();
        REPLIES.start_courier();
        self.slot.active.fetch_add(1, Ordering::Relaxed);
        let pushed = self.tx.push(job);
        let r = match pushed {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        self.slot.active.fetch_sub(1, Ordering::Relaxed);
        r
    }

    fn heartbeat(&self, slot: &Slot) {
        // A loop that has not taken the last ping (or a request) is stuck
        // in the app's code since then: `--timeout` counts from there.
        slot.busy_since_ms
            .store(self.tx.stalled_since(), Ordering::Relaxed);
        self.tx.wake();
    }

    fn stopped(&self) {
        self.tx.close();
    }

    fn draining(&self, deadline: Instant) {
        *self.drain.at.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        self.drain.news.store(true, Ordering::Release);
        self.tx.wake();
    }

    fn main_loop(&self) -> Result<(), i32> {
        Python::attach(|py| {
            self.driver
                .bind(py)
                .call_method0("serve")
                .map(|_| ())
                .map_err(|e| {
                    tracing::error!(
                        "Exception in the ASGI event loop\n{}",
                        crate::python::format_exception(py, &e).trim_end()
                    );
                    WORKER_BOOT_ERROR
                })
        })
    }
}

/// The settings the driver reads, by their Gunicorn names.
fn setting_str(b: &Booted<'_>, name: &str) -> String {
    b.settings
        .each()
        .find(|(d, _)| d.name == name)
        .map(|(_, v)| match v {
            crate::config::SettingValue::Str(s) => s.clone(),
            crate::config::SettingValue::Int(i) => i.to_string(),
            _ => String::new(),
        })
        .unwrap_or_default()
}

/// For the WSGI classes: an ASGI app fails the boot with a message naming
/// the class to use, instead of a 500 for every request.
pub(super) fn refuse_asgi_app(app: &Py<PyAny>) -> Result<(), i32> {
    match Python::attach(|py| app_kind(py, app)) {
        // Only a certain ASGI 3 app: a one-argument callable may still be WSGI-ish.
        Ok(k) if k == "asgi3" => {
            tracing::error!(
                "Exception in worker process\nThe application is an ASGI application, not a WSGI \
                 one: run it with `-k asgi` (or `-k uvicorn.workers.UvicornWorker`)"
            );
            Err(WORKER_BOOT_ERROR)
        }
        _ => Ok(()),
    }
}

/// `asgi3`, `asgi2` or `wsgi` (see `bootstrap.py`'s `app_kind`).
fn app_kind(py: Python<'_>, app: &Py<PyAny>) -> PyResult<String> {
    crate::python::bootstrap(py)?
        .call_method1("app_kind", (app.bind(py),))?
        .extract()
}

/// Run the worker: the app's lifespan startup and the event loop on this
/// (the main) thread, the connection loop on an I/O thread.
pub(super) fn serve(b: &Booted<'_>) -> Result<(), i32> {
    let (tx, rx) = handoff::channel::<Job>().map_err(|e| {
        tracing::error!("cannot create the event loop's wake-up fd: {e}");
        WORKER_BOOT_ERROR
    })?;
    let drain = Arc::new(Drain::default());
    let driver = Python::attach(|py| -> PyResult<Py<PyAny>> {
        let m = module(py)?;
        let srv = Server::new(py, b, rx, drain.clone())?;
        let opts = PyDict::new(py);
        for name in [
            "asgi_loop",
            "asgi_lifespan",
            "asgi_disconnect_grace_period",
            "root_path",
        ] {
            opts.set_item(name, setting_str(b, name))?;
        }
        opts.set_item("graceful_timeout", b.settings.graceful_timeout)?;
        opts.set_item("app_kind", app_kind(py, &b.app)?)?;
        let d = m
            .getattr("Driver")?
            .call1((b.app.clone_ref(py), srv, opts))?;
        Ok(d.unbind())
    })
    .map_err(|e| {
        Python::attach(|py| {
            tracing::error!(
                "Exception in worker process\n{}",
                crate::python::format_exception(py, &e).trim_end()
            )
        });
        WORKER_BOOT_ERROR
    })?;
    // The app kind and the lifespan startup: a failure is a boot failure.
    let booted = Python::attach(|py| driver.bind(py).call_method0("boot").map(|_| ()));
    if let Err(e) = booted {
        Python::attach(|py| {
            let msg = if e.is_instance_of::<PyRuntimeError>(py) {
                e.value(py).to_string()
            } else {
                crate::python::format_exception(py, &e)
            };
            tracing::error!("Exception in worker process\n{}", msg.trim_end());
        });
        return Err(WORKER_BOOT_ERROR);
    }
    b.initialized();
    let class = Asgi {
        tx,
        driver,
        slots: b.settings.worker_connections.max(1),
        slot: b.slot,
        drain,
    };
    super::conn::run(class, b)
}

static MODULE: pyo3::sync::PyOnceLock<Py<PyModule>> = pyo3::sync::PyOnceLock::new();

/// The driver module (`asgi.py`), registered as `_rgunicorn_asgi` so the
/// timeout report can find its loop.
fn module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    let m = MODULE.get_or_try_init(py, || -> PyResult<Py<PyModule>> {
        let code = CString::new(include_str!("asgi.py"))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let m = PyModule::from_code(py, &code, c"<rgunicorn-asgi>", c"_rgunicorn_asgi")?;
        m.add_class::<Conn>()?;
        m.add_class::<Server>()?;
        m.add_class::<WsConn>()?;
        m.add_function(pyo3::wrap_pyfunction!(rg_log, &m)?)?;
        m.add_function(pyo3::wrap_pyfunction!(flush_replies, &m)?)?;
        m.add_function(pyo3::wrap_pyfunction!(set_hooks, &m)?)?;
        m.add_class::<Done>()?;
        m.add_class::<Ready>()?;
        // Both have send/throw/close/__await__: as coroutines, asyncio takes
        // them where it takes only coroutines (`create_task(send(msg))`,
        // `create_task(receive())`), as it would uvicorn's `async def`s.
        let coroutine = py.import("collections.abc")?.getattr("Coroutine")?;
        coroutine.call_method1("register", (m.getattr("Done")?,))?;
        coroutine.call_method1("register", (m.getattr("Ready")?,))?;
        py.import("sys")?
            .getattr("modules")?
            .set_item("_rgunicorn_asgi", &m)?;
        Ok(m.unbind())
    })?;
    Ok(m.bind(py))
}

/// The driver's messages, into the error log (Python `logging` levels).
/// `exception`: an app's exception, Gunicorn's `log.exception` (target
/// `exception`, which StatsD counts as `gunicorn.log.exception`).
#[pyfunction]
#[pyo3(signature = (level, msg, exception = false))]
fn rg_log(level: u32, msg: &str, exception: bool) {
    if exception {
        tracing::error!(target: "rgunicorn::exception", "{msg}");
        return;
    }
    match level {
        0..=10 => tracing::debug!("{msg}"),
        11..=20 => tracing::info!("{msg}"),
        21..=30 => tracing::warn!("{msg}"),
        _ => tracing::error!("{msg}"),
    }
}

/// One listener's constant part of the scope.
struct ListenerScope {
    unix: bool,
    /// An HTTP scope with every key in place and the constant values set
    /// (`type`, `asgi`, `root_path`, `server`): each request's scope is a
    /// copy of it (one allocation of the right size, no rehashing) with
    /// the request's own values replaced.
    template: Py<PyDict>,
}

/// The loop's handle on the worker: the hand-off, the scope's
/// constant parts.
#[pyclass(module = "_rgunicorn_asgi")]
pub struct Server {
    rx: handoff::Receiver<Job>,
    listeners: Vec<ListenerScope>,
    root_path: String,
    proxy: ProxyPolicy,
    /// The lifespan state, copied into each scope.
    state: Mutex<Option<Py<PyDict>>>,
    hooks: Option<std::sync::Arc<crate::hooks::RequestHooks>>,
    /// `websocket_max_message_size` (0: no limit).
    ws_max: usize,
    /// The body rate rule (`body_timeout`, `body_min_rate`) for streamed
    /// request bodies.
    body_rate: (std::time::Duration, u64),
    drain: Arc<Drain>,
    /// The driver's, set once before it serves.
    callbacks: OnceLock<Callbacks>,
}

/// What `Server::take` calls in the driver besides returning the HTTP
/// requests.
struct Callbacks {
    /// `_websocket(conn, scope)`: start the app on a WebSocket handshake.
    websocket: Py<PyAny>,
    /// `_draining(seconds)`: once, when the worker starts retiring.
    draining: Py<PyAny>,
}

impl Server {
    fn new(
        py: Python<'_>,
        b: &Booted<'_>,
        rx: handoff::Receiver<Job>,
        drain: Arc<Drain>,
    ) -> PyResult<Server> {
        let asgi = PyDict::new(py);
        asgi.set_item("version", "3.0")?;
        asgi.set_item("spec_version", "2.4")?;
        let mut listeners = Vec::new();
        for l in b.listeners {
            let info = listener_info(l);
            let server = if info.unix {
                py.None()
            } else {
                let port: u16 = info.server_port.parse().unwrap_or(0);
                (info.server_name.clone(), port)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind()
            };
            let template = PyDict::new(py);
            let none = py.None();
            for key in [
                "type",
                "asgi",
                "http_version",
                "method",
                "scheme",
                "path",
                "raw_path",
                "query_string",
                "root_path",
                "headers",
                "server",
                "client",
            ] {
                template.set_item(key, &none)?;
            }
            template.set_item("type", "http")?;
            template.set_item("asgi", &asgi)?;
            template.set_item("root_path", setting_str(b, "root_path"))?;
            template.set_item("server", &server)?;
            listeners.push(ListenerScope {
                unix: info.unix,
                template: template.unbind(),
            });
        }
        Ok(Server {
            rx,
            listeners,
            root_path: setting_str(b, "root_path"),
            proxy: b.proxy.clone(),
            state: Mutex::new(None),
            hooks: crate::hooks::RequestHooks::new(b.settings, b.slot_index)
                .map(std::sync::Arc::new),
            ws_max: setting_str(b, "websocket_max_message_size")
                .parse()
                .unwrap_or(16 << 20),
            body_rate: {
                let p = super::body::Policy::from_settings(b.settings);
                (p.timeout, p.min_rate)
            },
            drain,
            callbacks: OnceLock::new(),
        })
    }

    /// The scope of one request (`ws`: of a WebSocket handshake); `Err`: a
    /// request the proxy headers make invalid (answered 400 without calling
    /// the app).
    fn scope<'py>(
        &self,
        py: Python<'py>,
        job: &Job,
        ws: bool,
    ) -> Result<(Bound<'py, PyDict>, bool), http::ParseError> {
        let req = &job.req;
        let fwd = crate::wsgi::forwarded_https(&self.proxy, req, &job.peer)?;
        // A WebSocket handshake's scope is the HTTP one with the WebSocket
        // keys in place of `method` (one builder, so both always agree).
        let build = || -> PyResult<Bound<'py, PyDict>> {
            let d = self.http_scope(py, job, fwd)?;
            if ws {
                d.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "websocket"))?;
                let scheme = if fwd {
                    pyo3::intern!(py, "wss")
                } else {
                    pyo3::intern!(py, "ws")
                };
                d.set_item(pyo3::intern!(py, "scheme"), scheme)?;
                d.del_item(pyo3::intern!(py, "method"))?;
                d.set_item("subprotocols", websocket::subprotocols(req))?;
                let ext = PyDict::new(py);
                ext.set_item("websocket.http.response", PyDict::new(py))?;
                d.set_item("extensions", ext)?;
            }
            Ok(d)
        };
        build()
            .map(|d| (d, fwd))
            .map_err(|_| http::ParseError::InvalidSchemeHeaders)
    }
}

impl Server {
    /// An HTTP request's scope: a copy of the listener's template with the
    /// request's values put in (the keys exist, so nothing is resized).
    fn http_scope<'py>(
        &self,
        py: Python<'py>,
        job: &Job,
        https: bool,
    ) -> PyResult<Bound<'py, PyDict>> {
        let req = &job.req;
        let l = &self.listeners[job.listener.min(self.listeners.len().saturating_sub(1))];
        let d = l.template.bind(py).copy()?;
        d.set_item(
            pyo3::intern!(py, "http_version"),
            match req.version {
                _ if job.peer.http2 => pyo3::intern!(py, "2"),
                Version::Http10 => pyo3::intern!(py, "1.0"),
                Version::Http11 => pyo3::intern!(py, "1.1"),
            },
        )?;
        d.set_item(pyo3::intern!(py, "method"), method(py, &req.method))?;
        if https {
            d.set_item(pyo3::intern!(py, "scheme"), pyo3::intern!(py, "https"))?;
        } else {
            d.set_item(pyo3::intern!(py, "scheme"), pyo3::intern!(py, "http"))?;
        }
        // `path` and `uri` hold one char per raw byte (latin-1); the scope
        // wants the percent-decoded path as UTF-8 text and the raw path as
        // bytes.
        let path_bytes: Vec<u8> = req.path.chars().map(|c| c as u32 as u8).collect();
        let path = String::from_utf8_lossy(&path_bytes);
        if self.root_path.is_empty() || path.starts_with(self.root_path.as_str()) {
            d.set_item(pyo3::intern!(py, "path"), path.as_ref())?;
        } else {
            d.set_item(
                pyo3::intern!(py, "path"),
                format!("{}{path}", self.root_path),
            )?;
        }
        let raw_end = req.uri.find(['?', '#']).unwrap_or(req.uri.len());
        let raw_str = &req.uri[..raw_end];
        let raw = if raw_str.is_ascii() {
            PyBytes::new(py, raw_str.as_bytes())
        } else {
            let v: Vec<u8> = raw_str.chars().map(|c| c as u32 as u8).collect();
            PyBytes::new(py, &v)
        };
        d.set_item(pyo3::intern!(py, "raw_path"), raw)?;
        d.set_item(
            pyo3::intern!(py, "query_string"),
            PyBytes::new(py, req.query.as_bytes()),
        )?;
        let headers = PyList::empty(py);
        let mut lower = Vec::with_capacity(32);
        for h in &req.headers {
            let name = if h.name.iter().any(u8::is_ascii_uppercase) {
                lower.clear();
                lower.extend(h.name.iter().map(u8::to_ascii_lowercase));
                PyBytes::new(py, &lower)
            } else {
                PyBytes::new(py, &h.name)
            };
            headers.append(PyTuple::new(py, [name, PyBytes::new(py, &h.value)])?)?;
        }
        d.set_item(pyo3::intern!(py, "headers"), headers)?;
        if let Some((addr, port)) = client(&self.proxy, req, &job.peer, l.unix) {
            d.set_item(pyo3::intern!(py, "client"), (addr, port))?;
        }
        if let Some(st) = self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            d.set_item(pyo3::intern!(py, "state"), st.bind(py).copy()?)?;
        }
        Ok(d)
    }
}

/// The scope's `method`: the common methods are interned once.
fn method<'py>(py: Python<'py>, m: &str) -> Bound<'py, pyo3::types::PyString> {
    let common = match m {
        "GET" => pyo3::intern!(py, "GET"),
        "POST" => pyo3::intern!(py, "POST"),
        "HEAD" => pyo3::intern!(py, "HEAD"),
        "PUT" => pyo3::intern!(py, "PUT"),
        "DELETE" => pyo3::intern!(py, "DELETE"),
        "PATCH" => pyo3::intern!(py, "PATCH"),
        "OPTIONS" => pyo3::intern!(py, "OPTIONS"),
        _ => return pyo3::types::PyString::new(py, m),
    };
    common.clone()
}

/// The scope's `client`: the socket peer (or the PROXY header's client);
/// from a trusted peer, the `X-Forwarded-For` address nearest to us that is
/// not itself trusted, as uvicorn's proxy headers do.
fn client<'a>(
    proxy: &ProxyPolicy,
    req: &'a Request,
    peer: &'a Peer,
    unix: bool,
) -> Option<(&'a str, u16)> {
    if peer.trusted {
        if let Some(xff) = req.header("x-forwarded-for") {
            let list: Vec<&str> = std::str::from_utf8(xff)
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            let pick = list
                .iter()
                .rev()
                .find(|a| !proxy.trusts(a.parse().ok()))
                .or(list.first());
            if let Some(a) = pick {
                return Some((a, 0));
            }
        }
    }
    if unix && peer.addr.is_empty() {
        return None;
    }
    Some((&peer.addr, peer.port.parse().unwrap_or(0)))
}

#[pymethods]
impl Server {
    /// The descriptor the loop watches for new requests.
    fn wakeup_fd(&self) -> RawFd {
        self.rx.fd()
    }

    fn set_state(&self, state: Py<PyDict>) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
    }

    /// From `take`: `websocket(conn, scope)` starts the app on each
    /// WebSocket handshake (the HTTP requests are `take`'s list, which
    /// then pays nothing for WebSockets); `draining(seconds)` is called
    /// once when the worker starts retiring, with the time left until it
    /// closes what is still open.
    fn set_callbacks(&self, websocket: Py<PyAny>, draining: Py<PyAny>) {
        let _ = self.callbacks.set(Callbacks {
            websocket,
            draining,
        });
    }

    /// Every request waiting, as `(conn, scope)` pairs; `None` once the
    /// worker has stopped serving.
    fn take<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyList>>> {
        let mut jobs = Vec::new();
        if !self.rx.drain(&mut jobs) {
            return Ok(None);
        }
        if self.drain.news.swap(false, Ordering::AcqRel) {
            self.tell_drain(py)?;
        }
        let out = PyList::empty(py);
        for mut job in jobs {
            let ws = websocket::is_handshake(&job.req);
            if ws {
                if let Err((status, answer)) = websocket::check(&job.req) {
                    let outcome = Outcome {
                        keep_alive: false,
                        pending_out: answer,
                        status,
                        ..Outcome::default()
                    };
                    let _ = job.reply.send((job.req, outcome));
                    continue;
                }
                // After a refusal the connection closes; after a
                // WebSocket, too.
                job.req.keep_alive = false;
            }
            match self.scope(py, &job, ws) {
                Ok((scope, https)) => {
                    if let Some(h) = &self.hooks {
                        h.pre(
                            py,
                            &job.req,
                            if https { "https" } else { "http" },
                            &job.peer.addr,
                        );
                    }
                    let peer_addr = self.hooks.as_ref().map(|h| (h, job.peer.addr.to_string()));
                    let mut conn = Conn::new(job, https, self.body_rate);
                    if let Some((h, peer_addr)) = peer_addr {
                        conn.post_hook = Some((h.clone(), scope.clone().unbind(), peer_addr));
                    }
                    if ws {
                        let ws = Py::new(py, WsConn::new(conn, self.ws_max))?;
                        match self.callbacks.get() {
                            Some(cb) => {
                                cb.websocket.call1(py, (ws, scope))?;
                            }
                            // No driver to run it: dropping it answers 500.
                            None => drop(ws),
                        }
                    } else {
                        out.append((Py::new(py, conn)?, scope))?;
                    }
                }
                Err(e) => {
                    let out = http::response::parse_error(&e);
                    let outcome = Outcome {
                        keep_alive: false,
                        pending_out: out,
                        status: e.status(),
                        ..Outcome::default()
                    };
                    let _ = job.reply.send((job.req, outcome));
                }
            }
        }
        Ok(Some(out))
    }
}

impl Server {
    /// Tell the driver the drain began: how long until what is still open
    /// closes.
    fn tell_drain(&self, py: Python<'_>) -> PyResult<()> {
        let at = *self.drain.at.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(at), Some(cb)) = (at, self.callbacks.get()) {
            let left = at.saturating_duration_since(Instant::now());
            cb.draining.call1(py, (left.as_secs_f64(),))?;
        }
        Ok(())
    }
}

/// How the rest of the request body is found in the raw bytes.
enum Scan {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// One request as the app's `receive` and `send` see it.
#[pyclass(module = "_rgunicorn_asgi")]
pub struct Conn {
    fd: RawFd,
    req: Option<Request>,
    reply: Option<oneshot::Sender<(Request, Outcome)>>,
    https: bool,
    resp: Response,
    /// Response bytes not yet written, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    /// A `http.response.pathsend` file and how much of it is left.
    file: Option<(std::fs::File, u64)>,
    /// The body still to read (`None`: all of it read).
    scan: Option<Scan>,
    /// Raw bytes read from the client, not yet used, from `raw_pos`.
    raw: Vec<u8>,
    raw_pos: usize,
    /// The body the I/O thread spilled to a file (read before `raw`).
    spill: Option<std::fs::File>,
    expect_continue: bool,
    /// The body rate rule (grace, bytes/s), and its clock from the app's
    /// first wait for body bytes the socket did not have yet.
    body_rate: (std::time::Duration, u64),
    body_clock: Option<RateClock>,
    /// The client went away.
    gone: bool,
    /// The app broke the response off (it raised, or returned early).
    broken: bool,
    /// `http.response.start`: the head, not yet written.
    started: bool,
    /// The last piece of the body was given.
    ended: bool,
    /// The body is a `http.response.pathsend` file.
    pathsend: bool,
    /// The body met its framing: the connection may be reused.
    keep: bool,
    /// The future a `receive` waiting for the socket (or for the client
    /// to go away) awaits; woken when the response completes.
    #[pyo3(get, set)]
    reading: Option<Py<PyAny>>,
    /// The future a `receive` awaits while a pipelined request is there:
    /// woken when the response completes.
    #[pyo3(get, set)]
    done_fut: Option<Py<PyAny>>,
    /// The app has had the last piece of the body from `receive`.
    #[pyo3(get, set)]
    body_read: bool,
    /// The request's task (set by the driver).
    task: Option<Py<PyAny>>,
    /// The same task until a disconnect has scheduled its cancellation
    /// (after `asgi_disconnect_grace_period`).
    #[pyo3(get, set)]
    cancel: Option<Py<PyAny>>,
    /// `post_request`, with the scope it is given as the environ.
    post_hook: Option<(
        std::sync::Arc<crate::hooks::RequestHooks>,
        Py<PyDict>,
        String,
    )>,
}

impl Conn {
    fn new(job: Job, https: bool, body_rate: (std::time::Duration, u64)) -> Conn {
        let ex = Exchange::of(&job.req);
        let scan = match job.req.body {
            BodyFraming::None | BodyFraming::Length(0) => None,
            BodyFraming::Length(n) => Some(Scan::Length(n)),
            BodyFraming::Chunked => Some(Scan::Chunked(ChunkedDecoder::new())),
        };
        Conn {
            fd: job.fd,
            expect_continue: job.req.expect_continue,
            body_rate,
            body_clock: None,
            req: Some(job.req),
            reply: Some(job.reply),
            https,
            resp: Response::new(ex),
            out: Vec::new(),
            out_pos: 0,
            file: None,
            scan,
            raw: job.prebuffered,
            raw_pos: 0,
            spill: job.spill,
            gone: false,
            broken: false,
            started: false,
            ended: false,
            pathsend: false,
            keep: false,
            reading: None,
            done_fut: None,
            body_read: false,
            task: None,
            cancel: None,
            post_hook: None,
        }
    }

    /// Bring more raw bytes in: from the spilled body, else the socket.
    /// `Ok(false)`: the socket has nothing now.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.raw_pos > 0 {
            self.raw.drain(..self.raw_pos);
            self.raw_pos = 0;
        }
        if let Some(f) = self.spill.as_mut() {
            let mut chunk = vec![0u8; READ_MAX];
            let n = f.read(&mut chunk)?;
            if n > 0 {
                // The file comes before what was buffered after it.
                chunk.truncate(n);
                chunk.extend_from_slice(&self.raw);
                self.raw = chunk;
                return Ok(true);
            }
            self.spill = None;
            return Ok(!self.raw.is_empty());
        }
        if self.expect_continue {
            self.expect_continue = false;
            self.out.extend_from_slice(http::response::CONTINUE);
            self.flush_out()?;
        }
        let len = self.raw.len();
        self.raw.reserve(READ_MAX);
        let spare = self.raw.spare_capacity_mut();
        // SAFETY: read(2) writes at most `spare.len()` bytes into the spare
        // capacity; only what it reports is marked initialised. The socket
        // stays open while the request is in Python.
        let n = unsafe { libc::read(self.fd, spare.as_mut_ptr().cast(), spare.len()) };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(false),
                _ => Err(e),
            };
        }
        // SAFETY: read(2) initialised these n bytes.
        unsafe { self.raw.set_len(len + n as usize) };
        if let Some(c) = self.body_clock.as_mut() {
            c.add(n as usize);
        }
        Ok(true)
    }

    /// Take body bytes from `raw`. `Ok(None)`: more raw bytes are needed.
    fn take_body(&mut self, max: usize) -> Result<Option<Vec<u8>>, http::ParseError> {
        let avail = &self.raw[self.raw_pos..];
        match self.scan.as_mut() {
            None => Ok(Some(Vec::new())),
            Some(Scan::Length(left)) => {
                if avail.is_empty() {
                    return Ok(None);
                }
                let n = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(avail.len())
                    .min(max);
                let out = avail[..n].to_vec();
                *left -= n as u64;
                self.raw_pos += n;
                if *left == 0 {
                    self.scan = None;
                }
                Ok(Some(out))
            }
            Some(Scan::Chunked(d)) => {
                let mut out = Vec::new();
                let used = d.decode(avail, &mut out)?;
                self.raw_pos += used;
                if d.is_done() {
                    self.scan = None;
                    return Ok(Some(out));
                }
                Ok(if out.is_empty() { None } else { Some(out) })
            }
        }
    }

    /// Write what is pending without blocking; `Ok(true)`: all of it.
    fn flush_out(&mut self) -> std::io::Result<bool> {
        while self.out_pos < self.out.len() {
            let rest = &self.out[self.out_pos..];
            // SAFETY: send(2) reads `rest.len()` bytes from a live slice; the
            // socket stays open while the request is in Python.
            let n = unsafe {
                libc::send(
                    self.fd,
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return match e.kind() {
                    std::io::ErrorKind::WouldBlock => Ok(false),
                    std::io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            self.out_pos += n as usize;
        }
        self.out.clear();
        self.out_pos = 0;
        while let Some((f, left)) = self.file.as_mut() {
            if *left == 0 {
                self.file = None;
                break;
            }
            let want = usize::try_from(*left).unwrap_or(usize::MAX).min(1 << 20);
            // SAFETY: both descriptors are open; a null offset uses (and
            // advances) the file's own position.
            let n = unsafe { libc::sendfile(self.fd, f.as_raw_fd(), std::ptr::null_mut(), want) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                return match e.kind() {
                    std::io::ErrorKind::WouldBlock => Ok(false),
                    std::io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if n == 0 {
                // The file shrank: the promised length cannot be met.
                self.file = None;
                self.broken = true;
                break;
            }
            *left -= n as u64;
            if let Some(b) = self.resp.body_mut() {
                b.sent_directly(n as u64);
            }
        }
        Ok(true)
    }

    fn pending(&self) -> usize {
        self.out.len() - self.out_pos + self.file.as_ref().map_or(0, |(_, l)| *l as usize)
    }

    /// `complete`: a 500 if nothing was sent, a close if the response was
    /// broken off; see `complete_with`.
    fn conclude(&mut self, error: bool, batched: bool) -> bool {
        if self.reply.is_none() {
            return false;
        }
        if !self.resp.head_sent() && !self.gone {
            if !error {
                tracing::error!("ASGI callable returned without sending a response");
            }
            return self.complete_with(
                Some((500, http::response::error(500, "Internal Server Error", ""))),
                batched,
            );
        }
        if error || !self.ended {
            // The response was started and not finished: close.
            self.broken = true;
        }
        self.complete_with(None, batched)
    }

    /// Send the outcome back to the I/O thread (once); `batched`: through
    /// [`REPLIES`], and true when a flush must be scheduled.
    /// `extra`: the server's own answer (status, bytes) instead of the app's.
    fn complete_with(&mut self, mut extra: Option<(u16, Vec<u8>)>, batched: bool) -> bool {
        let extra_status = extra.as_ref().map(|(status, _)| *status);
        if self.reply.is_none() || self.req.is_none() {
            return false;
        }
        let mut keep_alive = !self.gone && !self.broken && self.ended && self.keep;
        if let Some((_, bytes)) = extra.take() {
            // The server's own answer (500, 408): the connection closes
            // after it.
            self.out.clear();
            self.out_pos = 0;
            self.out.extend_from_slice(&bytes);
            keep_alive = false;
        }
        // The rest of a body the app did not read: use what is buffered;
        // if more is still to come, close rather than read it.
        if keep_alive && self.scan.is_some() {
            while self.scan.is_some() {
                match self.take_body(usize::MAX) {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
            if self.scan.is_some() || self.spill.is_some() {
                keep_alive = false;
            }
        }
        let status = match extra_status {
            Some(s) => s,
            None => self.resp.code(),
        };
        let headers = self
            .resp
            .head()
            .map(|h| h.headers.clone())
            .unwrap_or_default();
        let pending_out = if self.gone {
            Vec::new()
        } else {
            self.out.split_off(self.out_pos)
        };
        let outcome = Outcome {
            keep_alive,
            leftover_in: if keep_alive {
                self.raw.split_off(self.raw_pos)
            } else {
                Vec::new()
            },
            pending_out,
            spool: None,
            taken_over: false,
            linger: false,
            status,
            sent: self.resp.sent(),
            response_headers: headers,
            environ_atoms: Vec::new(),
        };
        self.reply_with(outcome, batched)
    }

    /// Run `post_request` and send `outcome` back to the I/O thread
    /// (once); `batched`: through [`REPLIES`], and true when a flush must be
    /// scheduled.
    fn reply_with(&mut self, outcome: Outcome, batched: bool) -> bool {
        let Some(reply) = self.reply.take() else {
            return false;
        };
        let Some(req) = self.req.take() else {
            return false;
        };
        if let Some((h, scope, addr)) = self.post_hook.take() {
            Python::attach(|py| {
                h.post(
                    py,
                    &req,
                    if self.https { "https" } else { "http" },
                    &addr,
                    scope.bind(py),
                    outcome.status,
                    &outcome.response_headers,
                    outcome.sent,
                )
            });
        }
        if batched {
            REPLIES.push(reply, (req, outcome))
        } else {
            let _ = reply.send((req, outcome));
            false
        }
    }
}

/// Bytes as the app gave them: borrowed from a `bytes`, else copied from
/// any other buffer-like sequence of ints.
fn bytes_of<'a>(o: &'a Bound<'_, PyAny>) -> PyResult<std::borrow::Cow<'a, [u8]>> {
    match o.cast::<PyBytes>() {
        Ok(b) => Ok(std::borrow::Cow::Borrowed(b.as_bytes())),
        Err(_) => Ok(std::borrow::Cow::Owned(o.extract::<Vec<u8>>()?)),
    }
}

/// `message[key]` of an ASGI message (a dict, or any mapping); `None`
/// when the key is missing.
fn message_item<'py>(
    message: &Bound<'py, PyAny>,
    key: &Bound<'py, pyo3::types::PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    match message.cast::<PyDict>() {
        Ok(d) => d.get_item(key),
        Err(_) => match message.get_item(key) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyKeyError>(message.py()) => Ok(None),
            Err(e) => Err(e),
        },
    }
}

/// One `(name, value)` of `http.response.start`, checked into `head`.
fn push_header(head: &mut Head, item: &Bound<'_, PyAny>) -> PyResult<()> {
    let (name, value) = match item.cast::<PyTuple>() {
        Ok(t) if t.len() == 2 => (t.get_item(0)?, t.get_item(1)?),
        _ => (item.get_item(0)?, item.get_item(1)?),
    };
    let name = bytes_of(&name)?;
    let value = bytes_of(&value)?;
    let name = std::str::from_utf8(&name)
        .map_err(|_| PyValueError::new_err("header name is not ASCII"))?;
    // Latin-1: one char per byte (ASCII, the usual case, as it is).
    let latin;
    let value = match std::str::from_utf8(&value) {
        Ok(v) if v.is_ascii() => v,
        _ => {
            latin = value.iter().map(|&b| b as char).collect::<String>();
            latin.as_str()
        }
    };
    head.push_header(name, value)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

fn os_err(e: std::io::Error) -> PyErr {
    PyOSError::new_err(e.to_string())
}

#[pymethods]
impl Conn {
    /// The connection's descriptor, for `add_reader`/`add_writer`.
    #[getter]
    fn fd(&self) -> RawFd {
        self.fd
    }

    /// The response is complete (or abandoned): `receive` says disconnect.
    #[getter]
    fn done(&self) -> bool {
        self.reply.is_none()
    }

    #[getter]
    fn body_done(&self) -> bool {
        self.scan.is_none()
    }

    /// The next piece of body: `(bytes, more_body)`, or `None` when the
    /// socket has nothing yet (wait for it to be readable). Raises
    /// `EOFError` when the client went away.
    fn read<'py>(&mut self, py: Python<'py>) -> PyResult<Option<(Bound<'py, PyBytes>, bool)>> {
        loop {
            match self.take_body(READ_MAX) {
                Ok(Some(b)) => return Ok(Some((PyBytes::new(py, &b), self.scan.is_some()))),
                Ok(None) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(PyValueError::new_err(format!("invalid request body: {e}")));
                }
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => {
                    let (grace, min_rate) = self.body_rate;
                    let clock = self
                        .body_clock
                        .get_or_insert_with(|| RateClock::start(grace, min_rate));
                    if Instant::now() >= clock.deadline() {
                        return Err(pyo3::exceptions::PyTimeoutError::new_err(
                            "the client sent its body too slowly",
                        ));
                    }
                    return Ok(None);
                }
                Err(_) => {
                    self.gone = true;
                    return Err(pyo3::exceptions::PyEOFError::new_err("client disconnected"));
                }
            }
        }
    }

    /// Seconds until the body rate rule cuts the client off if no more
    /// bytes come (`None`: not waiting for body bytes): how long `receive`
    /// may wait for the socket before it calls `read` again.
    fn body_wait(&self) -> Option<f64> {
        let c = self.body_clock.as_ref()?;
        Some(
            c.deadline()
                .saturating_duration_since(Instant::now())
                .as_secs_f64(),
        )
    }

    /// The client sent its body too slowly (`read` raised `TimeoutError`):
    /// answer `408 Request Timeout` if the response has not started, else
    /// close; the app's `receive` then says `http.disconnect`.
    fn body_timed_out(&mut self) {
        if self.reply.is_none() {
            return;
        }
        tracing::debug!("a client sent its body too slowly: 408");
        self.broken = true;
        if self.resp.head_sent() {
            self.complete_with(None, false);
        } else {
            let page = http::response::parse_error(&http::ParseError::BodyTimeout);
            self.complete_with(Some((408, page)), false);
        }
    }

    /// Has the client closed? `None`: nothing to tell yet; `False`: it sent
    /// more (a pipelined request), which the I/O thread will read.
    fn peek_closed(&mut self) -> Option<bool> {
        if self.gone {
            return Some(true);
        }
        let mut b = [0u8; 1];
        // SAFETY: recv(2) with MSG_PEEK writes at most one byte into `b`.
        let n = unsafe {
            libc::recv(
                self.fd,
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => {
                self.gone = true;
                Some(true)
            }
            n if n > 0 => Some(false),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted
                {
                    None
                } else {
                    self.gone = true;
                    Some(true)
                }
            }
        }
    }

    /// `http.response.start`.
    fn start(&mut self, status: i64, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.started {
            return Err(PyRuntimeError::new_err(
                "Unexpected ASGI message 'http.response.start' sent, after response already started.",
            ));
        }
        if !(100..=999).contains(&status) {
            return Err(PyValueError::new_err(format!("invalid status {status}")));
        }
        let code = status as u16;
        let mut head = Head::new(format!("{code} {}", reason(code)))
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        if let Ok(list) = headers.cast::<PyList>() {
            // The usual shape: a list of (bytes, bytes) tuples, read in
            // place.
            head.headers.reserve(list.len());
            for item in list.iter() {
                push_header(&mut head, &item)?;
            }
        } else {
            for item in headers.try_iter()? {
                push_header(&mut head, &item?)?;
            }
        }
        self.resp.set_head(head);
        self.started = true;
        Ok(())
    }

    /// The request's task.
    #[getter]
    fn task(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.task.as_ref().map(|t| t.clone_ref(py))
    }

    /// Set the request's task (and the task a disconnect cancels).
    #[setter]
    fn set_task(&mut self, py: Python<'_>, task: Option<Py<PyAny>>) {
        self.cancel = task.as_ref().map(|t| t.clone_ref(py));
        self.task = task;
    }

    /// The app's `receive`: body bytes already buffered (a small body is
    /// pre-read whole by the I/O thread, and a request without one has an
    /// empty body) come back as a ready awaitable; when the socket may have
    /// to be waited for, the driver's `_receive` coroutine.
    fn receive<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let hooks = hooks(py)?;
        let message = {
            let mut c = slf.borrow_mut();
            if c.reply.is_none() {
                Some(hooks.disconnect.bind(py).clone())
            } else if c.body_read {
                None
            } else {
                match c.take_body(READ_MAX) {
                    Ok(Some(b)) => {
                        let more = c.scan.is_some();
                        if !more {
                            c.body_read = true;
                        }
                        let d = PyDict::new(py);
                        d.set_item(pyo3::intern!(py, "type"), pyo3::intern!(py, "http.request"))?;
                        d.set_item(pyo3::intern!(py, "body"), PyBytes::new(py, &b))?;
                        d.set_item(pyo3::intern!(py, "more_body"), more)?;
                        Some(d.into_any())
                    }
                    Ok(None) => None,
                    Err(e) => {
                        c.broken = true;
                        return Err(PyValueError::new_err(format!("invalid request body: {e}")));
                    }
                }
            }
        };
        match message {
            Some(m) => Ok(Bound::new(py, Ready { value: m.unbind() })?.into_any()),
            None => hooks.receive.bind(py).call1((slf,)),
        }
    }

    /// The app's `send`: the message is read and the response written
    /// here. What it returns to await is a ready [`Done`], unless the
    /// socket cannot take the bytes yet: then the driver's `_send_wait`
    /// waits until it has (backpressure). The last piece of the body
    /// completes the request at once (see `finish`).
    fn send<'py>(
        slf: &Bound<'py, Self>,
        message: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let r = slf.borrow_mut().message(message)?;
        let hooks = hooks(py)?;
        match r {
            0 => {}
            2 => Conn::finish(slf, false)?,
            _ => return hooks.send_wait.bind(py).call1((slf,)),
        }
        Ok(hooks.done.bind(py).clone())
    }

    /// The request is over for the app (it returned, raised, or the last
    /// piece of the body went out): wake a `receive` that waits, and send
    /// the outcome back to the I/O thread at the end of this loop turn,
    /// with every other one completed in it (one wake-up for them all).
    /// `error`: the app raised (its traceback is logged). Once only.
    fn finish(slf: &Bound<'_, Self>, error: bool) -> PyResult<()> {
        let py = slf.py();
        let waiting = {
            let c = slf.borrow();
            if c.reply.is_none() {
                return Ok(());
            }
            c.reading.is_some() || c.done_fut.is_some()
        };
        let hooks = hooks(py)?;
        if waiting {
            hooks.wake_receive.bind(py).call1((slf,))?;
        }
        if slf.borrow_mut().conclude(error, true) {
            hooks.call_soon.bind(py).call1((&hooks.flush,))?;
        }
        Ok(())
    }
    /// `http.response.body`: 0 = go on, 1 = wait until writable and
    /// `flush` (backpressure), 2 = the response is complete (call
    /// `complete` once the descriptor is no longer watched).
    fn body(&mut self, data: &[u8], more: bool) -> PyResult<u8> {
        if !self.started {
            return Err(PyRuntimeError::new_err(
                "Unexpected ASGI message 'http.response.body' sent, before 'http.response.start'.",
            ));
        }
        if self.reply.is_none() || self.ended {
            return Ok(2);
        }
        if !self.resp.head_sent() {
            let known = if more { None } else { Some(data.len() as u64) };
            self.resp
                .send_head(known, &mut self.out)
                .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        }
        self.resp.push_body(data, &mut self.out);
        if !more {
            self.keep = self.resp.finish(&mut self.out);
            self.ended = true;
        }
        if self.gone {
            return Ok(if more { 0 } else { 2 });
        }
        let flushed = self.flush_out();
        if flushed.is_err() {
            self.gone = true;
        }
        Ok(if !more {
            // What the client has not taken goes back with the outcome.
            2
        } else if flushed.is_ok() && self.pending() > HIGH_WATER {
            1
        } else {
            0
        })
    }

    /// `http.response.pathsend`: the file goes out with sendfile(2); the
    /// same codes as `body`.
    fn pathsend(&mut self, path: std::path::PathBuf) -> PyResult<u8> {
        if !self.started || self.resp.head_sent() {
            return Err(PyRuntimeError::new_err(
                "Unexpected ASGI message 'http.response.pathsend' sent.",
            ));
        }
        let f = std::fs::File::open(&path).map_err(os_err)?;
        let len = f.metadata().map_err(os_err)?.len();
        self.resp
            .send_head(Some(len), &mut self.out)
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        if self.resp.body_mut().is_some_and(|b| b.has_body()) && len > 0 {
            self.file = Some((f, len));
        }
        self.pathsend = true;
        self.flush()
    }

    /// Write more of what is pending: 1 = still some (wait again), 0 = all
    /// written, 2 = all written and the response is complete.
    fn flush(&mut self) -> PyResult<u8> {
        match self.flush_out() {
            Ok(true) => {}
            Ok(false) => return Ok(1),
            Err(_) => {
                self.gone = true;
                return Ok(if self.file.is_some() { 2 } else { 0 });
            }
        }
        if self.pathsend && !self.ended {
            // A pathsend body is complete once the file is out.
            self.keep = !self.broken && self.resp.finish(&mut Vec::new());
            self.ended = true;
        }
        Ok(if self.ended { 2 } else { 0 })
    }

    /// The app is done (or the response is complete): answer the I/O
    /// thread. `error`: the app raised (its traceback is logged).
    fn complete(&mut self, error: bool) {
        self.conclude(error, false);
    }

    /// Whether the request came over HTTPS (for the hooks' view).
    #[getter]
    fn https(&self) -> bool {
        self.https
    }
}

impl Conn {
    /// One of the three HTTP response messages: 0 = go on, 1 = wait until
    /// writable and `flush` (backpressure), 2 = the response is complete
    /// (as `body`).
    fn message<'py>(&mut self, message: &Bound<'py, PyAny>) -> PyResult<u8> {
        let py = message.py();
        let get = |key: &Bound<'py, pyo3::types::PyString>| message_item(message, key);
        let t = get(pyo3::intern!(py, "type"))?
            .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err("type"))?;
        let t = t
            .cast::<pyo3::types::PyString>()
            .map_err(|_| PyRuntimeError::new_err(format!("Unexpected ASGI message '{t}' sent.")))?;
        let body_t = pyo3::intern!(py, "http.response.body");
        if t.is(body_t) || t.to_str()? == "http.response.body" {
            let data = get(pyo3::intern!(py, "body"))?;
            let more = match get(pyo3::intern!(py, "more_body"))? {
                Some(m) => m.is_truthy()?,
                None => false,
            };
            return match &data {
                Some(d) => self.body(&bytes_of(d)?, more),
                None => self.body(b"", more),
            };
        }
        match t.to_str()? {
            "http.response.start" => {
                let status: i64 = get(pyo3::intern!(py, "status"))?
                    .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err("status"))?
                    .extract()?;
                match get(pyo3::intern!(py, "headers"))? {
                    Some(h) => self.start(status, &h)?,
                    None => self.start(status, &PyTuple::empty(py))?,
                }
                Ok(0)
            }
            "http.response.pathsend" => {
                let path = get(pyo3::intern!(py, "path"))?
                    .ok_or_else(|| pyo3::exceptions::PyKeyError::new_err("path"))?;
                self.pathsend(path.extract()?)
            }
            other => Err(PyRuntimeError::new_err(format!(
                "Unexpected ASGI message '{other}' sent."
            ))),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // A task that vanished without completing: the I/O thread closes
        // the connection.
        if self.reply.is_some() {
            self.broken = true;
            self.complete_with(None, false);
        }
    }
}

/// What `Conn::send` and `Conn::finish` call in the driver (one loop per
/// worker process), set once by `set_hooks` before it serves.
struct Hooks {
    /// A ready awaitable (a [`Done`]) for a `send` that did not wait.
    done: Py<PyAny>,
    /// `_send_wait(conn)`: the coroutine that waits for the socket.
    send_wait: Py<PyAny>,
    /// `_wake_receive(conn)`: wake a `receive` waiting on the request.
    wake_receive: Py<PyAny>,
    /// `_receive(conn)`: the coroutine for a `receive` that may wait.
    receive: Py<PyAny>,
    /// The `http.disconnect` message.
    disconnect: Py<PyAny>,
    /// The loop's `call_soon`, and `flush_replies` for it.
    call_soon: Py<PyAny>,
    flush: Py<PyAny>,
}

static HOOKS: pyo3::sync::PyOnceLock<Hooks> = pyo3::sync::PyOnceLock::new();

fn hooks(py: Python<'_>) -> PyResult<&Hooks> {
    HOOKS
        .get(py)
        .ok_or_else(|| PyRuntimeError::new_err("the ASGI driver is not serving"))
}

/// The driver's side of `send` (see [`Hooks`]); once.
#[pyfunction]
fn set_hooks(
    py: Python<'_>,
    send_wait: Py<PyAny>,
    wake_receive: Py<PyAny>,
    receive: Py<PyAny>,
    disconnect: Py<PyAny>,
    call_soon: Py<PyAny>,
) -> PyResult<()> {
    let flush = module(py)?.getattr("flush_replies")?.unbind();
    let done = Py::new(py, Done)?.into_any();
    let _ = HOOKS.set(
        py,
        Hooks {
            done,
            send_wait,
            wake_receive,
            receive,
            disconnect,
            call_soon,
            flush,
        },
    );
    Ok(())
}

/// An awaitable that is already done (its result is `None`): what `send`
/// gives back when the socket took the bytes at once, so the common
/// response costs no coroutine.
#[pyclass(module = "_rgunicorn_asgi", frozen)]
pub struct Done;

#[pymethods]
impl Done {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self) -> Option<()> {
        None
    }

    fn send(&self, _value: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(pyo3::exceptions::PyStopIteration::new_err(()))
    }

    #[pyo3(signature = (*args))]
    fn throw(&self, args: &Bound<'_, PyTuple>) -> PyResult<()> {
        Err(thrown(args))
    }

    fn close(&self) {}
}

/// What `throw(typ[, val[, tb]])` raises in a coroutine that has nothing
/// left to run: the exception given (an instance, or a type called with
/// `val`), as a finished generator does.
fn thrown(args: &Bound<'_, PyTuple>) -> PyErr {
    let Ok(first) = args.get_item(0) else {
        return pyo3::exceptions::PyTypeError::new_err("throw expected at least 1 argument, got 0");
    };
    if first.is_instance_of::<pyo3::exceptions::PyBaseException>() {
        return PyErr::from_value(first);
    }
    let made = match args.get_item(1) {
        Ok(v) if !v.is_none() => first.call1((v,)),
        _ => first.call0(),
    };
    match made {
        Ok(e) => PyErr::from_value(e),
        Err(e) => e,
    }
}

/// An awaitable that is already done with `value` as its result: what
/// `receive` gives back when the message is there without waiting.
#[pyclass(module = "_rgunicorn_asgi")]
pub struct Ready {
    value: Py<PyAny>,
}

#[pymethods]
impl Ready {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<()> {
        Err(pyo3::exceptions::PyStopIteration::new_err((self
            .value
            .clone_ref(py),)))
    }

    fn send(&self, py: Python<'_>, _value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.__next__(py)
    }

    #[pyo3(signature = (*args))]
    fn throw(&self, args: &Bound<'_, PyTuple>) -> PyResult<()> {
        Err(thrown(args))
    }

    fn close(&self) {}
}

/// Answers `Conn::finish` holds back until the end of the loop's turn (there is one loop per worker process).
static REPLIES: handoff::Outbox<(Request, Outcome)> = handoff::Outbox::new();

/// Send the answers held back during this loop turn (`Conn::finish`
/// schedules it with the loop's `call_soon` when the first one of the turn
/// is held).
#[pyfunction]
fn flush_replies() {
    REPLIES.flush();
}

/// The reason phrase of a status code (RFC 9110), or "" for one we do not
/// know.
fn reason(code: u16) -> &'static str {
    match code {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        422 => "Unprocessable Content",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_known_for_common_codes() {
        assert_eq!(reason(200), "OK");
        assert_eq!(reason(422), "Unprocessable Content");
        assert_eq!(reason(599), "");
    }
}
