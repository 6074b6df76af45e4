//! The clap `Command`, built from the settings table with the builder API,
//! and the parse of one argument list (argv or `GUNICORN_CMD_ARGS`) into a
//! layer of typed values.
//!
//! Parsing mirrors Gunicorn's argparse: the last occurrence of a flag wins,
//! `--bind`/`--env` and the other `append` flags collect a list, long
//! flags may be abbreviated to any unique prefix, `-v/--version` prints the
//! version, and `--help` shows each flag's default and its status here.

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use super::resolve::Layer;
use super::table::{Action, DefaultValue, SettingDef, Status, TABLE};
use super::value::{self, Value, ValueType};
use super::ConfigError;

const APP: &str = "APP_MODULE";

/// The clap Command (for `--help` and tests):
/// `rgunicorn [OPTIONS] [APP_MODULE]`, with `--version`.
pub fn command() -> Command {
    let mut cmd = Command::new("rgunicorn")
        .version(concat!("(version ", env!("CARGO_PKG_VERSION"), ")"))
        .about("A drop-in, faster replacement for Gunicorn")
        .override_usage("rgunicorn [OPTIONS] [APP_MODULE]")
        .disable_version_flag(true)
        .args_override_self(true)
        .infer_long_args(true)
        .arg(
            Arg::new("version")
                .short('v')
                .long("version")
                .action(ArgAction::Version)
                .help("Show program's version number and exit"),
        )
        .arg(
            Arg::new(APP)
                .action(ArgAction::Append)
                .value_parser(clap::value_parser!(String))
                .help("The WSGI application, MODULE:VARIABLE (or set wsgi_app in the config file)"),
        );
    for def in TABLE.iter().filter(|d| !d.cli.is_empty()) {
        cmd = cmd.arg(arg_for(def));
    }
    cmd
}

fn default_text(def: &SettingDef) -> String {
    match def.default {
        DefaultValue::Dynamic(doc) => doc.replace('`', ""),
        other => value::render(&other.to_value(), def.name),
    }
}

fn help_for(def: &SettingDef) -> String {
    let status = match def.status {
        Status::Same => String::new(),
        Status::Different(how) => format!(" Differs here: {how}."),
        Status::NotSupported(why) => format!(" NOT SUPPORTED: {why}."),
        Status::Rgunicorn => " (rgunicorn only)".to_string(),
    };
    let default = match def.action {
        Action::StoreTrue | Action::StoreFalse => String::new(),
        _ => format!(" [{}]", default_text(def)),
    };
    format!("{}{default}{status}", def.help).replace('`', "")
}

fn arg_for(def: &'static SettingDef) -> Arg {
    let mut arg = Arg::new(def.name)
        .help(help_for(def))
        .help_heading(def.section);
    let mut have_long = false;
    for flag in def.cli {
        if let Some(long) = flag.strip_prefix("--") {
            arg = if have_long {
                arg.visible_alias(long)
            } else {
                arg.long(long)
            };
            have_long = true;
        } else if let Some(c) = flag.strip_prefix('-').and_then(|s| s.chars().next()) {
            arg = arg.short(c);
        }
    }
    let meta = def
        .meta
        .map(str::to_string)
        .unwrap_or_else(|| def.name.to_uppercase());
    let numeric = matches!(def.ty, ValueType::PosInt | ValueType::OctalInt);
    match def.action {
        Action::StoreTrue | Action::StoreFalse => arg.action(ArgAction::SetTrue),
        Action::Store => arg
            .action(ArgAction::Set)
            .num_args(1)
            .value_name(meta)
            .allow_negative_numbers(numeric)
            .value_parser(clap::value_parser!(String)),
        Action::Append => arg
            .action(ArgAction::Append)
            .num_args(1)
            .value_name(meta)
            .value_parser(clap::value_parser!(String)),
        Action::StoreOptional(missing) => arg
            .action(ArgAction::Set)
            .num_args(0..=1)
            .default_missing_value(missing)
            .value_name(meta)
            .value_parser(clap::value_parser!(String)),
    }
}

/// Parses one argument list (without the program name). `label` names the
/// source in error messages: "command line" or the environment variable.
pub(crate) fn parse(args: Vec<OsString>, label: &str) -> Result<(Layer, Vec<String>), ConfigError> {
    let argv = std::iter::once(OsString::from("rgunicorn")).chain(args);
    let matches = match command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) if label == "command line" || e.exit_code() == 0 => {
            return Err(ConfigError {
                kind: super::ErrorKind::Clap(e),
            })
        }
        Err(e) => {
            let text = e.to_string();
            return Err(ConfigError::usage(format!("{label}: {}", text.trim_end())));
        }
    };
    let mut layer = Layer::new(label);
    for def in TABLE.iter().filter(|d| !d.cli.is_empty()) {
        if let Some(v) = value_of(&matches, def, label)? {
            layer.values.push((def, v));
        }
    }
    let positional = matches
        .get_many::<String>(APP)
        .map(|vals| vals.cloned().collect())
        .unwrap_or_default();
    Ok((layer, positional))
}

fn value_of(
    m: &ArgMatches,
    def: &'static SettingDef,
    label: &str,
) -> Result<Option<Value>, ConfigError> {
    if m.value_source(def.name) != Some(ValueSource::CommandLine) {
        return Ok(None);
    }
    let err = |msg: String| ConfigError::usage(format!("{label}: setting `{}`: {msg}", def.name));
    let texts: Vec<String> = match m.try_get_many::<String>(def.name) {
        Ok(Some(vals)) => vals.cloned().collect(),
        Ok(None) => Vec::new(),
        // A flag (SetTrue) stores a bool, not strings.
        Err(_) => Vec::new(),
    };
    let v = match def.action {
        Action::StoreTrue => Value::Bool(true),
        Action::StoreFalse => Value::Bool(false),
        Action::Append => {
            let mut items = Vec::with_capacity(texts.len());
            for t in &texts {
                match value::from_cli(def.ty, t).map_err(err)? {
                    Value::List(l) => items.extend(l),
                    Value::Str(s) => items.push(s),
                    other => return Ok(Some(other)),
                }
            }
            Value::List(items)
        }
        Action::Store | Action::StoreOptional(_) => match texts.last() {
            Some(t) => value::from_cli(def.ty, t).map_err(err)?,
            None => return Ok(None),
        },
    };
    Ok(Some(v))
}
