//! Is stderr connected to the systemd journal?
//!
//! systemd sets `JOURNAL_STREAM=<device>:<inode>` for a service whose
//! stdout or stderr is a journal stream. The variable is inherited by
//! children whose stderr may have been redirected since, so it only counts
//! when it names the very file stderr is (the check `sd_journal_stream_fd`'s
//! documentation asks for). When it does, logs are better sent natively
//! (priority and fields) than as text lines.

use std::os::fd::AsFd;

/// Does a `JOURNAL_STREAM` value name stderr's device and inode?
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.trim().split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_matching_stream_counts() {
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("1:x")));
        let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
            return;
        };
        assert!(stderr_is_journal(Some(&format!(
            "{}:{}",
            st.st_dev, st.st_ino
        ))));
        assert!(!stderr_is_journal(Some(&format!(
            "{}:{}",
            st.st_dev,
            st.st_ino + 1
        ))));
    }
}
