//! `-n/--name`: the process name shown by `ps -o comm`, `top` and
//! `/proc/PID/comm` for the master and the workers.
//!
//! The kernel keeps 15 bytes of name (`prctl(PR_SET_NAME)`), too few for
//! Gunicorn's `gunicorn: master [name]`, so the name itself is used there
//! (truncated). The full argv title (`ps -o args`) is not rewritten yet.

/// Set this process's name to `proc_name`, else `default_proc_name`.
pub fn set(s: &crate::config::Settings) {
    let name = s.proc_name.as_deref().unwrap_or(&s.default_proc_name);
    let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    if bytes.is_empty() {
        bytes.extend_from_slice(b"rgunicorn");
    }
    if let Ok(c) = std::ffi::CString::new(bytes) {
        if let Err(e) = nix::sys::prctl::set_name(&c) {
            tracing::debug!("cannot set the process name: {e}");
        }
    }
}
