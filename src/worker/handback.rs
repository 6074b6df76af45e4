//! Keep-alive connections of a worker aborted by `--timeout` are handed
//! back to the master, and from it to the next worker it forks, instead of
//! being closed with the worker.
//!
//! Why: while a worker runs a request that then times out (a `sync` worker
//! runs nothing else meanwhile), the clients of its idle keep-alive
//! connections go on sending requests on them. Those requests are in the
//! kernel's receive buffer of sockets only this worker holds; closing them
//! with the worker would lose requests the clients already sent (an empty
//! reply, which no client retries for a POST). A socket carries its unread
//! bytes with it, so handing the descriptor to another process loses
//! nothing: the next worker reads the request from it and answers, a little
//! later.
//!
//! How:
//! - Each connection task registers its socket here ([`idle`]) while it
//!   waits for a request head and has read nothing of it yet (its buffer is
//!   empty), and unregisters (the guard drops) as soon as the wait ends.
//! - The abort watcher ([`hand_back`]), once it has answered the requests
//!   in flight, sends every registered socket to the master over a
//!   `SOCK_SEQPACKET` socket pair with `SCM_RIGHTS` (one record per batch;
//!   the listener index of each rides in the record), then the worker exits.
//! - The master reads them ([`receive`]) each turn of its loop, before it
//!   reaps the worker, and keeps them until its next fork: the new worker
//!   inherits them ([`set_adopted`] in the child, closed in the master) and
//!   serves them as its own idle keep-alive connections ([`take_adopted`]).
//!
//! Not handed back: a connection that has read part of a request (it is
//! the one being aborted, or a head in the middle of arriving), one behind a
//! PROXY protocol header (the header was consumed; the next worker could
//! not know the client's address), and connections of a worker killed
//! outright (SIGKILL after the abort grace, a crash). With `gthread`, the
//! I/O thread still runs while the watcher hands back, so a request read in
//! that instant is lost with the worker, as before.

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Sockets per record (the kernel takes at most 253 per `SCM_RIGHTS`).
const BATCH: usize = 64;

/// The write end workers send on (inherited from the master), -1: none.
static SEND_FD: AtomicI32 = AtomicI32::new(-1);

/// Idle connections of this worker, indexed by descriptor: the listener
/// index + 1, 0 for none. One atomic store to register and one to
/// unregister, on every keep-alive request; the abort scans the table once.
/// A connection on a descriptor past the table is not handed back.
static IDLE: [AtomicU32; IDLE_FDS] = [const { AtomicU32::new(0) }; IDLE_FDS];
const IDLE_FDS: usize = 1 << 16;

/// Connections this worker inherited from an aborted one.
static ADOPTED: Mutex<Vec<(OwnedFd, u32)>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The master's end (read) and the workers' end (write, remembered here so
/// that every forked worker has it).
pub fn channel() -> std::io::Result<OwnedFd> {
    let (r, w) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    SEND_FD.store(w.as_raw_fd(), Ordering::Relaxed);
    // The write end lives as long as the master (and its workers).
    std::mem::forget(w);
    Ok(r)
}

/// While alive, the connection is one the abort may hand back.
pub struct Idle(Option<&'static AtomicU32>);

impl Drop for Idle {
    fn drop(&mut self) {
        if let Some(e) = self.0 {
            e.store(0, Ordering::Relaxed);
        }
    }
}

/// Register `fd` (accepted on listener `listener`) as idle (see the module
/// doc).
pub fn idle(fd: RawFd, listener: usize) -> Idle {
    let e = usize::try_from(fd).ok().and_then(|i| IDLE.get(i));
    if let Some(e) = e {
        e.store(listener as u32 + 1, Ordering::Relaxed);
    }
    Idle(e)
}

/// The abort watcher: send every idle connection to the master. Returns
/// how many were handed back. The worker must exit right after (the
/// connections are the next worker's now).
pub fn hand_back() -> usize {
    let send = SEND_FD.load(Ordering::Relaxed);
    if send < 0 {
        return 0;
    }
    let idle: Vec<(RawFd, u32)> = IDLE
        .iter()
        .enumerate()
        .filter_map(|(fd, e)| match e.swap(0, Ordering::Relaxed) {
            0 => None,
            l => Some((fd as RawFd, l - 1)),
        })
        .collect();
    let mut sent = 0;
    for batch in idle.chunks(BATCH) {
        let fds: Vec<RawFd> = batch.iter().map(|(fd, _)| *fd).collect();
        let data: Vec<u8> = batch.iter().flat_map(|(_, l)| l.to_le_bytes()).collect();
        let iov = [IoSlice::new(&data)];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        loop {
            match sendmsg::<()>(send, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => {
                    sent += batch.len();
                    break;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!("cannot hand {} connection(s) back: {e}", batch.len());
                    break;
                }
            }
        }
    }
    sent
}

/// The master: every connection handed back since the last call.
pub fn receive(r: &OwnedFd, into: &mut Vec<(OwnedFd, u32)>) {
    loop {
        let mut data = [0u8; BATCH * 4];
        let mut cmsg = nix::cmsg_space!([RawFd; BATCH]);
        let mut iov = [IoSliceMut::new(&mut data)];
        let msg = match recvmsg::<()>(
            r.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        let n = msg.bytes;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(f) = c {
                    fds.extend(f);
                }
            }
        }
        if n == 0 && fds.is_empty() {
            return;
        }
        for (i, fd) in fds.into_iter().enumerate() {
            // SAFETY: SCM_RIGHTS gave us this new descriptor; nothing else
            // owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let listener = data
                .get(i * 4..i * 4 + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes);
            match listener {
                Some(l) => into.push((fd, l)),
                None => drop(fd),
            }
        }
    }
}

/// In a newly forked worker: the connections it is to serve.
pub fn set_adopted(conns: Vec<(OwnedFd, u32)>) {
    *lock(&ADOPTED) = conns;
}

/// The worker's loop: take the connections to serve.
pub fn take_adopted() -> Vec<(OwnedFd, u32)> {
    std::mem::take(&mut *lock(&ADOPTED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn sockets_with_unread_bytes_cross_the_channel() {
        let r = channel().expect("channel");
        let (mut client, server) = std::os::unix::net::UnixStream::pair().expect("pair");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        let g = idle(server.as_raw_fd(), 3);
        assert_eq!(hand_back(), 1);
        drop(g);
        drop(server);
        let mut got = Vec::new();
        receive(&r, &mut got);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, 3);
        let mut s = std::os::unix::net::UnixStream::from(got.remove(0).0);
        let mut buf = [0u8; 18];
        s.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"GET / HTTP/1.1\r\n\r\n");
        s.write_all(b"ok").expect("write back");
        let mut back = [0u8; 2];
        client.read_exact(&mut back).expect("read back");
        assert_eq!(&back, b"ok");
        // Nothing more.
        receive(&r, &mut got);
        assert!(got.is_empty());
    }
}
