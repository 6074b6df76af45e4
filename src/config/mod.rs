//! Settings: one table of every Gunicorn setting drives the command line,
//! the Python config file, `GUNICORN_CMD_ARGS`, `--print-config` and
//! `docs/settings.md`.
//!
//! Theory of operation, in two passes (as ripgrep's low/high args):
//!
//! 1. [`parse_cli`] parses argv and `GUNICORN_CMD_ARGS` /
//!    `RGUNICORN_CMD_ARGS` with a clap `Command` built from [`table()`],
//!    converting and type-checking every value. It does not read the
//!    config file; [`CliPass::config_source`] says which file (or
//!    `python:` module) the caller should evaluate.
//! 2. The caller evaluates the config file in Python and hands its module
//!    globals over as [`RawValue`]s. [`resolve`] merges, as Gunicorn does,
//!    defaults < config file < `GUNICORN_CMD_ARGS` < `RGUNICORN_CMD_ARGS`
//!    < command line, runs each setting's validator, refuses any
//!    not-supported setting that is not at its default, and produces the
//!    typed [`Settings`].
//!
//! Adding a setting is adding one row to the table in `table.rs` (its
//! module comment says how); a row marked `=> name: Type` also becomes the
//! typed field `settings.name`.
//!
//! Environment defaults follow Gunicorn: `workers` defaults to
//! `$WEB_CONCURRENCY`, `bind` to `0.0.0.0:$PORT` when `$PORT` is set,
//! `forwarded_allow_ips` to `$FORWARDED_ALLOW_IPS`, and `sendfile` to
//! `$SENDFILE`.
//!
//! Errors name the setting and where its value came from, e.g.
//! `gunicorn-cfg.py: setting `workers`: expected an integer, got 'three'`.

mod cli;
mod docs;
mod resolve;
mod table;
#[cfg(test)]
mod tests;
mod value;

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

pub use cli::command;
pub use docs::settings_markdown;
pub use resolve::{print_config, resolve};
pub use table::{Action, DefaultValue, SettingDef, Status, TableSettings};
pub(crate) use value::Value as SettingValue;
pub use value::ValueType;

/// The worker classes rgunicorn implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerClass {
    /// One request at a time per worker.
    Sync,
    /// A pool of `threads` Python threads per worker.
    Gthread,
    /// Tornado's own HTTP server and IOLoop (a `tornado.web.Application`, or
    /// a WSGI app in `tornado.wsgi.WSGIContainer`).
    Tornado,
    /// Greenlets on a gevent hub, up to `worker_connections` at once.
    Gevent,
    /// An ASGI 3 app on an asyncio (or uvloop) event loop per worker
    /// (`-k asgi`, `uvicorn.workers.UvicornWorker`).
    Asgi,
}

impl WorkerClass {
    /// The name Gunicorn's `worker_class_str` and the start-up log use.
    pub fn name(self) -> &'static str {
        match self {
            WorkerClass::Sync => "sync",
            WorkerClass::Gthread => "gthread",
            WorkerClass::Tornado => "tornado",
            WorkerClass::Gevent => "gevent",
            WorkerClass::Asgi => "asgi",
        }
    }
}

/// Opaque handle to a Python callable held by the caller (just an index);
/// config never calls it.
#[derive(Clone, Copy, Debug)]
pub struct HookRef(pub usize);

/// A value read from a Python config file (the Python side converts module
/// globals into these).
#[derive(Clone, Debug)]
pub enum RawValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<RawValue>),
    Tuple(Vec<RawValue>),
    Dict(Vec<(String, RawValue)>),
    Callable(HookRef),
    /// A class (its qualified name): a helper, or a custom `worker_class`,
    /// which rgunicorn refuses.
    Class(String),
    /// An imported module (its name): always a helper.
    Module(String),
    /// A value of a type no setting takes (its Python type name), so the
    /// error can name the setting instead of ignoring it.
    Unknown(String),
    /// A value of a familiar type that cannot be carried over, described
    /// (an integer too large for 64 bits, a dict with a non-string key):
    /// an error if it is a setting's value.
    Unreadable(String),
}

/// Where the config file comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A Python file: `-c PATH`, `-c file:PATH`, or `./gunicorn.conf.py`.
    Path(PathBuf),
    /// A Python module on `sys.path`: `-c python:pkg.module`.
    Module(String),
}

/// Everything resolved and typed. Field names are Gunicorn's setting names.
///
/// Two kinds of fields:
/// - the settings used as they are: the fields of [`TableSettings`],
///   generated from the table rows marked `=> name: Type`
///   (`config/table.rs`), which `Settings` dereferences to, so
///   `settings.timeout` is a plain field read;
/// - the derived ones below, each computed in `resolve::build` from several
///   settings, the command line or the environment.
///
/// Not-supported settings are guaranteed to be at their defaults.
/// [`Settings::each`] gives every setting's value (the hooks' `cfg`), and
/// `--print-config` shows every setting.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The settings used as they are (see [`TableSettings`]).
    table: TableSettings,
    // ---- Derived (`resolve::build`)
    /// Absolute directory to change to; `None` stays in the current one.
    pub chdir: Option<PathBuf>,
    /// `--pythonpath`, split at commas.
    pub pythonpath: Vec<String>,
    /// Lower-case: debug, info, warning, error or critical.
    pub loglevel: String,
    /// `logconfig_dict` as JSON text; `None` when it is empty.
    pub logconfig_dict_json: Option<String>,
    /// Whether file bodies may go out with sendfile (`--no-sendfile`, `$SENDFILE`).
    pub sendfile: bool,
    /// Header names (upper case, with underscores) a trusted proxy may send.
    pub forwarder_headers: Vec<String>,
    /// The application to load: the APP_MODULE argument, else `wsgi_app`
    /// from the config file.
    pub wsgi_app: Option<String>,
    /// The config file given with `-c` (or via `GUNICORN_CMD_ARGS`), or
    /// `./gunicorn.conf.py` when that file exists.
    pub config: Option<String>,
    /// The control socket path (see [`crate::control::path`] for the
    /// default); `None` when `--no-control-socket` is given.
    pub control_socket: Option<PathBuf>,
    /// Whether `control_socket` was set (command line, environment, config
    /// file) rather than defaulted: a set path that cannot be used is fatal,
    /// a default one only a warning.
    pub control_socket_explicit: bool,
    /// Server hooks set in the config file, by Gunicorn's hook name.
    pub hooks: Vec<(String, HookRef)>,
    /// Things that are accepted but worth telling the user, e.g. config-file
    /// names that are not settings (ignored, as Gunicorn does) and settings
    /// that have no effect here. Logged at start (so `--check-config`
    /// shows them too); `--print-config` writes them to stderr.
    pub warnings: Vec<String>,
    /// Every setting's value, for [`print_config`].
    printed: Vec<(&'static str, String)>,
    /// Every setting's resolved value, in table order, for [`Settings::each`].
    values: Vec<SettingValue>,
}

/// `settings.timeout`: the settings used as they are, without a look-up.
impl std::ops::Deref for Settings {
    type Target = TableSettings;

    #[inline]
    fn deref(&self) -> &TableSettings {
        &self.table
    }
}

/// A reload may keep one setting at its old value (a `bind` that cannot
/// open, say): `new.bind = old.bind.clone()`.
impl std::ops::DerefMut for Settings {
    #[inline]
    fn deref_mut(&mut self) -> &mut TableSettings {
        &mut self.table
    }
}

impl WorkerClass {
    /// The third-party Python package the class needs (checked by the
    /// master before it binds: `pip install` it).
    pub fn python_package(self) -> Option<&'static str> {
        match self {
            WorkerClass::Sync | WorkerClass::Gthread | WorkerClass::Asgi => None,
            WorkerClass::Tornado => Some("tornado"),
            WorkerClass::Gevent => Some("gevent"),
        }
    }
}

impl Settings {
    /// Gunicorn: `--threads` > 1 with the sync class means gthread.
    pub fn effective_worker_class(&self) -> WorkerClass {
        match self.worker_class {
            WorkerClass::Sync if self.threads > 1 => WorkerClass::Gthread,
            other => other,
        }
    }

    /// Every setting with its resolved value, in table order (the hooks'
    /// `cfg` object is built from this).
    pub(crate) fn each(&self) -> impl Iterator<Item = (&'static SettingDef, &SettingValue)> {
        table::TABLE.iter().zip(&self.values)
    }

    /// The hook of that name, if the config file set one.
    pub fn hook(&self, name: &str) -> Option<HookRef> {
        self.hooks.iter().find(|(n, _)| n == name).map(|(_, h)| *h)
    }

    /// The settings for `rgunicorn APP` with no config file and an empty
    /// environment; handy for tests elsewhere in the program.
    pub fn for_app(app: &str) -> Result<Settings, ConfigError> {
        let cli = parse_cli(vec![OsString::from(app)], &|_| None)?;
        resolve(cli, Vec::new(), None)
    }
}

/// The settings table, for docs generation and invariant tests.
pub fn table() -> &'static [SettingDef] {
    table::TABLE
}

/// The result of the first pass: argv and the environment, parsed and
/// type-checked, before the config file is read.
#[derive(Debug)]
pub struct CliPass {
    /// `GUNICORN_CMD_ARGS`, `RGUNICORN_CMD_ARGS`, then the command line.
    layers: Vec<resolve::Layer>,
    /// The positional APP_MODULE.
    app: Option<String>,
    /// Further positional arguments, ignored as Gunicorn does (with a warning).
    extra_args: Vec<String>,
    env: resolve::EnvSnapshot,
}

impl CliPass {
    /// The config file to evaluate: `-c` on the command line, else `--config`
    /// in `RGUNICORN_CMD_ARGS` / `GUNICORN_CMD_ARGS`, else
    /// `./gunicorn.conf.py` if it exists.
    pub fn config_source(&self) -> Option<ConfigSource> {
        if let Some(given) = self.config_given() {
            return Some(match given.strip_prefix("python:") {
                Some(module) => ConfigSource::Module(module.to_string()),
                None => {
                    ConfigSource::Path(PathBuf::from(given.strip_prefix("file:").unwrap_or(&given)))
                }
            });
        }
        self.default_config_file().map(ConfigSource::Path)
    }

    fn config_given(&self) -> Option<String> {
        self.layers
            .iter()
            .rev()
            .find_map(|layer| layer.get(table::setting!("config")))
            .and_then(|v| match v {
                value::Value::Str(s) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })
    }

    fn default_config_file(&self) -> Option<PathBuf> {
        let path = self.env.cwd.as_ref()?.join("gunicorn.conf.py");
        path.is_file().then_some(path)
    }

    /// The positional APP_MODULE, if given.
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }
}

/// First pass: parse argv (without argv\[0\]) and the environment; does NOT
/// read the config file.
pub fn parse_cli(
    args: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CliPass, ConfigError> {
    let mut layers = Vec::new();
    for var in ["GUNICORN_CMD_ARGS", "RGUNICORN_CMD_ARGS"] {
        if let Some(text) = env(var) {
            let words = shlex::split(&text).ok_or_else(|| {
                ConfigError::usage(format!("{var}: unbalanced quotes in {text:?}"))
            })?;
            let (layer, _positional) =
                cli::parse(words.into_iter().map(OsString::from).collect(), var)?;
            layers.push(layer);
        }
    }
    let (layer, positional) = cli::parse(args, "command line")?;
    layers.push(layer);
    let mut positional = positional.into_iter();
    let app = positional.next();
    Ok(CliPass {
        layers,
        app,
        extra_args: positional.collect(),
        env: resolve::EnvSnapshot::capture(env),
    })
}

#[derive(Debug)]
enum ErrorKind {
    /// From clap, including `--help` and `--version`.
    Clap(clap::Error),
    /// A bad command line found after clap (exit status 2).
    Usage(String),
    /// A bad setting (exit status 1, as Gunicorn's `Error: ...`).
    Invalid(String),
}

/// A configuration error. Its message names the setting and the source of
/// the value (file path, `GUNICORN_CMD_ARGS`, or command line).
#[derive(Debug)]
pub struct ConfigError {
    kind: ErrorKind,
}

impl ConfigError {
    fn usage(msg: String) -> Self {
        ConfigError {
            kind: ErrorKind::Usage(msg),
        }
    }

    fn invalid(msg: String) -> Self {
        ConfigError {
            kind: ErrorKind::Invalid(msg),
        }
    }

    /// The exit status Gunicorn uses: 0 for `--help`/`--version`, 2 for a
    /// command-line error, 1 for a bad setting.
    pub fn exit_code(&self) -> i32 {
        match &self.kind {
            ErrorKind::Clap(e) => e.exit_code(),
            ErrorKind::Usage(_) => 2,
            ErrorKind::Invalid(_) => 1,
        }
    }

    /// True for `--version` (the caller prints its own, longer text).
    pub fn is_version(&self) -> bool {
        matches!(&self.kind, ErrorKind::Clap(e) if e.kind() == clap::error::ErrorKind::DisplayVersion)
    }

    /// True for `--help` and `--version`, whose "error" is the output.
    pub fn is_informational(&self) -> bool {
        matches!(&self.kind, ErrorKind::Clap(e) if e.exit_code() == 0)
    }

    /// Prints the message (help/version to stdout, errors to stderr) and
    /// exits with [`ConfigError::exit_code`].
    pub fn exit(&self) -> ! {
        match &self.kind {
            ErrorKind::Clap(e) => e.exit(),
            ErrorKind::Usage(_) | ErrorKind::Invalid(_) => {
                eprintln!("Error: {self}");
                std::process::exit(self.exit_code())
            }
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Clap(e) => write!(f, "{}", e.to_string().trim_end()),
            ErrorKind::Usage(m) | ErrorKind::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ConfigError {}
