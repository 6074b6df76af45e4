//! Server hooks, with Gunicorn's names and signatures: one function per hook,
//! called from one line at each point in `main`, the arbiter and the worker.
//!
//! Hooks only come from a Python config file, so Python is initialised in
//! any process that has one. A process with no hooks never touches Python
//! here: every function returns at once when its hook is unset.
//!
//! The objects hooks receive are small Python objects built here:
//! - `server`: `pid`, `cfg`, `log`, `num_workers`, `app_uri`, `proc_name`;
//! - `worker`: `pid`, `ppid`, `age` (its slot), `cfg`, `log`, `alive`,
//!   `booted`, `timeout`;
//! - `req` (pre/post_request): `method`, `path`, `query`, `uri`, `version`
//!   (a tuple), `headers` (a list of `(NAME, value)`, names upper case),
//!   `scheme`, `remote_addr`;
//! - `resp` (post_request): `status` (`"200 OK"`), `status_code`, `headers`,
//!   `sent`.
//!
//! `cfg` is `gunicorn.config.Config`'s interface, built from the settings
//! table: every setting as an attribute with its Python type
//! (`server.cfg.workers` is an int, `cfg.bind` a list), `cfg.settings`
//! (name → object with `.value`), Gunicorn's derived properties
//! (`worker_class_str`, `address`, `uid`, `gid`, `proc_name`, `env`,
//! `sendfile`...), and an AttributeError for a name that is not a setting.
//! `worker_class` and `logger_class` are the configured names: rgunicorn
//! has no Python classes to hand out. `log` has `debug`/`info`/`warning`/
//! `error`/`critical`/`exception` and writes to the error log.
//!
//! A hook that raises is logged and the server carries on, except
//! `on_starting` and `when_ready`: Gunicorn calls those outside its error
//! handling, so an exception there stops it, and rgunicorn exits with 1.

use crate::config::{HookRef, SettingDef, SettingValue, Settings, ValueType, WorkerClass};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyModule, PyString, PyTuple};
use std::sync::OnceLock;

const HELPER: &str = r#"
import sys, traceback, types, http.client

class Log:
    def __init__(self, emit):
        self._emit = emit
    def _fmt(self, msg, args):
        msg = str(msg)
        return msg % args if args else msg
    def debug(self, msg, *args, **kw): self._emit("debug", self._fmt(msg, args))
    def info(self, msg, *args, **kw): self._emit("info", self._fmt(msg, args))
    def warning(self, msg, *args, **kw): self._emit("warning", self._fmt(msg, args))
    warn = warning
    def error(self, msg, *args, **kw): self._emit("error", self._fmt(msg, args))
    def critical(self, msg, *args, **kw): self._emit("critical", self._fmt(msg, args))
    def exception(self, msg, *args, **kw):
        self._emit("error", self._fmt(msg, args) + "\n" + traceback.format_exc().rstrip())
    def log(self, lvl, msg, *args, **kw):
        name = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "critical"}.get(lvl, "info")
        self._emit(name, self._fmt(msg, args))
    def reopen_files(self): pass
    def close_on_exec(self): pass

def ns(**kw):
    return types.SimpleNamespace(**kw)

def noop(*args, **kw):
    """Gunicorn's default for a hook the config file does not set."""

class Setting:
    """One setting, as gunicorn.config.Setting: `.value` (also `.get()`)."""
    def __init__(self, name, value, section, cli, desc):
        self.name, self.value, self.section = name, value, section
        self.cli, self.desc, self.short = cli, desc, desc
    def get(self):
        return self.value
    def __repr__(self):
        return "<Setting %s=%r>" % (self.name, self.value)

class Config:
    """The hooks' `cfg`, as gunicorn.config.Config: every setting as an
    attribute, `settings` (name -> Setting), and Gunicorn's derived
    properties (worker_class_str, address, uid, gid, proc_name, env...)."""
    def __init__(self, settings, derived):
        object.__setattr__(self, "settings", settings)
        object.__setattr__(self, "_derived", derived)
    def __getattr__(self, name):
        derived = object.__getattribute__(self, "_derived")
        if name in derived:
            return derived[name]
        settings = object.__getattribute__(self, "settings")
        if name not in settings:
            raise AttributeError("No configuration setting for: %s" % name)
        return settings[name].get()
    def __setattr__(self, name, value):
        if name != "settings" and name in self.settings:
            raise AttributeError("Invalid access!")
        object.__setattr__(self, name, value)

def status_line(code):
    return "%d %s" % (code, http.client.responses.get(code, "Unknown"))
"#;

/// Per-process state: the helper module, `cfg` and `log`.
struct State {
    helper: Py<PyModule>,
    cfg: Py<PyAny>,
    log: Py<PyAny>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// This worker's settings and slot, for the hooks called from signal-driven
/// paths (worker_abort).
static WORKER: OnceLock<(Settings, usize)> = OnceLock::new();

#[pyfunction]
fn emit(level: &str, text: &str) {
    match level {
        "debug" => tracing::debug!("{text}"),
        "info" => tracing::info!("{text}"),
        "warning" => tracing::warn!("{text}"),
        "critical" => crate::critical!("{text}"),
        _ => tracing::error!("{text}"),
    }
}

/// One setting's resolved value as the Python object Gunicorn's `Config`
/// holds for it.
fn setting_object<'py>(
    py: Python<'py>,
    helper: &Bound<'py, PyModule>,
    def: &SettingDef,
    v: &SettingValue,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        SettingValue::None => py.None().into_bound(py),
        SettingValue::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        SettingValue::Int(i) => i.into_pyobject(py)?.into_any(),
        // logconfig_dict is kept as JSON text; Python sees the dict.
        SettingValue::Str(s) if def.ty == ValueType::JsonDict => PyModule::import(py, "json")?
            .getattr("loads")?
            .call1((s,))?,
        SettingValue::Str(s) => PyString::new(py, s).into_any(),
        SettingValue::List(l) => PyList::new(py, l)?.into_any(),
        SettingValue::Dict(d) => {
            let dict = PyDict::new(py);
            for (k, v) in d {
                dict.set_item(k, v)?;
            }
            dict.into_any()
        }
        SettingValue::Hook(Some(h)) => match crate::python::config::hook(*h) {
            Some(f) => f.into_bound(py),
            None => helper.getattr("noop")?,
        },
        SettingValue::Hook(None) => helper.getattr("noop")?,
    })
}

/// The `cfg` object (`gunicorn.config.Config`'s interface): every setting
/// in the table, by its name and with its Python type, plus Gunicorn's
/// derived properties. Built from [`Settings::each`], so a new table entry
/// shows up here with nothing else to change.
fn cfg_object<'py>(
    py: Python<'py>,
    helper: &Bound<'py, PyModule>,
    s: &Settings,
) -> PyResult<Bound<'py, PyAny>> {
    let setting_class = helper.getattr("Setting")?;
    let settings = PyDict::new(py);
    for (def, v) in s.each() {
        let value = setting_object(py, helper, def, v)?;
        let setting =
            setting_class.call1((def.name, value, def.section, def.cli.to_vec(), def.help))?;
        settings.set_item(def.name, setting)?;
    }
    // Values Gunicorn's validators turn into something else than what was
    // given: chdir is absolute (the current directory by default), user and
    // group are numeric ids (the effective ones by default).
    let uid = match &s.user {
        Some(u) => crate::privileges::uid_of(u)
            .ok()
            .map(|(uid, _)| uid.as_raw()),
        None => Some(nix::unistd::geteuid().as_raw()),
    };
    let gid = match &s.group {
        Some(g) => crate::privileges::gid_of(g).ok().map(|gid| gid.as_raw()),
        None => Some(nix::unistd::getegid().as_raw()),
    };
    let chdir = match &s.chdir {
        Some(dir) => Some(dir.clone()),
        None => std::env::current_dir().ok(),
    };
    let fixed = [
        (
            "chdir",
            chdir
                .map(|d| d.display().to_string())
                .into_pyobject(py)?
                .into_any(),
        ),
        ("user", uid.into_pyobject(py)?.into_any()),
        ("group", gid.into_pyobject(py)?.into_any()),
    ];
    for (name, value) in fixed {
        settings
            .get_item(name)?
            .map(|st| st.setattr("value", value))
            .transpose()?;
    }

    // Gunicorn's `Config` properties.
    let d = PyDict::new(py);
    d.set_item(
        "worker_class_str",
        match s.effective_worker_class() {
            WorkerClass::Sync => "sync",
            WorkerClass::Gthread => "gthread",
            WorkerClass::Asgi => "asgi",
        },
    )?;
    d.set_item("address", &s.bind)?;
    d.set_item("uid", uid)?;
    d.set_item("gid", gid)?;
    d.set_item(
        "proc_name",
        s.proc_name.as_deref().unwrap_or(&s.default_proc_name),
    )?;
    d.set_item("is_ssl", false)?;
    d.set_item("ssl_options", PyDict::new(py))?;
    let env = PyDict::new(py);
    for kv in &s.raw_env {
        if let Some((k, v)) = kv.split_once('=') {
            env.set_item(k, v)?;
        }
    }
    d.set_item("env", env)?;
    d.set_item("sendfile", s.sendfile)?;
    d.set_item("reuse_port", s.reuse_port)?;
    d.set_item("paste_global_conf", py.None())?;
    helper.getattr("Config")?.call1((settings, d))
}

/// Prepare the hook objects for this process (master: after the settings
/// are resolved, again on reload; a worker inherits them). A no-op without
/// hooks.
pub fn init(s: &Settings) {
    if s.hooks.is_empty() || !crate::python::is_initialized() {
        return;
    }
    let r = Python::attach(|py| -> PyResult<()> {
        let code = std::ffi::CString::new(HELPER)
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        let helper = PyModule::from_code(py, &code, c"<rgunicorn-hooks>", c"_rgunicorn_hooks")?;
        let log = helper
            .getattr("Log")?
            .call1((wrap_pyfunction!(emit, &helper)?,))?;
        let cfg = cfg_object(py, &helper, s)?;
        let _ = STATE.set(State {
            helper: helper.unbind(),
            cfg: cfg.unbind(),
            log: log.unbind(),
        });
        Ok(())
    });
    if let Err(e) = r {
        tracing::error!("cannot prepare the server hooks: {e}");
    }
}

/// Call hook `name` with arguments built by `args`; logs an exception and
/// returns false when the hook raised.
fn call<F>(s: &Settings, name: &str, args: F) -> bool
where
    F: for<'py> FnOnce(Python<'py>, &State) -> PyResult<Bound<'py, PyTuple>>,
{
    let (Some(h), Some(state)) = (s.hook(name), STATE.get()) else {
        return true;
    };
    call_ref(h, name, state, args)
}

fn call_ref<F>(h: HookRef, name: &str, state: &State, args: F) -> bool
where
    F: for<'py> FnOnce(Python<'py>, &State) -> PyResult<Bound<'py, PyTuple>>,
{
    let Some(f) = crate::python::config::hook(h) else {
        return true;
    };
    Python::attach(|py| {
        let r = args(py, state).and_then(|a| f.bind(py).call1(a));
        match r {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(
                    "Exception in {name} hook\n{}",
                    crate::python::format_exception(py, &e).trim_end()
                );
                false
            }
        }
    })
}

/// The `server` object.
fn server<'py>(
    py: Python<'py>,
    st: &State,
    s: &Settings,
    num_workers: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    d.set_item("pid", std::process::id())?;
    d.set_item("cfg", st.cfg.bind(py))?;
    d.set_item("log", st.log.bind(py))?;
    d.set_item("num_workers", num_workers)?;
    d.set_item("app_uri", &s.wsgi_app)?;
    d.set_item(
        "proc_name",
        s.proc_name.as_deref().unwrap_or(&s.default_proc_name),
    )?;
    d.set_item("timeout", s.timeout)?;
    st.helper.bind(py).getattr("ns")?.call((), Some(&d))
}

/// The `worker` object; `pid` is `None` before the fork (pre_fork).
fn worker<'py>(
    py: Python<'py>,
    st: &State,
    s: &Settings,
    pid: Option<i32>,
    age: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    d.set_item("pid", pid)?;
    d.set_item("ppid", nix::unistd::getppid().as_raw())?;
    d.set_item("age", age)?;
    d.set_item("cfg", st.cfg.bind(py))?;
    d.set_item("log", st.log.bind(py))?;
    d.set_item("alive", true)?;
    d.set_item("booted", pid.is_some())?;
    d.set_item("timeout", s.timeout)?;
    st.helper.bind(py).getattr("ns")?.call((), Some(&d))
}

/// `on_starting(server)`; false: stop, as Gunicorn does.
pub fn on_starting(s: &Settings) -> bool {
    init(s);
    call(s, "on_starting", |py, st| {
        PyTuple::new(py, [server(py, st, s, s.workers)?])
    })
}

/// `when_ready(server)`; false: stop, as Gunicorn does.
pub fn when_ready(s: &Settings, n: usize) -> bool {
    call(s, "when_ready", |py, st| {
        PyTuple::new(py, [server(py, st, s, n)?])
    })
}

/// `on_reload(server)`.
pub fn on_reload(s: &Settings, n: usize) {
    init(s);
    call(s, "on_reload", |py, st| {
        PyTuple::new(py, [server(py, st, s, n)?])
    });
}

/// `pre_fork(server, worker)`.
pub fn pre_fork(s: &Settings, n: usize, age: usize) {
    call(s, "pre_fork", |py, st| {
        PyTuple::new(py, [server(py, st, s, n)?, worker(py, st, s, None, age)?])
    });
}

/// `post_fork(server, worker)`, in the new worker.
pub fn post_fork(s: &Settings, n: usize, age: usize) {
    let pid = std::process::id() as i32;
    call(s, "post_fork", |py, st| {
        PyTuple::new(
            py,
            [server(py, st, s, n)?, worker(py, st, s, Some(pid), age)?],
        )
    });
}

/// `worker_abort(worker)` for the worker this process is.
pub fn worker_abort_now() {
    if let Some((s, age)) = WORKER.get() {
        worker_abort(s, *age);
    }
}

/// `post_worker_init(worker)`, once the app is loaded.
pub fn post_worker_init(s: &Settings, age: usize) {
    if !s.hooks.is_empty() {
        let _ = WORKER.set((s.clone(), age));
    }
    let pid = std::process::id() as i32;
    call(s, "post_worker_init", |py, st| {
        PyTuple::new(py, [worker(py, st, s, Some(pid), age)?])
    });
}

/// `worker_abort(worker)`, on the timeout's SIGABRT.
pub fn worker_abort(s: &Settings, age: usize) {
    let pid = std::process::id() as i32;
    call(s, "worker_abort", |py, st| {
        PyTuple::new(py, [worker(py, st, s, Some(pid), age)?])
    });
}

/// `worker_int(worker)` from the signal watcher, if the worker set itself
/// up for hooks.
pub fn worker_int_now() {
    if let Some((s, age)) = WORKER.get() {
        worker_int(s, *age);
    }
}

/// `worker_int(worker)`, on SIGINT/SIGQUIT.
pub fn worker_int(s: &Settings, age: usize) {
    let pid = std::process::id() as i32;
    call(s, "worker_int", |py, st| {
        PyTuple::new(py, [worker(py, st, s, Some(pid), age)?])
    });
}

/// [`worker_exit`] from the signal watcher (quick stop, timeout abort),
/// with what [`post_worker_init`] recorded.
pub fn worker_exit_now() {
    if let Some((s, age)) = WORKER.get() {
        worker_exit(s, *age);
    }
}

/// `worker_exit(server, worker)`, in the worker just before it exits.
pub fn worker_exit(s: &Settings, age: usize) {
    let pid = std::process::id() as i32;
    call(s, "worker_exit", |py, st| {
        PyTuple::new(
            py,
            [
                server(py, st, s, s.workers)?,
                worker(py, st, s, Some(pid), age)?,
            ],
        )
    });
}

/// `child_exit(server, worker)`, in the master after a worker was reaped.
pub fn child_exit(s: &Settings, n: usize, pid: i32, age: usize) {
    call(s, "child_exit", |py, st| {
        PyTuple::new(
            py,
            [server(py, st, s, n)?, worker(py, st, s, Some(pid), age)?],
        )
    });
}

/// `nworkers_changed(server, new_value, old_value)`.
pub fn nworkers_changed(s: &Settings, new: usize, old: usize) {
    call(s, "nworkers_changed", |py, st| {
        PyTuple::new(
            py,
            [
                server(py, st, s, new)?,
                new.into_pyobject(py)?.into_any(),
                old.into_pyobject(py)?.into_any(),
            ],
        )
    });
}

/// `pre_exec(server)`, in the child of USR2 just before exec.
pub fn pre_exec(s: &Settings, n: usize) {
    call(s, "pre_exec", |py, st| {
        PyTuple::new(py, [server(py, st, s, n)?])
    });
}

/// `on_exit(server)`.
pub fn on_exit(s: &Settings) {
    call(s, "on_exit", |py, st| {
        PyTuple::new(py, [server(py, st, s, 0)?])
    });
}

/// pre_request / post_request, resolved once per worker: the request path
/// checks one `Option` and never looks a hook up by name.
pub struct RequestHooks {
    pre: Option<HookRef>,
    post: Option<HookRef>,
    worker: Py<PyAny>,
}

impl RequestHooks {
    /// `None` when neither hook is set (the common case).
    pub fn new(s: &Settings, age: usize) -> Option<RequestHooks> {
        let (pre, post) = (s.hook("pre_request"), s.hook("post_request"));
        if pre.is_none() && post.is_none() {
            return None;
        }
        let st = STATE.get()?;
        let pid = std::process::id() as i32;
        let worker =
            Python::attach(|py| worker(py, st, s, Some(pid), age).map(Bound::unbind)).ok()?;
        Some(RequestHooks { pre, post, worker })
    }

    fn req<'py>(
        py: Python<'py>,
        st: &State,
        req: &crate::http::Request,
        scheme: &str,
        remote: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let d = PyDict::new(py);
        d.set_item("method", &req.method)?;
        d.set_item("path", &req.path)?;
        d.set_item("query", &req.query)?;
        d.set_item("uri", &req.uri)?;
        d.set_item(
            "version",
            match req.version {
                crate::http::Version::Http10 => (1, 0),
                crate::http::Version::Http11 => (1, 1),
            },
        )?;
        let headers = PyList::empty(py);
        for h in &req.headers {
            let name = String::from_utf8_lossy(&h.name).to_ascii_uppercase();
            let value: String = h.value.iter().map(|&b| b as char).collect();
            headers.append((name, value))?;
        }
        d.set_item("headers", headers)?;
        d.set_item("scheme", scheme)?;
        d.set_item("remote_addr", remote)?;
        st.helper.bind(py).getattr("ns")?.call((), Some(&d))
    }

    /// `pre_request(worker, req)`.
    pub fn pre(&self, py: Python<'_>, req: &crate::http::Request, scheme: &str, remote: &str) {
        let (Some(h), Some(st)) = (self.pre, STATE.get()) else {
            return;
        };
        let _ = py;
        call_ref(h, "pre_request", st, |py, st| {
            PyTuple::new(
                py,
                [
                    self.worker.bind(py).clone(),
                    Self::req(py, st, req, scheme, remote)?,
                ],
            )
        });
    }

    /// `post_request(worker, req, environ, resp)`.
    #[allow(clippy::too_many_arguments)]
    pub fn post(
        &self,
        py: Python<'_>,
        req: &crate::http::Request,
        scheme: &str,
        remote: &str,
        environ: &Bound<'_, PyDict>,
        status: u16,
        headers: &[(String, String)],
        sent: u64,
    ) {
        let (Some(h), Some(st)) = (self.post, STATE.get()) else {
            return;
        };
        let _ = py;
        let environ: Py<PyDict> = environ.clone().unbind();
        call_ref(h, "post_request", st, |py, st| {
            let helper = st.helper.bind(py);
            let d = PyDict::new(py);
            d.set_item("status", helper.getattr("status_line")?.call1((status,))?)?;
            d.set_item("status_code", status)?;
            d.set_item("headers", headers.to_vec())?;
            d.set_item("sent", sent)?;
            d.set_item("response_length", sent)?;
            let resp = helper.getattr("ns")?.call((), Some(&d))?;
            PyTuple::new(
                py,
                [
                    self.worker.bind(py).clone(),
                    Self::req(py, st, req, scheme, remote)?,
                    environ.bind(py).clone().into_any(),
                    resp,
                ],
            )
        });
    }
}
