//! Python config files (`-c gunicorn-cfg.py`, `-c python:pkg.mod`, the
//! default `./gunicorn.conf.py`): evaluated in the embedded interpreter as
//! Gunicorn evaluates them, their module-level names turned into raw values
//! for the settings table. Callables (server hooks) are kept alive here and
//! referred to by index.

use crate::config::{self, ConfigError, ConfigSource, RawValue, Settings};
use anyhow::Result;
use pyo3::prelude::*;
use std::ffi::OsString;

/// Why the settings could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// A bad setting or command line (exit with its code).
    Config(ConfigError),
    /// The config file could not be evaluated.
    File(anyhow::Error),
}

/// Resolve the settings from the command line (`args`, without argv\[0\]),
/// the environment and the config file. Called at start and on reload.
pub fn load_settings(args: Vec<OsString>, argv: &[String]) -> Result<Settings, LoadError> {
    let env = |k: &str| std::env::var(k).ok();
    let cli = config::parse_cli(args, &env).map_err(LoadError::Config)?;
    let (file_values, label) = match cli.config_source() {
        None => (Vec::new(), None),
        Some(src) => read_config_file(&src, argv).map_err(LoadError::File)?,
    };
    config::resolve(cli, file_values, label).map_err(LoadError::Config)
}

/// A hook set in the config file.
pub fn hook(i: config::HookRef) -> Option<Py<PyAny>> {
    let hooks = HOOKS.lock().unwrap_or_else(|p| p.into_inner());
    hooks.get(i.0).map(|h| Python::attach(|py| h.clone_ref(py)))
}

/// Module-level names of a config file, and the file's label for messages.
type FileValues = (Vec<(String, RawValue)>, Option<String>);

/// Evaluate the Python config file and turn its module-level names into
/// raw values for the settings table.
pub fn read_config_file(src: &ConfigSource, argv: &[String]) -> Result<FileValues> {
    let (text, is_module, label) = match src {
        ConfigSource::Path(p) => {
            if !p.exists() {
                anyhow::bail!("config file {} not found", p.display());
            }
            (p.display().to_string(), false, p.display().to_string())
        }
        ConfigSource::Module(m) => (m.clone(), true, format!("python:{m}")),
    };
    super::initialize(argv)?;
    Python::attach(|py| {
        let dict = super::load_config(py, &text, is_module)
            .map_err(|tb| anyhow::anyhow!("cannot load config file {label}:\n{}", tb.trim_end()))?;
        let mut out = Vec::new();
        for (k, v) in dict.bind(py).iter() {
            let name: String = k.extract()?;
            out.push((name, to_raw(&v)));
        }
        Ok((out, Some(label)))
    })
}

/// Callables (server hooks) are kept alive here; settings refer to them by index.
static HOOKS: std::sync::Mutex<Vec<Py<PyAny>>> = std::sync::Mutex::new(Vec::new());

/// Every module-level value becomes a [`RawValue`], none is dropped: the
/// settings decide what a name means (helpers such as imports, functions
/// and classes are recognised there), and a value that cannot be carried
/// over is an [`RawValue::Unreadable`] that becomes an error naming the
/// setting if it is one.
fn to_raw(v: &Bound<'_, PyAny>) -> RawValue {
    use pyo3::types::{
        PyBool, PyDict, PyFloat, PyInt, PyList, PyModule, PyString, PyTuple, PyType,
    };
    let repr = |v: &Bound<'_, PyAny>| {
        v.repr()
            .map(|r| r.to_string())
            .unwrap_or_else(|_| "?".into())
    };
    if v.is_none() {
        return RawValue::None;
    }
    if let Ok(b) = v.cast::<PyBool>() {
        return RawValue::Bool(b.is_true());
    }
    if v.is_instance_of::<PyInt>() {
        return match v.extract::<i64>() {
            Ok(i) => RawValue::Int(i),
            Err(_) => RawValue::Unreadable(format!("the integer {}, too large", repr(v))),
        };
    }
    if let Ok(f) = v.cast::<PyFloat>() {
        return RawValue::Float(f.value());
    }
    if let Ok(s) = v.cast::<PyString>() {
        return match s.to_str() {
            Ok(s) => RawValue::Str(s.to_string()),
            Err(_) => RawValue::Unreadable(format!("the string {}, not valid UTF-8", repr(v))),
        };
    }
    if let Ok(l) = v.cast::<PyList>() {
        return RawValue::List(l.iter().map(|i| to_raw(&i)).collect());
    }
    if let Ok(t) = v.cast::<PyTuple>() {
        return RawValue::Tuple(t.iter().map(|i| to_raw(&i)).collect());
    }
    if let Ok(d) = v.cast::<PyDict>() {
        let mut items = Vec::with_capacity(d.len());
        for (k, v) in d.iter() {
            match k.extract::<String>() {
                Ok(k) => items.push((k, to_raw(&v))),
                Err(_) => {
                    return RawValue::Unreadable(format!(
                        "a dict with the non-string key {}",
                        repr(&k)
                    ))
                }
            }
        }
        return RawValue::Dict(items);
    }
    if let Ok(m) = v.cast::<PyModule>() {
        return RawValue::Module(m.name().map(|n| n.to_string()).unwrap_or_default());
    }
    if let Ok(t) = v.cast::<PyType>() {
        let module = t.module().map(|m| m.to_string()).unwrap_or_default();
        let name = t.qualname().map(|n| n.to_string()).unwrap_or_default();
        // The config file's own classes live in `__config__`; say `MyWorker`.
        let own = module.is_empty() || module == "builtins" || module.starts_with("__");
        return RawValue::Class(if own {
            name
        } else {
            format!("{module}.{name}")
        });
    }
    if !v.is_callable() {
        let ty = v
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        return RawValue::Unknown(ty);
    }
    let mut hooks = HOOKS.lock().unwrap_or_else(|p| p.into_inner());
    hooks.push(v.clone().unbind());
    RawValue::Callable(config::HookRef(hooks.len() - 1))
}
