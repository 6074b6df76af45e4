//! The service manager's environment variables, captured once and removed.
//!
//! `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`, `NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`, `WATCHDOG_PID` and `FDSTORE` are meant for the master
//! only. They are read by [`capture`] at the very top of `main`, before the
//! settings are parsed, before Python is initialised (its `os.environ` is a
//! copy taken at initialisation) and before any thread or worker exists,
//! and removed from the process environment in the same step, so no worker
//! and no app ever sees them: an app that called `sd_notify` itself, or
//! believed the listeners were its own, would confuse the manager.
//!
//! Removing variables is only sound while the process is single-threaded
//! (`setenv`/`unsetenv` race with any concurrent `getenv`); `capture` runs
//! first thing in `main`, when that holds.

use std::sync::OnceLock;

/// Every variable this module owns.
pub const VARS: [&str; 7] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "FDSTORE",
];

/// The values as they were at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    pub listen_pid: Option<String>,
    pub listen_fds: Option<String>,
    pub listen_fdnames: Option<String>,
    pub notify_socket: Option<String>,
    pub watchdog_usec: Option<String>,
    pub watchdog_pid: Option<String>,
    /// Set (to the maximum number of descriptors) by systemd 254+ when the
    /// unit has `FileDescriptorStoreMax=` above 0.
    pub fdstore: Option<String>,
}

impl Environment {
    /// Build from any lookup (the process environment, or a test's map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Environment {
        Environment {
            listen_pid: get("LISTEN_PID"),
            listen_fds: get("LISTEN_FDS"),
            listen_fdnames: get("LISTEN_FDNAMES"),
            notify_socket: get("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
            watchdog_usec: get("WATCHDOG_USEC"),
            watchdog_pid: get("WATCHDOG_PID"),
            fdstore: get("FDSTORE"),
        }
    }

    /// May listeners be kept in the manager's fd store?
    pub fn fdstore_allowed(&self) -> bool {
        self.notify_socket.is_some()
            && self
                .fdstore
                .as_deref()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n > 0)
    }
}

static CAPTURED: OnceLock<Environment> = OnceLock::new();

/// Read the variables into a process-wide snapshot and remove them from the
/// environment. Idempotent: later calls change nothing.
///
/// Call while the process is single-threaded (first thing in `main`).
pub fn capture() -> &'static Environment {
    CAPTURED.get_or_init(|| {
        let env = Environment::from_lookup(|k| std::env::var(k).ok());
        for k in VARS {
            // Sound: called while the process has one thread (module doc).
            std::env::remove_var(k);
        }
        env
    })
}

/// The snapshot taken by [`capture`] (captured now if it was not yet).
pub fn get() -> &'static Environment {
    capture()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdstore_needs_a_socket_and_a_positive_limit() {
        let env = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Environment::from_lookup(move |k| {
                pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
            })
        };
        assert!(env(&[("NOTIFY_SOCKET", "/x"), ("FDSTORE", "4")]).fdstore_allowed());
        assert!(!env(&[("NOTIFY_SOCKET", "/x"), ("FDSTORE", "0")]).fdstore_allowed());
        assert!(!env(&[("FDSTORE", "4")]).fdstore_allowed());
        assert!(!env(&[("NOTIFY_SOCKET", ""), ("FDSTORE", "4")]).fdstore_allowed());
    }
}
