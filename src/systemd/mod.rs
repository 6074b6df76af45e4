//! systemd integration, one concept per file:
//!
//! - [`env`]: the manager's variables, captured at start and removed from
//!   the environment so workers never see them;
//! - [`activation`]: socket activation (`LISTEN_FDS`, `LISTEN_FDNAMES`);
//! - [`fdstore`]: keeping our listeners in the manager's fd store across
//!   restarts;
//! - [`notify`]: sending `sd_notify` datagrams, to path and abstract sockets;
//! - [`listeners`]: where the listeners come from (activation, fd store, --bind);
//! - [`service`]: what the master says when (READY, RELOADING, STOPPING,
//!   STATUS, WATCHDOG, MAINPID, EXTEND_TIMEOUT_USEC);
//! - [`journal`]: is stderr the journal?
//!
//! Everything here runs in the master's one thread; nothing here starts a
//! thread.

pub mod activation;
pub mod env;
pub mod fdstore;
pub mod journal;
pub mod listeners;
pub mod notify;
pub mod service;

pub use activation::{activation, Activation, ActivationError};
pub use notify::Notifier;
pub use service::{Service, Snapshot};
