//! HTTP/2 (`http_protocols` h2, `http2_*`, `http2_cleartext`): a bridge
//! from the `h2` crate's server to the one HTTP/1.1 connection loop.
//!
//! It runs on the worker's front thread (`crate::tls::Terminator`, the
//! thread named `tls`), never on the connection loop's thread: the sync
//! class blocks that loop while the app runs, and the bridge must keep
//! moving bytes meanwhile. A connection gets here after a TLS handshake
//! that chose `h2` by ALPN, or, on a plain listener, when a trusted peer
//! (`forwarded_allow_ips`) opened with the HTTP/2 preface and
//! `http2_cleartext` allows prior knowledge.
//!
//! Each stream is one request, turned into an HTTP/1.1 request on a fresh
//! Unix socketpair: the pseudo-headers become the request line and `Host`
//! (`:authority` wins over a `host` field, RFC 9113 §8.3.1), the fields
//! follow (connection-specific ones dropped, `cookie` fields joined with
//! `; `), and the body is framed by the client's `content-length`, or
//! chunked. The socketpair's other end goes down the connection loop as a
//! new connection whose `Peer` says `http2` (so `SERVER_PROTOCOL` is
//! `HTTP/2.0`, ASGI `http_version` `"2"`, the access log says so), where
//! it is parsed, checked, pre-read, given a worker slot and run by every
//! class exactly as an HTTP/1.1 request is. The HTTP/1.1 response coming
//! back is parsed (`httparse`, chunked bodies with the request parser's
//! decoder) and sent as HEADERS and DATA.
//!
//! Flow control both ways: request DATA is released to the client's
//! window only once written into the socketpair (a worker that does not
//! read holds the client back), and the response is read from the
//! socketpair only as fast as the client's window lets it be sent (a
//! client that does not read holds the app back as a slow HTTP/1.1 client
//! does: the socketpair fills, then the worker's own write timeout and
//! spooling apply). An RST_STREAM from the client drops the socketpair:
//! the worker sees the client go away (a failed write, ASGI
//! `http.disconnect`), and the connection's other streams go on. When the
//! worker drains (graceful stop, reload) the connection sends GOAWAY and
//! ends once its streams are done.
//!
//! Interim responses (`103 Early Hints`, `100 Continue`) coming back before
//! the final head become informational HEADERS frames. A connection with no
//! open stream for `keepalive` (the header timeout before its first
//! stream) gets GOAWAY NO_ERROR and is closed, as Gunicorn closes an idle
//! HTTP/2 connection; only streams count as activity (see [`serve`]).

use bytes::{Bytes, BytesMut};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Settings;

/// The connection preface a prior-knowledge client opens with (RFC 9113
/// §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the `http2_*` settings ask of every HTTP/2 connection.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_concurrent_streams: u32,
    pub initial_window_size: u32,
    pub max_frame_size: u32,
    /// 0: no limit.
    pub max_header_list_size: u32,
    /// `keepalive`: how long a connection with no open stream stays open
    /// once a stream has been served (0: it closes as its last stream ends).
    pub keepalive: Duration,
    /// How long a new connection may take to send its preface and open its
    /// first stream (the HTTP/1.1 path's header timeout).
    pub first_stream: Duration,
}

impl Limits {
    pub fn from_settings(s: &Settings) -> Limits {
        let clamp = |v: u64, max: u32| u32::try_from(v).unwrap_or(max).min(max);
        Limits {
            max_concurrent_streams: clamp(s.http2_max_concurrent_streams, u32::MAX),
            initial_window_size: clamp(s.http2_initial_window_size, (1 << 31) - 1),
            max_frame_size: clamp(s.http2_max_frame_size, (1 << 24) - 1).max(16384),
            max_header_list_size: clamp(s.http2_max_header_list_size, u32::MAX),
            keepalive: Duration::from_secs(s.keepalive),
            first_stream: crate::worker::HEADER_TIMEOUT,
        }
    }
}

/// The protocols `http_protocols` lists, lower case, in order.
pub fn protocols(s: &Settings) -> Vec<String> {
    s.http_protocols
        .split(',')
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .collect()
}

/// `h2` is among the protocols to serve.
pub fn enabled(s: &Settings) -> bool {
    protocols(s).iter().any(|p| p == "h2")
}

/// Prior-knowledge h2c applies to plain listeners: h2 is listed, there is
/// no TLS, and `http2_cleartext` is `prior-knowledge` or `both`.
pub fn prior_knowledge(s: &Settings) -> bool {
    let mode = s.http2_cleartext.trim().to_ascii_lowercase();
    enabled(s) && !crate::tls::enabled(s) && (mode == "prior-knowledge" || mode == "both")
}

/// Hands a stream's socketpair end to the connection loop.
pub type Hand = Arc<dyn Fn(std::os::unix::net::UnixStream, bool) + Send + Sync>;

/// Serve one HTTP/2 connection until the client closes it, until it has
/// had no open stream for `keepalive` (GOAWAY NO_ERROR), or until the
/// worker drains (GOAWAY) and its last stream is done.
///
/// Idle means no open stream, whatever else arrives: PINGs, SETTINGS or a
/// frame trickled byte by byte do not keep a connection open, as bytes that
/// are not a request do not keep an HTTP/1.1 connection open. A new
/// connection has `first_stream` (the header timeout) to send its preface
/// and open a stream. A client that does not take the GOAWAY (it stopped
/// reading) is dropped `write_timeout` later.
pub async fn serve<T>(
    io: T,
    limits: Limits,
    write_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
    hand: Hand,
) -> Result<(), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(limits.max_concurrent_streams)
        .initial_window_size(limits.initial_window_size)
        .initial_connection_window_size(limits.initial_window_size.max(65535))
        .max_frame_size(limits.max_frame_size);
    if limits.max_header_list_size > 0 {
        b.max_header_list_size(limits.max_header_list_size);
    }
    let mut idle_until = Instant::now() + limits.first_stream;
    let mut conn = match tokio::time::timeout_at(idle_until, b.handshake::<T, Bytes>(io)).await {
        Ok(c) => c?,
        Err(_) => {
            tracing::debug!("HTTP/2 connection: no preface within the header timeout");
            return Ok(());
        }
    };
    // Each stream's task holds an `Ended`: one message per stream done.
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut open = 0usize;
    // Idle with response bytes still queued in the connection (the client
    // reads slowly): since when.
    let mut flushing_since: Option<Instant> = None;
    let mut going_away = false;
    let mut drop_at: Option<Instant> = None;
    loop {
        tokio::select! {
            // A stream already received is taken before the idle timer can
            // close the connection under it.
            biased;
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    open += 1;
                    flushing_since = None;
                    let ended = Ended(ended_tx.clone());
                    let hand = hand.clone();
                    tokio::spawn(async move {
                        let _ended = ended;
                        stream(req, respond, hand, write_timeout).await;
                    });
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            Some(()) = ended_rx.recv() => {
                open = open.saturating_sub(1);
                if open == 0 {
                    idle_until = Instant::now() + limits.keepalive;
                }
            }
            _ = tokio::time::sleep_until(idle_until), if open == 0 && drop_at.is_none() => {
                let now = Instant::now();
                if conn.has_streams() {
                    // The last responses are still on their way out: a
                    // GOAWAY now would cut them. Wait while the client takes
                    // them, up to `write_timeout`.
                    let since = *flushing_since.get_or_insert(now);
                    if now < since + write_timeout {
                        idle_until = now + Duration::from_millis(200);
                        continue;
                    }
                }
                // GOAWAY NO_ERROR naming the last stream processed; the
                // connection closes once it is written.
                tracing::debug!("HTTP/2 connection idle: GOAWAY");
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                drop_at = Some(now + write_timeout);
            }
            _ = tokio::time::sleep_until(drop_at.unwrap_or(idle_until)), if drop_at.is_some() => {
                tracing::debug!("HTTP/2 connection: the client did not take its GOAWAY");
                return Ok(());
            }
            _ = shutdown.wait_for(|v| *v), if !going_away => {
                // GOAWAY: no new streams; the open ones finish.
                going_away = true;
                conn.graceful_shutdown();
            }
        }
    }
}

/// Tells the connection's loop that a stream is done when dropped (also
/// when its task panics).
struct Ended(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Why a stream's bridge ended early.
#[derive(Debug)]
enum End {
    /// The client reset the stream or the connection went away.
    Client,
    /// The worker's side failed or sent something unusable.
    Worker(String),
}

impl From<h2::Error> for End {
    fn from(_: h2::Error) -> End {
        End::Client
    }
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> End {
        End::Worker(e.to_string())
    }
}

async fn stream(
    req: ::http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    hand: Hand,
    write_timeout: Duration,
) {
    let (ours, theirs) = match std::os::unix::net::UnixStream::pair()
        .and_then(|(a, b)| {
            a.set_nonblocking(true)?;
            b.set_nonblocking(true)?;
            Ok((a, b))
        })
        .and_then(|(a, b)| Ok((tokio::net::UnixStream::from_std(a)?, b)))
    {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("HTTP/2 stream: cannot make a socketpair: {e}");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
            return;
        }
    };
    let (parts, body) = req.into_parts();
    let head_only = parts.method == ::http::Method::HEAD;
    let chunked =
        !body.is_end_stream() && !parts.headers.contains_key(::http::header::CONTENT_LENGTH);
    let head = request_head(&parts, chunked);
    hand(theirs, true);
    let (rd, mut wr) = ours.into_split();
    let upload = async move {
        wr.write_all(&head).await?;
        upload(body, &mut wr, chunked).await?;
        // The write half stays open (a half-close would read as the client
        // going away) until the response is done.
        Ok::<_, End>(wr)
    };
    let outcome = {
        let download = download(rd, &mut respond, head_only, write_timeout);
        tokio::pin!(upload, download);
        let mut uploaded = None;
        loop {
            tokio::select! {
                r = &mut upload, if uploaded.is_none() => match r {
                    Ok(wr) => uploaded = Some(Some(wr)),
                    // The worker stopped taking the body (it answered
                    // early, or failed): its response, or its lack of one,
                    // decides.
                    Err(End::Worker(_)) => uploaded = Some(None),
                    Err(e) => break Err(e),
                },
                // Done, whether or not the request's body was still coming.
                r = &mut download => break r,
            }
        }
    };
    match outcome {
        // The whole response went out before the request's body ended (a
        // 408 for a stalled upload, or an app that did not read it): the
        // request body is dropped with the stream's last handle, and the
        // `h2` crate then sends RST_STREAM NO_ERROR once the response is
        // flushed (RFC 9113 §8.1: the client may stop sending), so a
        // stalled upload does not keep the stream open. (`send_reset` here
        // would discard the response still queued.)
        Ok(_) | Err(End::Client) => {}
        Err(End::Worker(e)) => {
            tracing::debug!("HTTP/2 stream: {e}");
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }
}

/// Fields that describe an HTTP/1.1 connection, not a message: dropped on
/// the way in (HTTP/2 forbids most of them anyway) and on the way out.
fn connection_specific(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// The HTTP/1.1 request head for a stream.
fn request_head(parts: &::http::request::Parts, chunked: bool) -> Vec<u8> {
    let mut h = Vec::with_capacity(512);
    h.extend_from_slice(parts.method.as_str().as_bytes());
    h.push(b' ');
    let target = if parts.method == ::http::Method::CONNECT {
        parts.uri.authority().map(|a| a.as_str()).unwrap_or("")
    } else {
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
    };
    h.extend_from_slice(target.as_bytes());
    h.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority();
    if let Some(a) = authority {
        h.extend_from_slice(b"Host: ");
        h.extend_from_slice(a.as_str().as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in &parts.headers {
        let n = name.as_str().as_bytes();
        if connection_specific(n) || (authority.is_some() && n == b"host") {
            continue;
        }
        if n == b"cookie" {
            cookies.push(value.as_bytes());
            continue;
        }
        h.extend_from_slice(n);
        h.extend_from_slice(b": ");
        h.extend_from_slice(value.as_bytes());
        h.extend_from_slice(b"\r\n");
    }
    if !cookies.is_empty() {
        h.extend_from_slice(b"cookie: ");
        h.extend_from_slice(&cookies.join(&b"; "[..]));
        h.extend_from_slice(b"\r\n");
    }
    if chunked {
        h.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    h.extend_from_slice(b"\r\n");
    h
}

/// The request body into the socketpair; each DATA frame's bytes go back
/// to the client's window once written.
async fn upload(
    mut body: h2::RecvStream,
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    chunked: bool,
) -> Result<(), End> {
    while let Some(data) = body.data().await {
        let data = data?;
        let n = data.len();
        if n == 0 {
            continue;
        }
        if chunked {
            wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            wr.write_all(&data).await?;
            wr.write_all(b"\r\n").await?;
        } else {
            wr.write_all(&data).await?;
        }
        let _ = body.flow_control().release_capacity(n);
    }
    if chunked {
        wr.write_all(b"0\r\n\r\n").await?;
    }
    Ok(())
}

/// Wait for `read`, or fail as soon as the client resets the stream.
async fn or_reset<F, R>(
    reset: impl FnMut(&mut Context<'_>) -> Poll<Result<h2::Reason, h2::Error>>,
    read: F,
) -> Result<R, End>
where
    F: std::future::Future<Output = R>,
{
    tokio::select! {
        r = read => Ok(r),
        _ = poll_fn(reset) => Err(End::Client),
    }
}

/// The largest response head the bridge takes from the worker.
const MAX_HEAD: usize = 256 * 1024;

/// The HTTP/1.1 response from the socketpair, as HEADERS and DATA.
async fn download(
    mut rd: tokio::net::unix::OwnedReadHalf,
    respond: &mut h2::server::SendResponse<Bytes>,
    head_only: bool,
    write_timeout: Duration,
) -> Result<(), End> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // The head, skipping interim (1xx) responses.
    let (resp, framing) = 'head: loop {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 256];
            let mut r = httparse::Response::new(&mut fields);
            let used = match r.parse(&buf) {
                Ok(httparse::Status::Complete(used)) => used,
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => break,
                Ok(httparse::Status::Partial) => {
                    return Err(End::Worker("response head too large".into()))
                }
                Err(e) => return Err(End::Worker(format!("bad response head: {e}"))),
            };
            let code = r.code.unwrap_or(500);
            if (100..200).contains(&code) {
                // An interim response (103 Early Hints, 100 Continue) is an
                // informational HEADERS frame; 101 has no HTTP/2 meaning.
                if code != 101 {
                    let (info, _) = response(code, r.headers, false)?;
                    respond.send_informational(info)?;
                }
                let _ = buf.split_to(used);
                continue;
            }
            let parsed = response(code, r.headers, head_only)?;
            let _ = buf.split_to(used);
            break 'head parsed;
        }
        let n = or_reset(|cx| respond.poll_reset(cx), rd.read_buf(&mut buf)).await??;
        if n == 0 {
            return Err(End::Worker("the worker closed without a response".into()));
        }
    };
    let eos_now = matches!(framing, Framing::Length(0)) || matches!(framing, Framing::Empty);
    let mut send = respond.send_response(resp, eos_now)?;
    if eos_now {
        return Ok(());
    }
    let mut left = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let mut decoder = matches!(framing, Framing::Chunked).then(crate::http::ChunkedDecoder::new);
    let mut decoded = Vec::new();
    loop {
        if !buf.is_empty() {
            let data = match &mut decoder {
                Some(d) => {
                    decoded.clear();
                    let used = d
                        .decode(&buf, &mut decoded)
                        .map_err(|e| End::Worker(format!("bad chunked response: {e}")))?;
                    let _ = buf.split_to(used);
                    Bytes::copy_from_slice(&decoded)
                }
                None => {
                    let take = left.map_or(buf.len(), |l| {
                        buf.len().min(usize::try_from(l).unwrap_or(usize::MAX))
                    });
                    if let Some(l) = &mut left {
                        *l -= take as u64;
                    }
                    buf.split_to(take).freeze()
                }
            };
            send_all(&mut send, data, write_timeout).await?;
            buf.reserve(16 * 1024);
        }
        let done = left == Some(0) || decoder.as_ref().is_some_and(|d| d.is_done());
        if done {
            break;
        }
        let n = or_reset(|cx| send.poll_reset(cx), rd.read_buf(&mut buf)).await??;
        if n == 0 {
            if left.is_none() && decoder.is_none() {
                break;
            }
            return Err(End::Worker(
                "the worker closed in the middle of the response".into(),
            ));
        }
    }
    send.send_data(Bytes::new(), true)?;
    Ok(())
}

enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the worker closes.
    Close,
}

fn response(
    code: u16,
    fields: &[httparse::Header<'_>],
    head_only: bool,
) -> Result<(::http::Response<()>, Framing), End> {
    let mut b = ::http::Response::builder().status(code);
    let mut framing = Framing::Close;
    for f in fields {
        let name = f.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if f.value.eq_ignore_ascii_case(b"chunked") {
                framing = Framing::Chunked;
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if let Some(n) = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                if !matches!(framing, Framing::Chunked) {
                    framing = Framing::Length(n);
                }
            }
        }
        if connection_specific(name) {
            continue;
        }
        b = b.header(f.name, f.value);
    }
    if head_only || code == 204 || code == 304 {
        framing = Framing::Empty;
    }
    let resp = b
        .body(())
        .map_err(|e| End::Worker(format!("response head not valid for HTTP/2: {e}")))?;
    Ok((resp, framing))
}

/// Send `data` as the client's window allows.
async fn send_all(
    send: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    write_timeout: Duration,
) -> Result<(), End> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let cap = tokio::time::timeout(write_timeout, poll_fn(|cx| send.poll_capacity(cx)))
            .await
            .map_err(|_| End::Worker("the client took no data for too long".into()))?;
        let n = match cap {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(End::Client),
        };
        if n == 0 {
            continue;
        }
        let chunk = data.split_to(n.min(data.len()));
        send.send_data(chunk, false)?;
    }
    Ok(())
}

/// A stream with bytes already read from it put back in front (the
/// preface a plain connection was recognised by).
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_becomes_an_http11_request_with_authority_as_host() {
        let req = ::http::Request::builder()
            .method("POST")
            .uri("https://example.com:8443/a/b?x=1")
            .header("host", "ignored")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("te", "trailers")
            .header("x-y", "z")
            .body(())
            .expect("request");
        let (parts, ()) = req.into_parts();
        let head = String::from_utf8(request_head(&parts, true)).expect("utf-8");
        assert_eq!(
            head,
            "POST /a/b?x=1 HTTP/1.1\r\nHost: example.com:8443\r\nte: trailers\r\nx-y: z\r\n\
             cookie: a=1; b=2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn connection_fields_do_not_cross_into_http2() {
        let fields = [
            httparse::Header {
                name: "Connection",
                value: b"close",
            },
            httparse::Header {
                name: "Content-Length",
                value: b"5",
            },
            httparse::Header {
                name: "X-A",
                value: b"b",
            },
        ];
        let (resp, framing) = response(200, &fields, false)
            .map_err(|_| ())
            .expect("valid");
        assert!(matches!(framing, Framing::Length(5)));
        assert!(resp.headers().get("connection").is_none());
        assert_eq!(resp.headers()["x-a"], "b");
        assert_eq!(resp.headers()["content-length"], "5");
    }
}
