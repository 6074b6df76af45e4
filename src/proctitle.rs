//! `-n/--name`: the process title of the master and the workers.
//!
//! Two names exist on Linux:
//! - the kernel's 15-byte `comm` (`ps -o comm`, `top`, `/proc/PID/comm`),
//!   set with `prctl(PR_SET_NAME)` to NAME itself;
//! - the command line (`ps -o args`, `/proc/PID/cmdline`), which the kernel
//!   reads from the memory that held the original argv strings. As
//!   setproctitle(3) does, [`init`] claims that area (plus the environment
//!   strings right after it, which it first copies to the heap) once in
//!   the master, before any thread or fork; [`set`] then writes
//!   `rgunicorn: master [NAME]` or `rgunicorn: worker [NAME]` there, cut to
//!   the area's length. A worker inherits the claimed area with its memory.
//!
//! NAME is `proc_name`, else `default_proc_name` (the APP_MODULE), as in
//! Gunicorn. The original argv must be read before [`init`]: main keeps its
//! own copy, and `std::env::args()` shows the title afterwards.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Start and length of the claimed title area (0: none).
static AREA_START: AtomicUsize = AtomicUsize::new(0);
static AREA_LEN: AtomicUsize = AtomicUsize::new(0);

/// `arg_start arg_end env_start env_end` from /proc/self/stat (fields 48-51).
fn arg_env_bounds() -> Option<[usize; 4]> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // comm may hold spaces and ')': fields resume after the last ')'; the
    // first one after it is field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |n: usize| f.get(n - 3)?.parse::<usize>().ok();
    Some([get(48)?, get(49)?, get(50)?, get(51)?])
}

/// Claim the argv (and environment) strings as the title area. Call once,
/// early in the master, while it is single-threaded: the environment is
/// copied to the heap (`setenv` of every variable) before its strings can
/// be overwritten.
pub fn init() {
    let Some([arg_start, arg_end, env_start, env_end]) = arg_env_bounds() else {
        return;
    };
    if arg_start == 0 || arg_end <= arg_start {
        return;
    }
    // Only an area that holds exactly our argv is ours: under a loader or
    // an emulator (valgrind, `ld.so ./rgunicorn`) the kernel's argv is the
    // loader's, and its strings may still be in use.
    let mut expected = Vec::new();
    for a in std::env::args_os() {
        use std::os::unix::ffi::OsStrExt;
        expected.extend_from_slice(a.as_bytes());
        expected.push(0);
    }
    // SAFETY: [arg_start, arg_end) is this process's argv string area, on
    // the stack, mapped and readable for the life of the process.
    let area = unsafe { std::slice::from_raw_parts(arg_start as *const u8, arg_end - arg_start) };
    if area != expected.as_slice() {
        return;
    }
    let mut end = arg_end;
    if env_start == arg_end && env_end > env_start && environ_within(env_start, env_end) {
        // Re-home every variable: glibc's setenv allocates a new
        // "NAME=value" string and points environ at it.
        let vars: Vec<_> = std::env::vars_os().collect();
        let mut all_moved = true;
        for (k, v) in vars {
            use std::os::unix::ffi::OsStrExt;
            let (Ok(k), Ok(v)) = (
                std::ffi::CString::new(k.as_bytes()),
                std::ffi::CString::new(v.as_bytes()),
            ) else {
                all_moved = false;
                continue;
            };
            // SAFETY: single-threaded (see above); both strings are valid C
            // strings that setenv copies.
            if unsafe { libc::setenv(k.as_ptr(), v.as_ptr(), 1) } != 0 {
                all_moved = false;
            }
        }
        if all_moved && environ_off_area(env_start, env_end) {
            end = env_end;
        }
    }
    AREA_START.store(arg_start, Ordering::Relaxed);
    AREA_LEN.store(end - arg_start, Ordering::Relaxed);
}

extern "C" {
    static environ: *const *const libc::c_char;
}

/// Every environ entry points into [start, end): the kernel's environment
/// area is the one libc uses.
fn environ_within(start: usize, end: usize) -> bool {
    // SAFETY: as in environ_off_area.
    unsafe {
        let mut p = environ;
        if p.is_null() {
            return false;
        }
        while !(*p).is_null() {
            let a = *p as usize;
            if a < start || a >= end {
                return false;
            }
            p = p.add(1);
        }
    }
    true
}

/// No environ entry points into [start, end) any more.
fn environ_off_area(start: usize, end: usize) -> bool {
    // SAFETY: environ is a NULL-terminated array owned by libc; we only read
    // it, on the single thread that may change it.
    unsafe {
        let mut p = environ;
        if p.is_null() {
            return true;
        }
        while !(*p).is_null() {
            let a = *p as usize;
            if a >= start && a < end {
                return false;
            }
            p = p.add(1);
        }
    }
    true
}

/// The title text for a role ("master" or "worker").
pub fn title(role: &str, s: &crate::config::Settings) -> String {
    format!("rgunicorn: {role} [{}]", name(s))
}

fn name(s: &crate::config::Settings) -> &str {
    s.proc_name.as_deref().unwrap_or(&s.default_proc_name)
}

/// Set this process's title (`role`: "master" or "worker") and kernel name.
pub fn set(role: &str, s: &crate::config::Settings) {
    let name = name(s);
    let mut bytes: Vec<u8> = name.bytes().filter(|&b| b != 0).take(15).collect();
    if bytes.is_empty() {
        bytes.extend_from_slice(b"rgunicorn");
    }
    if let Ok(c) = std::ffi::CString::new(bytes) {
        if let Err(e) = nix::sys::prctl::set_name(&c) {
            tracing::debug!("cannot set the process name: {e}");
        }
    }
    write_title(title(role, s).as_bytes());
}

fn write_title(t: &[u8]) {
    let (start, len) = (
        AREA_START.load(Ordering::Relaxed),
        AREA_LEN.load(Ordering::Relaxed),
    );
    if start == 0 || len < 2 {
        return;
    }
    // SAFETY: [start, start+len) is this process's argv/env string area,
    // mapped writable on the stack for the life of the process, and claimed
    // by `init`: nothing else reads it any more (environ was moved off it).
    let area = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, len) };
    let n = t.len().min(len - 1);
    area[..n].copy_from_slice(&t[..n]);
    area[n..].fill(0);
}
