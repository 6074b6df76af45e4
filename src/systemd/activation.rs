//! Socket activation (`sd_listen_fds(3)`): the listening sockets the
//! service manager passes from file descriptor 3 on, with `LISTEN_FDS`,
//! `LISTEN_PID` and `LISTEN_FDNAMES`.
//!
//! Names sort the descriptors:
//! - `control` (`FileDescriptorName=control` in a `.socket` unit) is the
//!   control socket, for `rgunicornctl`;
//! - a name made by [`super::fdstore::name_for_bind`] is one of our own
//!   listeners that the manager kept in its fd store across a restart;
//! - anything else (`http`, `unknown` when the unit names nothing) serves
//!   HTTP, and all of them together replace `--bind`.
//!
//! Every descriptor is made close-on-exec at once, so nothing this process
//! execs inherits it by accident; workers get the listeners by `fork`.

use super::env::Environment;
use super::fdstore;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The first passed descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// Name of the descriptor that becomes the control socket.
pub const CONTROL_NAME: &str = "control";

/// The descriptors passed to this process, sorted by what they are for.
#[derive(Debug, Default)]
pub struct Activation {
    /// Listeners to serve HTTP on, with their `LISTEN_FDNAMES` name.
    pub http: Vec<(OwnedFd, String)>,
    /// The descriptor named `control`, for the control socket.
    pub control: Option<OwnedFd>,
    /// Our own listeners handed back from the fd store, with their name.
    pub stored: Vec<(OwnedFd, String)>,
}

/// Why the passed descriptors cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("LISTEN_PID={0:?} is not a process id")]
    BadPid(String),
    #[error("LISTEN_FDS={0:?} is not a number of file descriptors")]
    BadCount(String),
    #[error(
        "LISTEN_FDNAMES names {names} descriptors but LISTEN_FDS={fds}: \
         the socket units and the service disagree"
    )]
    NameCountMismatch { names: usize, fds: usize },
    #[error("file descriptor {0} passed by the service manager is not open")]
    NotOpen(RawFd),
    #[error("cannot make file descriptor {fd} close-on-exec: {err}")]
    Cloexec { fd: RawFd, err: nix::errno::Errno },
}

/// Which descriptors were passed, by number and name, without touching them.
/// `None` when nothing was passed to *this* process.
pub fn parse(env: &Environment, pid: u32) -> Result<Option<Vec<(RawFd, String)>>, ActivationError> {
    let Some(listen_pid) = env.listen_pid.as_deref() else {
        return Ok(None);
    };
    let listen_pid: u32 = listen_pid
        .trim()
        .parse()
        .map_err(|_| ActivationError::BadPid(listen_pid.to_string()))?;
    if listen_pid != pid {
        // Meant for another process (a parent that did not clean up).
        return Ok(None);
    }
    let count = match env.listen_fds.as_deref() {
        None => 0,
        Some(s) => s
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= 4096)
            .ok_or_else(|| ActivationError::BadCount(s.to_string()))?,
    };
    if count == 0 {
        return Ok(None);
    }
    let names: Vec<String> = match env.listen_fdnames.as_deref() {
        None => vec!["unknown".to_string(); count],
        Some(s) => s.split(':').map(str::to_string).collect(),
    };
    if names.len() != count {
        return Err(ActivationError::NameCountMismatch {
            names: names.len(),
            fds: count,
        });
    }
    Ok(Some(
        names
            .into_iter()
            .enumerate()
            .map(|(i, n)| (LISTEN_FDS_START + i as RawFd, n))
            .collect(),
    ))
}

/// Take ownership of the descriptors passed to this process (captured
/// environment, see [`super::env`]). `Ok(None)`: not socket-activated.
///
/// Call once: the descriptors become owned by the result.
pub fn activation() -> Result<Option<Activation>, ActivationError> {
    let Some(fds) = parse(super::env::get(), std::process::id())? else {
        return Ok(None);
    };
    // Check them all before owning any, so an error leaves nothing half-owned.
    for (fd, _) in &fds {
        // SAFETY: only borrowed for the fcntl calls; fd is in the range the
        // manager promised us and nothing else in this process owns it yet.
        let b = unsafe { BorrowedFd::borrow_raw(*fd) };
        let flags = nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_GETFD)
            .map_err(|_| ActivationError::NotOpen(*fd))?;
        let mut flags = nix::fcntl::FdFlag::from_bits_truncate(flags);
        flags.insert(nix::fcntl::FdFlag::FD_CLOEXEC);
        nix::fcntl::fcntl(b, nix::fcntl::FcntlArg::F_SETFD(flags))
            .map_err(|err| ActivationError::Cloexec { fd: *fd, err })?;
    }
    let mut out = Activation::default();
    for (fd, name) in fds {
        // SAFETY: fd is open (checked above), was passed to this process
        // for it to own, and is taken exactly once (this loop).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if name == CONTROL_NAME && out.control.is_none() {
            out.control = Some(owned);
        } else if fdstore::is_store_name(&name) {
            out.stored.push((owned, name));
        } else {
            out.http.push((owned, name));
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pid: &str, fds: &str, names: Option<&str>) -> Environment {
        Environment {
            listen_pid: Some(pid.into()),
            listen_fds: Some(fds.into()),
            listen_fdnames: names.map(Into::into),
            ..Environment::default()
        }
    }

    #[test]
    fn only_for_our_pid() {
        assert_eq!(parse(&env("41", "1", None), 42), Ok(None));
        assert_eq!(parse(&Environment::default(), 42), Ok(None));
        assert_eq!(parse(&env("42", "0", None), 42), Ok(None));
        assert!(matches!(
            parse(&env("x", "1", None), 42),
            Err(ActivationError::BadPid(_))
        ));
    }

    #[test]
    fn names_count_must_match() {
        assert_eq!(
            parse(&env("42", "2", Some("http:control")), 42),
            Ok(Some(vec![(3, "http".into()), (4, "control".into())]))
        );
        assert_eq!(
            parse(&env("42", "2", None), 42),
            Ok(Some(vec![(3, "unknown".into()), (4, "unknown".into())]))
        );
        let e = parse(&env("42", "3", Some("http:control")), 42);
        assert_eq!(
            e,
            Err(ActivationError::NameCountMismatch { names: 2, fds: 3 })
        );
        assert!(e
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .contains("LISTEN_FDNAMES names 2 descriptors but LISTEN_FDS=3"));
        assert!(matches!(
            parse(&env("42", "two", None), 42),
            Err(ActivationError::BadCount(_))
        ));
    }
}
