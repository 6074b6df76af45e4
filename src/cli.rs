//! `rgunicorn [OPTIONS] [APP_MODULE]`: Gunicorn's command line, a Rust
//! master, Python workers. This module only wires the pieces together: parse
//! the settings (command line, environment, config file), set up logging,
//! bind, optionally preload the app, and hand over to the arbiter.
//!
//! Two hosts call [`main`] (see `docs/architecture.md`, "How the process
//! starts"):
//! - [`Host::Embedded`]: the cargo-built `rgunicorn` binary (`src/main.rs`),
//!   linked to libpython; Python is initialised only where it is needed.
//! - [`Host::Python`]: the `rgunicorn` console script or `python -m
//!   rgunicorn` of an installed wheel; the interpreter that runs the script
//!   already is initialised, and calls [`main`] through the extension
//!   module `rgunicorn._rgunicorn` (`src/extension.rs`).

use crate::config::{self, Settings};
use crate::control::{server::ControlServer, server::ServerOptions};
use crate::{arbiter, python, sock};
use anyhow::{Context, Result};
use std::ffi::OsString;

/// Who started the process, and so who owns the interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// The cargo-built binary: Python is initialised by us, later.
    Embedded,
    /// A Python interpreter runs us (console script, `python -m`). `reexec`
    /// is the command that starts this server again with the same
    /// interpreter, without the server's own arguments (e.g.
    /// `["/venv/bin/python", "/venv/bin/rgunicorn"]`); SIGUSR2 execs it.
    Python { reexec: Vec<String> },
}

/// [`Host::Python`]'s `reexec`, for SIGUSR2.
static REEXEC: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// What SIGUSR2 executes to start a new master with the same arguments:
/// the program and its argv. The embedding binary runs itself again (the
/// file on disk now, which may be an upgrade); a hosted server runs its
/// interpreter with the script (or `-m rgunicorn`) again, which loads the
/// extension module installed now.
pub fn reexec_command(argv: &[String]) -> (std::path::PathBuf, Vec<String>) {
    match REEXEC.get() {
        Some(prefix) if !prefix.is_empty() => {
            let args = prefix.iter().chain(argv.iter().skip(1)).cloned().collect();
            (std::path::PathBuf::from(&prefix[0]), args)
        }
        _ => (
            std::fs::read_link("/proc/self/exe")
                .unwrap_or_else(|_| std::path::PathBuf::from(argv.first().map_or("", |a| a))),
            argv.to_vec(),
        ),
    }
}

/// Run rgunicorn with `argv` (`argv[0]` is the program name, the rest its
/// arguments) and return the exit code.
/// How listeners are opened (at start, and for a bind a reload adds).
pub fn bind_options(settings: &crate::config::Settings) -> Result<sock::BindOptions> {
    let owner = match (&settings.user, &settings.group) {
        (None, None) => None,
        (u, g) => Some((
            match u {
                Some(u) => Some(crate::privileges::uid_of(u)?.0),
                None => None,
            },
            match g {
                Some(g) => Some(crate::privileges::gid_of(g)?),
                None => None,
            },
        )),
    };
    Ok(sock::BindOptions {
        backlog: settings.backlog,
        reuse_port: settings.reuse_port,
        umask: settings.umask,
        owner,
    })
}

pub fn main(argv: Vec<String>, host: Host) -> i32 {
    // First, while this process has one thread and before Python copies the
    // environment: take the service manager's variables out of it, so no
    // worker or app ever sees them (see crate::systemd::env).
    crate::systemd::env::capture();
    if let Host::Python { reexec } = &host {
        // The interpreter was initialised before us: its os.environ must
        // lose the service manager's variables as well.
        python::adopt_host();
        python::sync_environ();
        let _ = REEXEC.set(reexec.clone());
    }
    let args: Vec<OsString> = argv.iter().skip(1).map(OsString::from).collect();
    // Before anything else runs: the argv strings become the process title.
    crate::proctitle::init();
    let settings = match python::config::load_settings(args, &argv) {
        Ok(s) => s,
        Err(python::config::LoadError::Config(e)) if e.is_version() => {
            print!("{}", version_text(&argv));
            return 0;
        }
        Err(python::config::LoadError::Config(e)) => e.exit(),
        Err(python::config::LoadError::File(e)) => {
            eprintln!("Error: {e:#}");
            return 1;
        }
    };
    if settings.print_config {
        // --print-config implies --check-config, but exits before logging
        // is set up: its warnings go straight to stderr.
        for w in &settings.warnings {
            eprintln!("Warning: {w}");
        }
        print!("{}", config::print_config(&settings));
        return 0;
    }
    match run(settings, argv) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            1
        }
    }
}

fn run(settings: Settings, argv: Vec<String>) -> Result<i32> {
    let Some(app_uri) = settings.wsgi_app.clone() else {
        eprintln!("usage: rgunicorn [OPTIONS] [APP_MODULE]");
        eprintln!("rgunicorn: error: No application module specified.");
        return Ok(2);
    };
    let journald = crate::logging::wants_journald(&settings);
    crate::logging::init(&settings, journald).context("cannot set up logging")?;
    // Nothing is silently ignored: extra arguments, config-file names that
    // are not settings, settings that do nothing here (also --check-config).
    for w in &settings.warnings {
        tracing::warn!("{w}");
    }

    if !crate::hooks::on_starting(&settings) {
        return Ok(1);
    }

    if let Some(dir) = &settings.chdir {
        std::env::set_current_dir(dir)
            .with_context(|| format!("cannot change directory to {}", dir.display()))?;
    }
    // The master is single-threaded here (set_var is sound).
    let mut env_orig = arbiter::EnvOrig::default();
    env_orig.apply(&[], &settings.raw_env);
    // When an interpreter already runs here (it hosts us, or read a Python
    // config file), its os.environ is a copy taken before: give it the
    // `--env` variables, or the workers forked from us would not see them.
    python::sync_environ();

    // A worker class that needs a package: say so now, before binding,
    // rather than in every worker.
    if let Some(package) = settings.worker_class.python_package() {
        python::initialize(&argv)?;
        python::require_package(package)?;
    }

    if settings.check_config {
        python::initialize(&argv)?;
        return Ok(match python::load_app(&settings, &app_uri, None) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("{}", e.traceback.trim_end());
                1
            }
        });
    }

    // HTTPS: the certificate, key and CA files are read and checked now,
    // before binding, so a bad one stops the start naming the file.
    crate::tls::install(&settings)?;

    let opts = bind_options(&settings)?;
    let mut listeners = Vec::new();
    let mut control_fd = None;
    let reexecuted = std::env::var_os(arbiter::REEXEC_FDS_ENV).is_some();
    if let Ok(fds) = std::env::var(arbiter::REEXEC_FDS_ENV) {
        // Started by SIGUSR2 from an old master: serve on its listeners.
        std::env::remove_var(arbiter::REEXEC_FDS_ENV);
        for fd in fds.split(',').filter(|f| !f.is_empty()) {
            let fd: i32 = fd
                .parse()
                .with_context(|| format!("{}: bad descriptor {fd:?}", arbiter::REEXEC_FDS_ENV))?;
            let mut l = sock::adopt_fd(fd)?;
            l.unlink_on_exit = matches!(l.kind, sock::ListenerKind::Unix(_));
            listeners.push(l);
        }
    } else {
        // Socket-activated listeners replace --bind; stored ones are reused
        // (see crate::systemd::listeners).
        let sockets = crate::systemd::listeners::resolve(&settings.bind, opts)?;
        listeners = sockets.listeners;
        control_fd = sockets.control;
    }
    let control = control_server(&settings, reexecuted, control_fd)?;

    if let Some(pidfile) = &settings.pidfile {
        std::fs::write(pidfile, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pidfile {}", pidfile.display()))?;
    }

    let preloaded = if settings.preload_app {
        if settings.reload {
            tracing::warn!(
                "--reload with --preload: the workers are forked from the app the master \
                 imported, so a code change reloads them with the same code; restart the \
                 server instead, or drop --preload"
            );
        }
        python::initialize(&argv)?;
        // The workers inherit the configured `logging` with the app.
        python::apply_logconfig(&settings)?;
        match python::load_app(&settings, &app_uri, None) {
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
    let mut arb = arbiter::Arbiter::new(settings, app_uri, argv, listeners, preloaded)?;
    arb.set_env_orig(env_orig);
    if let Some(c) = control {
        arb.set_control(c);
    }
    let code = arb.run();
    if let Some(p) = pidfile {
        // After SIGUSR2 the pidfile belongs to the new master and ours is
        // PIDFILE.oldbin: remove only a file that still names us.
        let mut old = p.clone().into_os_string();
        old.push(".oldbin");
        remove_if_ours(&p);
        remove_if_ours(std::path::Path::new(&old));
    }
    Ok(code)
}

/// The control socket: a socket-activated one named `control` if systemd
/// passed it, else bound at the configured path. A path that was set and
/// cannot be used stops the start; the default one only warns (two servers
/// of one user would otherwise fight over it).
/// `reexecuted`: this master was started by SIGUSR2 and takes the socket
/// over from its parent. `activated` is the descriptor named `control`,
/// taken by `crate::systemd::listeners` (the `LISTEN_*` variables are
/// gone from the environment by now).
fn control_server(
    settings: &Settings,
    reexecuted: bool,
    activated: Option<std::os::fd::OwnedFd>,
) -> Result<Option<ControlServer>> {
    if settings.control_socket_disable {
        return Ok(None);
    }
    let path = settings.control_socket.clone().unwrap_or_default();
    let mut opts = ServerOptions::new(path.clone(), settings.control_socket_mode);
    opts.allow_uid = settings.control_allow_uid.clone();
    opts.allow_gid = settings.control_allow_gid.clone();
    opts.readonly_gid = settings.control_readonly_gid.clone();
    opts.take_over = reexecuted;
    if let Some(fd) = activated {
        tracing::info!("Control socket: the one passed by the service manager");
        return Ok(Some(ControlServer::from_listener(fd, opts)?));
    }
    if settings.control_socket.is_none() {
        return Ok(None);
    }
    match ControlServer::bind(opts) {
        Ok(s) => Ok(Some(s)),
        Err(e) if !settings.control_socket_explicit => {
            tracing::warn!("{e}; running without a control socket (set --control-socket)");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Remove a pidfile only if it holds this process's pid.
fn remove_if_ours(p: &std::path::Path) {
    let ours = std::fs::read_to_string(p)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(p);
    }
}

fn remove_pidfile(s: &Settings) {
    if let Some(p) = &s.pidfile {
        let _ = std::fs::remove_file(p);
    }
}

/// `rgunicorn --version`: Gunicorn's first line, then the Python this
/// server runs its apps on (version, `sys.prefix`, `sys.executable`) and
/// how it was built.
fn version_text(argv: &[String]) -> String {
    let mut out = format!("rgunicorn (version {})\n", env!("CARGO_PKG_VERSION"));
    let python = python::initialize(argv).and_then(|()| python::describe());
    match python {
        Ok(d) => out.push_str(&format!("Python {d}\n")),
        Err(e) => out.push_str(&format!("Python: cannot start it: {e:#}\n")),
    }
    out.push_str(&format!(
        "Build: {} ({} {}, {}, {})\n",
        env!("RGUNICORN_BUILD_COMMIT"),
        env!("RGUNICORN_BUILD_PROFILE"),
        env!("RGUNICORN_BUILD_TARGET"),
        if python::is_hosted() {
            "extension module"
        } else {
            "embedding binary"
        },
        env!("RGUNICORN_BUILD_ABI"),
    ));
    out
}
