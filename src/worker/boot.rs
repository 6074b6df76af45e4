//! After-fork set-up of a worker, up to the point where a worker class takes
//! over: the fault signals, dropping privileges, Python (unless the master
//! preloaded the app), logconfig, importing the app, the proxy policy, and
//! for the WSGI classes the bridge, the proctitle and the
//! `post_worker_init` hook. Every failure here is logged, noted in the
//! worker's scoreboard slot, and becomes the worker's exit code
//! (`WORKER_BOOT_ERROR` or `APP_LOAD_ERROR`).

use super::msg::{APP_LOAD_ERROR, WORKER_BOOT_ERROR};
use super::Spec;
use crate::config::Settings;
use crate::scoreboard::{Scoreboard, Slot};
use crate::sock::{Listener, ListenerKind};
use crate::wsgi::{Bridge, ListenerInfo, ProxyPolicy};
use pyo3::prelude::*;
use std::os::fd::RawFd;
use std::time::Duration;

/// A worker whose app is imported, ready for its class.
pub(super) struct Booted<'a> {
    pub settings: &'a Settings,
    pub listeners: &'a [Listener],
    pub slot_index: usize,
    pub slot: &'static Slot,
    /// Every worker's slot (the mapping outlives the worker).
    pub scoreboard: Scoreboard,
    pub notify_fd: RawFd,
    pub max_requests: u64,
    pub multiprocess: bool,
    /// The app callable.
    pub app: Py<PyAny>,
    /// How long one write to (or read from) a client may block: `--timeout`,
    /// or an hour when it is 0.
    pub io_timeout: Duration,
    /// `forwarded_allow_ips`, `proxy_protocol` and friends, parsed once.
    pub proxy: ProxyPolicy,
}

/// Set the process up and import the app.
pub(super) fn boot(spec: Spec<'_>) -> Result<Booted<'_>, i32> {
    let s = spec.settings;
    let pid = std::process::id();
    tracing::info!("Booting worker with pid: {pid}");
    // --user/--group/--initgroups: the listeners are already bound and
    // inherited; the app is imported as the unprivileged user.
    if let Err(e) = crate::privileges::drop_to(s.user.as_deref(), s.group.as_deref(), s.initgroups)
    {
        tracing::error!("Exception in worker process: cannot drop privileges: {e:#}");
        spec.scoreboard
            .set_error(spec.slot_index, &format!("cannot drop privileges: {e:#}"));
        return Err(WORKER_BOOT_ERROR);
    }
    // gevent: monkey-patch before the app is imported, as Gunicorn's
    // worker does; a preloaded app was imported unpatched in the master and
    // is patched here after the fork, as Gunicorn does too.
    let patch = || {
        if s.effective_worker_class() != crate::config::WorkerClass::Gevent {
            return Ok(());
        }
        Python::attach(|py| {
            crate::python::bootstrap(py)
                .and_then(|b| b.call_method0("gevent_patch"))
                .map(|_| ())
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot monkey-patch with gevent:\n{}",
                        crate::python::format_exception(py, &e).trim_end()
                    )
                })
        })
    };
    // `--reload`: files to watch besides the modules' (the file of code
    // that did not compile).
    let mut broken = Vec::new();
    let app = match spec.preloaded {
        Some(app) => {
            if let Err(e) = patch() {
                tracing::error!("Exception in worker process: {e:#}");
                spec.scoreboard
                    .set_error(spec.slot_index, &format!("{e:#}"));
                return Err(WORKER_BOOT_ERROR);
            }
            app
        }
        None => {
            if let Err(e) = crate::python::initialize(spec.argv)
                .and_then(|()| crate::python::apply_logconfig(s))
                .and_then(|()| patch())
            {
                tracing::error!("Exception in worker process: {e:#}");
                spec.scoreboard
                    .set_error(spec.slot_index, &format!("{e:#}"));
                return Err(WORKER_BOOT_ERROR);
            }
            match crate::python::load_app(s, spec.app_uri, s.chdir.as_deref()) {
                Ok(app) => app,
                Err(e) => {
                    tracing::error!("Exception in worker process\n{}", e.traceback.trim_end());
                    match serve_the_error(&spec, &e) {
                        Some(app) => {
                            broken.extend(e.syntax_error_file);
                            app
                        }
                        None => {
                            spec.scoreboard.set_error(spec.slot_index, &e.traceback);
                            return Err(APP_LOAD_ERROR);
                        }
                    }
                }
            }
        }
    };
    if s.reload {
        let (fd, slot) = (spec.notify_fd, static_slot(spec.slot));
        Python::attach(|py| super::reload_watch::start(py, s, broken, fd, slot, spec.slot_index));
    }
    let proxy = ProxyPolicy::from_settings(s).map_err(|e| {
        tracing::error!("Exception in worker process: {e}");
        WORKER_BOOT_ERROR
    })?;
    Ok(Booted {
        settings: s,
        listeners: spec.listeners,
        slot_index: spec.slot_index,
        slot: static_slot(spec.slot),
        scoreboard: spec.scoreboard.clone(),
        notify_fd: spec.notify_fd,
        max_requests: spec.max_requests,
        multiprocess: spec.multiprocess,
        app,
        io_timeout: io_timeout(s.timeout),
        proxy,
    })
}

impl Booted<'_> {
    /// The WSGI bridge for the app (`wsgi.multithread` as given), then the
    /// worker counts as initialised: see [`Booted::initialized`]. The
    /// request hooks are looked up last, as they need the hooks' worker
    /// object.
    pub fn wsgi_bridge(&self, multithread: bool) -> Result<Bridge, i32> {
        super::asgi::refuse_asgi_app(&self.app)?;
        let infos: Vec<ListenerInfo> = self.listeners.iter().map(listener_info).collect();
        let mut bridge = Python::attach(|py| {
            Bridge::new(
                py,
                self.app.clone_ref(py),
                &infos,
                multithread,
                self.multiprocess,
                self.io_timeout,
            )
        })
        .map_err(|e| {
            tracing::error!("Exception in worker process: {e}");
            WORKER_BOOT_ERROR
        })?;
        bridge.proxy = self.proxy.clone();
        // Decided once: the environ keys the access log reads after each call.
        bridge.access_environ = crate::logging::access_environ_keys();
        let body = super::body::Policy::from_settings(self.settings);
        bridge.body_rate = Some((body.timeout, body.min_rate));
        let s = self.settings;
        crate::wsgi::spool::configure(crate::wsgi::spool::Config {
            memory_max: s.response_buffer_size,
            worker_max: s.response_spool_max,
            grace: std::time::Duration::from_secs(s.response_timeout.max(1)),
            min_rate: s.response_min_rate,
        });
        self.initialized();
        bridge.request_hooks = crate::hooks::RequestHooks::new(self.settings, self.slot_index);
        Ok(bridge)
    }

    /// The worker is set up: its process title says so and the
    /// `post_worker_init` hook runs. A class calls this once, when it has
    /// built what it needs to call the app.
    pub fn initialized(&self) {
        crate::proctitle::set("worker", self.settings);
        crate::hooks::post_worker_init(self.settings, self.slot_index);
    }
}

/// `--timeout` as the bound on one blocking client read or write.
fn io_timeout(timeout: u64) -> Duration {
    Duration::from_secs(if timeout == 0 { 3600 } else { timeout.max(1) })
}

/// The slot lives in the scoreboard mapping, which is never unmapped.
/// `--reload` before any worker served, and the app's code does not compile
/// (a `SyntaxError`, the case Gunicorn's `--reload` keeps a worker up for):
/// an app that serves the error, so the server stays up while the file is
/// fixed. None: the boot fails as without `--reload`.
fn serve_the_error(spec: &Spec<'_>, e: &crate::python::AppLoadError) -> Option<Py<PyAny>> {
    let class = spec.settings.effective_worker_class();
    if !spec.serve_syntax_errors
        || e.syntax_error_file.is_none()
        || class == crate::config::WorkerClass::Tornado
    {
        return None;
    }
    let asgi = class == crate::config::WorkerClass::Asgi;
    match Python::attach(|py| crate::python::fail_app(py, &e.traceback, asgi)) {
        Ok(app) => {
            tracing::warn!("--reload: serving the error above as a 500 until the code is fixed");
            Some(app)
        }
        Err(err) => {
            tracing::error!("--reload: cannot serve the error: {err}");
            None
        }
    }
}

fn static_slot(slot: &Slot) -> &'static Slot {
    // SAFETY: Scoreboard mappings are never unmapped for the life of the
    // process (see scoreboard.rs), so a reference into one is 'static.
    unsafe { &*(slot as *const Slot) }
}

pub(super) fn listener_info(l: &Listener) -> ListenerInfo {
    let (server_name, server_port) = l.server_name_port();
    ListenerInfo {
        server_name,
        server_port,
        url_scheme: "http",
        unix: matches!(l.kind, ListenerKind::Unix(_)),
    }
}

/// SIGSEGV and SIGBUS kill the worker, as they kill a Python process.
/// Rust's runtime installs handlers for them (to report stack overflows)
/// that, for a signal sent with kill(2), reset the action and return: the
/// worker would survive its first SIGSEGV and the master would never know.
/// A real fault still dies of the same signal, so the master logs it.
pub(super) fn default_fault_signals() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    for sig in [Signal::SIGSEGV, Signal::SIGBUS] {
        // SAFETY: installing the default action runs no code of ours.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}

/// Block or unblock TERM and USR1 on this thread.
pub(super) fn set_mask(how: nix::sys::signal::SigmaskHow) {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGTERM);
    set.add(nix::sys::signal::Signal::SIGUSR1);
    if let Err(e) = nix::sys::signal::pthread_sigmask(how, Some(&set), None) {
        tracing::warn!("cannot change the signal mask: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_timeout_is_the_worker_timeout_or_an_hour() {
        assert_eq!(io_timeout(30), Duration::from_secs(30));
        assert_eq!(io_timeout(0), Duration::from_secs(3600));
    }
}
