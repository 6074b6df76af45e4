//! `rgunicorn [OPTIONS] [APP_MODULE]`: Gunicorn's command line, a Rust
//! master, Python workers. This file only wires the pieces together: parse
//! the settings (command line, environment, config file), set up logging,
//! bind, optionally preload the app, and hand over to the arbiter.

use anyhow::{Context, Result};
use pyo3::prelude::*;
use rgunicorn::config::{self, ConfigSource, RawValue, Settings};
use rgunicorn::{arbiter, python, sock};
use std::ffi::OsString;

fn main() {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let env = |k: &str| std::env::var(k).ok();
    let cli = config::parse_cli(args, &env).unwrap_or_else(|e| e.exit());

    let (file_values, label) = match cli.config_source() {
        None => (Vec::new(), None),
        Some(src) => match read_config_file(&src, &argv) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("Error: {e:#}");
                std::process::exit(1);
            }
        },
    };
    let settings = config::resolve(cli, file_values, label).unwrap_or_else(|e| e.exit());
    if settings.print_config {
        print!("{}", config::print_config(&settings));
        std::process::exit(0);
    }
    let code = match run(settings, argv) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Module-level names of a config file, and the file's label for messages.
type FileValues = (Vec<(String, RawValue)>, Option<String>);

/// Evaluate the Python config file and turn its module-level names into
/// raw values for the settings table.
fn read_config_file(src: &ConfigSource, argv: &[String]) -> Result<FileValues> {
    let (text, is_module, label) = match src {
        ConfigSource::Path(p) => {
            if !p.exists() {
                anyhow::bail!("config file {} not found", p.display());
            }
            (p.display().to_string(), false, p.display().to_string())
        }
        ConfigSource::Module(m) => (m.clone(), true, format!("python:{m}")),
    };
    python::initialize(argv)?;
    Python::attach(|py| {
        let dict = python::load_config(py, &text, is_module)
            .map_err(|tb| anyhow::anyhow!("cannot load config file {label}:\n{}", tb.trim_end()))?;
        let mut out = Vec::new();
        for (k, v) in dict.bind(py).iter() {
            let name: String = k.extract()?;
            // Modules, classes and other objects are not settings; they are
            // left out the way Gunicorn ignores them.
            if let Some(raw) = to_raw(&v) {
                out.push((name, raw));
            }
        }
        Ok((out, Some(label)))
    })
}

/// Callables (server hooks) are kept alive here; settings refer to them by index.
static HOOKS: std::sync::Mutex<Vec<Py<PyAny>>> = std::sync::Mutex::new(Vec::new());

fn to_raw(v: &Bound<'_, PyAny>) -> Option<RawValue> {
    use pyo3::types::{
        PyBool, PyDict, PyFloat, PyInt, PyList, PyModule, PyString, PyTuple, PyType,
    };
    if v.is_none() {
        return Some(RawValue::None);
    }
    if let Ok(b) = v.cast::<PyBool>() {
        return Some(RawValue::Bool(b.is_true()));
    }
    if v.is_instance_of::<PyInt>() {
        return v.extract::<i64>().ok().map(RawValue::Int);
    }
    if let Ok(f) = v.cast::<PyFloat>() {
        return Some(RawValue::Float(f.value()));
    }
    if let Ok(s) = v.cast::<PyString>() {
        return s.to_str().ok().map(|s| RawValue::Str(s.to_string()));
    }
    if let Ok(l) = v.cast::<PyList>() {
        return Some(RawValue::List(
            l.iter().filter_map(|i| to_raw(&i)).collect(),
        ));
    }
    if let Ok(t) = v.cast::<PyTuple>() {
        return Some(RawValue::Tuple(
            t.iter().filter_map(|i| to_raw(&i)).collect(),
        ));
    }
    if let Ok(d) = v.cast::<PyDict>() {
        let items = d
            .iter()
            .filter_map(|(k, v)| Some((k.extract::<String>().ok()?, to_raw(&v)?)))
            .collect();
        return Some(RawValue::Dict(items));
    }
    if v.is_instance_of::<PyModule>() || v.is_instance_of::<PyType>() {
        return None;
    }
    if v.is_callable() {
        let mut hooks = HOOKS.lock().unwrap_or_else(|p| p.into_inner());
        hooks.push(v.clone().unbind());
        return Some(RawValue::Callable(config::HookRef(hooks.len() - 1)));
    }
    None
}

fn run(settings: Settings, argv: Vec<String>) -> Result<i32> {
    let Some(app_uri) = settings.wsgi_app.clone() else {
        eprintln!("usage: rgunicorn [OPTIONS] [APP_MODULE]");
        eprintln!("rgunicorn: error: No application module specified.");
        return Ok(2);
    };
    rgunicorn::logging::init(
        &settings.loglevel,
        &settings.errorlog,
        settings.accesslog.as_deref(),
        &settings.access_log_format,
    )
    .context("cannot set up logging")?;

    if let Some(dir) = &settings.chdir {
        std::env::set_current_dir(dir)
            .with_context(|| format!("cannot change directory to {}", dir.display()))?;
    }
    for kv in &settings.raw_env {
        if let Some((k, v)) = kv.split_once('=') {
            // SAFETY of set_var: the master is single-threaded here.
            std::env::set_var(k, v);
        }
    }

    if settings.check_config {
        python::initialize(&argv)?;
        return Ok(
            match python::load_app(&app_uri, None, &settings.pythonpath) {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("{}", e.traceback.trim_end());
                    1
                }
            },
        );
    }

    let opts = sock::BindOptions {
        backlog: settings.backlog,
        reuse_port: settings.reuse_port,
    };
    let mut listeners = Vec::new();
    for b in &settings.bind {
        let addr = sock::BindAddr::parse(b)?;
        listeners.extend(sock::bind(&addr, opts)?);
    }

    if let Some(pidfile) = &settings.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pidfile {}", pidfile.display()))?;
    }

    let preloaded = if settings.preload_app {
        python::initialize(&argv)?;
        match python::load_app(&app_uri, None, &settings.pythonpath) {
            Ok(app) => Some(app),
            Err(e) => {
                tracing::error!("Exception in master process\n{}", e.traceback.trim_end());
                tracing::error!("Reason: App failed to load.");
                remove_pidfile(&settings);
                return Ok(arbiter::EXIT_APP_LOAD_ERROR);
            }
        }
    } else {
        None
    };

    let pidfile = settings.pidfile.clone();
    let arb = arbiter::Arbiter::new(settings, app_uri, argv, listeners, preloaded)?;
    let code = arb.run();
    if let Some(p) = pidfile {
        let _ = std::fs::remove_file(p);
    }
    Ok(code)
}

fn remove_pidfile(s: &Settings) {
    if let Some(p) = &s.pidfile {
        let _ = std::fs::remove_file(p);
    }
}
