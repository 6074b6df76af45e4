//! What a worker tells its master, in one place both sides import: the exit
//! codes a worker ends with (Gunicorn's) and the messages it writes to the
//! master's pipe.
//!
//! A message is 8 bytes (one byte of kind, three unused, then the worker's
//! slot as a little-endian u32), so each `write(2)` to the pipe is atomic
//! and the master never sees half a message.

/// Exit code of a worker that could not boot (Gunicorn's `WORKER_BOOT_ERROR`).
pub const WORKER_BOOT_ERROR: i32 = 3;
/// Exit code of a worker that could not import the app (Gunicorn's `APP_LOAD_ERROR`).
pub const APP_LOAD_ERROR: i32 = 4;

/// The size of one message on the pipe.
pub const LEN: usize = 8;

/// A message from a worker to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// The worker serves: the app is imported and its listeners are open.
    Ready,
    /// `--max-requests` reached: please start my replacement.
    Retire,
    /// `--reload`: a source file of the app changed; please reload.
    CodeChanged,
}

impl Msg {
    fn kind(self) -> u8 {
        match self {
            Msg::Ready => b'R',
            Msg::Retire => b'M',
            Msg::CodeChanged => b'C',
        }
    }

    fn from_kind(b: u8) -> Option<Msg> {
        match b {
            b'R' => Some(Msg::Ready),
            b'M' => Some(Msg::Retire),
            b'C' => Some(Msg::CodeChanged),
            _ => None,
        }
    }
}

/// The bytes a worker in `slot` writes for `msg`.
pub fn encode(msg: Msg, slot: usize) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0] = msg.kind();
    b[4..8].copy_from_slice(&(slot as u32).to_le_bytes());
    b
}

/// In a worker: write `msg` for `slot` to the master's pipe (`fd`, its
/// write end, inherited from the master and open for the worker's life).
/// A master that is gone is not an error here: the worker learns it from
/// its parent pid.
pub fn send(fd: std::os::fd::RawFd, msg: Msg, slot: usize) {
    // SAFETY: `fd` is the pipe's write end, inherited at the fork and never
    // closed in the worker, so it is a valid descriptor for this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let _ = nix::unistd::write(fd, &encode(msg, slot));
}

/// The message and slot in one record read from the pipe; `None` for a
/// short record or an unknown kind.
pub fn decode(b: &[u8]) -> Option<(Msg, usize)> {
    let s = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    Some((Msg::from_kind(*b.first()?)?, s as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for m in [Msg::Ready, Msg::Retire, Msg::CodeChanged] {
            assert_eq!(decode(&encode(m, 7)), Some((m, 7)));
        }
    }

    #[test]
    fn short_or_unknown_records_are_refused() {
        assert_eq!(decode(&[b'R', 0, 0]), None);
        assert_eq!(decode(&[b'X', 0, 0, 0, 1, 0, 0, 0]), None);
    }
}
