//! Unit tests for the settings module: table invariants, precedence,
//! environment defaults, error messages, worker classes, and the
//! generated `docs/settings.md`.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;

use super::*;

/// Gunicorn's setting names (`KNOWN_SETTINGS`, Gunicorn 23 to 26.3).
const GUNICORN_SETTINGS: &[&str] = &[
    // Config File
    "config",
    "wsgi_app",
    // Control (25.1)
    "control_socket",
    "control_socket_mode",
    "control_socket_disable",
    // Debugging
    "reload",
    "reload_engine",
    "reload_extra_files",
    "spew",
    "check_config",
    "print_config",
    // Dirty Arbiter Hooks (25.0)
    "on_dirty_starting",
    "dirty_post_fork",
    "dirty_worker_init",
    "dirty_worker_exit",
    // Dirty Arbiters (25.0)
    "dirty_apps",
    "dirty_workers",
    "dirty_timeout",
    "dirty_threads",
    "dirty_graceful_timeout",
    // HTTP/2 (25.0; http2_cleartext 26.2)
    "http_protocols",
    "http2_cleartext",
    "http2_max_concurrent_streams",
    "http2_initial_window_size",
    "http2_max_frame_size",
    "http2_max_header_list_size",
    // Logging
    "accesslog",
    "disable_redirect_access_to_syslog",
    "access_log_format",
    "errorlog",
    "loglevel",
    "capture_output",
    "logger_class",
    "logconfig",
    "logconfig_dict",
    "logconfig_json",
    "syslog_addr",
    "syslog",
    "syslog_prefix",
    "syslog_facility",
    "enable_stdio_inheritance",
    "statsd_host",
    "dogstatsd_tags",
    "statsd_prefix",
    "enable_backlog_metric",
    // Process Naming
    "proc_name",
    "default_proc_name",
    // SSL
    "keyfile",
    "certfile",
    "ssl_version",
    "cert_reqs",
    "ca_certs",
    "suppress_ragged_eofs",
    "do_handshake_on_connect",
    "ciphers",
    // Security
    "limit_request_line",
    "limit_request_fields",
    "limit_request_field_size",
    // Server Hooks
    "on_starting",
    "on_reload",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_int",
    "worker_abort",
    "pre_exec",
    "pre_request",
    "post_request",
    "child_exit",
    "worker_exit",
    "nworkers_changed",
    "on_exit",
    "ssl_context",
    // Server Mechanics
    "preload_app",
    "sendfile",
    "reuse_port",
    "chdir",
    "daemon",
    "raw_env",
    "pidfile",
    "worker_tmp_dir",
    "user",
    "group",
    "umask",
    "initgroups",
    "tmp_upload_dir",
    "secure_scheme_headers",
    "forwarded_allow_ips",
    "pythonpath",
    "paste",
    "proxy_protocol",
    "proxy_allow_ips",
    "protocol",
    "uwsgi_allow_ips",
    "raw_paste_global_conf",
    "permit_obsolete_folding",
    "strip_header_spaces",
    "permit_unconventional_http_method",
    "permit_unconventional_http_version",
    "casefold_http_method",
    "forwarder_headers",
    "header_map",
    "root_path",
    // Server Socket
    "bind",
    "backlog",
    // Worker Processes
    "workers",
    "worker_class",
    "threads",
    "worker_connections",
    "max_requests",
    "max_requests_jitter",
    "timeout",
    "graceful_timeout",
    "keepalive",
    "asgi_loop",
    "asgi_lifespan",
    "asgi_disconnect_grace_period",
    "websocket_max_message_size", // 26.3
    "http_parser",
];

/// Settings the brief says rgunicorn implements as Gunicorn does (some are
/// `Different` only in a detail the docs spell out).
const IMPLEMENTED: &[&str] = &[
    "bind",
    "backlog",
    "workers",
    "worker_class",
    "threads",
    "worker_connections",
    "max_requests",
    "max_requests_jitter",
    "timeout",
    "graceful_timeout",
    "keepalive",
    "limit_request_line",
    "limit_request_fields",
    "limit_request_field_size",
    "preload_app",
    "chdir",
    "pythonpath",
    "raw_env",
    "pidfile",
    "user",
    "group",
    "umask",
    "initgroups",
    "proc_name",
    "loglevel",
    "errorlog",
    "accesslog",
    "access_log_format",
    "capture_output",
    "reuse_port",
    "forwarded_allow_ips",
    "secure_scheme_headers",
    "config",
    "wsgi_app",
    "print_config",
    "check_config",
    "on_starting",
    "on_reload",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_int",
    "worker_abort",
    "pre_exec",
    "pre_request",
    "post_request",
    "child_exit",
    "worker_exit",
    "nworkers_changed",
    "on_exit",
];

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

fn file(pairs: &[(&str, RawValue)]) -> Vec<(String, RawValue)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn run(
    argv: &[&str],
    env: &[(&str, &str)],
    file_values: &[(&str, RawValue)],
) -> Result<Settings, ConfigError> {
    let cli = parse_cli(args(argv), &env_of(env))?;
    resolve(cli, file(file_values), Some("gunicorn-cfg.py".into()))
}

fn err(argv: &[&str], env: &[(&str, &str)], file_values: &[(&str, RawValue)]) -> String {
    match run(argv, env, file_values) {
        Ok(_) => panic!("expected an error for {argv:?} {file_values:?}"),
        Err(e) => e.to_string(),
    }
}

fn s(text: &str) -> RawValue {
    RawValue::Str(text.into())
}

// ---- Table invariants --------------------------------------------------

#[test]
fn names_are_unique() {
    let mut seen = HashSet::new();
    for def in table() {
        assert!(seen.insert(def.name), "duplicate setting {}", def.name);
    }
}

#[test]
fn flags_are_unique() {
    let mut seen = HashSet::new();
    for def in table() {
        for flag in def.cli {
            assert!(seen.insert(*flag), "duplicate flag {flag} ({})", def.name);
            assert!(flag.starts_with('-'), "{flag} is not a flag");
        }
    }
    assert!(!seen.contains("-v") && !seen.contains("-h"));
}

#[test]
fn every_gunicorn_setting_is_present() {
    let ours: HashSet<&str> = table().iter().map(|d| d.name).collect();
    for name in GUNICORN_SETTINGS {
        assert!(ours.contains(name), "Gunicorn setting {name} missing");
    }
    assert_eq!(GUNICORN_SETTINGS.len(), 120);
    let theirs: HashSet<&str> = GUNICORN_SETTINGS.iter().copied().collect();
    for def in table() {
        let gunicorns = theirs.contains(def.name);
        let ours_only = def.status == Status::Rgunicorn;
        assert!(
            gunicorns != ours_only,
            "{}: status vs Gunicorn list",
            def.name
        );
    }
}

#[test]
fn implemented_settings_are_not_refused() {
    for name in IMPLEMENTED {
        let def = table().iter().find(|d| d.name == *name);
        let def = def.unwrap_or_else(|| panic!("{name} missing"));
        assert!(
            matches!(def.status, Status::Same | Status::Different(_)),
            "{name} should be implemented"
        );
    }
}

#[test]
fn table_entries_are_well_formed() {
    for def in table() {
        assert!(!def.help.is_empty(), "{} has no help", def.name);
        assert!(!def.help.contains('\n'), "{}: one-line help", def.name);
        if def.ty == ValueType::Callable {
            assert!(def.cli.is_empty(), "{}: hooks have no flag", def.name);
        }
        if matches!(def.action, Action::StoreTrue | Action::StoreFalse) {
            assert!(
                matches!(def.ty, ValueType::Bool | ValueType::OptBool),
                "{}",
                def.name
            );
        }
        if def.action == Action::Append {
            assert_eq!(def.ty, ValueType::StrList, "{}", def.name);
        }
    }
}

#[test]
fn clap_command_is_consistent() {
    command().debug_assert();
}

#[test]
fn gunicorn_flag_spellings() {
    let m = command().try_get_matches_from([
        "rgunicorn",
        "--limit-request-field_size",
        "10",
        "app:app",
    ]);
    assert!(m.is_ok());
    let s = run(
        &["--log-file", "/tmp/x.log", "--keep-alive", "7", "app:app"],
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(s.errorlog, "/tmp/x.log");
    assert_eq!(s.keepalive, 7);
}

// ---- Precedence and environment ----------------------------------------

#[test]
fn defaults() {
    let s = Settings::for_app("app:app").unwrap();
    assert_eq!(s.bind, vec!["127.0.0.1:8000"]);
    assert_eq!(s.workers, 1);
    assert_eq!(s.backlog, 2048);
    assert_eq!(s.worker_class, WorkerClass::Sync);
    assert_eq!(s.timeout, 30);
    assert_eq!(s.keepalive, 2);
    assert_eq!(s.limit_request_field_size, 8190);
    assert_eq!(s.errorlog, "-");
    assert_eq!(s.accesslog, None);
    assert_eq!(s.loglevel, "info");
    assert_eq!(s.forwarded_allow_ips, vec!["127.0.0.1", "::1"]);
    assert_eq!(s.secure_scheme_headers.len(), 3);
    assert_eq!(s.control_socket_mode, 0o600);
    assert_eq!(s.default_proc_name, "app:app");
    assert_eq!(s.wsgi_app.as_deref(), Some("app:app"));
    assert!(s.sendfile);
    assert!(s.hooks.is_empty());
}

#[test]
fn precedence_cli_over_env_over_file_over_default() {
    let f = [
        ("workers", RawValue::Int(2)),
        ("timeout", RawValue::Int(60)),
    ];
    let s = run(&["app:app"], &[], &f).unwrap();
    assert_eq!((s.workers, s.timeout), (2, 60));

    let env = [("GUNICORN_CMD_ARGS", "--workers=3 --max-requests 9")];
    let s = run(&["app:app"], &env, &f).unwrap();
    assert_eq!((s.workers, s.timeout, s.max_requests), (3, 60, 9));

    let env2 = [
        ("GUNICORN_CMD_ARGS", "--workers=3"),
        ("RGUNICORN_CMD_ARGS", "--workers 5"),
    ];
    let s = run(&["app:app"], &env2, &f).unwrap();
    assert_eq!(s.workers, 5);

    let s = run(&["-w", "4", "app:app"], &env2, &f).unwrap();
    assert_eq!((s.workers, s.timeout), (4, 60));
}

#[test]
fn lists_from_a_later_source_replace_earlier_ones() {
    let f = [("bind", RawValue::List(vec![s("unix:/tmp/a.sock")]))];
    let s1 = run(&["app:app"], &[], &f).unwrap();
    assert_eq!(s1.bind, vec!["unix:/tmp/a.sock"]);
    let s2 = run(&["-b", ":1", "--bind", ":2", "app:app"], &[], &f).unwrap();
    assert_eq!(s2.bind, vec![":1", ":2"]);
    let s3 = run(&["app:app"], &[], &[("bind", s("0.0.0.0:80"))]).unwrap();
    assert_eq!(s3.bind, vec!["0.0.0.0:80"]);
}

#[test]
fn web_concurrency_and_port() {
    let env = [("WEB_CONCURRENCY", "6"), ("PORT", "5000")];
    let s = run(&["app:app"], &env, &[]).unwrap();
    assert_eq!(s.workers, 6);
    assert_eq!(s.bind, vec!["0.0.0.0:5000"]);
    let s = run(&["-w", "2", "-b", ":9", "app:app"], &env, &[]).unwrap();
    assert_eq!((s.workers, s.bind.clone()), (2, vec![":9".to_string()]));
    let e = err(&["app:app"], &[("WEB_CONCURRENCY", "lots")], &[]);
    assert!(e.contains("WEB_CONCURRENCY") && e.contains("'lots'"), "{e}");
}

#[test]
fn forwarded_allow_ips_and_sendfile_from_environment() {
    let env = [
        ("FORWARDED_ALLOW_IPS", "10.0.0.1, 10.0.0.2"),
        ("SENDFILE", "no"),
    ];
    let s = run(&["app:app"], &env, &[]).unwrap();
    assert_eq!(s.forwarded_allow_ips, vec!["10.0.0.1", "10.0.0.2"]);
    assert!(!s.sendfile);
    let s = run(&["--no-sendfile", "app:app"], &[], &[]).unwrap();
    assert!(!s.sendfile);
}

#[test]
fn app_from_argument_or_wsgi_app() {
    let st = run(&[], &[], &[("wsgi_app", s("pkg.wsgi:application"))]).unwrap();
    assert_eq!(st.wsgi_app.as_deref(), Some("pkg.wsgi:application"));
    let st = run(&["run:app"], &[], &[("wsgi_app", s("other:app"))]).unwrap();
    assert_eq!(st.wsgi_app.as_deref(), Some("run:app"));
    let e = err(&["-w", "2"], &[], &[]);
    assert!(e.contains("No application module specified"), "{e}");
}

#[test]
fn extra_positional_arguments_are_ignored_with_a_warning() {
    let st = run(&["run:app", "other"], &[], &[]).unwrap();
    assert_eq!(st.wsgi_app.as_deref(), Some("run:app"));
    assert!(
        st.warnings.iter().any(|w| w.contains("'other'")),
        "{:?}",
        st.warnings
    );
}

#[test]
fn config_source() {
    let cli = parse_cli(args(&["-c", "python:pkg.conf", "app:app"]), &env_of(&[])).unwrap();
    assert_eq!(
        cli.config_source(),
        Some(ConfigSource::Module("pkg.conf".into()))
    );
    let cli = parse_cli(args(&["--config", "file:/etc/g.py", "a:b"]), &env_of(&[])).unwrap();
    assert_eq!(
        cli.config_source(),
        Some(ConfigSource::Path("/etc/g.py".into()))
    );
    let env = [("GUNICORN_CMD_ARGS", "-c /etc/env.py")];
    let cli = parse_cli(args(&["a:b"]), &env_of(&env)).unwrap();
    assert_eq!(
        cli.config_source(),
        Some(ConfigSource::Path("/etc/env.py".into()))
    );
    let cli = parse_cli(args(&["-c", "/cli.py", "a:b"]), &env_of(&env)).unwrap();
    assert_eq!(
        cli.config_source(),
        Some(ConfigSource::Path("/cli.py".into()))
    );
}

// ---- Values and errors -------------------------------------------------

#[test]
fn bad_values_name_setting_and_source() {
    let e = err(&["app:app"], &[], &[("workers", s("three"))]);
    assert_eq!(
        e,
        "gunicorn-cfg.py: setting `workers`: expected an integer, got 'three'"
    );
    let e = err(&["--workers", "three", "app:app"], &[], &[]);
    assert_eq!(
        e,
        "command line: setting `workers`: expected an integer, got 'three'"
    );
    let e = err(
        &["app:app"],
        &[("GUNICORN_CMD_ARGS", "--timeout=soon")],
        &[],
    );
    assert_eq!(
        e,
        "GUNICORN_CMD_ARGS: setting `timeout`: expected an integer, got 'soon'"
    );
    let e = err(&["app:app"], &[], &[("timeout", RawValue::Int(-1))]);
    assert!(e.contains("`timeout`") && e.contains("positive"), "{e}");
    let e = err(&["app:app"], &[], &[("preload_app", s("yes"))]);
    assert!(e.contains("`preload_app`") && e.contains("boolean"), "{e}");
    let e = err(
        &["app:app"],
        &[],
        &[("secure_scheme_headers", RawValue::List(vec![]))],
    );
    assert!(e.contains("expected a dict"), "{e}");
    let e = err(&["-e", "NOEQUALS", "app:app"], &[], &[]);
    assert!(e.starts_with("command line: setting `raw_env`"), "{e}");
    let e = err(&["--log-level", "loud", "app:app"], &[], &[]);
    assert!(e.contains("`loglevel`") && e.contains("'loud'"), "{e}");
    let e = err(&["app:app"], &[], &[("on_starting", s("mod.func"))]);
    assert!(e.contains("`on_starting`") && e.contains("callable"), "{e}");
}

#[test]
fn unknown_flag_in_environment_names_the_variable() {
    let e = err(
        &["app:app"],
        &[("GUNICORN_CMD_ARGS", "--no-such-flag")],
        &[],
    );
    assert!(e.starts_with("GUNICORN_CMD_ARGS:"), "{e}");
}

#[test]
fn python_style_values_from_the_file() {
    let f = [
        ("workers", s("0x4")),
        ("preload_app", s("True")),
        ("umask", s("0o22")),
        ("raw_env", RawValue::Tuple(vec![s("A=1"), s("B=2")])),
        (
            "forwarded_allow_ips",
            RawValue::List(vec![s("10.1.1.1"), s("*")]),
        ),
        (
            "secure_scheme_headers",
            RawValue::Dict(vec![("X-PROTO".into(), s("https"))]),
        ),
        ("accesslog", RawValue::None),
        ("pythonpath", s("/a, /b")),
    ];
    let st = run(&["app:app"], &[], &f).unwrap();
    assert_eq!(st.workers, 4);
    assert!(st.preload_app);
    assert_eq!(st.umask, 0o22);
    assert_eq!(st.raw_env, vec!["A=1", "B=2"]);
    assert_eq!(st.forwarded_allow_ips, vec!["10.1.1.1", "*"]);
    assert_eq!(
        st.secure_scheme_headers,
        vec![("X-PROTO".into(), "https".into())]
    );
    assert_eq!(st.pythonpath, vec!["/a", "/b"]);
}

#[test]
fn umask_is_octal_on_the_command_line() {
    let st = run(&["-m", "0022", "app:app"], &[], &[]).unwrap();
    assert_eq!(st.umask, 0o22);
    let st = run(
        &["--umask", "18", "--control-socket-mode", "0660", "app:app"],
        &[],
        &[],
    )
    .unwrap();
    assert_eq!((st.umask, st.control_socket_mode), (18, 0o660));
}

#[test]
fn worker_classes() {
    let e = err(&["-k", "nosuch", "app:app"], &[], &[]);
    assert!(
        e.contains("'nosuch'") && e.contains("`sync`") && e.contains("`gevent`"),
        "{e}"
    );
    let e = err(&["-k", "eventlet", "app:app"], &[], &[]);
    assert!(e.contains("'eventlet'") && e.contains("`-k gevent`"), "{e}");
    let e = err(&["app:app"], &[], &[("worker_class", s("nosuch"))]);
    assert!(
        e.starts_with("gunicorn-cfg.py: setting `worker_class`"),
        "{e}"
    );
    let st = run(
        &["app:app"],
        &[],
        &[("worker_class", s("uvicorn.workers.UvicornWorker"))],
    )
    .unwrap();
    assert_eq!(st.worker_class, WorkerClass::Asgi);
    for (name, class) in [
        ("sync", WorkerClass::Sync),
        ("gthread", WorkerClass::Gthread),
        ("gunicorn.workers.sync.SyncWorker", WorkerClass::Sync),
        (
            "gunicorn.workers.gthread.ThreadWorker",
            WorkerClass::Gthread,
        ),
        ("egg:gunicorn#sync", WorkerClass::Sync),
        ("tornado", WorkerClass::Tornado),
        (
            "gunicorn.workers.gtornado.TornadoWorker",
            WorkerClass::Tornado,
        ),
        ("egg:gunicorn#tornado", WorkerClass::Tornado),
        ("gevent", WorkerClass::Gevent),
        ("gevent_wsgi", WorkerClass::Gevent),
        ("gevent_pywsgi", WorkerClass::Gevent),
        ("gunicorn.workers.ggevent.GeventWorker", WorkerClass::Gevent),
        (
            "gunicorn.workers.ggevent.GeventPyWSGIWorker",
            WorkerClass::Gevent,
        ),
        ("egg:gunicorn#gevent", WorkerClass::Gevent),
        ("asgi", WorkerClass::Asgi),
        ("uvicorn.workers.UvicornWorker", WorkerClass::Asgi),
        ("uvicorn.workers.UvicornH11Worker", WorkerClass::Asgi),
        ("uvicorn_worker.UvicornWorker", WorkerClass::Asgi),
        ("uvicorn_worker.UvicornH11Worker", WorkerClass::Asgi),
    ] {
        let st = run(&["-k", name, "app:app"], &[], &[]).unwrap();
        assert_eq!(st.worker_class, class, "{name}");
    }
    // Gunicorn 26 removed eventlet: every name of it points to gevent.
    for name in [
        "eventlet",
        "gunicorn.workers.geventlet.EventletWorker",
        "egg:gunicorn#eventlet",
    ] {
        let e = err(&["-k", name, "app:app"], &[], &[]);
        assert!(
            e.contains(&format!("worker class '{name}' was removed in Gunicorn 26"))
                && e.contains("use `-k gevent`"),
            "{e}"
        );
    }
    // A custom class, by path or as a class object, is refused, naming the
    // built-in classes; Gunicorn's own tornado class object is tornado.
    let e = err(&["-k", "myproject.workers.MyWorker", "app:app"], &[], &[]);
    assert!(
        e.starts_with("command line: setting `worker_class`: worker class 'myproject.workers.MyWorker' is a Python class path: custom worker classes")
            && e.contains("`tornado`"),
        "{e}"
    );
    let st = run(
        &["app:app"],
        &[],
        &[(
            "worker_class",
            RawValue::Class("gunicorn.workers.gtornado.TornadoWorker".into()),
        )],
    )
    .unwrap();
    assert_eq!(st.worker_class, WorkerClass::Tornado);
    assert_eq!(st.effective_worker_class(), WorkerClass::Tornado);
    assert_eq!(WorkerClass::Tornado.python_package(), Some("tornado"));
    assert_eq!(WorkerClass::Sync.python_package(), None);
    let st = run(&["--threads", "4", "app:app"], &[], &[]).unwrap();
    assert_eq!(st.worker_class, WorkerClass::Sync);
    assert_eq!(st.effective_worker_class(), WorkerClass::Gthread);
    let st = run(&["app:app"], &[], &[]).unwrap();
    assert_eq!(st.effective_worker_class(), WorkerClass::Sync);
    // As in Gunicorn, --threads does not turn gevent into anything else.
    let st = run(&["-k", "gevent", "--threads", "200", "app:app"], &[], &[]).unwrap();
    assert_eq!(st.effective_worker_class(), WorkerClass::Gevent);
    assert!(
        st.warnings
            .iter()
            .any(|w| w.contains("`threads` has no effect")),
        "{:?}",
        st.warnings
    );
}

#[test]
fn not_supported_settings_are_refused_unless_default() {
    // Each case must fail with rgunicorn's refusal naming that setting, while
    // the same input without it is accepted: an error that merely mentions
    // the name (a bad value, a missing app argument taken as an option's
    // value) does not count.
    assert!(run(&["app:app"], &[], &[]).is_ok());
    let cli: &[(&[&str], &str)] = &[
        (&["--daemon", "app:app"], "daemon"),
        (&["app:app", "-D"], "daemon"),
        (&["--spew", "app:app"], "spew"),
        (&["app:app", "--spew"], "spew"),
    ];
    for (argv, name) in cli {
        let e = err(argv, &[], &[]);
        let want = format!("command line: rgunicorn does not support `{name}` (");
        assert!(e.starts_with(&want), "{argv:?}: {e}");
    }
    let file: &[(&str, RawValue)] = &[
        ("ssl_context", RawValue::Callable(HookRef(4))),
        ("spew", RawValue::Bool(true)),
        ("on_dirty_starting", RawValue::Callable(HookRef(3))),
    ];
    for (name, value) in file {
        let e = err(&["app:app"], &[], &[(name, value.clone())]);
        let want = format!("gunicorn-cfg.py: rgunicorn does not support `{name}` (");
        assert!(e.starts_with(&want), "{name}: {e}");
    }
    // `proxy_protocol` is supported: it was once a case above, which passed
    // only because `--proxy-protocol` took "app:app" as its (bad) mode.
    assert!(run(&["--proxy-protocol", "v1", "app:app"], &[], &[]).is_ok());
    // `reload` is supported too (it was a case above until it was).
    let r = run(
        &["app:app", "--reload", "--reload-engine", "poll"],
        &[],
        &[],
    )
    .expect("--reload");
    assert!(r.reload);
    assert_eq!(r.reload_engine, "poll");
    let e = err(&["--reload-engine", "fsevents", "app:app"], &[], &[]);
    assert!(
        e.contains("Invalid reload_engine: \"fsevents\" (expected auto, poll or inotify)"),
        "{e}"
    );
    // Explicit defaults are fine.
    let f = [
        ("daemon", RawValue::Bool(false)),
        ("proxy_protocol", RawValue::Bool(false)),
        ("syslog_addr", s("udp://localhost:514")),
        ("logconfig_dict", RawValue::Dict(vec![])),
    ];
    assert!(run(&["--suppress-ragged-eofs", "app:app"], &[], &f).is_ok());
}

#[test]
fn hooks_and_unknown_names_from_the_file() {
    let f = [
        ("on_starting", RawValue::Callable(HookRef(0))),
        ("post_fork", RawValue::Callable(HookRef(1))),
        ("multiprocessing", RawValue::None),
        ("_private", RawValue::Int(1)),
    ];
    let st = run(&["app:app"], &[], &f).unwrap();
    assert_eq!(st.hooks.len(), 2);
    assert_eq!(st.hook("post_fork").map(|h| h.0), Some(1));
    assert!(st.hook("when_ready").is_none());
    assert_eq!(st.warnings.len(), 1, "{:?}", st.warnings);
    assert!(st.warnings[0].contains("`multiprocessing` is not a setting"));
}

#[test]
fn a_name_close_to_a_setting_gets_a_did_you_mean() {
    let f = [
        ("wokers", RawValue::Int(3)),
        ("WORKERS", RawValue::Int(3)),
        ("max_request", RawValue::Int(3)),
        ("totally_unrelated", RawValue::Int(3)),
    ];
    let st = run(&["app:app"], &[], &f).unwrap();
    assert_eq!(st.workers, 1);
    let expect = [
        "gunicorn-cfg.py: `wokers` is not a setting (did you mean `workers`?); ignored",
        "gunicorn-cfg.py: `WORKERS` is not a setting (did you mean `workers`?); ignored",
        "gunicorn-cfg.py: `max_request` is not a setting (did you mean `max_requests`?); ignored",
        "gunicorn-cfg.py: `totally_unrelated` is not a setting; ignored",
    ];
    assert_eq!(st.warnings, expect);
}

#[test]
fn helper_names_are_not_warned_about_unless_named_like_a_hook() {
    let f = [
        ("os", RawValue::Module("os".into())),
        ("bnd", RawValue::Module("bnd".into())),
        ("helper", RawValue::Callable(HookRef(0))),
        ("bind_all", RawValue::Callable(HookRef(1))),
        ("Thing", RawValue::Class("cfg.Thing".into())),
        ("_workers", RawValue::Int(3)),
        ("post_frok", RawValue::Callable(HookRef(2))),
    ];
    let st = run(&["app:app"], &[], &f).unwrap();
    assert_eq!(
        st.warnings,
        ["gunicorn-cfg.py: `post_frok` is not a setting (did you mean `post_fork`?); ignored"]
    );
}

#[test]
fn unreadable_file_values_are_errors_naming_the_setting() {
    let big = RawValue::Unreadable("the integer 100000000000000000000, too large".into());
    let e = err(&["app:app"], &[], &[("workers", big.clone())]);
    assert_eq!(
        e,
        "gunicorn-cfg.py: setting `workers`: cannot use the integer 100000000000000000000, too large"
    );
    // A helper name with such a value is still only a helper.
    assert!(run(&["app:app"], &[], &[("BIG", big)]).is_ok());
    let keys = RawValue::Unreadable("a dict with the non-string key 1".into());
    let e = err(&["app:app"], &[], &[("secure_scheme_headers", keys)]);
    assert!(
        e.starts_with("gunicorn-cfg.py: setting `secure_scheme_headers`: cannot use a dict"),
        "{e}"
    );
    let e = err(
        &["app:app"],
        &[],
        &[("worker_class", RawValue::Class("mod.MyWorker".into()))],
    );
    assert!(
        e.starts_with(
            "gunicorn-cfg.py: setting `worker_class`: got the class mod.MyWorker: custom worker classes"
        ),
        "{e}"
    );
    let e = err(
        &["app:app"],
        &[],
        &[("logger_class", RawValue::Class("mod.MyLogger".into()))],
    );
    assert!(
        e.starts_with("gunicorn-cfg.py: rgunicorn does not support `logger_class`"),
        "{e}"
    );
}

#[test]
fn every_setting_reaches_the_resolved_settings() {
    let st = run(&["--timeout", "7", "app:app"], &[], &[]).unwrap();
    let each: Vec<_> = st.each().collect();
    assert_eq!(each.len(), table().len());
    for ((def, _), t) in each.iter().zip(table()) {
        assert_eq!(def.name, t.name);
    }
    let timeout = each.iter().find(|(d, _)| d.name == "timeout");
    assert!(matches!(timeout, Some((_, SettingValue::Int(7)))));
}

/// The fields generated from the table rows marked `=> name: Type` hold the
/// resolved values, whatever their source; a value too large for its field
/// is an error naming the setting and where the value came from.
#[test]
fn typed_fields_come_from_the_table() {
    let st = run(
        &[
            "--backlog",
            "64",
            "--umask",
            "0022",
            "-k",
            "gthread",
            "--no-control-socket",
            "app:app",
        ],
        &[("GUNICORN_CMD_ARGS", "--max-requests 5")],
        &[
            ("statsd_host", s("localhost:9125")),
            ("pidfile", s("/run/app.pid")),
            ("raw_env", RawValue::List(vec![s("A=1"), s("B=2")])),
            ("preload_app", RawValue::Bool(true)),
        ],
    )
    .unwrap();
    assert_eq!(st.backlog, 64);
    assert_eq!(st.umask, 0o22);
    assert_eq!(st.worker_class, WorkerClass::Gthread);
    assert!(st.control_socket_disable && st.control_socket.is_none());
    assert_eq!(st.max_requests, 5);
    assert_eq!(st.statsd_host.as_deref(), Some("localhost:9125"));
    assert_eq!(st.pidfile, Some(std::path::PathBuf::from("/run/app.pid")));
    assert_eq!(st.raw_env, ["A=1", "B=2"]);
    assert!(st.preload_app);
    assert_eq!(st.timeout, 30);

    let e = err(&["--backlog", "4294967296", "app:app"], &[], &[]);
    assert_eq!(
        e,
        "command line: setting `backlog`: 4294967296 is too large"
    );
    let e = err(
        &[],
        &[],
        &[
            ("wsgi_app", s("app:app")),
            ("backlog", RawValue::Int(1 << 40)),
        ],
    );
    assert_eq!(
        e,
        "gunicorn-cfg.py: setting `backlog`: 1099511627776 is too large"
    );
}

#[test]
fn environment_dependent_defaults_are_computed() {
    // A dynamic default that falls through to `None` would be a
    // `dynamic_default` arm missing for that setting.
    let st = run(&["app:app"], &[], &[]).unwrap();
    for (def, v) in st.each() {
        if matches!(def.default, DefaultValue::Dynamic(_)) {
            let may_be_none = matches!(def.name, "chdir" | "user" | "group");
            assert!(
                may_be_none || !matches!(v, SettingValue::None),
                "{} has no computed default",
                def.name
            );
        }
    }
}

#[test]
fn accepted_but_ignored_settings_warn() {
    let st = run(&["--worker-tmp-dir", "/dev/shm", "app:app"], &[], &[]).unwrap();
    assert!(
        st.warnings.iter().any(|w| w.contains("`worker_tmp_dir`")),
        "{:?}",
        st.warnings
    );
}

#[test]
fn control_socket() {
    let env = [("XDG_RUNTIME_DIR", "/run/user/1000"), ("HOME", "/home/u")];
    let st = run(&["app:app"], &env, &[]).unwrap();
    assert_eq!(
        st.control_socket,
        Some("/run/user/1000/rgunicorn.ctl".into())
    );
    assert!(!st.control_socket_explicit);
    let sd = [
        ("RUNTIME_DIRECTORY", "/run/app:/run/other"),
        ("XDG_RUNTIME_DIR", "/run/user/1000"),
    ];
    let st = run(&["app:app"], &sd, &[]).unwrap();
    assert_eq!(st.control_socket, Some("/run/app/rgunicorn.ctl".into()));
    let st = run(&["app:app"], &[("HOME", "/home/u")], &[]).unwrap();
    let uid = nix::unistd::geteuid().as_raw();
    assert_eq!(
        st.control_socket,
        Some(format!("/tmp/rgunicorn-{uid}/rgunicorn.ctl").into())
    );
    let st = run(&["--control-socket", "/tmp/c.sock", "app:app"], &env, &[]).unwrap();
    assert_eq!(st.control_socket, Some("/tmp/c.sock".into()));
    assert!(st.control_socket_explicit);
    let st = run(&["--no-control-socket", "app:app"], &env, &[]).unwrap();
    assert!(st.control_socket_disable && st.control_socket.is_none());
    let st = run(
        &[
            "--control-allow-uid",
            "33",
            "--control-allow-uid",
            "1000",
            "--control-allow-gid",
            "4",
            "--control-readonly-gid",
            "5",
            "a:b",
        ],
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(st.control_readonly_gid, vec![5]);
    assert_eq!(
        (&st.control_allow_uid, &st.control_allow_gid),
        (&vec![33, 1000], &vec![4])
    );
    let e = err(&["--control-allow-uid", "www-data", "a:b"], &[], &[]);
    assert!(e.contains("`control_allow_uid`"), "{e}");
}

#[test]
fn abbreviated_long_flags_like_argparse() {
    let st = run(&["--backl", "64", "--graceful", "5", "app:app"], &[], &[]).unwrap();
    assert_eq!((st.backlog, st.graceful_timeout), (64, 5));
    // Ambiguous prefixes are errors, as with argparse.
    assert!(run(&["--work", "3", "app:app"], &[], &[]).is_err());
}

#[test]
fn help_and_version_are_informational() {
    let e = parse_cli(args(&["--help"]), &env_of(&[])).unwrap_err();
    assert!(e.is_informational() && e.exit_code() == 0);
    let help = e.to_string();
    assert!(help.contains("--limit-request-field_size"));
    assert!(help.contains("NOT SUPPORTED"));
    let e = parse_cli(args(&["-v"]), &env_of(&[])).unwrap_err();
    assert!(e.is_informational());
    assert!(e.to_string().starts_with("rgunicorn (version "), "{e}");
}

// ---- Output ------------------------------------------------------------

#[test]
fn print_config_lists_every_setting_sorted() {
    let st = run(
        &["-w", "3", "app:app"],
        &[],
        &[("on_exit", RawValue::Callable(HookRef(0)))],
    )
    .unwrap();
    let out = print_config(&st);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), table().len());
    let names: Vec<&str> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    let width = table().iter().map(|d| d.name.len()).max().unwrap_or(0);
    let line = |name: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l[width..].to_string())
            .unwrap_or_default()
    };
    assert_eq!(line("workers"), " = 3");
    assert_eq!(line("bind"), " = ['127.0.0.1:8000']");
    assert_eq!(line("preload_app"), " = False");
    assert_eq!(line("accesslog"), " = None");
    assert_eq!(line("worker_class"), " = sync");
    assert_eq!(line("on_exit"), " = <on_exit()>");
    assert_eq!(line("umask"), " = 0");
}

#[test]
fn settings_doc_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/settings.md");
    let want = settings_markdown();
    if std::env::var_os("RGUNICORN_BLESS").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create docs/");
        }
        std::fs::write(&path, &want).expect("write docs/settings.md");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/settings.md is out of date with src/config/table.rs; \
         regenerate it with: RGUNICORN_BLESS=1 cargo test --lib config"
    );
}

#[test]
fn settings_doc_covers_every_setting() {
    let doc = settings_markdown();
    for def in table() {
        assert!(doc.contains(&format!("`{}`<br>", def.name)), "{}", def.name);
    }
}

/// Item "nothing silently ignored": the list of Gunicorn settings comes from
/// the table itself (every entry that is not rgunicorn's own), and the
/// checked-in `docs/settings.md` must have a row for each with a status.
#[test]
fn checked_in_settings_doc_gives_every_gunicorn_setting_a_status() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/settings.md");
    let doc = std::fs::read_to_string(&path).expect("docs/settings.md exists");
    let gunicorn: Vec<&SettingDef> = table()
        .iter()
        .filter(|d| d.status != Status::Rgunicorn)
        .collect();
    assert!(
        gunicorn.len() >= 118,
        "{} Gunicorn settings",
        gunicorn.len()
    );
    for def in gunicorn {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{}`<br>", def.name)))
            .unwrap_or_else(|| panic!("docs/settings.md has no row for `{}`", def.name));
        let status = row
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .unwrap_or("")
            .trim();
        assert!(
            status == "same"
                || status.starts_with("different: ")
                || status.starts_with("**not supported**: "),
            "`{}` has no status in docs/settings.md: {row}",
            def.name
        );
        if let Status::NotSupported(why) | Status::Different(why) = def.status {
            assert!(!why.is_empty(), "`{}`: say why", def.name);
        }
    }
}
