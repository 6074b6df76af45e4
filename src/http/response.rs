//! The response side of HTTP/1.1: how a response is framed, how its head is
//! written, and the error responses the server sends on its own.
//!
//! It knows nothing of Python: the WSGI bridge (`wsgi/response.rs`) feeds it
//! what `start_response` and the app's iterable give, and an ASGI bridge can
//! feed it `http.response.start` / `http.response.body` the same way. It does
//! no I/O either: everything is appended to a caller's buffer, so a small
//! response (head and body) leaves in one write.
//!
//! Theory of operation, for a bridge:
//!
//! 1. Check the app's status and headers into a [`Head`] ([`Head::new`],
//!    [`Head::push_header`]). Hop-by-hop fields are dropped (the connection
//!    is the server's, RFC 9110 §7.6.1, as Gunicorn drops them),
//!    `Content-Length` and `Connection: close` are taken as the app's framing
//!    wishes, and what is not a valid field (a name that is not a token, a
//!    value with a control character or a character above U+00FF, PEP 3333's
//!    latin-1 rule) is refused: the app's error, a 500.
//! 2. Give it to a [`Response`] made from the request ([`Exchange`]).
//!    [`Response::send_head`] decides the [`Framing`] with [`decide`] and
//!    encodes the status line and header section (latin-1, one byte per
//!    character); pass the body's length when the whole body is already
//!    known, so it gets a Content-Length instead of chunks.
//! 3. [`Response::push_body`] for each piece (framed, cut at the announced
//!    length, dropped when the response has no body), then
//!    [`Response::finish`], which ends a chunked body and says whether the
//!    connection may serve another request (never once the worker began to
//!    retire: [`close_connections_from_now`]).
//!
//! [`error`] builds the response for a request that cannot be served
//! (Gunicorn's `util.write_error`), [`CONTINUE`] the interim `100 Continue`.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{ParseError, Request, Version};

impl Version {
    /// `HTTP/1.0` or `HTTP/1.1`: the status line, `SERVER_PROTOCOL`, the
    /// access log.
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// The interim response to `Expect: 100-continue` (RFC 9110 §10.1.1).
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What follows the status line up to the date (our `Server` header), in
/// one piece.
const SERVER_AND_DATE: &[u8] = b"\r\nServer: rgunicorn\r\nDate: ";

/// Set once, when the worker begins to retire: see
/// [`close_connections_from_now`].
static CLOSING: AtomicBool = AtomicBool::new(false);

/// From now on every response head says `Connection: close` and the
/// connection ends after it (a retiring worker: the request in flight is
/// answered, and its client's next request goes to a worker that stays).
/// Process-wide, as retiring is; a head encoded just before still keeps
/// its connection, which the drain then treats as any idle keep-alive one.
pub fn close_connections_from_now() {
    CLOSING.store(true, Ordering::Relaxed);
}

/// What the request says about its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// The request's version: the status line's, and whether chunked is
    /// possible.
    pub version: Version,
    /// The method is HEAD: no body is sent, whatever the app returns.
    pub head: bool,
    /// The client wishes to keep the connection (its version and
    /// `Connection` header, as the parser decided).
    pub keep_alive: bool,
}

impl Exchange {
    /// The facts of `req` that matter to its response.
    pub fn of(req: &Request) -> Exchange {
        Exchange {
            version: req.version,
            head: req.method == "HEAD",
            keep_alive: req.keep_alive,
        }
    }
}

/// How the response body is delimited on the wire (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: n`, then exactly `n` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked` (HTTP/1.1 clients only).
    Chunked,
    /// No length known and the client speaks HTTP/1.0: the body ends when
    /// the server closes the connection.
    CloseDelimited,
    /// No body on the wire: a HEAD request, or a 1xx, 204 or 304 status
    /// (RFC 9110 §6.4.1). `Some(n)`: a HEAD response still announces the
    /// `Content-Length` the same GET would have (RFC 9110 §9.3.2).
    NoBody(Option<u64>),
}

/// What the app's headers said about framing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppFraming {
    /// The app's `Content-Length` (the last one, if it sent several).
    pub content_length: Option<u64>,
    /// The app sent `Connection: close`.
    pub close: bool,
}

/// Decide the framing of a response and whether the connection survives it.
///
/// `body_len` is the length of the whole body when it is known before the
/// head is written (a one-item list, a file, or nothing at all); `None`
/// when the body is streamed.
///
/// - 1xx, 204 and 304 have no body and no Content-Length (we do not repeat
///   the length of the 200 a 304 stands for).
/// - HEAD has no body, and announces the app's Content-Length, or else the
///   length of the body the app returned when it is known and not empty.
/// - Otherwise the app's Content-Length wins; then the known length; then
///   chunked for HTTP/1.1 and the end of the connection for HTTP/1.0.
/// - Transfer-Encoding from the app never reaches this point: it is
///   hop-by-hop, dropped by [`Head::push_header`], and the server frames the
///   body itself (as Gunicorn does).
///
/// The connection is kept when the client wishes it, the app did not ask
/// to close it, and the body is not delimited by closing it.
pub fn decide(ex: Exchange, code: u16, app: AppFraming, body_len: Option<u64>) -> (Framing, bool) {
    let framing = if code < 200 || code == 204 || code == 304 {
        Framing::NoBody(None)
    } else if ex.head {
        Framing::NoBody(app.content_length.or(body_len.filter(|&n| n > 0)))
    } else if let Some(n) = app.content_length.or(body_len) {
        Framing::Length(n)
    } else if ex.version == Version::Http11 {
        Framing::Chunked
    } else {
        Framing::CloseDelimited
    };
    let keep_alive = ex.keep_alive && !app.close && framing != Framing::CloseDelimited;
    (framing, keep_alive)
}

/// A status or header the app may not send. Each is the app's error: the
/// client gets a 500 and the error log says which header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResponse {
    /// Not three digits (100 or more), then a space and a reason phrase of
    /// latin-1 characters without controls.
    #[error("invalid status {0:?}: expected e.g. '200 OK'")]
    Status(String),
    /// A field name that is not a token (RFC 9110 §5.1).
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    /// A field value with a control character other than HTAB (RFC 9110
    /// §5.5). The value itself is not repeated: it may be a secret.
    #[error("header {0:?}: value contains a control character (CR, LF, NUL, ...)")]
    HeaderValue(String),
    /// A field value with a character above U+00FF: PEP 3333 headers are
    /// latin-1 strings, sent one byte per character.
    #[error("header {name:?}: value is not latin-1: it contains {ch:?} (U+{:04X}); encode it (e.g. RFC 8187) or pass the bytes as latin-1 characters", u32::from(*ch))]
    NotLatin1 {
        /// The field name.
        name: String,
        /// The first character that does not fit in one byte.
        ch: char,
    },
    /// A Content-Length that is not a number.
    #[error("invalid Content-Length {0:?}")]
    ContentLength(String),
}

/// Headers an app must not set: they describe the connection, which is
/// the server's (RFC 9110 §7.6.1). Gunicorn drops them too.
fn is_hop_by_hop(name: &str) -> bool {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(super::is_tchar)
}

/// Why a text cannot be a field value or reason phrase.
enum BadText {
    Control,
    NotLatin1(char),
}

/// HTAB, SP, VCHAR and obs-text (U+0080..U+00FF): RFC 9110 §5.5's
/// field-value and RFC 9112 §4's reason-phrase, as latin-1 characters.
fn check_text(s: &str) -> Result<(), BadText> {
    let ok_ascii = |b: u8| b == b'\t' || (b' '..=b'~').contains(&b);
    if s.bytes().all(ok_ascii) {
        return Ok(());
    }
    for c in s.chars() {
        match u8::try_from(c) {
            Ok(b) if ok_ascii(b) || b >= 0x80 => {}
            Ok(_) => return Err(BadText::Control),
            Err(_) => return Err(BadText::NotLatin1(c)),
        }
    }
    Ok(())
}

/// Append `s` as ISO-8859-1, one byte per character. `s` has passed
/// [`check_text`] (or is a token).
fn put_latin1(out: &mut Vec<u8>, s: &str) {
    if s.is_ascii() {
        out.extend_from_slice(s.as_bytes());
    } else {
        out.extend(s.chars().map(|c| u8::try_from(c).unwrap_or(b'?')));
    }
}

/// The app's status line and headers, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The status as the app gave it (`"200 OK"`).
    pub status: String,
    /// Its code.
    pub code: u16,
    /// The fields to send as given, in order: not the hop-by-hop ones and
    /// not Content-Length (the server writes that from the framing).
    pub headers: Vec<(String, String)>,
    /// What the app's headers said about framing.
    pub app: AppFraming,
}

impl Head {
    /// Check `status` (`"200 OK"`): three digits, 100 or more, then nothing
    /// or a space and a reason phrase of latin-1 text.
    pub fn new(status: String) -> Result<Head, InvalidResponse> {
        let b = status.as_bytes();
        let ok = b.len() >= 3
            && b[..3].iter().all(u8::is_ascii_digit)
            && b[0] != b'0'
            && (b.len() == 3 || (b[3] == b' ' && check_text(&status[4..]).is_ok()));
        let code = match status.get(..3).and_then(|c| c.parse::<u16>().ok()) {
            Some(code) if ok => code,
            _ => return Err(InvalidResponse::Status(status)),
        };
        Ok(Head {
            status,
            code,
            headers: Vec::new(),
            app: AppFraming::default(),
        })
    }

    /// Check one of the app's header fields and keep a copy, or take it as
    /// a framing wish (`Content-Length`, `Connection: close`), or drop it
    /// (hop-by-hop). Only a field that is kept is copied.
    pub fn push_header(&mut self, name: &str, value: &str) -> Result<(), InvalidResponse> {
        if !is_token(name) {
            return Err(InvalidResponse::HeaderName(name.to_string()));
        }
        match check_text(value) {
            Ok(()) => {}
            Err(BadText::Control) => return Err(InvalidResponse::HeaderValue(name.to_string())),
            Err(BadText::NotLatin1(ch)) => {
                return Err(InvalidResponse::NotLatin1 {
                    name: name.to_string(),
                    ch,
                })
            }
        }
        if is_hop_by_hop(name) {
            if name.eq_ignore_ascii_case("connection")
                && value
                    .split(',')
                    .any(|v| v.trim().eq_ignore_ascii_case("close"))
            {
                self.app.close = true;
            }
            return Ok(());
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<u64>()
                .map_err(|_| InvalidResponse::ContentLength(value.to_string()))?;
            self.app.content_length = Some(n);
            return Ok(());
        }
        self.headers.push((name.to_string(), value.to_string()));
        Ok(())
    }
}

/// Write the status line and header section: status, `Server`, `Date`,
/// `Connection` when it differs from the version's default (or is close),
/// the app's fields, then the framing's `Content-Length` or
/// `Transfer-Encoding`.
pub fn encode_head(
    out: &mut Vec<u8>,
    ex: Exchange,
    head: &Head,
    framing: Framing,
    keep_alive: bool,
    date: &[u8],
) {
    out.reserve(256);
    out.extend_from_slice(match ex.version {
        Version::Http10 => b"HTTP/1.0 ",
        Version::Http11 => b"HTTP/1.1 ",
    });
    put_latin1(out, &head.status);
    out.extend_from_slice(SERVER_AND_DATE);
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if ex.version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    for (k, v) in &head.headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        put_latin1(out, v);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) | Framing::NoBody(Some(n)) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::CloseDelimited | Framing::NoBody(None) => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes the body as its [`Framing`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    framing: Framing,
    /// Bytes still owed under a Content-Length.
    remaining: Option<u64>,
    /// Body bytes sent (payload, without chunk framing).
    sent: u64,
}

impl Body {
    /// The writer for a body framed as `framing`.
    pub fn new(framing: Framing) -> Body {
        Body {
            framing,
            remaining: match framing {
                Framing::Length(n) => Some(n),
                _ => None,
            },
            sent: 0,
        }
    }

    /// Whether body bytes go on the wire at all.
    pub fn has_body(&self) -> bool {
        !matches!(self.framing, Framing::NoBody(_))
    }

    /// Append one piece of the body to `out`, framed. Bytes past the
    /// Content-Length are dropped (as Gunicorn does: what was promised is
    /// what the client reads); so is everything for a response without a
    /// body, and an empty piece (an empty chunk would end a chunked body).
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if !self.has_body() || data.is_empty() {
            return;
        }
        let data = match self.remaining {
            Some(r) => {
                let n = usize::try_from(r).unwrap_or(usize::MAX).min(data.len());
                self.remaining = Some(r - n as u64);
                &data[..n]
            }
            None => data,
        };
        if data.is_empty() {
            return;
        }
        self.sent += data.len() as u64;
        if self.framing == Framing::Chunked {
            let mut hex = [0u8; 16];
            out.extend_from_slice(hex_len(data.len(), &mut hex));
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(data);
        }
    }

    /// `n` body bytes went out unframed by another path (sendfile); only
    /// for a Content-Length or close-delimited body.
    pub fn sent_directly(&mut self, n: u64) {
        self.sent += n;
        self.remaining = self.remaining.map(|r| r.saturating_sub(n));
    }

    /// End the body: the last chunk for a chunked body. `false` when the
    /// connection cannot be reused because the body is short of its
    /// Content-Length (the client can only tell it ended when the
    /// connection closes) or is delimited by the close.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> bool {
        match self.framing {
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                true
            }
            Framing::CloseDelimited => false,
            Framing::Length(_) => self.remaining == Some(0),
            Framing::NoBody(_) => true,
        }
    }

    /// Body bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The framing this body was written with.
    pub fn framing(&self) -> Framing {
        self.framing
    }
}

fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// The application never set a status (WSGI: returned without calling
/// `start_response`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the application returned without calling start_response")]
pub struct NoStatus;

/// One response being written: the app's head until it is encoded, then
/// the body writer.
#[derive(Debug, Clone)]
pub struct Response {
    ex: Exchange,
    head: Option<Head>,
    body: Option<Body>,
    keep_alive: bool,
}

impl Response {
    /// A response to the request `ex` describes; no head yet.
    pub fn new(ex: Exchange) -> Response {
        Response {
            ex,
            head: None,
            body: None,
            keep_alive: false,
        }
    }

    /// The request this answers.
    pub fn exchange(&self) -> Exchange {
        self.ex
    }

    /// Set (or, before it is sent, replace) the app's status and headers.
    pub fn set_head(&mut self, head: Head) {
        self.head = Some(head);
    }

    /// The app's status and headers, once set.
    pub fn head(&self) -> Option<&Head> {
        self.head.as_ref()
    }

    /// The status code (0 before the app set one).
    pub fn code(&self) -> u16 {
        self.head.as_ref().map_or(0, |h| h.code)
    }

    /// The head has been encoded: status and headers can no longer change.
    pub fn head_sent(&self) -> bool {
        self.body.is_some()
    }

    /// Decide the framing and encode the head into `out`, with the current
    /// date. `body_len`: the whole body's length when already known.
    pub fn send_head(&mut self, body_len: Option<u64>, out: &mut Vec<u8>) -> Result<(), NoStatus> {
        self.send_head_dated(body_len, crate::http_date::now().as_bytes(), out)
    }

    /// [`send_head`](Self::send_head) with a given `Date` value.
    pub fn send_head_dated(
        &mut self,
        body_len: Option<u64>,
        date: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), NoStatus> {
        let head = self.head.as_ref().ok_or(NoStatus)?;
        let (framing, keep_alive) = decide(self.ex, head.code, head.app, body_len);
        let keep_alive = keep_alive && !CLOSING.load(Ordering::Relaxed);
        encode_head(out, self.ex, head, framing, keep_alive, date);
        self.keep_alive = keep_alive;
        self.body = Some(Body::new(framing));
        Ok(())
    }

    /// Append a piece of the body (after [`send_head`](Self::send_head);
    /// ignored before).
    pub fn push_body(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if let Some(b) = &mut self.body {
            b.push(data, out);
        }
    }

    /// The body writer, once the head is sent.
    pub fn body_mut(&mut self) -> Option<&mut Body> {
        self.body.as_mut()
    }

    /// End the body (after [`send_head`](Self::send_head)); whether the
    /// connection may serve another request.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> bool {
        match &mut self.body {
            Some(b) => b.finish(out) && self.keep_alive,
            None => false,
        }
    }

    /// Body bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.body.as_ref().map_or(0, Body::sent)
    }
}

/// The whole response for a request the server answers itself, and then
/// closes the connection: Gunicorn's `util.write_error` (the status line,
/// `Content-Type: text/html` and the HTML page, with `reason` in the title
/// and heading and `message` HTML-escaped below), plus our `Server` and
/// `Date` (RFC 9110 §6.6.1 asks an origin server for Date).
pub fn error(status: u16, reason: &str, message: &str) -> Vec<u8> {
    error_dated(status, reason, message, crate::http_date::now().as_bytes())
}

/// An interim (1xx) response, such as `103 Early Hints`: the status line
/// and `headers`, checked as the app's final headers are (a token name; a
/// latin-1 value without control characters; surrounding blanks trimmed),
/// so an app cannot split the response.
pub fn interim(
    code: u16,
    reason: &str,
    headers: Vec<(String, String)>,
) -> Result<Vec<u8>, InvalidResponse> {
    let mut out = Vec::with_capacity(64 + headers.len() * 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.push(b' ');
    put_latin1(&mut out, reason);
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if !is_token(&name) {
            return Err(InvalidResponse::HeaderName(name));
        }
        match check_text(&value) {
            Ok(()) => {}
            Err(BadText::Control) => return Err(InvalidResponse::HeaderValue(name)),
            Err(BadText::NotLatin1(ch)) => return Err(InvalidResponse::NotLatin1 { name, ch }),
        }
        put_latin1(&mut out, &name);
        out.extend_from_slice(b": ");
        put_latin1(&mut out, value.trim_matches([' ', '\t']));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(out)
}

/// The error response for a request the parser refused.
pub fn parse_error(e: &ParseError) -> Vec<u8> {
    error(e.status(), e.reason(), &e.message())
}

/// [`error`] with a given `Date` value.
pub fn error_dated(status: u16, reason: &str, message: &str, date: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(140 + 2 * reason.len() + message.len());
    body.extend_from_slice(b"<html>\n  <head>\n    <title>");
    put_latin1(&mut body, reason);
    body.extend_from_slice(b"</title>\n  </head>\n  <body>\n    <h1><p>");
    put_latin1(&mut body, reason);
    body.extend_from_slice(b"</p></h1>\n    ");
    html_escape(&mut body, message);
    body.extend_from_slice(b"\n  </body>\n</html>\n");

    let mut out = Vec::with_capacity(160 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    put_latin1(&mut out, reason);
    out.extend_from_slice(SERVER_AND_DATE);
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nConnection: close\r\nContent-Type: text/html\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    out
}

/// Python's `html.escape(s)`, written as latin-1; a character above
/// U+00FF becomes a numeric character reference.
fn html_escape(out: &mut Vec<u8>, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '"' => out.extend_from_slice(b"&quot;"),
            '\'' => out.extend_from_slice(b"&#x27;"),
            c => match u8::try_from(c) {
                Ok(b) => out.push(b),
                Err(_) => {
                    out.extend_from_slice(b"&#");
                    out.extend_from_slice(itoa::Buffer::new().format(u32::from(c)).as_bytes());
                    out.push(b';');
                }
            },
        }
    }
}

#[cfg(test)]
mod tests;
