//! The second pass: merge defaults < config file < `GUNICORN_CMD_ARGS` <
//! `RGUNICORN_CMD_ARGS` < command line, validate, refuse not-supported
//! settings that are not at their default, and build the typed
//! [`Settings`]. Also `--print-config`.

use std::path::PathBuf;

use super::table::{DefaultValue, SettingDef, Status, TABLE};
use super::value::{self, Value};
use super::{CliPass, ConfigError, HookRef, RawValue, Settings, WorkerClass};

/// Values from one source (`GUNICORN_CMD_ARGS`, ..., the command line).
#[derive(Debug)]
pub(crate) struct Layer {
    pub(crate) label: String,
    pub(crate) values: Vec<(&'static SettingDef, Value)>,
}

impl Layer {
    pub(crate) fn new(label: &str) -> Self {
        Layer {
            label: label.to_string(),
            values: Vec::new(),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.values
            .iter()
            .rev()
            .find(|(d, _)| d.name == name)
            .map(|(_, v)| v)
    }
}

/// The environment variables the defaults depend on, read once in
/// `parse_cli`.
#[derive(Debug, Default)]
pub(crate) struct EnvSnapshot {
    web_concurrency: Option<String>,
    port: Option<String>,
    forwarded_allow_ips: Option<String>,
    sendfile: Option<String>,
    control_paths: crate::control::path::PathEnv,
    pub(crate) cwd: Option<PathBuf>,
}

impl EnvSnapshot {
    pub(crate) fn capture(env: &dyn Fn(&str) -> Option<String>) -> Self {
        EnvSnapshot {
            web_concurrency: env("WEB_CONCURRENCY"),
            port: env("PORT"),
            forwarded_allow_ips: env("FORWARDED_ALLOW_IPS"),
            sendfile: env("SENDFILE"),
            control_paths: crate::control::path::PathEnv::capture(env),
            cwd: std::env::current_dir().ok(),
        }
    }
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug)]
enum Source {
    Default,
    Label(String),
}

impl Source {
    fn label(&self) -> &str {
        match self {
            Source::Default => "default",
            Source::Label(l) => l,
        }
    }
}

fn setting_error(def: &SettingDef, source: &Source, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError::invalid(format!("{}: setting `{}`: {msg}", source.label(), def.name))
}

fn not_supported(def: &SettingDef, why: &str, source: &Source) -> ConfigError {
    ConfigError::invalid(format!(
        "{}: rgunicorn does not support `{}` ({why})",
        source.label(),
        def.name
    ))
}

/// The default of a setting whose default depends on the environment.
fn dynamic_default(def: &SettingDef, env: &EnvSnapshot) -> Result<Value, ConfigError> {
    Ok(match def.name {
        "workers" => match &env.web_concurrency {
            Some(text) => value::from_cli(def.ty, text).map_err(|m| {
                ConfigError::invalid(format!("WEB_CONCURRENCY: setting `workers`: {m}"))
            })?,
            None => Value::Int(1),
        },
        "bind" => Value::List(vec![match &env.port {
            Some(port) => format!("0.0.0.0:{port}"),
            None => "127.0.0.1:8000".to_string(),
        }]),
        "forwarded_allow_ips" => value::from_cli(
            def.ty,
            env.forwarded_allow_ips
                .as_deref()
                .unwrap_or("127.0.0.1,::1"),
        )
        .map_err(ConfigError::invalid)?,
        "control_socket" => Value::Str(
            crate::control::path::default_socket(&env.control_paths)
                .display()
                .to_string(),
        ),
        "config" => Value::Str("./gunicorn.conf.py".into()),
        // chdir, user, group: None means "leave as is".
        _ => Value::None,
    })
}

fn default_of(def: &SettingDef, env: &EnvSnapshot) -> Result<Value, ConfigError> {
    match def.default {
        DefaultValue::Dynamic(_) => dynamic_default(def, env),
        other => Ok(other.to_value()),
    }
}

/// Second pass: merge defaults < file values < env args < CLI, validate,
/// produce Settings.
///
/// `file_values` are the config file's module globals; names that are not
/// settings are ignored, as Gunicorn does, and listed in
/// [`Settings::warnings`]. `file_label` names the file in messages.
pub fn resolve(
    cli: CliPass,
    file_values: Vec<(String, RawValue)>,
    file_label: Option<String>,
) -> Result<Settings, ConfigError> {
    let mut warnings: Vec<String> = cli
        .extra_args
        .iter()
        .map(|a| {
            format!(
                "command line: extra argument {} ignored",
                value::py_str_repr(a)
            )
        })
        .collect();
    let mut values: Vec<(Value, Source)> = Vec::with_capacity(TABLE.len());
    for def in TABLE {
        let mut v = default_of(def, &cli.env)?;
        // Gunicorn sets default_proc_name to the APP_MODULE before it reads
        // the config file.
        if def.name == "default_proc_name" {
            v = Value::Str(cli.app.clone().unwrap_or_else(|| "rgunicorn".into()));
        }
        values.push((v, Source::Default));
    }
    let index = |name: &str| TABLE.iter().position(|d| d.name == name);

    let file_source = Source::Label(file_label.unwrap_or_else(|| "config file".into()));
    for (name, raw) in &file_values {
        let Some(i) = index(name) else {
            if !name.starts_with('_') {
                warnings.push(format!(
                    "{}: `{name}` is not a setting; ignored",
                    file_source.label()
                ));
            }
            continue;
        };
        let def = &TABLE[i];
        let v = value::from_raw(def.ty, raw).map_err(|m| match def.status {
            // A value of the wrong type is still "not the default".
            Status::NotSupported(why) => not_supported(def, why, &file_source),
            _ => setting_error(def, &file_source, m),
        })?;
        values[i] = (v, file_source.clone());
    }
    for layer in &cli.layers {
        for (def, v) in &layer.values {
            if let Some(i) = index(def.name) {
                values[i] = (v.clone(), Source::Label(layer.label.clone()));
            }
        }
    }

    for (def, (v, source)) in TABLE.iter().zip(&values) {
        if let Status::NotSupported(why) = def.status {
            if *v != default_of(def, &cli.env)? {
                return Err(not_supported(def, why, source));
            }
        }
        if let Some(check) = def.check {
            check(v).map_err(|m| setting_error(def, source, m))?;
        }
        let ignored = matches!(
            def.name,
            "worker_tmp_dir" | "tmp_upload_dir" | "ssl_version"
        );
        if ignored && *v != default_of(def, &cli.env)? {
            warnings.push(format!(
                "{}: `{}` is accepted but has no effect in rgunicorn",
                source.label(),
                def.name
            ));
        }
    }

    build(&cli, &values, warnings)
}

/// Typed access to the merged values. The table guarantees each setting's
/// value has its type's shape; a mismatch would be a table bug, caught by
/// the tests, and falls back to the type's empty value.
struct Get<'a> {
    values: &'a [(Value, Source)],
}

impl<'a> Get<'a> {
    fn entry(&self, name: &str) -> (&'a SettingDef, &'a Value, &'a Source) {
        let i = TABLE.iter().position(|d| d.name == name);
        debug_assert!(i.is_some(), "unknown setting {name}");
        let i = i.unwrap_or(0);
        (&TABLE[i], &self.values[i].0, &self.values[i].1)
    }

    fn bool(&self, name: &str) -> bool {
        matches!(self.entry(name).1, Value::Bool(true))
    }

    fn int<T: TryFrom<i64>>(&self, name: &str) -> Result<T, ConfigError> {
        let (def, v, source) = self.entry(name);
        let n = match v {
            Value::Int(n) => *n,
            _ => 0,
        };
        T::try_from(n).map_err(|_| setting_error(def, source, format!("{n} is too large")))
    }

    fn opt_str(&self, name: &str) -> Option<String> {
        match self.entry(name).1 {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    fn str(&self, name: &str) -> String {
        self.opt_str(name).unwrap_or_default()
    }

    fn list(&self, name: &str) -> Vec<String> {
        match self.entry(name).1 {
            Value::List(l) => l.clone(),
            _ => Vec::new(),
        }
    }
}

fn build(
    cli: &CliPass,
    values: &[(Value, Source)],
    warnings: Vec<String>,
) -> Result<Settings, ConfigError> {
    let g = Get { values };
    let wsgi_app = cli.app.clone().or_else(|| g.opt_str("wsgi_app"));
    if wsgi_app.is_none() {
        return Err(ConfigError::invalid(
            "No application module specified.".into(),
        ));
    }
    let worker_class = value::worker_class_of(&g.str("worker_class")).unwrap_or(WorkerClass::Sync);
    let ids =
        |name: &str| -> Vec<u32> { g.list(name).iter().filter_map(|s| s.parse().ok()).collect() };
    let sendfile = match g.entry("sendfile").1 {
        Value::Bool(b) => *b,
        _ => match &cli.env.sendfile {
            Some(s) => matches!(s.to_ascii_lowercase().as_str(), "y" | "1" | "yes" | "true"),
            None => true,
        },
    };
    let hooks = TABLE
        .iter()
        .zip(values)
        .filter_map(|(d, (v, _))| match v {
            Value::Hook(Some(h)) => Some((d.name.to_string(), *h)),
            _ => None,
        })
        .collect::<Vec<(String, HookRef)>>();
    let no_control_socket = g.bool("control_socket_disable");
    let chdir = g.opt_str("chdir").map(|d| {
        let p = PathBuf::from(d);
        match (&cli.env.cwd, p.is_absolute()) {
            (Some(cwd), false) => cwd.join(p),
            _ => p,
        }
    });
    let config = cli.config_given().or_else(|| {
        cli.default_config_file()
            .map(|_| "./gunicorn.conf.py".to_string())
    });

    let mut printed: Vec<(&'static str, String)> = TABLE
        .iter()
        .zip(values)
        .map(|(d, (v, _))| (d.name, value::render(v, d.name)))
        .collect();
    for (name, text) in printed.iter_mut() {
        match *name {
            "chdir" => {
                if let Some(dir) = chdir.as_ref().or(cli.env.cwd.as_ref()) {
                    *text = dir.display().to_string();
                }
            }
            // SAFETY: geteuid/getegid cannot fail and touch no memory.
            "user" if matches!(g.entry("user").1, Value::None) => {
                *text = unsafe { libc::geteuid() }.to_string()
            }
            "group" if matches!(g.entry("group").1, Value::None) => {
                *text = unsafe { libc::getegid() }.to_string()
            }
            _ => {}
        }
    }
    printed.sort_by(|a, b| a.0.cmp(b.0));

    Ok(Settings {
        bind: g.list("bind"),
        backlog: g.int("backlog")?,
        workers: g.int("workers")?,
        worker_class,
        threads: g.int("threads")?,
        worker_connections: g.int("worker_connections")?,
        max_requests: g.int("max_requests")?,
        max_requests_jitter: g.int("max_requests_jitter")?,
        timeout: g.int("timeout")?,
        graceful_timeout: g.int("graceful_timeout")?,
        keepalive: g.int("keepalive")?,
        limit_request_line: g.int("limit_request_line")?,
        limit_request_fields: g.int("limit_request_fields")?,
        limit_request_field_size: g.int("limit_request_field_size")?,
        body_preread_size: g.int("body_preread_size")?,
        body_buffer_size: g.int("body_buffer_size")?,
        body_timeout: g.int("body_timeout")?,
        body_min_rate: g.int("body_min_rate")?,
        response_buffer_size: g.int("response_buffer_size")?,
        response_spool_max: g.int("response_spool_max")?,
        response_timeout: g.int("response_timeout")?,
        response_min_rate: g.int("response_min_rate")?,
        preload_app: g.bool("preload_app"),
        chdir,
        pythonpath: g
            .opt_str("pythonpath")
            .map(|p| {
                p.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default(),
        raw_env: g.list("raw_env"),
        pidfile: g.opt_str("pidfile").map(PathBuf::from),
        user: g.opt_str("user"),
        group: g.opt_str("group"),
        umask: g.int("umask")?,
        initgroups: g.bool("initgroups"),
        proc_name: g.opt_str("proc_name"),
        default_proc_name: g.str("default_proc_name"),
        loglevel: g.str("loglevel").to_ascii_lowercase(),
        errorlog: g.str("errorlog"),
        accesslog: g.opt_str("accesslog"),
        access_log_format: g.str("access_log_format"),
        capture_output: g.bool("capture_output"),
        syslog: g.bool("syslog"),
        syslog_addr: g.str("syslog_addr"),
        syslog_prefix: g.opt_str("syslog_prefix"),
        syslog_facility: g.str("syslog_facility"),
        disable_redirect_access_to_syslog: g.bool("disable_redirect_access_to_syslog"),
        statsd_host: g.opt_str("statsd_host"),
        statsd_prefix: g.str("statsd_prefix"),
        dogstatsd_tags: g.str("dogstatsd_tags"),
        logconfig: g.opt_str("logconfig"),
        logconfig_dict_json: g.opt_str("logconfig_dict").filter(|j| j != "{}"),
        logconfig_json: g.opt_str("logconfig_json"),
        reuse_port: g.bool("reuse_port"),
        sendfile,
        forwarded_allow_ips: g.list("forwarded_allow_ips"),
        secure_scheme_headers: match g.entry("secure_scheme_headers").1 {
            Value::Dict(d) => d.clone(),
            _ => Vec::new(),
        },
        forwarder_headers: g
            .list("forwarder_headers")
            .iter()
            .map(|h| h.to_ascii_uppercase())
            .collect(),
        proxy_protocol: g.str("proxy_protocol"),
        proxy_allow_ips: g.list("proxy_allow_ips"),
        wsgi_app,
        config,
        print_config: g.bool("print_config"),
        check_config: g.bool("check_config"),
        control_socket: if no_control_socket {
            None
        } else {
            g.opt_str("control_socket").map(PathBuf::from)
        },
        control_socket_explicit: !matches!(g.entry("control_socket").2, Source::Default),
        control_socket_mode: g.int("control_socket_mode")?,
        no_control_socket,
        control_allow_uid: ids("control_allow_uid"),
        control_allow_gid: ids("control_allow_gid"),
        control_readonly_gid: ids("control_readonly_gid"),
        log_journald: g.bool("log_journald"),
        hooks,
        warnings,
        printed,
    })
}

/// `--print-config` output: every setting as `name = value`, sorted, names
/// padded to the longest, as Gunicorn prints its `Config`.
pub fn print_config(s: &Settings) -> String {
    let width = s.printed.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    s.printed
        .iter()
        .map(|(k, v)| format!("{k:width$} = {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}
