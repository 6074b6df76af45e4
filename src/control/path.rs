//! Where the control socket lives when `--control-socket` is not given.
//!
//! The first of these that applies:
//!
//! 1. `$RUNTIME_DIRECTORY/rgunicorn.ctl`: systemd sets `RUNTIME_DIRECTORY`
//!    for a unit with `RuntimeDirectory=` (the first entry of a `:`-separated
//!    list is used);
//! 2. `$XDG_RUNTIME_DIR/rgunicorn.ctl`: a login session's private directory;
//! 3. `/tmp/rgunicorn-UID/rgunicorn.ctl`: a private per-user directory that
//!    the server creates with mode 0700 and refuses to use unless it is a
//!    real directory owned by that user with no access for anyone else
//!    (containers and plain shells usually have neither variable).
//!
//! The client ([`candidates`]) looks in the same places, in the same order,
//! and uses the first socket file that exists: a shell rarely has the
//! service's `RUNTIME_DIRECTORY`, so it falls through to the others.

use std::path::{Path, PathBuf};

/// The socket's file name inside the chosen directory.
pub const SOCKET_NAME: &str = "rgunicorn.ctl";

/// The environment the default depends on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathEnv {
    /// `$RUNTIME_DIRECTORY` (systemd's `RuntimeDirectory=`).
    pub runtime_directory: Option<String>,
    /// `$XDG_RUNTIME_DIR`.
    pub xdg_runtime_dir: Option<String>,
    /// The effective uid, for the private fallback directory.
    pub uid: u32,
}

impl PathEnv {
    /// Read the variables through `env` (empty values count as unset) and
    /// take the effective uid of this process.
    pub fn capture(env: &dyn Fn(&str) -> Option<String>) -> PathEnv {
        let get = |k: &str| env(k).filter(|s| !s.is_empty());
        PathEnv {
            runtime_directory: get("RUNTIME_DIRECTORY")
                .and_then(|s| s.split(':').next().map(str::to_string))
                .filter(|s| !s.is_empty()),
            xdg_runtime_dir: get("XDG_RUNTIME_DIR"),
            uid: nix::unistd::geteuid().as_raw(),
        }
    }
}

/// The private per-user fallback directory, `/tmp/rgunicorn-UID`.
pub fn private_dir(uid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/rgunicorn-{uid}"))
}

/// Every place the default socket may be, most specific first.
pub fn candidates(env: &PathEnv) -> Vec<PathBuf> {
    let mut out = Vec::with_capacity(3);
    if let Some(d) = &env.runtime_directory {
        out.push(Path::new(d).join(SOCKET_NAME));
    }
    if let Some(d) = &env.xdg_runtime_dir {
        out.push(Path::new(d).join(SOCKET_NAME));
    }
    out.push(private_dir(env.uid).join(SOCKET_NAME));
    out
}

/// The path the server binds when none is given: the first candidate.
pub fn default_socket(env: &PathEnv) -> PathBuf {
    // `candidates` always ends with the private directory, so it is never empty.
    candidates(env)
        .into_iter()
        .next()
        .unwrap_or_else(|| private_dir(env.uid).join(SOCKET_NAME))
}

/// Whether `path` is inside the private fallback directory of `uid`, which
/// the server creates (0700) instead of expecting it to exist.
pub fn is_in_private_dir(path: &Path, uid: u32) -> bool {
    path.parent() == Some(private_dir(uid).as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(rd: Option<&str>, xdg: Option<&str>) -> PathEnv {
        PathEnv {
            runtime_directory: rd.map(String::from),
            xdg_runtime_dir: xdg.map(String::from),
            uid: 1000,
        }
    }

    #[test]
    fn systemd_first_then_xdg_then_private() {
        let e = env(Some("/run/app"), Some("/run/user/1000"));
        assert_eq!(default_socket(&e), PathBuf::from("/run/app/rgunicorn.ctl"));
        assert_eq!(candidates(&e).len(), 3);
        let e = env(None, Some("/run/user/1000"));
        assert_eq!(
            default_socket(&e),
            PathBuf::from("/run/user/1000/rgunicorn.ctl")
        );
        let e = env(None, None);
        assert_eq!(
            default_socket(&e),
            PathBuf::from("/tmp/rgunicorn-1000/rgunicorn.ctl")
        );
        assert!(is_in_private_dir(&default_socket(&e), 1000));
        assert!(!is_in_private_dir(&default_socket(&e), 0));
    }

    #[test]
    fn capture_takes_the_first_runtime_directory() {
        let e = PathEnv::capture(&|k| match k {
            "RUNTIME_DIRECTORY" => Some("/run/a:/run/b".into()),
            "XDG_RUNTIME_DIR" => Some(String::new()),
            _ => None,
        });
        assert_eq!(e.runtime_directory.as_deref(), Some("/run/a"));
        assert_eq!(e.xdg_runtime_dir, None);
    }
}
