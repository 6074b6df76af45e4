//! `--proxy-protocol`: read the PROXY header at the start of a connection
//! (before the first request) and make its client the connection's peer.

use crate::http::proxy::{self, ProxyInfo};
use crate::wsgi::{Peer, ProxyPolicy};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Read and apply the PROXY header, if any. Bytes read past it stay in
/// `buf` for the request parser. `false`: the connection is done (a bad or
/// forbidden header was answered, or the client went away).
pub(super) async fn read<S: AsyncRead + AsyncWrite + Unpin>(
    policy: &ProxyPolicy,
    s: &mut S,
    buf: &mut Vec<u8>,
    peer: &mut Peer,
) -> bool {
    let socket_ip = peer.addr.parse().ok();
    // A Unix-socket peer has no address and is allowed, as in Gunicorn.
    let allowed = peer.addr.is_empty() || policy.proxy_allow.contains(socket_ip);
    let deadline = Instant::now() + super::HEADER_TIMEOUT;
    loop {
        match proxy::parse_header(buf, policy.proxy_mode, allowed) {
            Ok(Some((None, _))) => return true,
            Ok(Some((Some(info), n))) => {
                buf.drain(..n);
                apply(peer, info);
                return true;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!("invalid PROXY header from {}: {e}", peer.addr);
                let out = crate::http::response::parse_error(&e);
                let _ = tokio::time::timeout(Duration::from_secs(5), s.write_all(&out)).await;
                return false;
            }
        }
        buf.reserve(512);
        match tokio::time::timeout_at(deadline.into(), s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
}

fn apply(peer: &mut Peer, info: ProxyInfo) {
    if let Some((ip, port)) = info.client {
        peer.addr = ip.to_string().into();
        peer.port = port.to_string().into();
    }
    peer.proxy_info = Some(Box::new(info));
}
