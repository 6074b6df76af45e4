//! Where the master's listeners come from under a service manager.
//!
//! In order:
//! 1. **Socket activation.** When sockets for HTTP were passed
//!    (`LISTEN_FDS`, names other than `control` and our fd-store names),
//!    they are the listeners, and `--bind` is ignored: nothing else is
//!    bound. Activated Unix sockets belong to the socket unit and are never
//!    unlinked by us.
//! 2. **fd store.** Otherwise each `--bind` is served by the descriptor the
//!    manager kept for it at our last run, when there is one, or bound
//!    fresh. Fresh listeners are then stored (when `FDSTORE` allows it), and
//!    stored descriptors no bind wants any more are removed.
//! 3. Plain binding, as Gunicorn does, when no manager is involved.
//!
//! A descriptor named `control` is returned separately, for the control
//! socket.

use super::{activation, fdstore, Notifier};
use crate::sock::{self, BindAddr, BindOptions, Listener};
use anyhow::{Context, Result};
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};

/// The master's sockets.
#[derive(Debug, Default)]
pub struct Sockets {
    pub listeners: Vec<Listener>,
    /// The socket-activated control socket (`FileDescriptorName=control`).
    pub control: Option<OwnedFd>,
}

/// Adopt a descriptor the manager passed us as a listener.
fn adopt(fd: OwnedFd, what: &str) -> Result<Listener> {
    let raw = fd.into_raw_fd();
    sock::adopt_fd(raw).with_context(|| format!("cannot use the {what} (fd {raw})"))
}

/// Bind, adopt or reuse every listener (see the module doc).
pub fn resolve(binds: &[String], opts: BindOptions) -> Result<Sockets> {
    let act = activation()
        .context("socket activation")?
        .unwrap_or_default();
    let notifier = Notifier::from_env();
    let remove_stored = |name: &str| {
        if let Some(n) = &notifier {
            match n.fdstore_remove(name) {
                Ok(()) => tracing::info!("Removed stale stored listener {name}"),
                Err(e) => tracing::warn!("cannot remove stored listener {name}: {e}"),
            }
        }
    };
    let mut out = Sockets {
        listeners: Vec::new(),
        control: act.control,
    };

    if !act.http.is_empty() {
        tracing::info!(
            "Socket activation: serving the {} socket(s) passed by the service manager; --bind is ignored",
            act.http.len()
        );
        for (fd, name) in act.http {
            out.listeners
                .push(adopt(fd, &format!("activated socket `{name}`"))?);
        }
        for (fd, name) in act.stored {
            drop(fd);
            remove_stored(&name);
        }
        return Ok(out);
    }

    let mut reuse = fdstore::plan(act.stored, binds);
    for name in std::mem::take(&mut reuse.stale) {
        remove_stored(&name);
    }
    let store = notifier
        .as_ref()
        .filter(|_| super::env::get().fdstore_allowed());
    for b in binds {
        if let Some(fd) = reuse.by_bind.remove(b) {
            let mut l = adopt(fd, &format!("stored listener for {b}"))?;
            l.bind = Some(b.clone());
            tracing::info!("Reusing the listener for {b} kept by the service manager");
            out.listeners.push(l);
            continue;
        }
        let addr = BindAddr::parse(b)?;
        let fresh = sock::bind(&addr, opts)?;
        let name = fdstore::name_for_bind(b).filter(|_| !matches!(addr, BindAddr::Fd(_)));
        for mut l in fresh {
            l.bind = Some(b.clone());
            if let (Some(n), Some(name)) = (store, &name) {
                match n.fdstore(l.fd.as_fd(), name) {
                    Ok(()) => {
                        // The manager holds it now: it must outlive us,
                        // socket file included.
                        l.shared = true;
                        l.unlink_on_exit = false;
                    }
                    Err(e) => tracing::warn!("cannot store the listener for {b}: {e}"),
                }
            }
            out.listeners.push(l);
        }
    }
    Ok(out)
}
