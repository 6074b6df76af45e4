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
    if !v.is_callable() {
        let ty = v
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        return Some(RawValue::Unknown(ty));
    }
    let mut hooks = HOOKS.lock().unwrap_or_else(|p| p.into_inner());
    hooks.push(v.clone().unbind());
    Some(RawValue::Callable(config::HookRef(hooks.len() - 1)))
}
