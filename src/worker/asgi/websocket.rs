//! WebSockets (RFC 6455) in the ASGI worker: which requests are a
//! WebSocket handshake and whether it is valid, and [`WsConn`], one
//! connection as the `websocket` scope's `receive` and `send` drive it
//! from the event loop (`asgi.py`'s `WsCycle`).
//!
//! The frames are tungstenite's (its `WebSocket` over the connection's
//! descriptor, without its HTTP handshake): masking, fragmented messages
//! reassembled, ping answered with pong, the close handshake, UTF-8 checks
//! of text, and the frame and message size limits. It is used on the
//! non-blocking descriptor as it is: a read or write that would block
//! comes back as `WouldBlock` and tungstenite keeps its state, and the loop
//! waits for the socket with `add_reader`/`add_writer` as the HTTP
//! [`Conn`] does.
//!
//! The I/O thread handed the connection over with the request head and
//! waits for its outcome; [`WsConn::finish`] gives it back (status 101 for
//! the access log, never kept alive) once the WebSocket is over, or the
//! app's HTTP answer when it refused the handshake.

use super::Conn;
use crate::http::response::{Exchange, Head, Response};
use crate::http::{Request, Version};
use crate::wsgi::Outcome;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};
use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tungstenite::{Bytes, Error as WsError, Message, WebSocket};

/// Codes the Python side gets from the write calls: everything is
/// written; some is still pending (wait until writable, then `flush`);
/// the connection is closed (nothing more can be written).
const WRITTEN: u8 = 0;
const PENDING: u8 = 1;
const CLOSED: u8 = 2;

/// At most this many bytes a client sends before the handshake is answered
/// are read (and kept) while the app decides; then the socket is no longer
/// watched until it has.
const EARLY_MAX: usize = 64 * 1024;

/// Close codes (RFC 6455 §7.4.1).
const NO_STATUS: u16 = 1005;
const ABNORMAL: u16 = 1006;

/// Whether the values of every field `name` hold `token` in their
/// comma-separated list (case-insensitive).
fn has_token(req: &Request, name: &str, token: &str) -> bool {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The request asks for a WebSocket (RFC 6455 §4.1): a GET over HTTP/1.1
/// with `Upgrade: websocket` and `Connection: upgrade`. Anything else is
/// served as plain HTTP, as Gunicorn does.
pub(super) fn is_handshake(req: &Request) -> bool {
    req.version == Version::Http11
        && req.method == "GET"
        && req.header("upgrade").is_some()
        && has_token(req, "upgrade", "websocket")
        && has_token(req, "connection", "upgrade")
}

/// RFC 6455 §4.2.1: the key is the base64 of 16 bytes (24 characters, the
/// last two `=`).
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key[22..] == *b"=="
        && key[..22]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Check a handshake the app will see. `Err`: the status and the whole
/// response to send instead (426 with the version we speak for another
/// version, 400 for a bad key), without calling the app.
pub(super) fn check(req: &Request) -> Result<(), (u16, Vec<u8>)> {
    let version = req.header("sec-websocket-version").map(<[u8]>::trim_ascii);
    if version != Some(b"13".as_slice()) {
        let body = "Unsupported WebSocket version: this server speaks version 13\n";
        return Err((426, refusal(426, &[("Sec-WebSocket-Version", "13")], body)));
    }
    let key = req.header("sec-websocket-key").map(<[u8]>::trim_ascii);
    if !key.is_some_and(valid_key) {
        let body = "Invalid Sec-WebSocket-Key\n";
        return Err((400, refusal(400, &[], body)));
    }
    Ok(())
}

/// A complete plain-text response that closes the connection.
fn refusal(code: u16, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let ex = Exchange {
        version: Version::Http11,
        head: false,
        keep_alive: false,
    };
    let mut out = Vec::with_capacity(256 + body.len());
    let head = Head::new(format!("{code} {}", super::reason(code)));
    let Ok(mut head) = head else {
        return crate::http::response::error(code, super::reason(code), body);
    };
    for (n, v) in headers
        .iter()
        .copied()
        .chain([("Content-Type", "text/plain")])
    {
        let _ = head.push_header(n, v);
    }
    let mut resp = Response::new(ex);
    resp.set_head(head);
    if resp.send_head(Some(body.len() as u64), &mut out).is_err() {
        return crate::http::response::error(code, super::reason(code), body);
    }
    resp.push_body(body.as_bytes(), &mut out);
    resp.finish(&mut out);
    out
}

/// The subprotocols the client offers (`Sec-WebSocket-Protocol`, every
/// field, in order), for the scope.
pub(super) fn subprotocols(req: &Request) -> Vec<String> {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(b"sec-websocket-protocol"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .map(|t| t.iter().map(|&b| b as char).collect())
        .collect()
}

/// The connection's descriptor as tungstenite's stream: non-blocking
/// reads and writes, the 101 response first, and a count of what was
/// written after it (the access log's size).
struct FdStream {
    fd: RawFd,
    /// The handshake response, written before any frame.
    head: Vec<u8>,
    head_pos: usize,
    sent: u64,
}

impl FdStream {
    /// Write what is left of the handshake response; `WouldBlock` until it
    /// is all out.
    fn write_head(&mut self) -> io::Result<()> {
        while self.head_pos < self.head.len() {
            let n = send(self.fd, &self.head[self.head_pos..])?;
            self.head_pos += n;
        }
        if !self.head.is_empty() {
            self.head = Vec::new();
            self.head_pos = 0;
        }
        Ok(())
    }
}

/// One non-blocking send(2); `Interrupted` is retried.
fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: send(2) reads `buf.len()` bytes from a live slice; the
        // socket stays open until the connection is handed back to the I/O
        // thread, and nothing touches it after that.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One non-blocking recv(2); `Interrupted` is retried.
fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: recv(2) writes at most `buf.len()` bytes into a live
        // buffer; the socket is open (see `send`).
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Read for FdStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv(self.fd, buf)
    }
}

impl Write for FdStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_head()?;
        let n = send(self.fd, buf)?;
        self.sent += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_head()
    }
}

/// What `pump` read: the messages, the end (code, reason) if the WebSocket
/// is over, and whether some of our answers still wait to be written.
type Pumped<'py> = (Bound<'py, PyList>, Option<(u16, String)>, bool);

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The app has neither accepted nor refused.
    Handshake,
    /// Accepted: frames flow.
    Open,
    /// The app answered with an HTTP response instead (the
    /// `websocket.http.response` extension, or 403 for a close before
    /// accept).
    Denied,
    /// Handed back to the I/O thread: the descriptor is no longer ours.
    Finished,
}

/// One WebSocket connection, driven by `asgi.py`'s `WsCycle`.
#[pyclass(module = "_rgunicorn_asgi")]
pub struct WsConn {
    /// The handshake request, the way back to the I/O thread, and the
    /// HTTP response writer for a refusal.
    http: Conn,
    fd: RawFd,
    state: State,
    /// `Sec-WebSocket-Key`.
    key: Vec<u8>,
    /// `websocket_max_message_size` (0: no limit).
    max_message: usize,
    ws: Option<WebSocket<FdStream>>,
    /// The 101's header fields, for the access log.
    headers: Vec<(String, String)>,
    /// No more frames will be read: the close handshake is done, or the
    /// connection failed.
    over: bool,
    /// We failed the connection (a protocol error, a message too big).
    failed: bool,
}

impl WsConn {
    pub(super) fn new(http: Conn, max_message: usize) -> WsConn {
        let key = http
            .req
            .as_ref()
            .and_then(|r| r.header("sec-websocket-key"))
            .map(|k| k.trim_ascii().to_vec())
            .unwrap_or_default();
        WsConn {
            fd: http.fd,
            http,
            state: State::Handshake,
            key,
            max_message,
            ws: None,
            headers: Vec::new(),
            over: false,
            failed: false,
        }
    }

    /// The 101 response: the handshake's fields, then the app's.
    fn handshake_response(
        &mut self,
        subprotocol: Option<&str>,
        headers: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<u8>> {
        let accept = tungstenite::handshake::derive_accept_key(&self.key);
        // The app's fields, checked as an HTTP response's are (tokens,
        // latin-1 values without control characters; hop-by-hop ones such
        // as Upgrade and Connection are the server's and are dropped).
        let mut head = Head::new("101 Switching Protocols".into())
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        head.push_header("Sec-WebSocket-Accept", &accept)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        if let Some(p) = subprotocol {
            head.push_header("Sec-WebSocket-Protocol", p)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
        }
        for item in headers.try_iter()? {
            let item = item?;
            let name: Vec<u8> = item.get_item(0)?.extract()?;
            let value: Vec<u8> = item.get_item(1)?.extract()?;
            let name = String::from_utf8(name)
                .map_err(|_| PyValueError::new_err("header name is not ASCII"))?;
            let value: String = value.iter().map(|&b| b as char).collect();
            head.push_header(&name, &value)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nServer: rgunicorn\r\nDate: ");
        out.extend_from_slice(crate::http_date::now().as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &head.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend(v.chars().map(|c| u8::try_from(c).unwrap_or(b'?')));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        // The access log shows the handshake's own fields too.
        self.headers = std::iter::once(("Upgrade".to_string(), "websocket".to_string()))
            .chain(std::iter::once((
                "Connection".to_string(),
                "Upgrade".to_string(),
            )))
            .chain(head.headers)
            .collect();
        Ok(out)
    }

    /// Fail the connection (RFC 6455 §7.1.7): our close frame with `code`,
    /// then no more reading.
    fn fail(&mut self, code: CloseCode, reason: &'static str) -> (u16, String) {
        if let Some(ws) = self.ws.as_mut() {
            let _ = ws.close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
        }
        self.over = true;
        self.failed = true;
        (code.into(), reason.to_string())
    }

    fn write_code(r: Result<(), WsError>) -> u8 {
        match r {
            Ok(()) => WRITTEN,
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => PENDING,
            Err(_) => CLOSED,
        }
    }
}

#[pymethods]
impl WsConn {
    /// The connection's descriptor, for `add_reader`/`add_writer`.
    #[getter]
    fn fd(&self) -> RawFd {
        self.fd
    }

    /// The connection was handed back: nothing may touch the descriptor.
    #[getter]
    fn done(&self) -> bool {
        self.state == State::Finished
    }

    /// We failed the connection: what the client still sends should be
    /// read and dropped before the socket closes (see `linger`).
    #[getter]
    fn failed(&self) -> bool {
        self.failed
    }

    /// While the app decides (after `websocket.connect`, before it answers
    /// the handshake): read what the socket has, to see the client go
    /// away. Bytes a client sends this early are kept for the WebSocket, as
    /// those that came right behind its handshake. 0: nothing more now
    /// (watch on); 1: stop watching (the app answered, or
    /// [`EARLY_MAX`] bytes wait); 2: the client closed or the connection
    /// failed (the app gets `websocket.disconnect` 1006; the connection
    /// then goes back to the I/O thread, which closes it).
    fn watch(&mut self) -> u8 {
        if self.state != State::Handshake {
            return 1;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            if self.http.raw.len() - self.http.raw_pos >= EARLY_MAX {
                return 1;
            }
            match recv(self.fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => self.http.raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return 0,
                Err(_) => break,
            }
        }
        self.http.gone = true;
        2
    }

    /// `websocket.accept`: queue the 101 response; from here on frames
    /// flow. The same codes as `flush`.
    #[pyo3(signature = (subprotocol, headers))]
    fn accept(&mut self, subprotocol: Option<String>, headers: &Bound<'_, PyAny>) -> PyResult<u8> {
        if self.state != State::Handshake {
            return Err(PyRuntimeError::new_err(
                "Unexpected ASGI message 'websocket.accept' sent, after the handshake was answered.",
            ));
        }
        let head = self.handshake_response(subprotocol.as_deref(), headers)?;
        // Frames the client sent right behind its handshake.
        let early = self.http.raw.split_off(self.http.raw_pos);
        self.http.raw_pos = 0;
        let max = (self.max_message > 0).then_some(self.max_message);
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0)
            .max_message_size(max)
            .max_frame_size(max);
        let stream = FdStream {
            fd: self.fd,
            head,
            head_pos: 0,
            sent: 0,
        };
        self.ws = Some(WebSocket::from_partially_read(
            stream,
            early,
            Role::Server,
            Some(config),
        ));
        self.state = State::Open;
        Ok(self.flush())
    }

    /// Read what the socket has: up to `budget` messages (`str` or
    /// `bytes`), and `(code, reason)` once the WebSocket is over for the
    /// app (the client's close, 1006 when it went away without one, or
    /// the code we failed the connection with). Pings are answered and
    /// the client's close is replied to on the way; the last item says
    /// whether some of that could not be written yet (wait until
    /// writable, then `flush`).
    fn pump<'py>(&mut self, py: Python<'py>, budget: usize) -> PyResult<Pumped<'py>> {
        let out = PyList::empty(py);
        let mut end = None;
        if self.over || self.state != State::Open {
            return Ok((out, Some((ABNORMAL, String::new())), false));
        }
        let Some(ws) = self.ws.as_mut() else {
            return Ok((out, Some((ABNORMAL, String::new())), false));
        };
        let mut n = 0;
        while n < budget.max(1) {
            match ws.read() {
                Ok(Message::Text(t)) => {
                    out.append(PyString::new(py, t.as_str()))?;
                    n += 1;
                }
                Ok(Message::Binary(b)) => {
                    out.append(PyBytes::new(py, &b))?;
                    n += 1;
                }
                Ok(Message::Close(frame)) => {
                    // The client's close (or its answer to ours); reading
                    // on sends the reply and then ends.
                    end = Some(match frame {
                        Some(f) => (u16::from(f.code), f.reason.to_string()),
                        None => (NO_STATUS, String::new()),
                    });
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    self.over = true;
                    end = end.or(Some((ABNORMAL, String::new())));
                    break;
                }
                Err(WsError::Capacity(_)) => {
                    end = Some(self.fail(CloseCode::Size, "Message too big"));
                    break;
                }
                Err(WsError::Utf8(_)) => {
                    end = Some(self.fail(CloseCode::Invalid, "Invalid UTF-8"));
                    break;
                }
                Err(WsError::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                ))
                | Err(WsError::Io(_)) => {
                    self.over = true;
                    end = Some((ABNORMAL, String::new()));
                    break;
                }
                Err(_) => {
                    end = Some(self.fail(CloseCode::Protocol, "Protocol error"));
                    break;
                }
            }
        }
        let pending = match self.ws.as_mut() {
            Some(ws) if !matches!(end, Some((ABNORMAL, _))) => {
                Self::write_code(ws.flush()) == PENDING
            }
            _ => false,
        };
        Ok((out, end, pending))
    }

    /// `websocket.send` with `text`; the same codes as `flush`.
    fn send_text(&mut self, text: &str) -> u8 {
        match self.ws.as_mut() {
            Some(ws) if !self.over => Self::write_code(ws.send(Message::text(text))),
            _ => CLOSED,
        }
    }

    /// `websocket.send` with `bytes`; the same codes as `flush`.
    fn send_bytes(&mut self, data: &[u8]) -> u8 {
        match self.ws.as_mut() {
            Some(ws) if !self.over => {
                Self::write_code(ws.send(Message::Binary(Bytes::copy_from_slice(data))))
            }
            _ => CLOSED,
        }
    }

    /// `websocket.close` after accept: our close frame (the client's
    /// answer then comes through `pump`). The same codes as `flush`.
    fn close(&mut self, code: u16, reason: &str) -> PyResult<u8> {
        let c = CloseCode::from(code);
        if !c.is_allowed() || code < 1000 {
            return Err(PyValueError::new_err(format!(
                "invalid WebSocket close code {code}"
            )));
        }
        // A close frame's reason is at most 123 bytes (RFC 6455 §5.5).
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        Ok(match self.ws.as_mut() {
            Some(ws) if !self.over => Self::write_code(ws.close(Some(CloseFrame {
                code: c,
                reason: reason[..cut].to_string().into(),
            }))),
            _ => CLOSED,
        })
    }

    /// Write what is pending: 0 = all of it, 1 = some is left (wait until
    /// writable), 2 = the connection is closed.
    fn flush(&mut self) -> u8 {
        match self.state {
            State::Open => match self.ws.as_mut() {
                Some(ws) => match ws.flush() {
                    Ok(()) => WRITTEN,
                    Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => PENDING,
                    // The close handshake is complete: all was written.
                    Err(WsError::ConnectionClosed) => WRITTEN,
                    Err(_) => CLOSED,
                },
                None => CLOSED,
            },
            State::Denied => match self.http.flush_out() {
                Ok(true) => WRITTEN,
                Ok(false) => PENDING,
                Err(_) => {
                    self.http.gone = true;
                    CLOSED
                }
            },
            State::Handshake | State::Finished => CLOSED,
        }
    }

    /// `websocket.http.response.start`: the app refuses the handshake
    /// with an HTTP response of its own.
    fn deny_start(&mut self, status: i64, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.state != State::Handshake {
            return Err(PyRuntimeError::new_err(
                "Unexpected ASGI message 'websocket.http.response.start' sent, after the handshake was answered.",
            ));
        }
        self.http.start(status, headers)?;
        self.state = State::Denied;
        Ok(())
    }

    /// `websocket.http.response.body`: `Conn.body`'s codes (2: the
    /// response is complete).
    fn deny_body(&mut self, data: &[u8], more: bool) -> PyResult<u8> {
        if self.state != State::Denied {
            return Err(PyRuntimeError::new_err(
                "Unexpected ASGI message 'websocket.http.response.body' sent, before 'websocket.http.response.start'.",
            ));
        }
        self.http.body(data, more)
    }

    /// After `deny_body` said 1: write more; `Conn.flush`'s codes.
    fn deny_flush(&mut self) -> PyResult<u8> {
        self.http.flush()
    }

    /// Refuse the handshake with 403 (the app closed, or returned, before
    /// accepting); `Conn.body`'s codes.
    fn forbid(&mut self, py: Python<'_>) -> PyResult<u8> {
        if self.state != State::Handshake {
            return Ok(2);
        }
        self.http.start(403, PyList::empty(py).as_any())?;
        self.state = State::Denied;
        self.http.body(b"", false)
    }

    /// Read and drop what the client still sends, after we failed the
    /// connection, so closing the socket does not reset it before the
    /// client has read our close frame. `True`: the client closed (or the
    /// socket failed): done; `False`: wait until readable.
    fn linger(&mut self) -> bool {
        if self.state == State::Finished {
            return true;
        }
        let mut buf = [0u8; 16 * 1024];
        loop {
            match recv(self.fd, &mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }

    /// Our side of the connection is done writing: a FIN after our close
    /// frame.
    fn shutdown_write(&mut self) {
        if self.state != State::Finished {
            // SAFETY: shutdown(2) on the open socket; no memory involved.
            unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
        }
    }

    /// Hand the connection back to the I/O thread (once): a WebSocket
    /// that was open is logged with 101 and the bytes its frames took;
    /// otherwise as the HTTP response the app (or we) gave, or 500 when
    /// the app raised before answering. Stop watching the descriptor
    /// first.
    fn finish(&mut self, error: bool) {
        match self.state {
            State::Finished => {}
            State::Open => {
                self.state = State::Finished;
                let sent = self.ws.take().map_or(0, |ws| ws.get_ref().sent);
                let outcome = Outcome {
                    keep_alive: false,
                    status: 101,
                    sent,
                    response_headers: std::mem::take(&mut self.headers),
                    ..Outcome::default()
                };
                self.http.reply_with(outcome, false);
            }
            State::Handshake | State::Denied => {
                self.state = State::Finished;
                self.http.complete(error);
            }
        }
    }
}

impl Drop for WsConn {
    fn drop(&mut self) {
        // A task that vanished without finishing: hand the connection back.
        self.finish(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_head, Limits};

    fn req(head: &str) -> Request {
        parse_head(head.as_bytes(), &Limits::default())
            .expect("valid")
            .expect("complete")
            .0
    }

    const GOOD: &str = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Protocol: v2\r\n\r\n";

    #[test]
    fn a_handshake_needs_get_http11_upgrade_and_connection() {
        assert!(is_handshake(&req(GOOD)));
        assert!(check(&req(GOOD)).is_ok());
        assert!(!is_handshake(&req(&GOOD.replace("GET", "POST"))));
        assert!(!is_handshake(&req(&GOOD.replace("HTTP/1.1", "HTTP/1.0"))));
        assert!(!is_handshake(&req(
            &GOOD.replace("keep-alive, Upgrade", "keep-alive")
        )));
        assert!(!is_handshake(&req(&GOOD.replace("WebSocket", "h2c"))));
        assert!(!is_handshake(&req("GET / HTTP/1.1\r\nHost: x\r\n\r\n")));
    }

    #[test]
    fn a_bad_version_is_426_and_a_bad_key_400() {
        let (code, out) = check(&req(&GOOD.replace("Version: 13", "Version: 8"))).expect_err("426");
        assert_eq!(code, 426);
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        for key in ["dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25j!Q==", "YWJj"] {
            let r = req(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", key));
            assert_eq!(check(&r).expect_err("400").0, 400, "{key}");
        }
        let r = req(&GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""));
        assert_eq!(check(&r).expect_err("400").0, 400);
    }

    #[test]
    fn subprotocols_come_from_every_field_in_order() {
        assert_eq!(subprotocols(&req(GOOD)), ["chat", "superchat", "v2"]);
    }

    #[test]
    fn the_accept_key_is_rfc_6455s_example() {
        assert_eq!(
            tungstenite::handshake::derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
