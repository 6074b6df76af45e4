//! The service manager's file-descriptor store: our listening sockets
//! survive `systemctl restart`.
//!
//! When the manager allows it (`FDSTORE` set, i.e. the unit has
//! `FileDescriptorStoreMax=`), each listener the master bound itself is sent
//! with `FDSTORE=1` and `FDNAME=` a name made from its `--bind` string. At
//! the next start the manager passes them back like activated sockets
//! (`LISTEN_FDS`/`LISTEN_FDNAMES`); a stored descriptor whose name matches a
//! configured bind is used instead of binding again, so the listening
//! socket, and the connections waiting in its backlog, are never closed. A
//! stored descriptor that matches no configured bind any more (the
//! configuration changed) is closed and removed with `FDSTOREREMOVE=1`.
//!
//! Names: `LISTEN_FDNAMES` separates names with `:` and systemd refuses a
//! name containing one, or a control character, or longer than 255 bytes.
//! Bind strings are full of colons (`127.0.0.1:8000`, `unix:/run/x.sock`),
//! so they are percent-encoded after the prefix [`PREFIX`].

use percent_encoding::{percent_encode, AsciiSet, CONTROLS};
use std::collections::HashMap;
use std::os::fd::OwnedFd;

/// Every stored-listener name starts with this.
pub const PREFIX: &str = "rgunicorn-bind=";

/// systemd's limit on a descriptor name (`FDNAME_MAX`).
pub const NAME_MAX: usize = 255;

const ENCODE: &AsciiSet = &CONTROLS.add(b':').add(b'%').add(b' ');

/// The fd-store name of the listener for one `--bind` value; `None` when
/// the encoded name would be longer than systemd accepts.
pub fn name_for_bind(bind: &str) -> Option<String> {
    let name = format!("{PREFIX}{}", percent_encode(bind.as_bytes(), ENCODE));
    (name.len() <= NAME_MAX).then_some(name)
}

/// Is `name` one of ours?
pub fn is_store_name(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// Stored descriptors sorted against the configured binds.
#[derive(Debug, Default)]
pub struct Reuse {
    /// bind string → the stored listener to use for it.
    pub by_bind: HashMap<String, OwnedFd>,
    /// Names stored that no configured bind wants (closed when dropped).
    pub stale: Vec<String>,
}

/// Match stored descriptors with the configured binds.
pub fn plan(stored: Vec<(OwnedFd, String)>, binds: &[String]) -> Reuse {
    let wanted: HashMap<String, &String> = binds
        .iter()
        .filter_map(|b| Some((name_for_bind(b)?, b)))
        .collect();
    let mut out = Reuse::default();
    for (fd, name) in stored {
        match wanted.get(&name) {
            Some(bind) if !out.by_bind.contains_key(*bind) => {
                out.by_bind.insert((*bind).clone(), fd);
            }
            _ => out.stale.push(name),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_no_colons_and_round_trip_by_comparison() {
        let n = name_for_bind("127.0.0.1:8000").unwrap_or_default();
        assert_eq!(n, "rgunicorn-bind=127.0.0.1%3A8000");
        assert!(!n.contains(':'));
        assert!(is_store_name(&n));
        assert!(!is_store_name("http"));
        assert_eq!(
            name_for_bind("[::1]:80").as_deref(),
            Some("rgunicorn-bind=[%3A%3A1]%3A80")
        );
        assert!(name_for_bind(&format!("unix:/{}", "x".repeat(300))).is_none());
    }

    #[test]
    fn plan_reuses_matches_and_reports_stale() {
        let fd = || -> OwnedFd {
            std::fs::File::open("/dev/null")
                .map(OwnedFd::from)
                .unwrap_or_else(|e| panic!("open /dev/null: {e}"))
        };
        let binds = vec!["127.0.0.1:8000".to_string()];
        let stored = vec![
            (fd(), name_for_bind("127.0.0.1:8000").unwrap_or_default()),
            (fd(), name_for_bind("127.0.0.1:9000").unwrap_or_default()),
        ];
        let r = plan(stored, &binds);
        assert!(r.by_bind.contains_key("127.0.0.1:8000"));
        assert_eq!(r.stale, vec!["rgunicorn-bind=127.0.0.1%3A9000".to_string()]);
    }
}
