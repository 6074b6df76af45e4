//! The settings table: one entry per Gunicorn setting (plus rgunicorn's
//! own), in Gunicorn's order.
//!
//! Every other part of `config` is driven from [`TABLE`]: the clap
//! arguments (`cli.rs`), the conversion of config-file values and
//! `GUNICORN_CMD_ARGS` (`value.rs`, `resolve.rs`), the typed fields of
//! [`super::Settings`] (the rows marked `=> name: Type`, see
//! [`settings_table!`]), `--print-config`, the hooks' `cfg` object
//! (`crate::hooks`, through [`super::Settings::each`]), and
//! `docs/settings.md` (`docs.rs`). The invariant tests in `tests.rs` check
//! names and flags are unique and that every Gunicorn setting is present.
//!
//! Adding a setting means adding one row to `settings_table!` below:
//! - a `SettingDef` (or `int(..)`, `flag(..)`, `hook(..)`): name, section,
//!   flags, type, default, help, status. That alone gives the flag, the
//!   config-file name, `cfg.NAME` in hooks, `--print-config` and the docs
//!   (regenerate them: `RGUNICORN_BLESS=1 cargo test --release config::`);
//! - if the Rust code uses the value as it is, `=> name: Type` after the row
//!   (`int("timeout", ...) => timeout: u64,`): the field
//!   `settings.timeout`, filled by `resolve`. The build fails if the name is
//!   not the row's or the type cannot hold the row's `ValueType`;
//! - only a value computed from several settings or the environment is a
//!   hand-written field of `Settings` (the "Derived" block) set in
//!   `resolve::build`; a default that depends on the environment is an arm
//!   of `resolve::dynamic_default`.
//!
//! Elsewhere, `setting!("name")` gives a setting's index in the table,
//! checked at compile time. This module depends on `value.rs` (value types,
//! conversions, checks), never the other way round.

use std::path::PathBuf;

use super::value::{accepts, FromValue, Value, ValueType};
use super::WorkerClass;

/// What rgunicorn does with a setting, compared with Gunicorn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Behaves as in Gunicorn.
    Same,
    /// Accepted, but behaves differently; the text says how.
    Different(&'static str),
    /// Refused when set to anything but its default; the text says why.
    NotSupported(&'static str),
    /// rgunicorn's own setting; Gunicorn has no such setting.
    Rgunicorn,
}

/// How the command-line flag takes its value (argparse's `action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `--flag VALUE`; the last occurrence wins.
    Store,
    /// `--flag` sets the value to true (`store_true`).
    StoreTrue,
    /// `--flag` sets the value to false (`store_const False`, `--no-sendfile`).
    StoreFalse,
    /// `--flag VALUE`, repeatable; the occurrences form a list.
    Append,
    /// `--flag [VALUE]`; without a value it means the given string.
    StoreOptional(&'static str),
}

/// A default value that can live in a `static`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultValue {
    None,
    Bool(bool),
    Int(i64),
    Str(&'static str),
    List(&'static [&'static str]),
    Dict(&'static [(&'static str, &'static str)]),
    /// Gunicorn's no-op default hook.
    Hook,
    /// Computed at resolve time from the environment (see
    /// `resolve::dynamic_default`); the text documents it.
    Dynamic(&'static str),
}

impl DefaultValue {
    /// The static default as a [`Value`]; `Dynamic` defaults give `None`.
    pub(crate) fn to_value(self) -> Value {
        match self {
            DefaultValue::None | DefaultValue::Dynamic(_) => Value::None,
            DefaultValue::Bool(b) => Value::Bool(b),
            DefaultValue::Int(i) => Value::Int(i),
            DefaultValue::Str(s) => Value::Str(s.to_string()),
            DefaultValue::List(l) => Value::List(l.iter().map(|s| s.to_string()).collect()),
            DefaultValue::Dict(d) => Value::Dict(
                d.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            DefaultValue::Hook => Value::Hook(None),
        }
    }
}

/// An extra check run on the converted value; returns the message on error.
pub type Check = fn(&Value) -> Result<(), String>;

/// One setting.
#[derive(Clone, Copy, Debug)]
pub struct SettingDef {
    /// Gunicorn's name, as used in a config file.
    pub name: &'static str,
    /// Gunicorn's section, for `--help` and the docs.
    pub section: &'static str,
    /// Command-line flags, exactly Gunicorn's; empty for file-only settings.
    pub cli: &'static [&'static str],
    /// The value's placeholder in `--help` (argparse's `metavar`).
    pub meta: Option<&'static str>,
    pub action: Action,
    pub ty: ValueType,
    pub default: DefaultValue,
    /// One line of help.
    pub help: &'static str,
    pub status: Status,
    /// Extra validation beyond the type.
    pub(crate) check: Option<Check>,
}

const BASE: SettingDef = SettingDef {
    name: "",
    section: "",
    cli: &[],
    meta: None,
    action: Action::Store,
    ty: ValueType::Str,
    default: DefaultValue::None,
    help: "",
    status: Status::Same,
    check: None,
};

const fn flag(
    name: &'static str,
    section: &'static str,
    cli: &'static [&'static str],
    help: &'static str,
    status: Status,
) -> SettingDef {
    SettingDef {
        name,
        section,
        cli,
        action: Action::StoreTrue,
        ty: ValueType::Bool,
        default: DefaultValue::Bool(false),
        help,
        status,
        ..BASE
    }
}

const fn int(
    name: &'static str,
    section: &'static str,
    cli: &'static [&'static str],
    default: i64,
    help: &'static str,
    status: Status,
) -> SettingDef {
    SettingDef {
        name,
        section,
        cli,
        meta: Some("INT"),
        ty: ValueType::PosInt,
        default: DefaultValue::Int(default),
        help,
        status,
        ..BASE
    }
}

const fn hook(
    name: &'static str,
    section: &'static str,
    help: &'static str,
    status: Status,
) -> SettingDef {
    SettingDef {
        name,
        section,
        ty: ValueType::Callable,
        default: DefaultValue::Hook,
        help,
        status,
        ..BASE
    }
}

const CONFIG: &str = "Config File";
const CONTROL: &str = "Control";
const SOCKET: &str = "Server Socket";
const WORKERS: &str = "Worker Processes";
const SECURITY: &str = "Security";
const DEBUG: &str = "Debugging";
const MECH: &str = "Server Mechanics";
const LOG: &str = "Logging";
const NAMING: &str = "Process Naming";
const HOOKS: &str = "Server Hooks";
const SSL: &str = "SSL";
const HTTP2: &str = "HTTP/2";
const DIRTY: &str = "Dirty Arbiters";
const DIRTY_HOOKS: &str = "Dirty Arbiter Hooks";

const NO_SSL_CONTEXT: Status = Status::NotSupported(
    "TLS is done by rustls in Rust, not by Python's ssl module, so there is no SSLContext to hand \
     the hook; set certfile, keyfile, ca_certs, cert_reqs and ciphers instead (see docs/deploy-https.md)",
);
const PYLOGGING: Status = Status::Different(
    "applied to Python's `logging` in every worker (and in the master with --preload) before the app is imported, \
     so the app's loggers follow it; rgunicorn's own error and access logs are written by Rust and keep \
     their settings (errorlog, accesslog, loglevel, formats), see docs/logging.md",
);
const NO_PYLOGGING: Status = Status::NotSupported(
    "rgunicorn's logs are written by the Rust master, not Python's `logging` module",
);
const NO_LOOSE_HTTP: Status = Status::NotSupported(
    "rgunicorn's HTTP parser is always strict; this loosening switch is not available",
);
const NO_DIRTY: Status = Status::NotSupported("dirty arbiters are not implemented");
const NO_UWSGI: Status = Status::NotSupported("only the HTTP protocol is implemented, not uWSGI");

/// Every setting, in Gunicorn's order, then rgunicorn's own.
pub static TABLE: &[SettingDef] = DEFS;

/// The position of setting `name` in [`TABLE`]. Use it through
/// [`setting!`], which runs it at compile time: a name that is not in the
/// table does not build.
pub(crate) const fn index_of(name: &str) -> usize {
    let mut i = 0;
    while i < DEFS.len() {
        if str_eq(DEFS[i].name, name) {
            return i;
        }
        i += 1;
    }
    panic!("setting!(..) names a setting that is not in config/table.rs")
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// `setting!("timeout")`: the index of that setting in [`TABLE`], found at
/// compile time, so a misspelled name is a build error rather than a
/// silently wrong value.
macro_rules! setting {
    // A named `const` item (not an inline `const {}` block) is evaluated
    // by `cargo check` and clippy too, not only when code is generated.
    ($name:literal) => {{
        const INDEX: usize = $crate::config::table::index_of($name);
        INDEX
    }};
}
pub(crate) use setting;

/// The table and the typed fields, from one list of rows.
///
/// Each row is a [`SettingDef`] expression. A row whose value the Rust code
/// uses as it is also declares its field in [`TableSettings`]:
/// `int("timeout", ...) => timeout: u64,` (the field is named after the
/// setting). The macro expands to:
/// - `DEFS`, every row in order. It is a `const` so that [`setting!`] can
///   search it at compile time; [`TABLE`] is the one `static` copy the
///   program uses;
/// - [`TableSettings`], one `pub` field per `=> name: Type` row, and
///   `TableSettings::read`, which fills each field from its setting's
///   resolved value with [`FromValue`];
/// - for each such row, a compile-time check that the field's name is the
///   row's setting name and that its type can hold the row's [`ValueType`]
///   (`FromValue::ACCEPTS`).
macro_rules! settings_table {
    ($( $def:expr $(=> $field:ident: $ty:ty)? ),* $(,)?) => {
        const DEFS: &[SettingDef] = &[$($def),*];

        /// The settings rgunicorn uses as they are resolved, one field per
        /// table row marked `=> name: Type`, named as the setting. Read as
        /// `settings.timeout` ([`super::Settings`] dereferences to this):
        /// plain field reads, no look-up.
        #[derive(Clone, Debug)]
        pub struct TableSettings {
            $($(
                #[doc = concat!("The `", stringify!($field), "` setting (`config/table.rs`, `docs/settings.md`).")]
                pub $field: $ty,
            )?)*
        }

        impl TableSettings {
            /// Each field from its setting's resolved value; `value(i)` is the
            /// value of setting number `i`. An error gives the setting's
            /// number and the message (an integer too large for the field).
            pub(crate) fn read<'a>(
                value: impl Fn(usize) -> &'a Value,
            ) -> Result<TableSettings, (usize, String)> {
                Ok(TableSettings {
                    $($(
                        $field: {
                            const I: usize = index_of(stringify!($field));
                            FromValue::from_value(value(I)).map_err(|m| (I, m))?
                        },
                    )?)*
                })
            }
        }

        $($(
            const _: () = assert!(
                str_eq($def.name, stringify!($field)),
                "config/table.rs: a typed field must be named as its row's setting"
            );
            const _: () = assert!(
                accepts(<$ty as FromValue>::ACCEPTS, $def.ty),
                "config/table.rs: a typed field's Rust type does not fit its setting's ValueType"
            );
        )?)*
    };
}

settings_table! {
    // ---- Config File
    SettingDef {
        name: "config",
        section: CONFIG,
        cli: &["-c", "--config"],
        meta: Some("CONFIG"),
        ty: ValueType::OptStr,
        default: DefaultValue::Dynamic("`./gunicorn.conf.py` if that file exists"),
        help: "The config file: PATH, file:PATH or python:MODULE_NAME.",
        ..BASE
    },
    SettingDef {
        name: "wsgi_app",
        section: CONFIG,
        ty: ValueType::OptStr,
        help: "The WSGI application, MODULE:VARIABLE (the APP_MODULE argument wins).",
        ..BASE
    },
    // ---- Server Socket
    SettingDef {
        name: "bind",
        section: SOCKET,
        cli: &["-b", "--bind"],
        meta: Some("ADDRESS"),
        action: Action::Append,
        ty: ValueType::StrList,
        default: DefaultValue::Dynamic("`['0.0.0.0:$PORT']` if `$PORT` is set, else `['127.0.0.1:8000']`"),
        help: "The socket to bind: HOST, HOST:PORT, unix:PATH or fd://FD; repeatable.",
        check: Some(super::value::check_bind),
        status: Status::Different(
            "A reload that changes it keeps the unchanged addresses open throughout (Gunicorn closes and reopens every one), opens the new ones, and stops listening on the dropped ones once the old workers retire. A new address that cannot open (in use, or a wider address on a port still bound) fails only the bind change: the old bind stays and the error is logged. Listeners handed over (socket activation, USR2) are kept: a changed bind then needs a restart.",
        ),
    } => bind: Vec<String>,
    int("backlog", SOCKET, &["--backlog"], 2048, "The maximum number of pending connections.", Status::Same) => backlog: i32,
    // ---- Worker Processes
    SettingDef {
        name: "workers",
        section: WORKERS,
        cli: &["-w", "--workers"],
        meta: Some("INT"),
        ty: ValueType::PosInt,
        default: DefaultValue::Dynamic("`$WEB_CONCURRENCY` if set, else `1`"),
        help: "The number of worker processes for handling requests.",
        ..BASE
    } => workers: usize,
    SettingDef {
        name: "worker_class",
        section: WORKERS,
        cli: &["-k", "--worker-class"],
        meta: Some("STRING"),
        ty: ValueType::Class,
        default: DefaultValue::Str("sync"),
        help: "The type of workers to use: sync, gthread, gevent, asgi or tornado.",
        status: Status::Different(
            "`sync`, `gthread`, `gevent`, `asgi` and `tornado` (and their Gunicorn aliases: `gevent_wsgi`, \
             `gevent_pywsgi`, `gunicorn.workers...`, `egg:gunicorn#...`; `uvicorn.workers.UvicornWorker`, \
             `uvicorn_worker.UvicornWorker` and their H11 variants select `asgi`); `eventlet` is refused \
             (Gunicorn 26 removed it: use `gevent`); custom worker classes (Python paths or class \
             objects) are refused, see below. `gevent` needs gevent installed (checked before \
             binding); as in Gunicorn it monkey-patches in the worker before the app is imported \
             (with `--preload`, after the fork, so the app was imported unpatched), ignores \
             `--threads`, and runs up to `worker_connections` requests at once",
        ),
        check: Some(super::value::check_worker_class),
        ..BASE
    } => worker_class: WorkerClass,
    int("threads", WORKERS, &["--threads"], 1, "The number of worker threads for handling requests (sync with >1 means gthread; gevent ignores it).", Status::Same) => threads: usize,
    int("worker_connections", WORKERS, &["--worker-connections"], 1000, "The maximum number of simultaneous clients per worker (gthread, gevent, asgi; an open WebSocket counts as one).", Status::Same) => worker_connections: usize,
    SettingDef {
        name: "worker_cpu_affinity",
        section: WORKERS,
        cli: &["--worker-cpu-affinity"],
        meta: Some("MODE"),
        default: DefaultValue::Str("off"),
        help: "off: the kernel places the workers' threads. auto: each worker, all its threads, runs on \
               one CPU of those the master may use, the workers spread evenly over them (a worker forked \
               later takes the CPU with the fewest). Like nginx's `worker_cpu_affinity auto`: it keeps \
               the wake-ups between a worker's I/O thread and its Python thread (asgi, gevent, gthread) \
               on one CPU, but a pinned worker cannot move off a CPU that other work keeps busy, and a new \
               connection waits for the one CPU of the worker that accepted it; measure before using it.",
        status: Status::Rgunicorn,
        check: Some(super::value::check_cpu_affinity),
        ..BASE
    } => worker_cpu_affinity: String,
    int("max_requests", WORKERS, &["--max-requests"], 0, "Requests a worker serves before it is restarted; 0 disables.", Status::Same) => max_requests: u64,
    int("max_requests_jitter", WORKERS, &["--max-requests-jitter"], 0, "The maximum random jitter added to max_requests.", Status::Same) => max_requests_jitter: u64,
    int("timeout", WORKERS, &["-t", "--timeout"], 30, "Workers silent for more than this many seconds are killed and restarted.", Status::Same) => timeout: u64,
    int("graceful_timeout", WORKERS, &["--graceful-timeout"], 30, "Seconds workers get to finish requests after a restart signal.", Status::Same) => graceful_timeout: u64,
    int("keepalive", WORKERS, &["--keep-alive"], 2, "Seconds to wait for the next request on a Keep-Alive connection.", Status::Different("also how long an HTTP/2 connection with no open stream stays open before its GOAWAY, as in Gunicorn, but PINGs and trickled bytes do not extend it, and 0 closes it when its last stream ends (Gunicorn: never); see docs/deploy-https.md")) => keepalive: u64,
    // ---- Security
    int("limit_request_line", SECURITY, &["--limit-request-line"], 4094, "The maximum size of the HTTP request line in bytes.", Status::Same) => limit_request_line: usize,
    int("limit_request_fields", SECURITY, &["--limit-request-fields"], 100, "The maximum number of HTTP header fields in a request.", Status::Same) => limit_request_fields: usize,
    int("limit_request_field_size", SECURITY, &["--limit-request-field_size"], 8190, "The maximum size of one HTTP header field in bytes.", Status::Same) => limit_request_field_size: usize,
    // ---- Debugging
    flag("reload", DEBUG, &["--reload"], "Restart workers when code changes.", Status::Different(
        "each worker watches the source files of every module its app imported (and reload_extra_files); a change \
         reloads the server as SIGHUP does: a new generation imports the code afresh and the old one retires once it \
         is ready, so no request fails, and code that does not import leaves the old generation serving (logged; the \
         fix reloads again). Gunicorn instead restarts each worker in place. At the first boot, code that does not \
         compile (a SyntaxError) is served as a 500 with its traceback, and its file watched, until it is fixed, as in \
         Gunicorn (other import errors stop the server, as in Gunicorn). As with SIGHUP, the config file is read again. With --preload the workers are forked \
         from the master's copy of the app, so a change has no effect (a warning says so at start)",
    )) => reload: bool,
    SettingDef {
        name: "reload_engine",
        section: DEBUG,
        cli: &["--reload-engine"],
        meta: Some("STRING"),
        default: DefaultValue::Str("auto"),
        help: "The implementation that powers --reload: auto, poll or inotify.",
        status: Status::Different(
            "`inotify` is the kernel's, through the notify crate, so no Python package is needed; `auto` is inotify, \
             and `poll` looks at the files' modification times every second",
        ),
        check: Some(super::value::check_reload_engine),
        ..BASE
    } => reload_engine: String,
    SettingDef {
        name: "reload_extra_files",
        section: DEBUG,
        cli: &["--reload-extra-file"],
        meta: Some("FILES"),
        action: Action::Append,
        ty: ValueType::StrList,
        default: DefaultValue::List(&[]),
        help: "Extra files that --reload watches.",
        status: Status::Same,
        ..BASE
    } => reload_extra_files: Vec<String>,
    flag("spew", DEBUG, &["--spew"], "Trace every line executed by the server.", Status::NotSupported(
        "the master is Rust, so there is no Python line to trace",
    )),
    flag("check_config", DEBUG, &["--check-config"], "Check the configuration and exit (status 0 if correct).", Status::Same) => check_config: bool,
    flag("print_config", DEBUG, &["--print-config"], "Print the fully resolved settings; implies --check-config.", Status::Same) => print_config: bool,
    // ---- Server Mechanics
    flag("preload_app", MECH, &["--preload"], "Load the application before forking the workers.", Status::Same) => preload_app: bool,
    SettingDef {
        name: "sendfile",
        section: MECH,
        cli: &["--no-sendfile"],
        action: Action::StoreFalse,
        ty: ValueType::OptBool,
        help: "Disables the use of sendfile(); when unset, $SENDFILE decides.",
        status: Status::Different(
            "`sendfile = True` in a config file enables sendfile (Gunicorn disables it for any value but None)",
        ),
        ..BASE
    },
    flag("reuse_port", MECH, &["--reuse-port"], "Set SO_REUSEPORT on the listening sockets.", Status::Same) => reuse_port: bool,
    SettingDef {
        name: "chdir",
        section: MECH,
        cli: &["--chdir"],
        ty: ValueType::OptStr,
        default: DefaultValue::Dynamic("the current directory"),
        help: "Change to this directory before loading the app.",
        check: Some(super::value::check_dir_exists),
        ..BASE
    },
    flag("daemon", MECH, &["-D", "--daemon"], "Detach from the terminal and run in the background.", Status::NotSupported(
        "run under systemd, Docker or another supervisor instead of daemonizing",
    )),
    SettingDef {
        name: "raw_env",
        section: MECH,
        cli: &["-e", "--env"],
        meta: Some("ENV"),
        action: Action::Append,
        ty: ValueType::StrList,
        default: DefaultValue::List(&[]),
        help: "Set an environment variable, KEY=VALUE; repeatable.",
        check: Some(super::value::check_raw_env),
        ..BASE
    } => raw_env: Vec<String>,
    SettingDef {
        name: "pidfile",
        section: MECH,
        cli: &["-p", "--pid"],
        meta: Some("FILE"),
        ty: ValueType::OptStr,
        help: "A file to write the master's PID to.",
        ..BASE
    } => pidfile: Option<PathBuf>,
    SettingDef {
        name: "worker_tmp_dir",
        section: MECH,
        cli: &["--worker-tmp-dir"],
        meta: Some("DIR"),
        ty: ValueType::OptStr,
        help: "Directory for the worker heartbeat file.",
        status: Status::Different(
            "accepted but unused: workers beat in shared memory (the scoreboard), so no heartbeat file is written (warned by --check-config)",
        ),
        ..BASE
    },
    SettingDef {
        name: "user",
        section: MECH,
        cli: &["-u", "--user"],
        meta: Some("USER"),
        ty: ValueType::OptStr,
        default: DefaultValue::Dynamic("`os.geteuid()` (no change)"),
        help: "Switch worker processes to run as this user (name or uid).",
        check: Some(super::value::check_user),
        ..BASE
    } => user: Option<String>,
    SettingDef {
        name: "group",
        section: MECH,
        cli: &["-g", "--group"],
        meta: Some("GROUP"),
        ty: ValueType::OptStr,
        default: DefaultValue::Dynamic("`os.getegid()` (no change)"),
        help: "Switch worker processes to run as this group (name or gid).",
        check: Some(super::value::check_group),
        ..BASE
    } => group: Option<String>,
    SettingDef {
        name: "umask",
        section: MECH,
        cli: &["-m", "--umask"],
        meta: Some("INT"),
        ty: ValueType::OctalInt,
        default: DefaultValue::Int(0),
        help: "A bit mask for the mode of files written by the server (0022, 0o22, 18).",
        check: Some(super::value::check_mode),
        ..BASE
    } => umask: u32,
    flag("initgroups", MECH, &["--initgroups"], "Give workers all the groups of their user.", Status::Same) => initgroups: bool,
    SettingDef {
        name: "tmp_upload_dir",
        section: MECH,
        ty: ValueType::OptStr,
        help: "Directory to store temporary request data.",
        status: Status::Different("accepted but unused, as in Gunicorn itself (warned by --check-config)"),
        ..BASE
    },
    SettingDef {
        name: "secure_scheme_headers",
        section: MECH,
        ty: ValueType::Dict,
        default: DefaultValue::Dict(&[
            ("X-FORWARDED-PROTOCOL", "ssl"),
            ("X-FORWARDED-PROTO", "https"),
            ("X-FORWARDED-SSL", "on"),
        ]),
        help: "Headers and values a trusted proxy uses to indicate HTTPS.",
        ..BASE
    } => secure_scheme_headers: Vec<(String, String)>,
    SettingDef {
        name: "forwarded_allow_ips",
        section: MECH,
        cli: &["--forwarded-allow-ips"],
        meta: Some("STRING"),
        ty: ValueType::CommaList,
        default: DefaultValue::Dynamic("`$FORWARDED_ALLOW_IPS` if set, else `'127.0.0.1,::1'`"),
        help: "Front-end IPs or networks trusted to set secure headers (comma separated, * for all).",
        check: Some(super::value::check_addr_list),
        ..BASE
    } => forwarded_allow_ips: Vec<String>,
    // ---- Logging
    SettingDef {
        name: "accesslog",
        section: LOG,
        cli: &["--access-logfile"],
        meta: Some("FILE"),
        ty: ValueType::OptStr,
        help: "The access log file to write to; '-' means stdout.",
        ..BASE
    } => accesslog: Option<String>,
    flag("disable_redirect_access_to_syslog", LOG, &["--disable-redirect-access-to-syslog"], "Do not send access logs to syslog.", Status::Same) => disable_redirect_access_to_syslog: bool,
    SettingDef {
        name: "access_log_format",
        section: LOG,
        cli: &["--access-logformat"],
        meta: Some("STRING"),
        default: DefaultValue::Str("%(h)s %(l)s %(u)s %(t)s \"%(r)s\" %(s)s %(b)s \"%(f)s\" \"%(a)s\""),
        help: "The access log format.",
        ..BASE
    } => access_log_format: String,
    SettingDef {
        name: "errorlog",
        section: LOG,
        cli: &["--error-logfile", "--log-file"],
        meta: Some("FILE"),
        default: DefaultValue::Str("-"),
        help: "The error log file to write to; '-' means stderr.",
        ..BASE
    } => errorlog: String,
    SettingDef {
        name: "loglevel",
        section: LOG,
        cli: &["--log-level"],
        meta: Some("LEVEL"),
        default: DefaultValue::Str("info"),
        help: "The error log level: debug, info, warning, error or critical.",
        status: Status::Different("an unknown level name is an error (Gunicorn silently uses info)"),
        check: Some(super::value::check_loglevel),
        ..BASE
    },
    flag("capture_output", LOG, &["--capture-output"], "Redirect stdout/stderr (fd 1 and 2) of master and workers to the error log file (only when errorlog is a file).", Status::Same) => capture_output: bool,
    SettingDef {
        name: "logger_class",
        section: LOG,
        cli: &["--logger-class"],
        meta: Some("STRING"),
        ty: ValueType::Class,
        default: DefaultValue::Str("gunicorn.glogging.Logger"),
        help: "The logger class.",
        status: NO_PYLOGGING,
        ..BASE
    },
    SettingDef {
        name: "logconfig",
        section: LOG,
        cli: &["--log-config"],
        meta: Some("FILE"),
        ty: ValueType::OptStr,
        help: "A Python logging config file (ini format, `logging.config.fileConfig`).",
        status: PYLOGGING,
        ..BASE
    } => logconfig: Option<String>,
    SettingDef {
        name: "logconfig_dict",
        section: LOG,
        ty: ValueType::JsonDict,
        default: DefaultValue::Dict(&[]),
        help: "A Python logging dictConfig dictionary (merged over Gunicorn's CONFIG_DEFAULTS).",
        status: PYLOGGING,
        ..BASE
    },
    SettingDef {
        name: "logconfig_json",
        section: LOG,
        cli: &["--log-config-json"],
        meta: Some("FILE"),
        ty: ValueType::OptStr,
        help: "A Python logging dictConfig in a JSON file.",
        status: PYLOGGING,
        ..BASE
    } => logconfig_json: Option<String>,
    SettingDef {
        name: "syslog_addr",
        section: LOG,
        cli: &["--log-syslog-to"],
        meta: Some("SYSLOG_ADDR"),
        default: DefaultValue::Str("udp://localhost:514"),
        help: "Address to send syslog messages to: udp://HOST:PORT, tcp://HOST:PORT, unix://PATH[#dgram].",
        status: Status::Different(
            "a unix:// path that is a datagram socket (as /dev/log) works without `#dgram` (Gunicorn fails to connect); \
             records the socket cannot take at once are dropped rather than waited for",
        ),
        ..BASE
    } => syslog_addr: String,
    flag("syslog", LOG, &["--log-syslog"], "Send error-log and access-log records to syslog too.", Status::Same) => syslog: bool,
    SettingDef {
        name: "syslog_prefix",
        section: LOG,
        cli: &["--log-syslog-prefix"],
        meta: Some("SYSLOG_PREFIX"),
        ty: ValueType::OptStr,
        help: "The program name in syslog entries: gunicorn.PREFIX.error (default: the process name).",
        status: Status::Same,
        ..BASE
    } => syslog_prefix: Option<String>,
    SettingDef {
        name: "syslog_facility",
        section: LOG,
        cli: &["--log-syslog-facility"],
        meta: Some("SYSLOG_FACILITY"),
        default: DefaultValue::Str("user"),
        help: "The syslog facility name.",
        status: Status::Same,
        ..BASE
    } => syslog_facility: String,
    flag("enable_stdio_inheritance", LOG, &["-R", "--enable-stdio-inheritance"], "Keep stdio open in daemon mode.", Status::NotSupported(
        "it only affects --daemon, which is not supported",
    )),
    SettingDef {
        name: "statsd_host",
        section: LOG,
        cli: &["--statsd-host"],
        meta: Some("STATSD_ADDR"),
        ty: ValueType::OptStr,
        help: "The StatsD server to send metrics to: HOST:PORT (UDP, port 8125 by default) or unix:PATH.",
        status: Status::Same,
        ..BASE
    } => statsd_host: Option<String>,
    SettingDef {
        name: "dogstatsd_tags",
        section: LOG,
        cli: &["--dogstatsd-tags"],
        meta: Some("DOGSTATSD_TAGS"),
        default: DefaultValue::Str(""),
        help: "Comma-separated dogstatsd tags for StatsD metrics.",
        status: Status::Same,
        ..BASE
    } => dogstatsd_tags: String,
    SettingDef {
        name: "statsd_prefix",
        section: LOG,
        cli: &["--statsd-prefix"],
        meta: Some("STATSD_PREFIX"),
        default: DefaultValue::Str(""),
        help: "Prefix for StatsD metric names.",
        status: Status::Same,
        ..BASE
    } => statsd_prefix: String,
    flag("enable_backlog_metric", LOG, &["--enable-backlog-metric"], "Emit the socket backlog as a StatsD metric.", Status::Different(
        "every second the master sums the connections waiting in the TCP listeners' accept queues (TCP_INFO, as Gunicorn), \
         logs `socket backlog: N` at debug level and sends it to --statsd-host as `gunicorn.backlog`, of type `ms` (Gunicorn's histogram); Unix sockets count 0",
    )) => enable_backlog_metric: bool,
    // ---- Process Naming
    SettingDef {
        name: "proc_name",
        section: NAMING,
        cli: &["-n", "--name"],
        meta: Some("STRING"),
        ty: ValueType::OptStr,
        help: "A base for process names in ps and top (default: default_proc_name).",
        status: Status::Different(
            "the title is `rgunicorn: master [NAME]` / `rgunicorn: worker [NAME]` (`ps -o args`), cut to the \
             length of the original command line and environment; the kernel's 15-byte name \
             (`ps -o comm`, top) is NAME itself",
        ),
        ..BASE
    } => proc_name: Option<String>,
    SettingDef {
        name: "default_proc_name",
        section: NAMING,
        default: DefaultValue::Str("gunicorn"),
        help: "Internal: the process name when proc_name is unset (the APP_MODULE when given).",
        status: Status::Different("`rgunicorn` instead of `gunicorn` when no APP_MODULE is given"),
        ..BASE
    } => default_proc_name: String,
    SettingDef {
        name: "pythonpath",
        section: MECH,
        cli: &["--pythonpath"],
        meta: Some("STRING"),
        ty: ValueType::OptStr,
        help: "Comma-separated directories to add to the Python path.",
        ..BASE
    },
    SettingDef {
        name: "paste",
        section: MECH,
        cli: &["--paste", "--paster"],
        meta: Some("STRING"),
        ty: ValueType::OptStr,
        help: "Load a PasteDeploy config file.",
        status: Status::Different(
            "as Gunicorn: PASTE (`FILE` or `FILE#name`) replaces APP_MODULE (one given as well is ignored, with \
             a warning), the app is PasteDeploy's `loadapp(\"config:/abs/FILE\", relative_to=cwd)` in each worker \
             (PasteDeploy must be installed), the file is the logging config when it has a [loggers] section and \
             logconfig is not set, and the process name defaults to it. Only the [app:...] side is read: bind, workers \
             and the rest come from the command line and config file, as with Gunicorn's --paste",
        ),
        ..BASE
    } => paste: Option<String>,
    // ---- Server Hooks
    hook("on_starting", HOOKS, "Called just before the master process is initialized.", Status::Same),
    hook("on_reload", HOOKS, "Called to recycle workers during a reload via SIGHUP.", Status::Same),
    hook("when_ready", HOOKS, "Called just after the server is started.", Status::Same),
    hook("pre_fork", HOOKS, "Called just before a worker is forked.", Status::Same),
    hook("post_fork", HOOKS, "Called just after a worker has been forked.", Status::Same),
    hook("post_worker_init", HOOKS, "Called just after a worker has initialized the application.", Status::Same),
    hook("worker_int", HOOKS, "Called just after a worker exited on SIGINT or SIGQUIT.", Status::Same),
    hook("worker_abort", HOOKS, "Called when a worker received SIGABRT (generally on timeout).", Status::Same),
    hook("pre_exec", HOOKS, "Called just before a new master process is forked.", Status::Same),
    hook("pre_request", HOOKS, "Called just before a worker processes the request.", Status::Same),
    hook("post_request", HOOKS, "Called after a worker processes the request.", Status::Same),
    hook("child_exit", HOOKS, "Called in the master just after a worker has exited.", Status::Same),
    hook("worker_exit", HOOKS, "Called in the worker just before it exits.", Status::Same),
    hook("nworkers_changed", HOOKS, "Called just after the number of workers has changed.", Status::Same),
    hook("on_exit", HOOKS, "Called just before exiting.", Status::Same),
    hook("ssl_context", HOOKS, "Called when an SSLContext is needed.", NO_SSL_CONTEXT),
    // ---- PROXY protocol, uWSGI
    SettingDef {
        name: "proxy_protocol",
        section: MECH,
        cli: &["--proxy-protocol"],
        meta: Some("MODE"),
        action: Action::StoreOptional("auto"),
        ty: ValueType::ProxyMode,
        default: DefaultValue::Str("off"),
        help: "Enable the PROXY protocol: off, v1, v2 or auto.",
        ..BASE
    } => proxy_protocol: String,
    SettingDef {
        name: "proxy_allow_ips",
        section: MECH,
        cli: &["--proxy-allow-from"],
        ty: ValueType::CommaList,
        default: DefaultValue::List(&["127.0.0.1", "::1"]),
        help: "Front-end IPs or networks allowed to send PROXY protocol headers (* for all).",
        check: Some(super::value::check_addr_list),
        ..BASE
    } => proxy_allow_ips: Vec<String>,
    SettingDef {
        name: "protocol",
        section: MECH,
        cli: &["--protocol"],
        meta: Some("STRING"),
        default: DefaultValue::Str("http"),
        help: "The protocol for incoming connections: http or uwsgi.",
        status: NO_UWSGI,
        ..BASE
    },
    SettingDef {
        name: "uwsgi_allow_ips",
        section: MECH,
        cli: &["--uwsgi-allow-from"],
        ty: ValueType::CommaList,
        default: DefaultValue::List(&["127.0.0.1", "::1"]),
        help: "IPs allowed to send uWSGI protocol requests.",
        status: NO_UWSGI,
        ..BASE
    },
    // ---- SSL
    SettingDef {
        name: "keyfile",
        section: SSL,
        cli: &["--keyfile"],
        meta: Some("FILE"),
        ty: ValueType::OptStr,
        help: "SSL key file (PEM). Unset: the key is in certfile.",
        status: Status::Same,
        ..BASE
    } => keyfile: Option<String>,
    SettingDef {
        name: "certfile",
        section: SSL,
        cli: &["--certfile"],
        meta: Some("FILE"),
        ty: ValueType::OptStr,
        help: "SSL certificate file (PEM, the server's certificate first, then its chain). Set: every listener serves HTTPS.",
        status: Status::Same,
        ..BASE
    } => certfile: Option<String>,
    SettingDef {
        name: "ssl_version",
        section: SSL,
        cli: &["--ssl-version"],
        ty: ValueType::Ignored,
        default: DefaultValue::Str("_SSLMethod.PROTOCOL_TLS"),
        help: "SSL version (deprecated and ignored).",
        status: Status::Different("ignored, with a warning, as Gunicorn has done since 21.0"),
        ..BASE
    },
    int("cert_reqs", SSL, &["--cert-reqs"], 0, "Whether a client certificate is required: 0 none, 1 optional, 2 required.",
        Status::Different("1 and 2 need ca_certs (Python would fall back to the system's CAs); the handshake checks the \
                           client's certificate, which the app does not see (see docs/deploy-https.md)")) => cert_reqs: u64,
    SettingDef {
        name: "ca_certs",
        section: SSL,
        cli: &["--ca-certs"],
        meta: Some("FILE"),
        ty: ValueType::OptStr,
        help: "CA certificates file (PEM): the CAs a client certificate must chain to.",
        status: Status::Same,
        ..BASE
    } => ca_certs: Option<String>,
    SettingDef {
        default: DefaultValue::Bool(true),
        ..flag("suppress_ragged_eofs", SSL, &["--suppress-ragged-eofs"], "Suppress ragged EOFs.",
            Status::Different("true: a client that closes TCP without TLS close_notify ends its request body as a clean \
                               end of input would; false: the connection is dropped at once, the app's read fails"))
    } => suppress_ragged_eofs: bool,
    flag("do_handshake_on_connect", SSL, &["--do-handshake-on-connect"], "Perform the SSL handshake on connect.",
        Status::Different("accepted, no effect: the handshake always completes in Rust, under tls_handshake_timeout, \
                           before the connection reaches a worker slot")),
    SettingDef {
        name: "ciphers",
        section: SSL,
        cli: &["--ciphers"],
        ty: ValueType::OptStr,
        help: "SSL cipher suite, as an OpenSSL cipher list.",
        status: Status::Different("OpenSSL names and aliases are mapped to rustls' TLS 1.2 suites (all ECDHE with AES-GCM or \
                                   ChaCha20-Poly1305); a name rustls cannot offer is refused at start. As with OpenSSL, \
                                   TLS 1.3 suites are not affected"),
        ..BASE
    } => ciphers: Option<String>,
    SettingDef {
        name: "raw_paste_global_conf",
        section: MECH,
        cli: &["--paste-global"],
        meta: Some("CONF"),
        action: Action::Append,
        ty: ValueType::StrList,
        default: DefaultValue::List(&[]),
        help: "A PasteDeploy global config variable, key=value; repeatable.",
        status: Status::Same,
        check: Some(super::value::check_paste_global),
    } => raw_paste_global_conf: Vec<String>,
    // ---- HTTP parsing switches
    flag("permit_obsolete_folding", MECH, &["--permit-obsolete-folding"], "Permit obsolete HTTP header line folding.", NO_LOOSE_HTTP),
    flag("strip_header_spaces", MECH, &["--strip-header-spaces"], "Strip spaces between a header name and the colon.", NO_LOOSE_HTTP),
    flag("permit_unconventional_http_method", MECH, &["--permit-unconventional-http-method"], "Permit HTTP methods not matching conventions.", NO_LOOSE_HTTP),
    flag("permit_unconventional_http_version", MECH, &["--permit-unconventional-http-version"], "Permit HTTP versions not matching conventions.", NO_LOOSE_HTTP),
    flag("casefold_http_method", MECH, &["--casefold-http-method"], "Transform received HTTP methods to uppercase.", NO_LOOSE_HTTP),
    SettingDef {
        name: "forwarder_headers",
        section: MECH,
        cli: &["--forwarder-headers"],
        ty: ValueType::CommaList,
        default: DefaultValue::List(&["SCRIPT_NAME", "PATH_INFO"]),
        help: "Headers with underscores a trusted proxy may set (SCRIPT_NAME sets the environ's SCRIPT_NAME).",
        ..BASE
    },
    SettingDef {
        name: "header_map",
        section: MECH,
        cli: &["--header-map"],
        default: DefaultValue::Str("drop"),
        help: "How header names with underscores map into the environ: drop, refuse or dangerous.",
        status: Status::Different(
            "as Gunicorn: `drop` leaves such a header out of the environ, `refuse` answers the request 400 before the \
             app, `dangerous` maps it as if it had dashes (`X_Api_Key` → `HTTP_X_API_KEY`, joined with an `X-Api-Key` \
             if both come); the names in forwarder_headers from a trusted proxy always map. Unlike Gunicorn, a \
             `SCRIPT_NAME` header under `dangerous` becomes `HTTP_SCRIPT_NAME`, not the environ's SCRIPT_NAME, \
             unless a trusted proxy sent it. ASGI scopes carry every header as sent, whatever this says, except that \
             `refuse` refuses them too",
        ),
        check: Some(super::value::check_header_map),
        ..BASE
    } => header_map: String,
    SettingDef {
        name: "root_path",
        section: MECH,
        cli: &["--root-path"],
        meta: Some("STRING"),
        default: DefaultValue::Str(""),
        help: "The root path for ASGI applications.",
        status: Status::Same,
        ..BASE
    },
    // ---- ASGI and parser
    SettingDef {
        name: "asgi_loop",
        section: WORKERS,
        cli: &["--asgi-loop"],
        meta: Some("STRING"),
        default: DefaultValue::Str("auto"),
        help: "Event loop implementation for ASGI workers: auto, asyncio or uvloop.",
        status: Status::Same,
        ..BASE
    },
    SettingDef {
        name: "asgi_lifespan",
        section: WORKERS,
        cli: &["--asgi-lifespan"],
        meta: Some("STRING"),
        default: DefaultValue::Str("auto"),
        help: "ASGI lifespan protocol handling: auto, on or off.",
        status: Status::Same,
        ..BASE
    },
    int("asgi_disconnect_grace_period", WORKERS, &["--asgi-disconnect-grace-period"], 3, "Seconds ASGI apps get to handle a client disconnect.", Status::Same),
    int("websocket_max_message_size", WORKERS, &["--websocket-max-message-size"], 16 * 1024 * 1024, "Largest WebSocket message, in bytes, the asgi worker accepts (a larger frame or fragmented message closes the connection with 1009); 0 for no limit.", Status::Same),
    SettingDef {
        name: "http_parser",
        section: WORKERS,
        cli: &["--http-parser"],
        meta: Some("STRING"),
        default: DefaultValue::Str("auto"),
        help: "HTTP parser implementation: auto, fast or python.",
        status: Status::Different("`auto` and `fast` both mean rgunicorn's Rust parser; `python` is refused"),
        check: Some(super::value::check_http_parser),
        ..BASE
    },
    // ---- HTTP/2
    SettingDef {
        name: "http_protocols",
        section: HTTP2,
        cli: &["--http-protocols"],
        meta: Some("STRING"),
        default: DefaultValue::Str("h1"),
        help: "HTTP protocol versions to support, comma separated, in order of preference: h1 (HTTP/1.1), \
               h2 (HTTP/2: offered by ALPN on TLS listeners, or cleartext with http2_cleartext), h3 (accepted, not served).",
        status: Status::Different("HTTP/2 is served by Rust (the `h2` crate) for every worker class but tornado; each \
                                   stream is one request and takes a worker slot like an HTTP/1.1 one (see docs/deploy-https.md)"),
        check: Some(super::value::check_http_protocols),
        ..BASE
    } => http_protocols: String,
    SettingDef {
        name: "http2_cleartext",
        section: HTTP2,
        cli: &["--http2-cleartext"],
        meta: Some("STRING"),
        default: DefaultValue::Str("off"),
        help: "Cleartext HTTP/2 (h2c) on plain listeners: off, prior-knowledge (a connection that opens with the \
               HTTP/2 preface), upgrade, or both. Only peers in forwarded_allow_ips; needs h2 in http_protocols; \
               ignored with TLS.",
        status: Status::Different("prior-knowledge as Gunicorn; `upgrade` (and the upgrade half of `both`) is accepted \
                                   but an `Upgrade: h2c` request is answered over HTTP/1.1, as RFC 9113 lets a server do"),
        check: Some(super::value::check_http2_cleartext),
        ..BASE
    } => http2_cleartext: String,
    int("http2_max_concurrent_streams", HTTP2, &["--http2-max-concurrent-streams"], 100,
        "Maximum concurrent HTTP/2 streams per connection.", Status::Same) => http2_max_concurrent_streams: u64,
    int("http2_initial_window_size", HTTP2, &["--http2-initial-window-size"], 65535,
        "Initial HTTP/2 flow control window size in bytes (per stream, and for the connection).",
        Status::Same) => http2_initial_window_size: u64,
    SettingDef {
        check: Some(super::value::check_http2_frame_size),
        ..int("http2_max_frame_size", HTTP2, &["--http2-max-frame-size"], 16384,
              "Maximum HTTP/2 frame payload size in bytes (16384 to 16777215).", Status::Same)
    } => http2_max_frame_size: u64,
    int("http2_max_header_list_size", HTTP2, &["--http2-max-header-list-size"], 65536,
        "Maximum size of an HTTP/2 header list in bytes (after HPACK decompression); 0 for no limit.",
        Status::Same) => http2_max_header_list_size: u64,
    // ---- Dirty arbiters
    SettingDef {
        name: "dirty_apps",
        section: DIRTY,
        cli: &["--dirty-app"],
        meta: Some("STRING"),
        action: Action::Append,
        ty: ValueType::StrList,
        default: DefaultValue::List(&[]),
        help: "Applications to load in the dirty worker pool.",
        status: NO_DIRTY,
        ..BASE
    },
    int("dirty_workers", DIRTY, &["--dirty-workers"], 0, "The number of dirty worker processes.", NO_DIRTY),
    int("dirty_timeout", DIRTY, &["--dirty-timeout"], 300, "Timeout for a dirty task in seconds.", NO_DIRTY),
    int("dirty_threads", DIRTY, &["--dirty-threads"], 1, "The number of threads per dirty worker.", NO_DIRTY),
    int("dirty_graceful_timeout", DIRTY, &["--dirty-graceful-timeout"], 30, "Timeout for graceful dirty worker shutdown in seconds.", NO_DIRTY),
    hook("on_dirty_starting", DIRTY_HOOKS, "Called just before the dirty arbiter is initialized.", NO_DIRTY),
    hook("dirty_post_fork", DIRTY_HOOKS, "Called just after a dirty worker has been forked.", NO_DIRTY),
    hook("dirty_worker_init", DIRTY_HOOKS, "Called after a dirty worker has initialized its apps.", NO_DIRTY),
    hook("dirty_worker_exit", DIRTY_HOOKS, "Called when a dirty worker has exited.", NO_DIRTY),
    // ---- Control socket (Gunicorn 25.1)
    SettingDef {
        name: "control_socket",
        section: CONTROL,
        cli: &["--control-socket"],
        meta: Some("PATH"),
        ty: ValueType::OptStr,
        default: DefaultValue::Dynamic(
            "`$RUNTIME_DIRECTORY/rgunicorn.ctl` (systemd `RuntimeDirectory=`), else \
             `$XDG_RUNTIME_DIR/rgunicorn.ctl`, else `/tmp/rgunicorn-UID/rgunicorn.ctl` in a \
             private directory (0700) that rgunicorn creates",
        ),
        help: "Unix socket path for the control interface (rgunicornctl).",
        status: Status::Different(
            "serves rgunicorn's JSON protocol to `rgunicornctl`, not `gunicornc`; \
             the default file is named `rgunicorn.ctl`",
        ),
        ..BASE
    },
    SettingDef {
        name: "control_socket_mode",
        section: CONTROL,
        cli: &["--control-socket-mode"],
        meta: Some("INT"),
        ty: ValueType::OctalInt,
        default: DefaultValue::Int(0o600),
        help: "Permission mode of the control socket (0600: owner only).",
        check: Some(super::value::check_mode),
        ..BASE
    } => control_socket_mode: u32,
    flag("control_socket_disable", CONTROL, &["--no-control-socket"], "Do not create a control socket.", Status::Same) => control_socket_disable: bool,
    // ---- rgunicorn's own
    SettingDef {
        name: "control_allow_uid",
        section: CONTROL,
        cli: &["--control-allow-uid"],
        meta: Some("UID"),
        action: Action::Append,
        ty: ValueType::StrList,
        default: DefaultValue::List(&[]),
        help: "Also allow this numeric uid to use the control socket; repeatable.",
        status: Status::Rgunicorn,
        check: Some(super::value::check_ids),
    } => control_allow_uid: Vec<u32>,
    SettingDef {
        name: "control_allow_gid",
        section: CONTROL,
        cli: &["--control-allow-gid"],
        meta: Some("GID"),
        action: Action::Append,
        ty: ValueType::StrList,
        default: DefaultValue::List(&[]),
        help: "Also allow members of this numeric gid to use the control socket; repeatable.",
        status: Status::Rgunicorn,
        check: Some(super::value::check_ids),
    } => control_allow_gid: Vec<u32>,
    SettingDef {
        name: "control_readonly_gid",
        section: CONTROL,
        cli: &["--control-readonly-gid"],
        meta: Some("GID"),
        action: Action::Append,
        ty: ValueType::StrList,
        default: DefaultValue::List(&[]),
        help: "Members of this numeric gid may run only read-only control commands \
               (status, health); repeatable. The socket's mode must let them connect.",
        status: Status::Rgunicorn,
        check: Some(super::value::check_ids),
    } => control_readonly_gid: Vec<u32>,
    int("tls_handshake_timeout", SSL, &["--tls-handshake-timeout"], 10,
        "Seconds a client may take to complete the TLS handshake; it is done in Rust and holds no \
         worker slot meanwhile, and a client still handshaking then is closed.",
        Status::Rgunicorn) => tls_handshake_timeout: u64,
    flag("log_journald", LOG, &["--log-journald"], "Send logs to the systemd journal with structured fields.", Status::Rgunicorn) => log_journald: bool,
    // Slow clients (issue 11): kept out of Python by reading bodies and
    // writing responses in Rust.
    int("body_preread_size", SECURITY, &["--body-preread-size"], 16 * 1024 * 1024,
        "Request bodies up to this many bytes are read whole before the app is called, so a slow \
         upload never holds a worker slot; when the client sent `Expect: 100-continue`, rgunicorn \
         answers `100 Continue` itself. Larger bodies are streamed to the app as they arrive \
         (`100 Continue` on its first read), under the same rate rule. 0 = stream every body.",
        Status::Rgunicorn) => body_preread_size: u64,
    int("body_buffer_size", SECURITY, &["--body-buffer-size"], 64 * 1024,
        "Pre-read request bodies up to this many bytes stay in memory; larger ones go to an \
         unlinked temporary file in $TMPDIR.",
        Status::Rgunicorn) => body_buffer_size: usize,
    int("body_timeout", SECURITY, &["--body-timeout"], 10,
        "Seconds a request body may take whatever its speed; after that it must have arrived at \
         --body-min-rate on average. A slower client gets `408 Request Timeout` and is closed.",
        Status::Rgunicorn) => body_timeout: u64,
    int("body_min_rate", SECURITY, &["--body-min-rate"], 1024,
        "Minimum average bytes per second of a request body once --body-timeout has passed; \
         0 = no rate, --body-timeout is then the longest pause between reads.",
        Status::Rgunicorn) => body_min_rate: u64,
    int("response_buffer_size", SECURITY, &["--response-buffer-size"], 256 * 1024,
        "Response bytes a client has not taken yet are kept in memory up to this many per \
         connection, then in an unlinked temporary file, so the app's slot is freed before a \
         slow client has read its response.",
        Status::Rgunicorn) => response_buffer_size: usize,
    int("response_spool_max", SECURITY, &["--response-spool-max"], 1024 * 1024 * 1024,
        "Most response bytes (memory and temporary files) one worker holds for slow clients; \
         past it the app's writes wait for the client, as without buffering.",
        Status::Rgunicorn) => response_spool_max: u64,
    int("response_timeout", SECURITY, &["--response-timeout"], 30,
        "Seconds a client may take to read a response whatever its speed; after that it must \
         have read at --response-min-rate on average, or it is cut off.",
        Status::Rgunicorn) => response_timeout: u64,
    int("response_min_rate", SECURITY, &["--response-min-rate"], 1024,
        "Minimum average bytes per second a client reads a response at once --response-timeout \
         has passed; 0 = no rate, --response-timeout is then the longest stall.",
        Status::Rgunicorn) => response_min_rate: u64,
}
