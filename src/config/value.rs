//! Setting values: conversion from command-line strings and config-file
//! values into typed [`Value`]s, the per-setting checks the table refers
//! to, and Python-style rendering for `--print-config`.
//!
//! Conversions follow Gunicorn's validators (`validate_pos_int`,
//! `validate_bool`, `validate_string_to_list`, `auto_int`...) so a value
//! Gunicorn accepts is accepted here, and the error says what was expected.

use super::{HookRef, RawValue};

/// The type of a setting's value, which selects its base validator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueType {
    /// `True`/`False`, or the strings "true"/"false".
    Bool,
    /// Like `Bool`, but `None` (unset) is a distinct value.
    OptBool,
    /// A non-negative integer (`validate_pos_int`).
    PosInt,
    /// A non-negative integer whose string form may be octal: `0022`,
    /// `0o22`, `0x12` (Gunicorn's `auto_int`, used for `umask`).
    OctalInt,
    /// A string; `None` is refused.
    Str,
    /// A string or `None`.
    OptStr,
    /// A list of strings; a single string counts as a one-item list.
    StrList,
    /// A comma-separated string, kept as a list (`validate_string_to_list`).
    CommaList,
    /// A dict of strings to strings.
    Dict,
    /// A nested dict of plain data (`logconfig_dict`), kept as JSON text.
    JsonDict,
    /// A Python callable (server hooks), only from a config file.
    Callable,
    /// A class given by name (`worker_class`, `logger_class`).
    Class,
    /// `off`/`v1`/`v2`/`auto`; Gunicorn < 24.1 used a bool.
    ProxyMode,
    /// Anything; the setting is accepted and ignored (`ssl_version`).
    Ignored,
}

impl ValueType {
    /// The name shown in `docs/settings.md`.
    pub fn doc_name(self) -> &'static str {
        match self {
            ValueType::Bool | ValueType::OptBool => "bool",
            ValueType::PosInt => "int",
            ValueType::OctalInt => "int (octal)",
            ValueType::Str | ValueType::Class | ValueType::ProxyMode => "string",
            ValueType::OptStr => "string or None",
            ValueType::StrList => "list of strings",
            ValueType::CommaList => "comma-separated list",
            ValueType::Dict | ValueType::JsonDict => "dict",
            ValueType::Callable => "callable",
            ValueType::Ignored => "any",
        }
    }
}

/// A converted setting value.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<String>),
    Dict(Vec<(String, String)>),
    /// A server hook: `None` is Gunicorn's no-op default.
    Hook(Option<HookRef>),
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Value::None, Value::None) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::List(a), Value::List(b)) => a == b,
            (Value::Dict(a), Value::Dict(b)) => a == b,
            (Value::Hook(a), Value::Hook(b)) => a.map(|h| h.0) == b.map(|h| h.0),
            _ => false,
        }
    }
}

/// Python's `repr()` of a config-file value, for error messages.
pub(crate) fn raw_repr(v: &RawValue) -> String {
    match v {
        RawValue::None => "None".into(),
        RawValue::Bool(true) => "True".into(),
        RawValue::Bool(false) => "False".into(),
        RawValue::Int(i) => i.to_string(),
        RawValue::Float(f) => format!("{f:?}"),
        RawValue::Str(s) => py_str_repr(s),
        RawValue::List(l) => format!("[{}]", join(l.iter().map(raw_repr))),
        RawValue::Tuple(l) if l.len() == 1 => format!("({},)", raw_repr(&l[0])),
        RawValue::Tuple(l) => format!("({})", join(l.iter().map(raw_repr))),
        RawValue::Dict(d) => format!(
            "{{{}}}",
            join(
                d.iter()
                    .map(|(k, v)| format!("{}: {}", py_str_repr(k), raw_repr(v)))
            )
        ),
        RawValue::Callable(_) => "<callable>".into(),
        RawValue::Class(name) => format!("<class '{name}'>"),
        RawValue::Module(name) => format!("<module '{name}'>"),
        RawValue::Unknown(t) => format!("<{t} object>"),
        RawValue::Unreadable(what) => format!("<{what}>"),
    }
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// Python's `repr()` of a `str`: single quotes unless the text has a single
/// quote and no double quote.
pub(crate) fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str()` of a value, as `--print-config` shows it.
pub(crate) fn render(v: &Value, name: &str) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(i) => i.to_string(),
        Value::Str(s) => s.clone(),
        Value::List(l) => format!("[{}]", join(l.iter().map(|s| py_str_repr(s)))),
        Value::Dict(d) => format!(
            "{{{}}}",
            join(
                d.iter()
                    .map(|(k, v)| format!("{}: {}", py_str_repr(k), py_str_repr(v)))
            )
        ),
        // Gunicorn prints `<qualname()>`; the config never sees the Python
        // object, so the hook's setting name stands in for it.
        Value::Hook(_) => format!("<{name}()>"),
    }
}

/// Python's `int(text, 0)`: decimal without leading zeros, or 0x/0o/0b.
fn parse_int_base0(text: &str) -> Option<i64> {
    let t = text.trim().replace('_', "");
    let (neg, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.to_string()),
        None => (false, t.strip_prefix('+').unwrap_or(&t).to_string()),
    };
    let lower = body.to_ascii_lowercase();
    let n = if let Some(h) = lower.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if let Some(o) = lower.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()?
    } else if let Some(b) = lower.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()?
    } else if body.len() > 1 && body.starts_with('0') && body.bytes().any(|b| b != b'0') {
        return None; // Python 3 refuses "010" with base 0
    } else if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    } else {
        body.parse().ok()?
    };
    Some(if neg { -n } else { n })
}

/// Python's `int(text)`: decimal only.
fn parse_int_decimal(text: &str) -> Option<i64> {
    let t = text.trim().replace('_', "");
    let body = t.strip_prefix(['-', '+']).unwrap_or(&t);
    if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Gunicorn's `auto_int`: a leading `0` followed by a digit means octal.
fn parse_auto_int(text: &str) -> Option<i64> {
    let t = text.trim();
    let b = t.as_bytes();
    if b.len() > 1 && b[0] == b'0' && b[1].is_ascii_digit() {
        return parse_int_base0(&format!("0o{}", &t[1..]));
    }
    parse_int_base0(t)
}

fn pos(n: i64) -> Result<Value, String> {
    if n < 0 {
        Err(format!("value must be positive, got {n}"))
    } else {
        Ok(Value::Int(n))
    }
}

fn comma_list(s: &str) -> Value {
    Value::List(
        s.trim()
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(String::from)
            .collect(),
    )
}

fn proxy_mode(s: &str) -> Result<Value, String> {
    let m = s.trim().to_ascii_lowercase();
    match m.as_str() {
        "off" | "v1" | "v2" | "auto" => Ok(Value::Str(m)),
        _ => Err(format!(
            "expected one of off, v1, v2, auto, got {}",
            py_str_repr(s)
        )),
    }
}

/// Converts one command-line (or `GUNICORN_CMD_ARGS`) string.
pub(crate) fn from_cli(ty: ValueType, text: &str) -> Result<Value, String> {
    match ty {
        ValueType::PosInt => parse_int_decimal(text)
            .ok_or_else(|| format!("expected an integer, got {}", py_str_repr(text)))
            .and_then(pos),
        ValueType::OctalInt => parse_auto_int(text)
            .ok_or_else(|| format!("expected an integer, got {}", py_str_repr(text)))
            .and_then(pos),
        ValueType::Bool | ValueType::OptBool => str_bool(text),
        ValueType::CommaList => Ok(comma_list(text)),
        ValueType::ProxyMode => proxy_mode(text),
        ValueType::StrList => Ok(Value::List(vec![text.trim().to_string()])),
        ValueType::Str | ValueType::OptStr | ValueType::Class => Ok(Value::Str(text.trim().into())),
        ValueType::Dict | ValueType::JsonDict | ValueType::Callable => {
            Err("this setting can only be set in a config file".into())
        }
        ValueType::Ignored => Ok(Value::Str(text.trim().into())),
    }
}

fn str_bool(text: &str) -> Result<Value, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(Value::Bool(true)),
        "false" => Ok(Value::Bool(false)),
        _ => Err(format!("expected a boolean, got {}", py_str_repr(text))),
    }
}

fn expected(what: &str, got: &RawValue) -> String {
    format!("expected {what}, got {}", raw_repr(got))
}

fn raw_string(v: &RawValue) -> Result<String, String> {
    match v {
        RawValue::Str(s) => Ok(s.trim().to_string()),
        other => Err(expected("a string", other)),
    }
}

/// Converts one config-file value, following Gunicorn's validators.
pub(crate) fn from_raw(ty: ValueType, v: &RawValue) -> Result<Value, String> {
    if let RawValue::Unreadable(what) = v {
        return Err(format!("cannot use {what}"));
    }
    match ty {
        ValueType::Bool | ValueType::OptBool => match v {
            RawValue::None if ty == ValueType::OptBool => Ok(Value::None),
            RawValue::None => Ok(Value::Bool(false)),
            RawValue::Bool(b) => Ok(Value::Bool(*b)),
            RawValue::Str(s) => str_bool(s),
            other => Err(expected("a boolean", other)),
        },
        ValueType::PosInt | ValueType::OctalInt => match v {
            RawValue::Int(i) => pos(*i),
            RawValue::Bool(b) => Ok(Value::Int(i64::from(*b))),
            RawValue::Str(s) => parse_int_base0(s)
                .ok_or_else(|| expected("an integer", v))
                .and_then(pos),
            other => Err(expected("an integer", other)),
        },
        ValueType::Str => match v {
            RawValue::Str(s) => Ok(Value::Str(s.trim().into())),
            other => Err(expected("a string", other)),
        },
        ValueType::OptStr => match v {
            RawValue::None => Ok(Value::None),
            RawValue::Str(s) => Ok(Value::Str(s.trim().into())),
            other => Err(expected("a string or None", other)),
        },
        ValueType::Class => match v {
            RawValue::Str(s) => Ok(Value::Str(s.trim().into())),
            // Gunicorn's own class, imported by the config file: its name.
            RawValue::Class(name) if worker_class_of(name).is_some() => {
                Ok(Value::Str(name.clone()))
            }
            RawValue::Class(name) => Err(custom_class_refused(&format!("got the class {name}"))),
            RawValue::Callable(_) => Err(custom_class_refused("got a callable")),
            other => Err(expected("a string", other)),
        },
        ValueType::StrList => match v {
            RawValue::None => Ok(Value::List(vec![])),
            RawValue::Str(s) if s.is_empty() => Ok(Value::List(vec![])),
            RawValue::Str(s) => Ok(Value::List(vec![s.trim().into()])),
            RawValue::List(items) | RawValue::Tuple(items) => items
                .iter()
                .map(raw_string)
                .collect::<Result<Vec<_>, _>>()
                .map(Value::List)
                .map_err(|_| expected("a list of strings", v)),
            other => Err(expected("a list of strings", other)),
        },
        ValueType::CommaList => match v {
            RawValue::None => Ok(Value::List(vec![])),
            RawValue::Str(s) => Ok(comma_list(s)),
            RawValue::List(items) | RawValue::Tuple(items) => items
                .iter()
                .map(raw_string)
                .collect::<Result<Vec<_>, _>>()
                .map(|l| Value::List(l.into_iter().filter(|s| !s.is_empty()).collect()))
                .map_err(|_| expected("a comma-separated string or a list of strings", v)),
            other => Err(expected("a comma-separated string", other)),
        },
        ValueType::Dict => match v {
            RawValue::Dict(items) => items
                .iter()
                .map(|(k, val)| Ok((k.clone(), raw_string(val)?)))
                .collect::<Result<Vec<_>, String>>()
                .map(Value::Dict)
                .map_err(|_| expected("a dict of strings to strings", v)),
            other => Err(expected("a dict", other)),
        },
        ValueType::JsonDict => match v {
            RawValue::Dict(_) => raw_json(v).map(|j| Value::Str(j.to_string())).map_err(|e| {
                format!("expected a dict of plain data (strings, numbers, lists, dicts): {e}")
            }),
            other => Err(expected("a dict", other)),
        },
        ValueType::Callable => match v {
            RawValue::Callable(h) => Ok(Value::Hook(Some(*h))),
            RawValue::Str(s) => Err(format!(
                "expected a callable, got {}; import strings are not supported, \
                 import the function in the config file instead",
                py_str_repr(s)
            )),
            other => Err(expected("a callable", other)),
        },
        ValueType::Ignored => Ok(Value::Str(match v {
            RawValue::Str(s) => s.trim().to_string(),
            other => raw_repr(other),
        })),
        ValueType::ProxyMode => match v {
            RawValue::Bool(true) => Ok(Value::Str("auto".into())),
            RawValue::Bool(false) | RawValue::None => Ok(Value::Str("off".into())),
            RawValue::Str(s) => proxy_mode(s),
            other => Err(expected("off, v1, v2 or auto", other)),
        },
    }
}

// ---- Checks referred to by the table --------------------------------------

/// The worker classes rgunicorn runs, by every name Gunicorn accepts.
pub(crate) fn worker_class_of(name: &str) -> Option<super::WorkerClass> {
    match name {
        "sync" | "gunicorn.workers.sync.SyncWorker" | "egg:gunicorn#sync" => {
            Some(super::WorkerClass::Sync)
        }
        "gthread" | "gunicorn.workers.gthread.ThreadWorker" | "egg:gunicorn#gthread" => {
            Some(super::WorkerClass::Gthread)
        }
        "tornado" | "gunicorn.workers.gtornado.TornadoWorker" | "egg:gunicorn#tornado" => {
            Some(super::WorkerClass::Tornado)
        }
        "gevent"
        | "gevent_wsgi"
        | "gevent_pywsgi"
        | "gunicorn.workers.ggevent.GeventWorker"
        | "gunicorn.workers.ggevent.GeventPyWSGIWorker"
        | "egg:gunicorn#gevent"
        | "egg:gunicorn#gevent_wsgi"
        | "egg:gunicorn#gevent_pywsgi" => Some(super::WorkerClass::Gevent),
        // Gunicorn's own ASGI worker and uvicorn's classes (both the
        // deprecated `uvicorn.workers` and the `uvicorn-worker` package):
        // served by rgunicorn's ASGI worker; neither needs to be installed.
        "asgi"
        | "gunicorn.workers.gasgi.ASGIWorker"
        | "egg:gunicorn#asgi"
        | "uvicorn.workers.UvicornWorker"
        | "uvicorn.workers.UvicornH11Worker"
        | "uvicorn_worker.UvicornWorker"
        | "uvicorn_worker.UvicornH11Worker" => Some(super::WorkerClass::Asgi),
        _ => None,
    }
}

/// The built-in classes, as the errors list them.
const BUILT_IN_CLASSES: &str =
    "`sync` or `gthread` (`--threads N` for concurrency), `gevent`, `asgi`, or `tornado`";

/// Gunicorn's eventlet worker, by each of its names: Gunicorn 26 removed it.
fn is_eventlet(name: &str) -> bool {
    matches!(
        name,
        "eventlet" | "gunicorn.workers.geventlet.EventletWorker" | "egg:gunicorn#eventlet"
    )
}

/// Why a custom worker class (a Python path, or a class object from a
/// config file) is refused: see docs/settings.md, `worker_class`.
fn custom_class_refused(what: &str) -> String {
    format!(
        "{what}: custom worker classes (subclasses of gunicorn.workers.base.Worker) are not \
         supported, as rgunicorn's workers serve HTTP in Rust and do not run Gunicorn's Worker \
         API; use the built-in class {BUILT_IN_CLASSES}"
    )
}

pub(crate) fn check_worker_class(v: &Value) -> Result<(), String> {
    let Value::Str(name) = v else { return Ok(()) };
    if worker_class_of(name).is_some() {
        return Ok(());
    }
    if is_eventlet(name) {
        return Err(format!(
            "worker class {} was removed in Gunicorn 26 and is not available; use `-k gevent` \
             (worker_class = \"gevent\") instead",
            py_str_repr(name)
        ));
    }
    if name.contains('.') || name.contains(':') {
        return Err(custom_class_refused(&format!(
            "worker class {} is a Python class path",
            py_str_repr(name)
        )));
    }
    Err(format!(
        "rgunicorn does not support worker class {}; use {BUILT_IN_CLASSES}",
        py_str_repr(name)
    ))
}

pub(crate) fn check_loglevel(v: &Value) -> Result<(), String> {
    match v {
        Value::Str(s)
            if matches!(
                s.to_ascii_lowercase().as_str(),
                "debug" | "info" | "warning" | "error" | "critical"
            ) =>
        {
            Ok(())
        }
        Value::Str(s) => Err(format!(
            "expected one of debug, info, warning, error, critical, got {}",
            py_str_repr(s)
        )),
        _ => Ok(()),
    }
}

pub(crate) fn check_http_parser(v: &Value) -> Result<(), String> {
    match v {
        Value::Str(s) if s == "auto" || s == "fast" => Ok(()),
        Value::Str(s) if s == "python" => Err(
            "rgunicorn does not support `http_parser` 'python' (HTTP is always parsed in Rust); use auto or fast"
                .into(),
        ),
        Value::Str(s) => Err(format!(
            "expected one of auto, fast, python, got {}",
            py_str_repr(s)
        )),
        _ => Ok(()),
    }
}

pub(crate) fn check_http_protocols(v: &Value) -> Result<(), String> {
    let Value::Str(s) = v else { return Ok(()) };
    let mut seen: Vec<&str> = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p_lower = p.to_ascii_lowercase();
        let known = ["h1", "h2", "h3"]
            .into_iter()
            .find(|k| *k == p_lower)
            .ok_or_else(|| format!("Invalid protocol '{p}'. Valid protocols: h1, h2, h3"))?;
        if seen.contains(&known) {
            return Err("Duplicate protocols specified".into());
        }
        seen.push(known);
    }
    Ok(())
}

/// A string setting that must be one of `choices` (compared trimmed and
/// lower-cased when `fold`): `Invalid {what}: VALUE (expected a, b or c)`,
/// VALUE quoted when `quote` (Python's `%r`, as Gunicorn's message has it).
fn one_of(v: &Value, what: &str, choices: &[&str], fold: bool, quote: bool) -> Result<(), String> {
    let Value::Str(s) = v else { return Ok(()) };
    let norm = if fold {
        s.trim().to_ascii_lowercase()
    } else {
        s.clone()
    };
    if choices.contains(&norm.as_str()) {
        return Ok(());
    }
    let shown = if quote { format!("{s:?}") } else { s.clone() };
    let expected = match choices.split_last() {
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    Err(format!("Invalid {what}: {shown} (expected {expected})"))
}

pub(crate) fn check_http2_cleartext(v: &Value) -> Result<(), String> {
    let modes = ["off", "prior-knowledge", "upgrade", "both"];
    one_of(v, "http2_cleartext", &modes, true, false)
}

pub(crate) fn check_cpu_affinity(v: &Value) -> Result<(), String> {
    one_of(v, "worker_cpu_affinity", &["off", "auto"], true, false)
}

pub(crate) fn check_paste_global(v: &Value) -> Result<(), String> {
    match v {
        Value::List(items) => match items.iter().find(|kv| !kv.contains('=')) {
            Some(bad) => Err(format!(
                "Invalid raw_paste_global_conf entry {bad:?} (expected KEY=VALUE)"
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

pub(crate) fn check_header_map(v: &Value) -> Result<(), String> {
    let modes = ["drop", "refuse", "dangerous"];
    one_of(v, "header map behaviour", &modes, true, false)
}

pub(crate) fn check_reload_engine(v: &Value) -> Result<(), String> {
    one_of(
        v,
        "reload_engine",
        &["auto", "poll", "inotify"],
        false,
        true,
    )
}

pub(crate) fn check_http2_frame_size(v: &Value) -> Result<(), String> {
    match v {
        Value::Int(n) if !(16384..=16_777_215).contains(n) => Err(format!(
            "http2_max_frame_size must be between 16384 and 16777215, got {n}"
        )),
        _ => Ok(()),
    }
}

pub(crate) fn check_mode(v: &Value) -> Result<(), String> {
    match v {
        Value::Int(i) if *i > 0o7777 => Err(format!("{i:#o} is not a valid file mode mask")),
        _ => Ok(()),
    }
}

pub(crate) fn check_raw_env(v: &Value) -> Result<(), String> {
    if let Value::List(items) = v {
        for e in items {
            match e.split_once('=') {
                Some((k, _)) if !k.is_empty() => {}
                _ => {
                    return Err(format!(
                        "environment setting {} invalid: expected KEY=VALUE",
                        py_str_repr(e)
                    ))
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn check_bind(v: &Value) -> Result<(), String> {
    if let Value::List(items) = v {
        for b in items {
            if b.is_empty() {
                return Err("an empty bind address".into());
            }
            if let Some(fd) = b.strip_prefix("fd://") {
                if fd.parse::<u32>().is_err() {
                    return Err(format!("{}: fd://FD needs a number", py_str_repr(b)));
                }
            }
        }
    }
    Ok(())
}

/// Gunicorn's `validate_string_to_addr_list`: `*`, IP addresses and CIDR
/// networks (strict: no host bits under the mask).
pub(crate) fn check_addr_list(v: &Value) -> Result<(), String> {
    if let Value::List(items) = v {
        crate::http::proxy::AllowList::parse(items)?;
    }
    Ok(())
}

pub(crate) fn check_ids(v: &Value) -> Result<(), String> {
    if let Value::List(items) = v {
        for id in items {
            if id.parse::<u32>().is_err() {
                return Err(format!("expected a numeric id, got {}", py_str_repr(id)));
            }
        }
    }
    Ok(())
}

pub(crate) fn check_dir_exists(v: &Value) -> Result<(), String> {
    match v {
        Value::Str(p) if !std::path::Path::new(p).is_dir() => {
            Err(format!("can't chdir to {}", py_str_repr(p)))
        }
        _ => Ok(()),
    }
}

pub(crate) fn check_user(v: &Value) -> Result<(), String> {
    match v {
        Value::Str(u) if !u.bytes().all(|b| b.is_ascii_digit()) => {
            match nix::unistd::User::from_name(u) {
                Ok(Some(_)) => Ok(()),
                _ => Err(format!("No such user: {}", py_str_repr(u))),
            }
        }
        _ => Ok(()),
    }
}

pub(crate) fn check_group(v: &Value) -> Result<(), String> {
    match v {
        Value::Str(g) if !g.bytes().all(|b| b.is_ascii_digit()) => {
            match nix::unistd::Group::from_name(g) {
                Ok(Some(_)) => Ok(()),
                _ => Err(format!("No such group: {}", py_str_repr(g))),
            }
        }
        _ => Ok(()),
    }
}

/// A config-file value as JSON (for `logconfig_dict`, which the workers
/// hand to Python's `dictConfig`).
fn raw_json(v: &RawValue) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        RawValue::None => J::Null,
        RawValue::Bool(b) => J::Bool(*b),
        RawValue::Int(i) => J::from(*i),
        RawValue::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .ok_or_else(|| format!("{f} is not a JSON number"))?,
        RawValue::Str(s) => J::String(s.clone()),
        RawValue::List(l) | RawValue::Tuple(l) => {
            J::Array(l.iter().map(raw_json).collect::<Result<_, _>>()?)
        }
        RawValue::Dict(d) => J::Object(
            d.iter()
                .map(|(k, v)| Ok((k.clone(), raw_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        RawValue::Callable(_) => return Err("a callable cannot be passed on".into()),
        RawValue::Class(_) | RawValue::Module(_) | RawValue::Unknown(_) => {
            return Err(format!("{} cannot be passed on", raw_repr(v)))
        }
        RawValue::Unreadable(what) => return Err(format!("{what} cannot be passed on")),
    })
}

// ---- Typed fields ----------------------------------------------------------

/// The Rust type of a typed setting field (`=> timeout: u64` in the table):
/// how to read it from the setting's resolved [`Value`], and which value
/// types it can hold. The table checks `ACCEPTS` against each typed row at
/// compile time, so a field whose type does not fit its setting does not
/// build; `from_value` then only meets values of those shapes.
pub(crate) trait FromValue: Sized {
    /// The setting value types this field type can be read from.
    const ACCEPTS: &'static [ValueType];
    /// The field's value; the message (without the setting's name) on error.
    fn from_value(v: &Value) -> Result<Self, String>;
}

/// Whether `ty` is one of `accepts` (usable in a `const`).
pub(crate) const fn accepts(accepts: &[ValueType], ty: ValueType) -> bool {
    let mut i = 0;
    while i < accepts.len() {
        if accepts[i] as u8 == ty as u8 {
            return true;
        }
        i += 1;
    }
    false
}

/// A value whose shape does not fit the field: a table bug that `ACCEPTS`
/// should have caught at compile time.
fn misfit(v: &Value) -> String {
    format!("internal error: value {v:?} does not fit the setting's typed field")
}

impl FromValue for bool {
    const ACCEPTS: &'static [ValueType] = &[ValueType::Bool];
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Bool(b) => Ok(*b),
            _ => Err(misfit(v)),
        }
    }
}

macro_rules! from_int_value {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            const ACCEPTS: &'static [ValueType] = &[ValueType::PosInt, ValueType::OctalInt];
            fn from_value(v: &Value) -> Result<Self, String> {
                match v {
                    Value::Int(n) => <$t>::try_from(*n).map_err(|_| format!("{n} is too large")),
                    _ => Err(misfit(v)),
                }
            }
        }
    )*};
}
from_int_value!(i32, u32, u64, usize);

impl FromValue for String {
    const ACCEPTS: &'static [ValueType] = &[ValueType::Str, ValueType::ProxyMode];
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Str(s) => Ok(s.clone()),
            _ => Err(misfit(v)),
        }
    }
}

impl FromValue for Option<String> {
    const ACCEPTS: &'static [ValueType] = &[ValueType::OptStr];
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Str(s) => Ok(Some(s.clone())),
            Value::None => Ok(None),
            _ => Err(misfit(v)),
        }
    }
}

impl FromValue for Option<std::path::PathBuf> {
    const ACCEPTS: &'static [ValueType] = &[ValueType::OptStr];
    fn from_value(v: &Value) -> Result<Self, String> {
        Option::<String>::from_value(v).map(|p| p.map(std::path::PathBuf::from))
    }
}

impl FromValue for Vec<String> {
    const ACCEPTS: &'static [ValueType] = &[ValueType::StrList, ValueType::CommaList];
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::List(l) => Ok(l.clone()),
            _ => Err(misfit(v)),
        }
    }
}

/// Numeric ids (`control_allow_uid`...); `check_ids` has refused any other.
impl FromValue for Vec<u32> {
    const ACCEPTS: &'static [ValueType] = &[ValueType::StrList, ValueType::CommaList];
    fn from_value(v: &Value) -> Result<Self, String> {
        Vec::<String>::from_value(v)?
            .iter()
            .map(|s| s.parse().map_err(|_| format!("{s:?} is not a numeric id")))
            .collect()
    }
}

impl FromValue for Vec<(String, String)> {
    const ACCEPTS: &'static [ValueType] = &[ValueType::Dict];
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Dict(d) => Ok(d.clone()),
            _ => Err(misfit(v)),
        }
    }
}

/// As configured; `check_worker_class` has refused any other name.
impl FromValue for super::WorkerClass {
    const ACCEPTS: &'static [ValueType] = &[ValueType::Class];
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Str(name) => {
                worker_class_of(name).ok_or_else(|| format!("unknown worker class {name:?}"))
            }
            _ => Err(misfit(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ints_follow_python() {
        assert_eq!(parse_int_base0("0x10"), Some(16));
        assert_eq!(parse_int_base0("0o17"), Some(15));
        assert_eq!(parse_int_base0("010"), None);
        assert_eq!(parse_int_base0(" 42 "), Some(42));
        assert_eq!(parse_auto_int("0022"), Some(18));
        assert_eq!(parse_auto_int("0"), Some(0));
        assert_eq!(parse_int_decimal("0x10"), None);
        assert_eq!(parse_int_decimal("-3"), Some(-3));
    }

    #[test]
    fn reprs_follow_python() {
        assert_eq!(py_str_repr("a"), "'a'");
        assert_eq!(py_str_repr("it's"), "\"it's\"");
        assert_eq!(raw_repr(&RawValue::List(vec![RawValue::Int(1)])), "[1]");
    }
}
