//! The second pass: merge defaults < config file < `GUNICORN_CMD_ARGS` <
//! `RGUNICORN_CMD_ARGS` < command line, validate, refuse not-supported
//! settings that are not at their default, and build the typed
//! [`Settings`]. Also `--print-config`.

use std::path::PathBuf;

use super::table::{setting, DefaultValue, SettingDef, Status, TableSettings, TABLE};
use super::value::{self, Value, ValueType};
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

    /// The last value given for setting number `i` (see [`setting!`]).
    pub(crate) fn get(&self, i: usize) -> Option<&Value> {
        let name = TABLE[i].name;
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

/// The default of setting number `i`, whose default depends on the
/// environment.
fn dynamic_default(i: usize, env: &EnvSnapshot) -> Result<Value, ConfigError> {
    const WORKERS: usize = setting!("workers");
    const BIND: usize = setting!("bind");
    const FORWARDED_ALLOW_IPS: usize = setting!("forwarded_allow_ips");
    const CONTROL_SOCKET: usize = setting!("control_socket");
    const CONFIG: usize = setting!("config");
    let def = &TABLE[i];
    Ok(match i {
        WORKERS => match &env.web_concurrency {
            Some(text) => value::from_cli(def.ty, text).map_err(|m| {
                ConfigError::invalid(format!("WEB_CONCURRENCY: setting `workers`: {m}"))
            })?,
            None => Value::Int(1),
        },
        BIND => Value::List(vec![match &env.port {
            Some(port) => format!("0.0.0.0:{port}"),
            None => "127.0.0.1:8000".to_string(),
        }]),
        FORWARDED_ALLOW_IPS => value::from_cli(
            def.ty,
            env.forwarded_allow_ips
                .as_deref()
                .unwrap_or("127.0.0.1,::1"),
        )
        .map_err(ConfigError::invalid)?,
        CONTROL_SOCKET => Value::Str(
            crate::control::path::default_socket(&env.control_paths)
                .display()
                .to_string(),
        ),
        CONFIG => Value::Str("./gunicorn.conf.py".into()),
        // chdir, user, group: None means "leave as is".
        _ => Value::None,
    })
}

/// The default of setting number `i`.
fn default_of(i: usize, env: &EnvSnapshot) -> Result<Value, ConfigError> {
    match TABLE[i].default {
        DefaultValue::Dynamic(_) => dynamic_default(i, env),
        other => Ok(other.to_value()),
    }
}

/// Settings accepted for compatibility that do nothing here; a value other
/// than the default is warned about.
const NO_EFFECT: [usize; 3] = [
    setting!("worker_tmp_dir"),
    setting!("tmp_upload_dir"),
    setting!("ssl_version"),
];

/// The setting a config-file name was probably meant to be: the closest by
/// edit distance (ignoring case), if close enough to be a typo. `pick`
/// limits the candidates.
pub(crate) fn closest_setting(
    name: &str,
    pick: impl Fn(&SettingDef) -> bool,
) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    let limit = if lower.chars().count() <= 5 { 1 } else { 2 };
    TABLE
        .iter()
        .filter(|d| pick(d))
        .map(|d| (strsim::damerau_levenshtein(&lower, d.name), d.name))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// What to say about a config-file name that is not a setting, if
/// anything. Gunicorn config files define helpers freely: imports,
/// functions, classes and `_private` names are left alone, except a
/// function or class named like a hook (`def post_frok(...)`), which is
/// surely a typo. Any other value was meant as a setting: it is warned
/// about, with a did-you-mean when a setting's name is close.
fn unknown_name_warning(name: &str, raw: &RawValue, label: &str) -> Option<String> {
    if name.starts_with('_') {
        return None;
    }
    let helper = match raw {
        RawValue::Module(_) => return None,
        RawValue::Callable(_) | RawValue::Class(_) => true,
        _ => false,
    };
    let guess = closest_setting(name, |d| !helper || d.ty == ValueType::Callable);
    match guess {
        Some(s) => Some(format!(
            "{label}: `{name}` is not a setting (did you mean `{s}`?); ignored"
        )),
        None if helper => None,
        None => Some(format!("{label}: `{name}` is not a setting; ignored")),
    }
}

/// Second pass: merge defaults < file values < env args < CLI, validate,
/// produce Settings.
///
/// `file_values` are the config file's module globals; names that are not
/// settings are ignored, as Gunicorn does, and all but the file's helpers
/// are listed in [`Settings::warnings`], with a did-you-mean when a
/// setting's name is close. A value that cannot be converted is an error
/// naming the setting. `file_label` names the file in messages.
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
    for i in 0..TABLE.len() {
        let mut v = default_of(i, &cli.env)?;
        // Gunicorn sets default_proc_name to the APP_MODULE before it reads
        // the config file.
        if i == setting!("default_proc_name") {
            v = Value::Str(cli.app.clone().unwrap_or_else(|| "rgunicorn".into()));
        }
        values.push((v, Source::Default));
    }
    let index = |name: &str| TABLE.iter().position(|d| d.name == name);

    let file_source = Source::Label(file_label.unwrap_or_else(|| "config file".into()));
    for (name, raw) in &file_values {
        let Some(i) = index(name) else {
            warnings.extend(unknown_name_warning(name, raw, file_source.label()));
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

    for (i, (def, (v, source))) in TABLE.iter().zip(&values).enumerate() {
        if let Status::NotSupported(why) = def.status {
            if *v != default_of(i, &cli.env)? {
                return Err(not_supported(def, why, source));
            }
        }
        if let Some(check) = def.check {
            check(v).map_err(|m| setting_error(def, source, m))?;
        }
        if NO_EFFECT.contains(&i) && *v != default_of(i, &cli.env)? {
            warnings.push(format!(
                "{}: `{}` is accepted but has no effect in rgunicorn",
                source.label(),
                def.name
            ));
        }
    }

    build(&cli, &values, warnings)
}

/// The merged values, by a setting's index in the table
/// (`g.str(setting!("loglevel"))`: the name is checked at compile time), for
/// the derived fields. The table guarantees each setting's value has its
/// type's shape; a mismatch would be a table bug, caught by the tests, and
/// falls back to the type's empty value.
struct Get<'a> {
    values: &'a [(Value, Source)],
}

impl<'a> Get<'a> {
    fn entry(&self, i: usize) -> (&'static SettingDef, &'a Value, &'a Source) {
        (&TABLE[i], &self.values[i].0, &self.values[i].1)
    }

    fn opt_str(&self, i: usize) -> Option<String> {
        match self.entry(i).1 {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    fn str(&self, i: usize) -> String {
        self.opt_str(i).unwrap_or_default()
    }

    fn list(&self, i: usize) -> Vec<String> {
        match self.entry(i).1 {
            Value::List(l) => l.clone(),
            _ => Vec::new(),
        }
    }
}

/// The typed [`Settings`]: the settings used as they are come from the
/// `--paste FILE[#name]`, as Gunicorn's: the app URI PasteDeploy's
/// `loadapp` takes (`config:` and the absolute path; the worker's
/// `import_app` knows it by the `/` no attribute name starts with), the file
/// as the logging config when it has a `[loggers]` section and no logconfig
/// is set, and as the default process name.
fn paste_app(
    paste: &str,
    cli: &CliPass,
    g: &Get<'_>,
    table: &mut TableSettings,
    warnings: &mut Vec<String>,
) -> Result<String, ConfigError> {
    let (file, name) = match paste.split_once('#') {
        Some((f, n)) => (f, Some(n)),
        None => (paste, None),
    };
    let abs = std::path::absolute(file)
        .map_err(|e| ConfigError::invalid(format!("paste {file:?}: {e}")))?;
    let text = std::fs::read_to_string(&abs)
        .map_err(|e| ConfigError::invalid(format!("paste: {:?} not found ({e})", abs.display())))?;
    if let Some(app) = &cli.app {
        warnings.push(format!(
            "command line: APP_MODULE {} ignored: --paste loads the app",
            value::py_str_repr(app)
        ));
    }
    let abs = abs.display().to_string();
    if table.logconfig.is_none() && text.lines().any(|l| l.trim() == "[loggers]") {
        table.logconfig = Some(abs.clone());
    }
    if matches!(g.entry(setting!("default_proc_name")).2, Source::Default) {
        table.default_proc_name = abs.clone();
    }
    Ok(match name {
        Some(n) => format!("config:{abs}#{n}"),
        None => format!("config:{abs}"),
    })
}

/// table ([`TableSettings::read`]); the derived fields are computed here,
/// each from several settings, the command line or the environment.
fn build(
    cli: &CliPass,
    values: &[(Value, Source)],
    mut warnings: Vec<String>,
) -> Result<Settings, ConfigError> {
    let mut table = TableSettings::read(|i| &values[i].0)
        .map_err(|(i, m)| setting_error(&TABLE[i], &values[i].1, m))?;

    // ---- Derived
    let g = Get { values };
    let wsgi_app = match table.paste.clone() {
        Some(paste) => Some(paste_app(&paste, cli, &g, &mut table, &mut warnings)?),
        None => cli.app.clone().or_else(|| g.opt_str(setting!("wsgi_app"))),
    };
    if wsgi_app.is_none() {
        return Err(ConfigError::invalid(
            "No application module specified.".into(),
        ));
    }
    if table.worker_class == WorkerClass::Gevent && table.threads > 1 {
        // Gunicorn ignores it silently; nothing is silently ignored here.
        warnings.push(
            "`threads` has no effect with the gevent worker class (as in Gunicorn); \
             `worker_connections` bounds its concurrency"
                .into(),
        );
    }
    let sendfile = match g.entry(setting!("sendfile")).1 {
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
    let chdir = g.opt_str(setting!("chdir")).map(|d| {
        let p = PathBuf::from(d);
        match (&cli.env.cwd, p.is_absolute()) {
            (Some(cwd), false) => cwd.join(p),
            _ => p,
        }
    });
    let pythonpath = g
        .opt_str(setting!("pythonpath"))
        .map(|p| {
            p.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let config = cli.config_given().or_else(|| {
        cli.default_config_file()
            .map(|_| "./gunicorn.conf.py".to_string())
    });
    let control_socket = if table.control_socket_disable {
        None
    } else {
        g.opt_str(setting!("control_socket")).map(PathBuf::from)
    };
    let control_socket_explicit = !matches!(g.entry(setting!("control_socket")).2, Source::Default);

    let mut printed: Vec<(&'static str, String)> = TABLE
        .iter()
        .zip(values)
        .map(|(d, (v, _))| (d.name, value::render(v, d.name)))
        .collect();
    if let Some(dir) = chdir.as_ref().or(cli.env.cwd.as_ref()) {
        printed[setting!("chdir")].1 = dir.display().to_string();
    }
    if matches!(g.entry(setting!("user")).1, Value::None) {
        // SAFETY: geteuid cannot fail and touches no memory.
        printed[setting!("user")].1 = unsafe { libc::geteuid() }.to_string();
    }
    if matches!(g.entry(setting!("group")).1, Value::None) {
        // SAFETY: getegid cannot fail and touches no memory.
        printed[setting!("group")].1 = unsafe { libc::getegid() }.to_string();
    }
    printed.sort_by(|a, b| a.0.cmp(b.0));

    Ok(Settings {
        table,
        chdir,
        pythonpath,
        loglevel: g.str(setting!("loglevel")).to_ascii_lowercase(),
        logconfig_dict_json: g.opt_str(setting!("logconfig_dict")).filter(|j| j != "{}"),
        sendfile,
        forwarder_headers: g
            .list(setting!("forwarder_headers"))
            .iter()
            .map(|h| h.to_ascii_uppercase())
            .collect(),
        wsgi_app,
        config,
        control_socket,
        control_socket_explicit,
        hooks,
        warnings,
        printed,
        values: values.iter().map(|(v, _)| v.clone()).collect(),
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
