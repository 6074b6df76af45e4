//! `--user`, `--group`, `--initgroups`, `--umask`: workers run as the given
//! user and group; the master keeps its privileges (it bound the listeners
//! before any worker existed), as Gunicorn does.

use anyhow::{Context, Result};
use nix::unistd::{Gid, Group, Uid, User};

/// Resolve a user name or numeric uid.
pub fn uid_of(user: &str) -> Result<(Uid, Option<User>)> {
    if let Ok(n) = user.parse::<u32>() {
        let u = Uid::from_raw(n);
        return Ok((u, User::from_uid(u).ok().flatten()));
    }
    let u = User::from_name(user)
        .with_context(|| format!("cannot look up user {user:?}"))?
        .with_context(|| format!("no such user: {user:?}"))?;
    Ok((u.uid, Some(u)))
}

/// Resolve a group name or numeric gid.
pub fn gid_of(group: &str) -> Result<Gid> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    Ok(Group::from_name(group)
        .with_context(|| format!("cannot look up group {group:?}"))?
        .with_context(|| format!("no such group: {group:?}"))?
        .gid)
}

/// Become `user`/`group` (in a worker, right after the fork). The group
/// defaults to the user's primary group, as in Gunicorn.
pub fn drop_to(user: Option<&str>, group: Option<&str>, initgroups: bool) -> Result<()> {
    if user.is_none() && group.is_none() {
        return Ok(());
    }
    let (uid, entry) = match user {
        Some(u) => {
            let (uid, entry) = uid_of(u)?;
            (Some(uid), entry)
        }
        None => (None, None),
    };
    let gid = match group {
        Some(g) => Some(gid_of(g)?),
        None => entry.as_ref().map(|e| e.gid),
    };
    if let Some(gid) = gid {
        if initgroups {
            if let Some(e) = &entry {
                let name = std::ffi::CString::new(e.name.as_bytes()).context("user name")?;
                nix::unistd::initgroups(&name, gid).context("initgroups")?;
            }
        } else if Uid::effective().is_root() {
            nix::unistd::setgroups(&[gid]).context("setgroups")?;
        }
        nix::unistd::setgid(gid).with_context(|| format!("setgid({gid})"))?;
    }
    if let Some(uid) = uid {
        nix::unistd::setuid(uid).with_context(|| format!("setuid({uid})"))?;
        if let Some(e) = &entry {
            // Python's os.path.expanduser and friends follow HOME.
            std::env::set_var("HOME", &e.dir);
            std::env::set_var("USER", &e.name);
        }
    }
    Ok(())
}
