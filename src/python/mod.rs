//! The embedded Python interpreter: initialisation, the fork bracket, app
//! loading and config-file evaluation.
//!
//! Python is initialised through `PyConfig` so that `sys.executable` names a
//! real interpreter (the active virtualenv's, else the one rgunicorn was
//! built against) and Python reads the virtualenv's `pyvenv.cfg`; signal
//! handlers are left to us (`install_signal_handlers = 0`). After
//! initialisation the GIL is released, so every later use goes through
//! `Python::attach`.
//!
//! When an installed wheel runs (the console script, `python -m rgunicorn`),
//! the interpreter hosts us instead: it is initialised before any of our
//! code runs, [`adopt_host`] records that, [`initialize`] does nothing, and
//! every fork is bracketed (see `docs/architecture.md`).

pub mod config;

use anyhow::{bail, Context, Result};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyModule};
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};

static INITIALIZED: AtomicBool = AtomicBool::new(false);
/// The interpreter was initialised by the Python that runs us.
static HOSTED: AtomicBool = AtomicBool::new(false);
static BOOTSTRAP: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// The interpreter rgunicorn should present as `sys.executable`.
pub fn python_executable() -> String {
    if let Some(venv) = std::env::var_os("VIRTUAL_ENV") {
        for name in ["python", "python3"] {
            let p = std::path::Path::new(&venv).join("bin").join(name);
            if p.exists() {
                return p.display().to_string();
            }
        }
    }
    env!("RGUNICORN_BUILD_PYTHON").to_string()
}

pub fn is_initialized() -> bool {
    INITIALIZED.load(Ordering::Acquire)
}

/// True when a Python interpreter runs us (an installed wheel's console
/// script or `python -m rgunicorn`), rather than the embedding binary.
pub fn is_hosted() -> bool {
    HOSTED.load(Ordering::Acquire)
}

/// Called first thing when Python hosts us: the interpreter is already
/// initialised in this (the master) process, so [`initialize`] has nothing
/// to do and every fork needs the interpreter's fork bracket.
pub fn adopt_host() {
    // SAFETY: Py_IsInitialized may be called at any time, from any thread.
    if unsafe { ffi::Py_IsInitialized() } != 0 {
        HOSTED.store(true, Ordering::Release);
        INITIALIZED.store(true, Ordering::Release);
    }
}

/// Make the interpreter's `os.environ` (a copy it took at start; nothing
/// to do when none runs in this process yet) equal to the process
/// environment again, after we changed the latter (the service manager's
/// variables taken out, `--env` added or changed by a reload). The master
/// is single-threaded here, so the `setenv`/`unsetenv` this causes are sound.
pub fn sync_environ() {
    if !is_initialized() {
        return;
    }
    let r = Python::attach(|py| -> PyResult<()> {
        use std::os::unix::ffi::OsStrExt;
        let real = PyDict::new(py);
        for (k, v) in std::env::vars_os() {
            real.set_item(
                pyo3::types::PyBytes::new(py, k.as_bytes()),
                pyo3::types::PyBytes::new(py, v.as_bytes()),
            )?;
        }
        bootstrap(py)?.call_method1("sync_environ", (real,))?;
        Ok(())
    });
    if let Err(e) = r {
        tracing::warn!("cannot update os.environ: {e}");
    }
}

/// `3.11.7 (sys.prefix=/srv/venv, sys.executable=/srv/venv/bin/python)`.
pub fn describe() -> Result<String> {
    Python::attach(|py| -> PyResult<String> {
        let sys = py.import("sys")?;
        let version: String = sys.getattr("version")?.extract()?;
        let prefix: String = sys.getattr("prefix")?.extract()?;
        let exe: String = sys.getattr("executable")?.extract()?;
        Ok(format!(
            "{} (sys.prefix={prefix}, sys.executable={exe})",
            version.split_whitespace().next().unwrap_or("?")
        ))
    })
    .map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(not(Py_LIMITED_API))]
fn check(status: ffi::PyStatus, what: &str) -> Result<()> {
    // SAFETY: PyStatus_Exception only reads the struct it is given.
    if unsafe { ffi::PyStatus_Exception(status) } != 0 {
        let msg = if status.err_msg.is_null() {
            "unknown error".to_string()
        } else {
            // SAFETY: a non-null err_msg is a static C string owned by CPython.
            unsafe { CStr::from_ptr(status.err_msg) }
                .to_string_lossy()
                .into_owned()
        };
        bail!("Python initialisation failed ({what}): {msg}");
    }
    Ok(())
}

/// Initialise the interpreter once in this process. `argv` becomes
/// `sys.argv`, as Gunicorn's `sys.argv` is its own command line.
pub fn initialize(argv: &[String]) -> Result<()> {
    if INITIALIZED.load(Ordering::Acquire) {
        return Ok(());
    }
    initialize_embedded()?;
    INITIALIZED.store(true, Ordering::Release);
    Python::attach(|py| -> PyResult<()> {
        let sys = py.import("sys")?;
        sys.setattr("argv", PyList::new(py, argv)?)?;
        let version: String = sys.getattr("version")?.extract()?;
        let prefix: String = sys.getattr("prefix")?.extract()?;
        tracing::debug!(
            "Python {} (sys.prefix={prefix})",
            version.split_whitespace().next().unwrap_or("?")
        );
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("Python start-up failed: {e}"))
}

/// The limited API (an abi3 extension module) has no `PyConfig`; such a
/// build is always hosted by Python and never initialises it.
#[cfg(Py_LIMITED_API)]
fn initialize_embedded() -> Result<()> {
    bail!("this build of rgunicorn runs only inside Python (its console script)")
}

#[cfg(not(Py_LIMITED_API))]
fn initialize_embedded() -> Result<()> {
    let exe = CString::new(python_executable()).context("interpreter path contains NUL")?;
    // SAFETY: PyConfig is a plain C struct that PyConfig_InitPythonConfig
    // fills in completely; we only touch it through CPython's setters, free
    // it with PyConfig_Clear, and nothing else in the process runs Python yet.
    unsafe {
        let mut cfg = std::mem::MaybeUninit::<ffi::PyConfig>::uninit();
        ffi::PyConfig_InitPythonConfig(cfg.as_mut_ptr());
        let cfg = cfg.as_mut_ptr();
        (*cfg).install_signal_handlers = 0;
        (*cfg).parse_argv = 0;
        let mut r = check(
            ffi::PyConfig_SetBytesString(cfg, &mut (*cfg).executable, exe.as_ptr()),
            "executable",
        );
        if r.is_ok() {
            r = check(
                ffi::PyConfig_SetBytesString(cfg, &mut (*cfg).program_name, exe.as_ptr()),
                "program_name",
            );
        }
        if r.is_ok() {
            r = check(ffi::Py_InitializeFromConfig(cfg), "Py_InitializeFromConfig");
        }
        ffi::PyConfig_Clear(cfg);
        r?;
        // Hand the GIL back: from now on every use attaches explicitly.
        ffi::PyEval_SaveThread();
    }
    Ok(())
}

/// `logconfig_dict` / `logconfig_json` / `logconfig`: configure Python's
/// `logging` as Gunicorn's `Logger.setup` does (the first one set wins, in
/// that order). Call right after [`initialize`], before the app is imported.
pub fn apply_logconfig(s: &crate::config::Settings) -> Result<()> {
    let (kind, arg) = if let Some(j) = &s.logconfig_dict_json {
        ("dict", j)
    } else if let Some(f) = &s.logconfig_json {
        ("json", f)
    } else if let Some(f) = &s.logconfig {
        ("ini", f)
    } else {
        return Ok(());
    };
    Python::attach(|py| {
        bootstrap(py)
            .and_then(|b| b.call_method1("apply_logconfig", (kind, arg)))
            .map(|_| ())
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot apply the logging configuration ({}):\n{}",
                    match kind {
                        "dict" => "logconfig_dict".to_string(),
                        "json" => format!("logconfig_json {arg}"),
                        _ => format!("logconfig {arg}"),
                    },
                    format_exception(py, &e).trim_end()
                )
            })
    })
}

/// Fail unless `package` imports, with a message saying what to install
/// (a worker class's third-party package, checked in the master).
pub fn require_package(package: &str) -> Result<()> {
    Python::attach(|py| match py.import(package) {
        Ok(_) => Ok(()),
        Err(e) => {
            let exe = py
                .import("sys")
                .and_then(|sys| sys.getattr("executable"))
                .and_then(|x| x.extract::<String>())
                .unwrap_or_else(|_| python_executable());
            bail!(
                "worker class `{package}` needs the `{package}` package, which this Python \
                 ({exe}) cannot import: {e}; install it with `pip install {package}`"
            )
        }
    })
}

/// The helper module from `bootstrap.py`.
pub fn bootstrap(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    let m = BOOTSTRAP.get_or_try_init(py, || -> PyResult<Py<PyModule>> {
        let code = CString::new(include_str!("bootstrap.py"))
            .map_err(|e| pyo3::exceptions::PyValueError::new_err(e.to_string()))?;
        Ok(PyModule::from_code(py, &code, c"<rgunicorn>", c"_rgunicorn")?.unbind())
    })?;
    Ok(m.bind(py))
}

/// The full Python traceback of an exception, as the error log shows it.
pub fn format_exception(py: Python<'_>, e: &PyErr) -> String {
    bootstrap(py)
        .and_then(|b| b.call_method1("format_exc", (e.value(py), e.traceback(py))))
        .and_then(|s| s.extract::<String>())
        .unwrap_or_else(|_| e.to_string())
}

/// Why the app could not be loaded (the worker exits with code 4).
#[derive(Debug)]
pub struct AppLoadError {
    pub traceback: String,
    /// The file of a `SyntaxError` (the app's code does not compile).
    pub syntax_error_file: Option<std::path::PathBuf>,
}

/// Apply `--chdir`/`--pythonpath` and import the app as Gunicorn does (or
/// load it with PasteDeploy, for `--paste`).
/// `chdir`: the directory to change to first (a worker; the master has
/// changed to it already).
pub fn load_app(
    s: &crate::config::Settings,
    uri: &str,
    chdir: Option<&std::path::Path>,
) -> Result<Py<PyAny>, AppLoadError> {
    let pythonpath = &s.pythonpath;
    Python::attach(|py| {
        let r = (|| -> PyResult<Py<PyAny>> {
            let b = bootstrap(py)?;
            b.call_method1(
                "setup_path",
                (chdir.map(|p| p.display().to_string()), pythonpath.to_vec()),
            )?;
            let paste_global = s.raw_paste_global_conf.clone();
            Ok(b.call_method1("import_app", (uri, paste_global))?.unbind())
        })();
        r.map_err(|e| AppLoadError {
            traceback: format_exception(py, &e),
            syntax_error_file: e
                .is_instance_of::<pyo3::exceptions::PySyntaxError>(py)
                .then(|| e.value(py).getattr("filename").ok()?.extract().ok())
                .flatten(),
        })
    })
}

/// `--reload`, app code that does not compile at the first boot: an app
/// (WSGI, or ASGI for the asgi class) that answers every request with a
/// 500 and `text`, as Gunicorn's `make_fail_app`.
pub fn fail_app(py: Python<'_>, text: &str, asgi: bool) -> PyResult<Py<PyAny>> {
    Ok(bootstrap(py)?
        .call_method1("make_fail_app", (text, asgi))?
        .unbind())
}

/// Evaluate a config file (`-c FILE`) or module (`-c python:mod`) and return
/// its module-level names as Python objects, in a dict.
pub fn load_config(py: Python<'_>, source: &str, is_module: bool) -> Result<Py<PyDict>, String> {
    let r = (|| -> PyResult<Py<PyDict>> {
        let b = bootstrap(py)?;
        let f = if is_module {
            "load_config_module"
        } else {
            "load_config_file"
        };
        Ok(b.call_method1(f, (source,))?
            .cast_into::<PyDict>()?
            .unbind())
    })();
    r.map_err(|e| format_exception(py, &e))
}

/// Fork with the interpreter's fork bracket around it, as `os.fork()` does,
/// when Python runs in this process; a plain fork otherwise.
///
/// # Safety
/// The caller must be single-threaded (the master is), and the child must
/// only continue into code that is fine after fork (ours is: the worker
/// builds its runtime after the fork).
pub unsafe fn fork() -> nix::Result<nix::unistd::ForkResult> {
    use nix::unistd::ForkResult;
    if !is_initialized() {
        return nix::unistd::fork();
    }
    Python::attach(|py| {
        ffi::PyOS_BeforeFork();
        let r = nix::unistd::fork();
        match r {
            Ok(ForkResult::Child) => {
                ffi::PyOS_AfterFork_Child();
                if is_hosted() {
                    default_sigint(py);
                }
            }
            _ => ffi::PyOS_AfterFork_Parent(),
        }
        r
    })
}

/// In a child of a hosted master: SIGINT back to its default action. The
/// hosting interpreter installed its KeyboardInterrupt handler at start,
/// and a child inherits it; a worker still importing its app must die of
/// INT as the embedded binary's workers do (the worker installs its own
/// handlers once the app is imported). Through `signal.signal`, so
/// Python's own record of the handler agrees.
fn default_sigint(py: Python<'_>) {
    let r = py.import("signal").and_then(|m| {
        m.call_method1("signal", (m.getattr("SIGINT")?, m.getattr("SIG_DFL")?))
            .map(|_| ())
    });
    if r.is_err() {
        // SAFETY: restoring a default disposition in a single-threaded child.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
        }
    }
}
