//! The request head: request line, header fields, and how the body is framed.
//!
//! [`parse_head`] is called on the bytes read so far. It works in two passes
//! over the head, both cheap:
//!
//! 1. A line scan (ours) that enforces Gunicorn's limits even on a partial
//!    head, so a client trickling an endless request line or header is cut off
//!    without waiting for its CRLF; it also refuses a bare LF as a line ending
//!    and obs-fold, which httparse would otherwise accept or misreport.
//! 2. Once the blank line has arrived, httparse tokenizes and validates the
//!    request line and the fields (token names, no control characters in
//!    values, exactly one SP between request-line parts, HTTP/1.0 or 1.1).
//!
//! Then one pass over the fields decides the framing (Content-Length versus
//! Transfer-Encoding, quoted from RFC 9112 above [`body_framing`]),
//! keep-alive and `Expect: 100-continue`, and the request-target is split
//! into the PEP 3333 path and query.
//!
//! Only the `Vec<u8>` copies of names and values and the four strings of
//! [`Request`] are allocated; no per-field string is built.

use super::ParseError;

/// Gunicorn's request size limits (`--limit-request-line`,
/// `--limit-request-fields`, `--limit-request-field-size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request line, in bytes, without its CRLF. 0 = unlimited (but see
    /// [`UNLIMITED_LINE_CAP`]); values above 8190 are lowered to 8190, as
    /// Gunicorn does.
    pub request_line: usize,
    /// Most header fields. 0 = Gunicorn's maximum, 32768; larger values are
    /// lowered to 32768.
    pub fields: usize,
    /// Longest header field line, in bytes, counting its CRLF (as Gunicorn
    /// does). 0 (or less, in the settings) = the default, 8190, as Gunicorn
    /// 27's parser does (its docs still say "unlimited"; its own corpus,
    /// `invalid/limit_header_default_01`, says the default).
    pub field_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_line: 4094,
            fields: 100,
            field_size: 8190,
        }
    }
}

/// Gunicorn's ceiling for `limit_request_line` (`MAX_REQUEST_LINE`).
pub const MAX_REQUEST_LINE: usize = 8190;
/// Gunicorn's ceiling for `limit_request_fields` (`MAX_HEADERS`).
pub const MAX_HEADERS: usize = 32768;
/// What an "unlimited" (0) request line or field is still capped at.
pub const UNLIMITED_LINE_CAP: usize = 64 * 1024;
/// No head, whatever the limits, is held beyond this many bytes.
pub const MAX_HEAD: usize = 1024 * 1024;
/// Empty lines (CRLF) skipped before the request line (RFC 9112 §2.2): one,
/// as Gunicorn 27 (its corpus refuses two, `rfc9112_leading_crlf_02`).
pub const MAX_LEADING_EMPTY_LINES: usize = 1;

/// HTTP/1.x minor version of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

/// How the request body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    /// Exactly this many bytes follow the head (`Content-Length`).
    Length(u64),
    /// `Transfer-Encoding: chunked`; decode with [`super::ChunkedDecoder`].
    Chunked,
}

/// One header field, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The field name, with the case the client sent.
    pub name: Vec<u8>,
    /// The field value, without leading or trailing SP/HTAB.
    pub value: Vec<u8>,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, a validated token (uppercase, 3 to 20 characters).
    pub method: String,
    /// The request-target exactly as sent (Gunicorn's `RAW_URI`), bytes
    /// mapped to chars U+0000..U+00FF.
    pub uri: String,
    /// The percent-decoded path (PEP 3333 `PATH_INFO` before SCRIPT_NAME is
    /// split off), bytes mapped to chars U+0000..U+00FF (latin-1).
    pub path: String,
    /// The raw query string after `?`, without any `#fragment`; "" if none.
    pub query: String,
    /// HTTP/1.0 or HTTP/1.1.
    pub version: Version,
    /// All header fields, in the order received.
    pub headers: Vec<Header>,
    /// How the body is framed.
    pub body: BodyFraming,
    /// Whether the connection may be kept open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expect_continue: bool,
}

impl Request {
    /// The value of the first header field called `name` (ASCII
    /// case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| h.value.as_slice())
    }
}

/// The limits after Gunicorn's clamping, and our caps on "unlimited".
struct Effective {
    request_line: usize,
    fields: usize,
    field_size: usize,
    head: usize,
}

impl Effective {
    fn new(limits: &Limits) -> Self {
        let request_line = match limits.request_line {
            0 => UNLIMITED_LINE_CAP,
            n => n.min(MAX_REQUEST_LINE),
        };
        let fields = match limits.fields {
            0 => MAX_HEADERS,
            n => n.min(MAX_HEADERS),
        };
        let field_size = match limits.field_size {
            0 => Limits::default().field_size,
            n => n,
        };
        // Gunicorn's `max_buffer_headers`: fields * (field_size + 2) + 4, plus
        // the request line; never beyond MAX_HEAD.
        let head = fields
            .saturating_mul(field_size.saturating_add(2))
            .saturating_add(request_line)
            .saturating_add(6)
            .min(MAX_HEAD);
        Effective {
            request_line,
            fields,
            field_size,
            head,
        }
    }
}

/// Where the line scan found the head.
struct HeadShape {
    /// Offset of the request line (after skipped empty lines).
    start: usize,
    /// Length of the request line, without CRLF.
    request_line_len: usize,
    /// Number of header field lines.
    fields: usize,
    /// Offset just past the blank line that ends the head.
    end: usize,
}

/// Parse one request head from the start of `buf`.
///
/// `Ok(None)`: the head is incomplete, read more and call again with the
/// longer buffer. `Ok(Some((req, n)))`: the first `n` bytes of `buf` were the
/// head (including any skipped empty lines); the body, if any, starts at
/// `buf[n..]`. `Err`: refuse the request with [`ParseError::status`] and close
/// the connection. An error is returned as soon as the partial data already
/// breaks a limit.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, ParseError> {
    let eff = Effective::new(limits);
    let shape = match scan_head(buf, &eff)? {
        Some(shape) => shape,
        None => return Ok(None),
    };
    let head = buf.get(shape.start..shape.end).unwrap_or_default();
    let line = head.get(..shape.request_line_len).unwrap_or_default();
    check_method(line)?;
    check_target_bytes(line)?;

    // Exactly as many slots as field lines: httparse then never stops short.
    let mut stack = [httparse::EMPTY_HEADER; 32];
    let mut heap;
    let slots: &mut [httparse::Header<'_>] = if shape.fields <= stack.len() {
        &mut stack[..shape.fields]
    } else {
        heap = vec![httparse::EMPTY_HEADER; shape.fields];
        &mut heap
    };
    let mut parsed = httparse::Request::new(slots);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(ParseError::InvalidRequestLine),
        Err(e) => return Err(map_httparse_error(e)),
    }
    let version = match parsed.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(ParseError::InvalidVersion),
    };
    let method = parsed.method.unwrap_or_default();
    let target = parsed.path.unwrap_or_default().as_bytes();
    let (path, query) = split_target(method, target)?;

    let mut headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        headers.push(Header {
            name: h.name.as_bytes().to_vec(),
            value: trim_ows(h.value).to_vec(),
        });
    }
    let meta = analyse_fields(&headers, version)?;
    // RFC 9112 §9.6 and Gunicorn's `should_close`: after a CONNECT, the bytes
    // on the connection would be tunnel data, never another request.
    let keep_alive = meta.keep_alive && method != "CONNECT";

    let request = Request {
        method: method.to_owned(),
        uri: latin1(target),
        path: decode_path(path),
        query: latin1(query),
        version,
        headers,
        body: meta.body,
        keep_alive,
        expect_continue: meta.expect_continue,
    };
    Ok(Some((request, shape.end)))
}

fn map_httparse_error(e: httparse::Error) -> ParseError {
    match e {
        httparse::Error::HeaderName => ParseError::InvalidHeaderName,
        httparse::Error::HeaderValue => ParseError::InvalidHeaderValue,
        httparse::Error::Version => ParseError::InvalidVersion,
        httparse::Error::TooManyHeaders => ParseError::TooManyHeaders { limit: 0 },
        httparse::Error::NewLine | httparse::Error::Token | httparse::Error::Status => {
            ParseError::InvalidRequestLine
        }
    }
}

/// Find the lines of the head, checking the limits on every line, complete or
/// not. Returns `None` while the blank line that ends the head is missing.
fn scan_head(buf: &[u8], eff: &Effective) -> Result<Option<HeadShape>, ParseError> {
    // RFC 9112 §2.2: "a server that is expecting to receive and parse a
    // request-line SHOULD ignore at least one empty line (CRLF) received prior
    // to the request-line." We ignore one, as Gunicorn does.
    let mut start = 0;
    let mut empty = 0;
    loop {
        match buf.get(start..) {
            Some([b'\r', b'\n', ..]) => {
                empty += 1;
                if empty > MAX_LEADING_EMPTY_LINES {
                    return Err(ParseError::TooManyEmptyLines);
                }
                start += 2;
            }
            Some([b'\n', ..]) => return Err(ParseError::InvalidLineEnding),
            Some([] | [b'\r']) | None => return Ok(None),
            Some(_) => break,
        }
    }

    let mut pos = start;
    let mut request_line_len = None;
    let mut fields = 0usize;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        let Some(off) = find_lf(rest) else {
            // Partial line: what is there already counts against the limits.
            let mut len = rest.len();
            if rest.last() == Some(&b'\r') {
                len -= 1;
            }
            check_line(eff, request_line_len.is_none(), len)?;
            if buf.len() - start > eff.head {
                return Err(ParseError::HeadTooLarge { limit: eff.head });
            }
            return Ok(None);
        };
        if off == 0 || rest[off - 1] != b'\r' {
            return Err(ParseError::InvalidLineEnding);
        }
        let len = off - 1;
        let line_start = pos;
        pos += off + 1;
        if pos - start > eff.head {
            return Err(ParseError::HeadTooLarge { limit: eff.head });
        }
        if request_line_len.is_none() {
            check_line(eff, true, len)?;
            request_line_len = Some(len);
            continue;
        }
        if len == 0 {
            return Ok(Some(HeadShape {
                start,
                request_line_len: request_line_len.unwrap_or_default(),
                fields,
                end: pos,
            }));
        }
        fields += 1;
        if fields > eff.fields {
            return Err(ParseError::TooManyHeaders { limit: eff.fields });
        }
        check_line(eff, false, len)?;
        if matches!(buf.get(line_start), Some(b' ' | b'\t')) {
            return Err(ParseError::ObsoleteFolding);
        }
    }
}

/// `len` is the line length without CRLF (as far as received).
#[inline]
fn check_line(eff: &Effective, request_line: bool, len: usize) -> Result<(), ParseError> {
    if request_line {
        // Gunicorn: LimitRequestLine if the line without CRLF exceeds the limit.
        if len > eff.request_line {
            return Err(ParseError::RequestLineTooLong {
                size: len,
                limit: eff.request_line,
            });
        }
    } else if len + 2 > eff.field_size {
        // Gunicorn counts the CRLF into the field size.
        return Err(ParseError::HeaderTooLarge {
            limit: eff.field_size,
        });
    }
    Ok(())
}

/// Position of the first LF, eight bytes at a time.
#[inline]
fn find_lf(hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const LF: u64 = LO * b'\n' as u64;
    let mut chunks = hay.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ LF;
        if x.wrapping_sub(LO) & !x & HI != 0 {
            return chunk.iter().position(|&b| b == b'\n').map(|p| base + p);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| base + p)
}

/// Gunicorn's method rule (without `permit_unconventional_http_method`):
/// a token, 3 to 20 characters, no lowercase letter and no `#`.
fn check_method(request_line: &[u8]) -> Result<(), ParseError> {
    let Some(sp) = request_line.iter().position(|&b| b == b' ') else {
        return Err(ParseError::InvalidRequestLine);
    };
    let method = &request_line[..sp];
    if !(3..=20).contains(&method.len()) {
        return Err(ParseError::InvalidMethod);
    }
    let ok = method.iter().all(|&b| {
        matches!(b,
            b'A'..=b'Z' | b'0'..=b'9'
            | b'!' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
            | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
    });
    if ok {
        Ok(())
    } else {
        Err(ParseError::InvalidMethod)
    }
}

/// RFC 9112 §3.2: the request-target is a URI reference, whose characters are
/// printable ASCII (RFC 3986 §2); anything else must be percent-encoded.
/// httparse lets bytes 0x80-0xFF through (UTF-8 paths); Gunicorn 27 refuses
/// them (`RFC9112_TARGET_INVALID`, a 400), and so do we. Controls, SP and DEL
/// are already refused by httparse. The target is what lies between the
/// first and the last SP of the request line (the method, checked before,
/// and the version hold no SP); a non-ASCII byte in the version is left to
/// httparse.
#[inline]
fn check_target_bytes(request_line: &[u8]) -> Result<(), ParseError> {
    if request_line.is_ascii() {
        return Ok(());
    }
    let first = request_line.iter().position(|&b| b == b' ');
    let last = request_line.iter().rposition(|&b| b == b' ');
    match (first, last) {
        (Some(a), Some(b)) if a < b && !request_line[a + 1..b].is_ascii() => {
            Err(ParseError::NonAsciiTarget)
        }
        _ => Ok(()),
    }
}

/// Split the request-target into (path, query), both still raw.
///
/// - origin-form `/p?q#f` → (`/p`, `q`)
/// - absolute-form `http://host/p?q` (http or https only) → (`/p`, `q`);
///   an empty path becomes `/` (RFC 9112 §3.2.1).
/// - asterisk-form `*` only with OPTIONS → (`*`, ``)
/// - authority-form `host:port`, only and always with CONNECT (RFC 9112
///   §3.2.3, RFC 9110 §9.3.6) → (`host:port`, ``): Gunicorn passes CONNECT
///   to the app with the authority as RAW_URI, and so do we, with the
///   authority as PATH_INFO too (see docs/http-conformance.md).
fn split_target<'a>(method: &str, target: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ParseError> {
    if method == "CONNECT" {
        return if is_authority_form(target) {
            Ok((target, b""))
        } else {
            Err(ParseError::InvalidTarget)
        };
    }
    let target = match target.iter().position(|&b| b == b'#') {
        Some(i) => &target[..i],
        None => target,
    };
    let rest = match target.first() {
        Some(b'/') => target,
        Some(b'*') if target.len() == 1 => {
            return if method == "OPTIONS" {
                Ok((target, b""))
            } else {
                Err(ParseError::InvalidTarget)
            };
        }
        _ => {
            let after = strip_scheme(target).ok_or(ParseError::InvalidTarget)?;
            let auth_end = after
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(after.len());
            if auth_end == 0 {
                return Err(ParseError::InvalidTarget);
            }
            let rest = &after[auth_end..];
            if rest.first() != Some(&b'/') {
                let query = rest.strip_prefix(b"?").unwrap_or(rest);
                return Ok((b"/", query));
            }
            rest
        }
    };
    Ok(match rest.iter().position(|&b| b == b'?') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, b""),
    })
}

/// RFC 9112 §3.2.3 `authority-form = uri-host ":" port`, with the port
/// required (RFC 9110 §9.3.6: "a client MUST send a port number"). The host
/// is a reg-name, an IPv4 address or a bracketed IP literal: no userinfo, no
/// path, no query. Checked loosely on the characters (httparse and
/// [`check_target_bytes`] already refused controls, SP and non-ASCII), tightly
/// on the shape.
fn is_authority_form(target: &[u8]) -> bool {
    let Some(colon) = target.iter().rposition(|&b| b == b':') else {
        return false;
    };
    let (host, port) = (&target[..colon], &target[colon + 1..]);
    if host.is_empty() || port.is_empty() || port.len() > 5 {
        return false;
    }
    if !port.iter().all(u8::is_ascii_digit) {
        return false;
    }
    if let Some(literal) = host.strip_prefix(b"[") {
        // IP-literal: hex digits, colons, dots (and IPvFuture's few more).
        return literal.strip_suffix(b"]").is_some_and(|inner| {
            !inner.is_empty()
                && inner
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'%'))
        });
    }
    // reg-name / IPv4address: unreserved / pct-encoded / sub-delims.
    host.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    })
}

/// `http://` or `https://` (any case) → the rest.
fn strip_scheme(target: &[u8]) -> Option<&[u8]> {
    let colon = target.iter().position(|&b| b == b':')?;
    let scheme = &target[..colon];
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return None;
    }
    target[colon..].strip_prefix(b"://")
}

/// Bytes to a string of chars U+0000..U+00FF (latin-1), as PEP 3333 wants
/// for native strings.
fn latin1(bytes: &[u8]) -> String {
    if bytes.is_ascii() {
        // ASCII is valid UTF-8, so this never takes the fallback.
        if let Ok(s) = std::str::from_utf8(bytes) {
            return s.to_owned();
        }
    }
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Percent-decode a path; invalid escapes stay literal (as urllib's unquote).
fn decode_path(path: &[u8]) -> String {
    if !path.contains(&b'%') {
        return latin1(path);
    }
    let mut out = String::with_capacity(path.len());
    out.extend(percent_encoding::percent_decode(path).map(char::from));
    out
}

/// Strip leading and trailing SP / HTAB.
#[inline]
fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t');
    let Some(start) = start else { return b"" };
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .unwrap_or(start);
    &v[start..=end]
}

/// Split a comma-separated field value into trimmed elements.
#[inline]
fn list_elements(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim_ows)
}

/// What the fields say about framing and the connection.
struct Meta {
    body: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
}

/// One pass over the fields, in Gunicorn's order of checks: the per-field
/// rules first (a repeated singleton, `Expect`), as Gunicorn's
/// `parse_headers` applies them to every field before `set_body_reader`
/// looks at the framing; then the framing, whose first error in field order
/// is kept aside and returned only if no per-field rule failed. So a request
/// with two faults gets Gunicorn's status (417 for a bad `Expect` wins over a
/// 501 transfer coding, for one).
fn analyse_fields(headers: &[Header], version: Version) -> Result<Meta, ParseError> {
    let mut content_length: Option<&[u8]> = None;
    let mut te = TransferCodings::default();
    let mut framing_error: Option<ParseError> = None;
    let mut close = false;
    let mut keep_alive = false;
    let mut expect_continue = false;
    let mut host_seen = false;
    let mut content_type_seen = false;

    for h in headers {
        let name = h.name.as_slice();
        // Cheap pre-filter on length before the case-insensitive compare.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                // RFC 9112 §3.2: more than one Host field line → 400.
                if host_seen {
                    return Err(ParseError::DuplicateHost);
                }
                host_seen = true;
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                // Gunicorn: "100-continue" is honoured on HTTP/1.1, ignored on
                // HTTP/1.0 (RFC 9110 §10.1.1); any other expectation is 417.
                if h.value.eq_ignore_ascii_case(b"100-continue") {
                    expect_continue |= version == Version::Http11;
                } else {
                    return Err(ParseError::ExpectationFailed);
                }
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for opt in list_elements(&h.value) {
                    if opt.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if opt.eq_ignore_ascii_case(b"keep-alive") {
                        keep_alive = true;
                    }
                }
            }
            12 if name.eq_ignore_ascii_case(b"content-type") => {
                // RFC 9110 §5.3: Content-Type is a singleton field; a second
                // line cannot be combined with the first, and two readers
                // could each pick a different one. Gunicorn 27 refuses any
                // repeat (RFC9110_5_3_SINGLETON_FIELDS), the same value too.
                if content_type_seen {
                    return Err(ParseError::DuplicateContentType);
                }
                content_type_seen = true;
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                if content_length.is_some() {
                    framing_error.get_or_insert(ParseError::DuplicateContentLength);
                }
                content_length = Some(&h.value);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if let Err(e) = te.add(&h.value) {
                    framing_error.get_or_insert(e);
                }
            }
            _ => {}
        }
    }
    if let Some(e) = framing_error {
        return Err(e);
    }

    let body = body_framing(version, content_length, &te)?;
    let keep_alive = !close
        && !te.force_close
        && match version {
            Version::Http11 => true,
            Version::Http10 => keep_alive,
        };
    Ok(Meta {
        body,
        keep_alive,
        expect_continue,
    })
}

/// The transfer codings of all Transfer-Encoding fields, combined in order,
/// checked element by element as Gunicorn 27's `set_body_reader` does.
#[derive(Default)]
struct TransferCodings {
    /// Whether a Transfer-Encoding field was present at all.
    seen: bool,
    /// Whether `chunked` has appeared (it must be the last coding).
    chunked: bool,
    /// A compression coding came before `chunked`: the body reaches the app
    /// still compressed, and the connection is not reused (Gunicorn's
    /// `force_close`).
    force_close: bool,
}

impl TransferCodings {
    /// RFC 9112 §6.1 and §7: the codings are listed in the order they were
    /// applied, so `chunked` must come last and only once. Gunicorn 27, whose
    /// answers we give:
    ///
    /// - `chunked` a second time, or any coding after `chunked` → 400;
    /// - `gzip`, `deflate`, `compress` before `chunked` → accepted, the body
    ///   passed on still compressed, the connection closed afterwards;
    /// - `identity` before `chunked` → ignored (RFC 7230 removed it, RFC 9112
    ///   no longer registers it; Gunicorn accepts it and so do we);
    /// - any other coding → 501 (RFC 9112 §6.1: "A server that receives a
    ///   request message with a transfer coding it does not understand SHOULD
    ///   respond with 501"), and so is an empty list element (`chunked,`):
    ///   RFC 9110 §5.6.1 would skip it, Gunicorn reads it as an unknown
    ///   coding, and refusing cannot be read two ways.
    fn add(&mut self, value: &[u8]) -> Result<(), ParseError> {
        self.seen = true;
        for coding in list_elements(value) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                if self.chunked {
                    return Err(ParseError::ChunkedNotLast);
                }
                self.chunked = true;
            } else if coding.eq_ignore_ascii_case(b"identity") {
                if self.chunked {
                    return Err(ParseError::ChunkedNotLast);
                }
            } else if coding.eq_ignore_ascii_case(b"gzip")
                || coding.eq_ignore_ascii_case(b"deflate")
                || coding.eq_ignore_ascii_case(b"compress")
            {
                if self.chunked {
                    return Err(ParseError::ChunkedNotLast);
                }
                self.force_close = true;
            } else {
                return Err(ParseError::UnsupportedTransferCoding);
            }
        }
        Ok(())
    }
}

/// Decide how the body is framed.
///
/// RFC 9112 §6.3, Message Body Length, the steps that apply to a request:
///
/// > 3. If a message is received with both a Transfer-Encoding and a
/// >    Content-Length header field, the Transfer-Encoding overrides the
/// >    Content-Length. Such a message might indicate an attempt to perform
/// >    request smuggling (Section 11.2) or response splitting (Section 11.1)
/// >    and ought to be handled as an error.
/// >
/// > 4. If a Transfer-Encoding header field is present and the chunked
/// >    transfer coding (Section 7.1) is the final encoding, the message body
/// >    length is determined by reading and decoding the chunked data until
/// >    the transfer coding indicates the data is complete. [...] If a
/// >    Transfer-Encoding header field is present in a request and the chunked
/// >    transfer coding is not the final encoding, the message body length
/// >    cannot be determined reliably; the server MUST respond with the 400
/// >    (Bad Request) status code and then close the connection.
/// >
/// > 5. If a message is received without Transfer-Encoding and with an
/// >    invalid Content-Length header field, then the message framing is
/// >    invalid and the recipient MUST treat it as an unrecoverable error
/// >    [...]. If the unrecoverable error is in a request message, the server
/// >    MUST respond with a 400 (Bad Request) status code and then close the
/// >    connection.
/// >
/// > 6. If this is a request message and none of the above are true, then the
/// >    message body length is zero (no message body is present).
///
/// RFC 9112 §6.1, Transfer-Encoding:
///
/// > A server or client that receives an HTTP/1.0 message containing a
/// > Transfer-Encoding header field MUST treat the message as if the framing
/// > is faulty, even if a Content-Length is present, and close the connection
/// > after processing the message.
///
/// We take the strictest reading, as Gunicorn does: Transfer-Encoding
/// without a final `chunked` is 400; Transfer-Encoding on HTTP/1.0 is 400;
/// Content-Length together with Transfer-Encoding is 400 (never "TE
/// overrides CL"). Content-Length is 1*DIGIT only, and a second
/// Content-Length field is 400 even when its value is the same (Gunicorn
/// refuses duplicates too; the comma-list leniency of step 5 is not taken).
fn body_framing(
    version: Version,
    content_length: Option<&[u8]>,
    te: &TransferCodings,
) -> Result<BodyFraming, ParseError> {
    if te.seen {
        if !te.chunked {
            return Err(ParseError::TransferEncodingWithoutChunked);
        }
        if version == Version::Http10 {
            return Err(ParseError::TransferEncodingOnHttp10);
        }
        if content_length.is_some() {
            return Err(ParseError::ContentLengthWithTransferEncoding);
        }
        return Ok(BodyFraming::Chunked);
    }
    Ok(match content_length {
        Some(v) => BodyFraming::Length(parse_content_length(v)?),
        None => BodyFraming::None,
    })
}

/// RFC 9110 §8.6: `Content-Length = 1*DIGIT`. No sign, no spaces inside, no
/// list; overflow of u64 is an error.
fn parse_content_length(v: &[u8]) -> Result<u64, ParseError> {
    if v.is_empty() {
        return Err(ParseError::InvalidContentLength);
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(ParseError::InvalidContentLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(ParseError::InvalidContentLength)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
        parse_head(raw, &Limits::default())
    }

    fn err(raw: &[u8]) -> ParseError {
        match parse(raw) {
            Err(e) => e,
            Ok(r) => panic!(
                "expected an error for {:?}, got {r:?}",
                String::from_utf8_lossy(raw)
            ),
        }
    }

    #[test]
    fn find_lf_matches_naive() {
        let mut s = vec![b'a'; 40];
        assert_eq!(find_lf(&s), None);
        for i in 0..40 {
            s[i] = b'\n';
            assert_eq!(find_lf(&s), Some(i));
            assert_eq!(find_lf(&s[i..]), Some(0));
            s[i] = b'a';
        }
        // Bytes next to 0x0A must not count as LF (0x0B, 0x8A, 0x09).
        assert_eq!(
            find_lf(&[0x0b, 0x8a, 0x09, 0x0b, 0x0b, 0x8a, 0x09, 0x0b, 0x0b]),
            None
        );
    }

    #[test]
    fn simple_get() {
        let raw = b"GET /a%20b/c?x=1&y=%41#frag HTTP/1.1\r\nHost: example.com\r\n\r\nrest";
        let (req, n) = parse(raw).unwrap().unwrap();
        assert_eq!(n, raw.len() - 4);
        assert_eq!(req.method, "GET");
        assert_eq!(req.uri, "/a%20b/c?x=1&y=%41#frag");
        assert_eq!(req.path, "/a b/c");
        assert_eq!(req.query, "x=1&y=%41");
        assert_eq!(req.version, Version::Http11);
        assert_eq!(req.header("HOST"), Some(&b"example.com"[..]));
        assert_eq!(req.header("x-missing"), None);
        assert_eq!(req.body, BodyFraming::None);
        assert!(req.keep_alive);
        assert!(!req.expect_continue);
    }

    #[test]
    fn incomplete_heads_ask_for_more() {
        let raw = b"\r\nPOST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let full = raw.len() - 3;
        for cut in 0..full {
            assert_eq!(parse(&raw[..cut]), Ok(None), "cut at {cut}");
        }
        let (req, n) = parse(raw).unwrap().unwrap();
        assert_eq!(n, full);
        assert_eq!(req.body, BodyFraming::Length(3));
    }

    #[test]
    fn request_line_limit_is_enforced_before_crlf() {
        let limits = Limits {
            request_line: 20,
            ..Limits::default()
        };
        // Exactly 20 bytes of request line is fine.
        let ok = b"GET /123456 HTTP/1.1\r\n\r\n";
        assert!(parse_head(ok, &limits).unwrap().is_some());
        // 21 bytes with no CRLF yet is already an error.
        let e = parse_head(b"GET /1234567 HTTP/1.1", &limits).unwrap_err();
        assert_eq!(
            e,
            ParseError::RequestLineTooLong {
                size: 21,
                limit: 20
            }
        );
        // Gunicorn 27's LimitRequestLine is 414 URI Too Long.
        assert_eq!(e.status(), 414);
        assert_eq!(e.reason(), "URI Too Long");
        assert_eq!(e.message(), "Request Line is too large (21 > 20)");
        // A trailing CR alone does not count.
        assert_eq!(parse_head(b"GET /123456 HTTP/1.1\r", &limits), Ok(None));
        // Endless trickle with the default limit.
        let long = vec![b'A'; 5000];
        assert_eq!(
            parse(&long).unwrap_err(),
            ParseError::RequestLineTooLong {
                size: 5000,
                limit: 4094
            }
        );
    }

    #[test]
    fn request_line_limit_clamps_like_gunicorn() {
        let big = Limits {
            request_line: 100_000,
            ..Limits::default()
        };
        let mut raw = b"GET /".to_vec();
        raw.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(
            parse_head(&raw, &big).unwrap_err(),
            ParseError::RequestLineTooLong {
                size: 9005,
                limit: 8190
            }
        );
        let unlimited = Limits {
            request_line: 0,
            ..Limits::default()
        };
        assert_eq!(parse_head(&raw, &unlimited), Ok(None));
        raw.extend(std::iter::repeat_n(b'a', UNLIMITED_LINE_CAP));
        assert_eq!(
            parse_head(&raw, &unlimited).unwrap_err(),
            ParseError::RequestLineTooLong {
                size: 9005 + UNLIMITED_LINE_CAP,
                limit: UNLIMITED_LINE_CAP
            }
        );
    }

    #[test]
    fn field_count_and_size_limits() {
        let limits = Limits {
            request_line: 4094,
            fields: 2,
            field_size: 10,
        };
        // "A: 123456" is 9 bytes + CRLF = 11 > 10 → 431; 8 bytes + CRLF = 10 is fine.
        assert!(parse_head(b"GET / HTTP/1.1\r\nA: 12345\r\n\r\n", &limits)
            .unwrap()
            .is_some());
        let e = parse_head(b"GET / HTTP/1.1\r\nA: 123456\r\n\r\n", &limits).unwrap_err();
        assert_eq!(e, ParseError::HeaderTooLarge { limit: 10 });
        assert_eq!(e.status(), 431);
        // ... also before its CRLF arrives.
        let e = parse_head(b"GET / HTTP/1.1\r\nA: 123456", &limits).unwrap_err();
        assert_eq!(e.status(), 431);
        // Three fields when two are allowed, before the blank line arrives.
        let e = parse_head(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n", &limits).unwrap_err();
        assert_eq!(e, ParseError::TooManyHeaders { limit: 2 });
        assert_eq!(e.status(), 431);
        assert!(
            parse_head(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", &limits)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn field_size_zero_is_the_default_as_in_gunicorn_27() {
        let limits = Limits {
            field_size: 0,
            ..Limits::default()
        };
        let line = |n: usize| {
            let mut raw = b"GET / HTTP/1.0\r\nX: ".to_vec();
            raw.extend(std::iter::repeat_n(b'a', n));
            raw.extend(b"\r\n\r\n");
            raw
        };
        // "X: " + value + CRLF = 8190 bytes is the longest line taken.
        assert!(parse_head(&line(8190 - 5), &limits).unwrap().is_some());
        assert_eq!(
            parse_head(&line(8190 - 4), &limits).unwrap_err().status(),
            431
        );
    }

    #[test]
    fn many_fields_use_the_heap_slots() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            raw.extend(format!("X-{i}: {i}\r\n").as_bytes());
        }
        raw.extend(b"\r\n");
        let (req, _) = parse(&raw).unwrap().unwrap();
        assert_eq!(req.headers.len(), 100);
        assert_eq!(req.headers[99].name, b"X-99");
        raw.truncate(raw.len() - 2);
        raw.extend(b"X-100: 1\r\n\r\n");
        assert_eq!(
            parse(&raw).unwrap_err(),
            ParseError::TooManyHeaders { limit: 100 }
        );
    }

    #[test]
    fn leading_empty_lines_are_bounded() {
        let mut raw = b"\r\n".repeat(MAX_LEADING_EMPTY_LINES);
        raw.extend(b"GET / HTTP/1.1\r\n\r\n");
        let (_, n) = parse(&raw).unwrap().unwrap();
        assert_eq!(n, raw.len());
        let mut raw = b"\r\n".repeat(MAX_LEADING_EMPTY_LINES + 1);
        raw.extend(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(err(&raw), ParseError::TooManyEmptyLines);
        assert_eq!(
            err(b"\nGET / HTTP/1.1\r\n\r\n"),
            ParseError::InvalidLineEnding
        );
    }

    #[test]
    fn methods() {
        for m in ["GET", "POST", "PROPFIND", "M-SEARCH", "PURGE", "FOO_BAR.1$"] {
            let raw = format!("{m} / HTTP/1.1\r\n\r\n");
            assert_eq!(parse(raw.as_bytes()).unwrap().unwrap().0.method, m);
        }
        for m in [
            "get",
            "Get",
            "GE",
            "ABCDEFGHIJKLMNOPQRSTU",
            "G#T",
            "G(T",
            "G\x01T",
        ] {
            let raw = format!("{m} / HTTP/1.1\r\n\r\n");
            assert_eq!(err(raw.as_bytes()), ParseError::InvalidMethod, "{m}");
        }
    }

    #[test]
    fn targets() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("GET", "/", "/", ""),
            ("GET", "//double//slash?", "//double//slash", ""),
            ("GET", "/p?q?r=1", "/p", "q?r=1"),
            ("GET", "/bad%zz%4", "/bad%zz%4", ""),
            ("GET", "/%c3%a9", "/\u{c3}\u{a9}", ""),
            ("GET", "/%2F%00x", "/\u{2f}\u{0}x", ""),
            ("GET", "http://example.com/p?q#f", "/p", "q"),
            ("GET", "HTTPS://example.com:8443", "/", ""),
            ("GET", "http://example.com?q=1", "/", "q=1"),
            ("OPTIONS", "*", "*", ""),
            // Printable ASCII that RFC 3986 would have percent-encoded is
            // passed on, as Gunicorn does (its check is 0x21-0x7E).
            ("GET", "/a\"b<c>{d}|^`\\", "/a\"b<c>{d}|^`\\", ""),
            // authority-form, with CONNECT only: the authority is the path.
            ("CONNECT", "example.com:443", "example.com:443", ""),
            ("CONNECT", "127.0.0.1:8080", "127.0.0.1:8080", ""),
            ("CONNECT", "[::1]:443", "[::1]:443", ""),
            // PATH_INFO is percent-decoded, as every PATH_INFO.
            (
                "CONNECT",
                "[2001:db8::1%25eth0]:1",
                "[2001:db8::1%eth0]:1",
                "",
            ),
            (
                "CONNECT",
                "xn--bcher-kva.example:65535",
                "xn--bcher-kva.example:65535",
                "",
            ),
        ];
        for &(method, target, path, query) in cases {
            let raw = format!("{method} {target} HTTP/1.1\r\n\r\n");
            let (req, _) = parse(raw.as_bytes()).unwrap().unwrap();
            assert_eq!(req.uri, target);
            assert_eq!(req.path, path, "{target}");
            assert_eq!(req.query, query, "{target}");
            assert_eq!(req.keep_alive, method != "CONNECT", "{target}");
        }
        for (method, target) in [
            ("GET", "*"),
            ("GET", "example.com/x"),
            ("GET", "ftp://example.com/x"),
            ("GET", "http:/x"),
            ("GET", "http:///x"),
            ("GET", "foo"),
            // authority-form is for CONNECT only ...
            ("GET", "example.com:443"),
            ("OPTIONS", "example.com:443"),
            // ... and CONNECT takes nothing else (RFC 9110 §9.3.6).
            ("CONNECT", "/"),
            ("CONNECT", "*"),
            ("CONNECT", "http://example.com:443/"),
            ("CONNECT", "example.com"),
            ("CONNECT", "example.com:"),
            ("CONNECT", ":443"),
            ("CONNECT", "example.com:https"),
            ("CONNECT", "example.com:123456"),
            ("CONNECT", "user@example.com:443"),
            ("CONNECT", "example.com:443/x"),
            ("CONNECT", "example.com:443?x"),
            ("CONNECT", "[::1:443"),
            ("CONNECT", "[]:443"),
        ] {
            let raw = format!("{method} {target} HTTP/1.1\r\n\r\n");
            assert_eq!(err(raw.as_bytes()), ParseError::InvalidTarget, "{target}");
        }
    }

    #[test]
    fn non_ascii_target_bytes_are_refused() {
        // httparse accepts UTF-8 in the target; RFC 9112 §3.2 and Gunicorn
        // 27 do not: it must be percent-encoded.
        for target in [
            &b"/\xc3\xa9"[..],
            b"/?q=\xc3\xa9",
            b"/a#\xe9",
            b"http://ex\xe4mple.com/",
            b"/\x80",
            b"/\xff",
        ] {
            let raw = [b"GET ", target, b" HTTP/1.1\r\n\r\n"].concat();
            let e = parse(&raw).expect_err("non-ASCII target accepted");
            assert_eq!(e.status(), 400, "{target:?}");
            if std::str::from_utf8(target).is_ok() {
                assert_eq!(e, ParseError::NonAsciiTarget, "{target:?}");
            }
        }
        assert_eq!(
            err(b"CONNECT \xc3\xa9.example:443 HTTP/1.1\r\n\r\n"),
            ParseError::NonAsciiTarget
        );
        // The same bytes percent-encoded are fine, and decoded as latin-1.
        let (req, _) = parse(b"GET /%C3%A9?q=%C3%A9 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.path, "/\u{c3}\u{a9}");
        assert_eq!(req.query, "q=%C3%A9");
        // Non-ASCII bytes in a header value are obs-text, still accepted.
        let (req, _) = parse(b"GET / HTTP/1.1\r\nX: \xc3\xa9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.headers[0].value, b"\xc3\xa9");
    }

    #[test]
    fn versions() {
        let (req, _) = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(req.version, Version::Http10);
        assert!(!req.keep_alive);
        for v in [
            "HTTP/1.2",
            "HTTP/2.0",
            "HTTP/0.9",
            "http/1.1",
            "HTTP/1.10",
            "HTTP/11",
        ] {
            let raw = format!("GET / {v}\r\n\r\n");
            assert_eq!(err(raw.as_bytes()).status(), 400, "{v}");
        }
        assert_eq!(
            err(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            ParseError::InvalidVersion
        );
        assert_eq!(err(b"GET /\r\n\r\n").status(), 400);
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &[u8]| parse(raw).unwrap().unwrap().0.keep_alive;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: Upgrade, CLOSE\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn expect() {
        let ec = |raw: &[u8]| parse(raw).unwrap().unwrap().0.expect_continue;
        assert!(ec(
            b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n"
        ));
        assert!(!ec(
            b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
        ));
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n").status(),
            417
        );
    }

    #[test]
    fn header_syntax() {
        let cases: &[(&[u8], ParseError)] = &[
            (
                b"GET / HTTP/1.1\r\nA : b\r\n\r\n",
                ParseError::InvalidHeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\n: b\r\n\r\n",
                ParseError::InvalidHeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\nA\x00: b\r\n\r\n",
                ParseError::InvalidHeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\nA(: b\r\n\r\n",
                ParseError::InvalidHeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
                ParseError::InvalidHeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
                ParseError::InvalidHeaderValue,
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
                ParseError::InvalidHeaderValue,
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\x7fc\r\n\r\n",
                ParseError::InvalidHeaderValue,
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\x1bc\r\n\r\n",
                ParseError::InvalidHeaderValue,
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
                ParseError::ObsoleteFolding,
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\r\n\tc\r\n\r\n",
                ParseError::ObsoleteFolding,
            ),
            (
                b"GET / HTTP/1.1\r\n A: b\r\n\r\n",
                ParseError::ObsoleteFolding,
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\nB: c\r\n\r\n",
                ParseError::InvalidLineEnding,
            ),
            (
                b"GET / HTTP/1.1\nA: b\r\n\r\n",
                ParseError::InvalidLineEnding,
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\r\n\n",
                ParseError::InvalidLineEnding,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
                ParseError::DuplicateHost,
            ),
            (b"GET  / HTTP/1.1\r\n\r\n", ParseError::InvalidRequestLine),
            (b"GET / HTTP/1.1 \r\n\r\n", ParseError::InvalidRequestLine),
            (b"GET /a b HTTP/1.1\r\n\r\n", ParseError::InvalidVersion),
            (b"GET\r\n\r\n", ParseError::InvalidRequestLine),
        ];
        for (raw, want) in cases {
            assert_eq!(err(raw), *want, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn header_values_are_trimmed_and_obs_text_kept() {
        let (req, _) = parse(b"GET / HTTP/1.1\r\nA:  \t x y \t \r\nB:\r\nC: \xe9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(req.headers[0].value, b"x y");
        assert_eq!(req.headers[1].value, b"");
        assert_eq!(req.headers[2].value, b"\xe9");
        assert_eq!(req.headers[0].name, b"A");
    }

    #[test]
    fn content_length() {
        let body = |raw: &[u8]| parse(raw).unwrap().unwrap().0.body;
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
            BodyFraming::Length(0)
        );
        assert_eq!(
            body(b"POST / HTTP/1.1\r\ncontent-length:  0042 \r\n\r\n"),
            BodyFraming::Length(42)
        );
        assert_eq!(
            body(b"POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\n"),
            BodyFraming::Length(u64::MAX)
        );
        for v in [
            "",
            "+1",
            "-1",
            "1 2",
            "1,1",
            "0x10",
            "18446744073709551616",
            "1.0",
            "１",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {v}\r\n\r\n");
            assert_eq!(
                err(raw.as_bytes()),
                ParseError::InvalidContentLength,
                "{v:?}"
            );
        }
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            ParseError::DuplicateContentLength
        );
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            ParseError::DuplicateContentLength
        );
    }

    #[test]
    fn transfer_encoding() {
        // (value, framing and keep-alive, or the error): Gunicorn 27's answers.
        let te = |v: &str| {
            let raw = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {v}\r\n\r\n");
            parse(raw.as_bytes()).map(|r| r.map(|(req, _)| (req.body, req.keep_alive)))
        };
        let chunked_keep = Ok(Some((BodyFraming::Chunked, true)));
        let chunked_close = Ok(Some((BodyFraming::Chunked, false)));
        let cases = [
            ("chunked", chunked_keep),
            ("Chunked", chunked_keep),
            ("CHUNKED", chunked_keep),
            // identity before chunked is ignored.
            ("identity, chunked", chunked_keep),
            ("identity,chunked", chunked_keep),
            // A compression coding before chunked: accepted, the body goes to
            // the app still compressed, and the connection is closed after.
            ("gzip, chunked", chunked_close),
            ("deflate, chunked", chunked_close),
            ("compress, chunked", chunked_close),
            ("GZIP, identity, Chunked", chunked_close),
            // No chunked at the end: no way to know the length → 400.
            ("gzip", Err(ParseError::TransferEncodingWithoutChunked)),
            ("identity", Err(ParseError::TransferEncodingWithoutChunked)),
            (
                "gzip, identity",
                Err(ParseError::TransferEncodingWithoutChunked),
            ),
            // chunked twice, or anything after it → 400.
            ("chunked, gzip", Err(ParseError::ChunkedNotLast)),
            ("chunked, identity", Err(ParseError::ChunkedNotLast)),
            ("chunked, chunked", Err(ParseError::ChunkedNotLast)),
            // An unknown coding, wherever it is, or an empty element → 501.
            ("x-custom", Err(ParseError::UnsupportedTransferCoding)),
            (
                "x-custom, chunked",
                Err(ParseError::UnsupportedTransferCoding),
            ),
            (
                "chunked, x-custom",
                Err(ParseError::UnsupportedTransferCoding),
            ),
            (
                "x-gzip, chunked",
                Err(ParseError::UnsupportedTransferCoding),
            ),
            ("chunked;q=1", Err(ParseError::UnsupportedTransferCoding)),
            ("\"chunked\"", Err(ParseError::UnsupportedTransferCoding)),
            ("chunked,", Err(ParseError::UnsupportedTransferCoding)),
            (", chunked", Err(ParseError::UnsupportedTransferCoding)),
            ("", Err(ParseError::UnsupportedTransferCoding)),
        ];
        for (value, want) in cases {
            assert_eq!(te(value), want, "Transfer-Encoding: {value}");
        }
        // Two fields are combined in order.
        let two = |a: &str, b: &str| {
            let raw = format!(
                "POST / HTTP/1.1\r\nTransfer-Encoding: {a}\r\nTransfer-Encoding: {b}\r\n\r\n"
            );
            parse(raw.as_bytes()).map(|r| r.map(|(req, _)| (req.body, req.keep_alive)))
        };
        assert_eq!(two("gzip", "chunked"), chunked_close);
        assert_eq!(two("identity", "chunked"), chunked_keep);
        assert_eq!(two("chunked", "gzip"), Err(ParseError::ChunkedNotLast));
        assert_eq!(two("chunked", "chunked"), Err(ParseError::ChunkedNotLast));
        assert_eq!(
            err(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ParseError::ContentLengthWithTransferEncoding
        );
        assert_eq!(
            err(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n"
            ),
            ParseError::ContentLengthWithTransferEncoding
        );
        assert_eq!(
            err(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            ParseError::TransferEncodingOnHttp10
        );
        // Gunicorn looks at the codings before the version: 501 on HTTP/1.0.
        assert_eq!(
            err(b"POST / HTTP/1.0\r\nTransfer-Encoding: x-custom\r\n\r\n").status(),
            501
        );
    }

    #[test]
    fn checks_run_in_gunicorns_order() {
        // Per-field rules (Expect, repeated singletons) come before framing,
        // as Gunicorn's parse_headers runs before set_body_reader; among the
        // framing checks the first in field order wins.
        let cases: &[(&[u8], ParseError)] = &[
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: x\r\nExpect: nope\r\n\r\n",
                ParseError::ExpectationFailed,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\nHost: a\r\nHost: b\r\n\r\n",
                ParseError::DuplicateHost,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: x\r\nTransfer-Encoding: x\r\n\r\n",
                ParseError::UnsupportedTransferCoding,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n",
                ParseError::DuplicateContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                ParseError::UnsupportedTransferCoding,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(err(raw), *want, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn singleton_fields() {
        // RFC 9112 §3.2 (Host) and RFC 9110 §5.3 (Content-Type): Gunicorn 27
        // refuses any second field line, whatever its value.
        let cases: &[(&[u8], ParseError)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                ParseError::DuplicateHost,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\nHOST: a\r\n\r\n",
                ParseError::DuplicateHost,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Type: application/json\r\n\r\n",
                ParseError::DuplicateContentType,
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-type: a/b\r\nCONTENT-TYPE: a/b\r\n\r\n",
                ParseError::DuplicateContentType,
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(err(raw), *want, "{:?}", String::from_utf8_lossy(raw));
        }
        // One of each is fine; other fields may repeat.
        let (req, _) = parse(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: a/b\r\nAccept: x\r\nAccept: y\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(req.headers.len(), 4);
    }

    #[test]
    fn total_head_is_capped() {
        // fields=0 means Gunicorn's 32768; the head is still capped at MAX_HEAD.
        let limits = Limits {
            request_line: 0,
            fields: 0,
            field_size: 0,
        };
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        // Each line within the field size (0 = the default, 8190).
        let line = [b"X: ".as_slice(), &[b'a'; 8_000], b"\r\n"].concat();
        while raw.len() <= MAX_HEAD {
            raw.extend(&line);
        }
        assert_eq!(
            parse_head(&raw, &limits).unwrap_err(),
            ParseError::HeadTooLarge { limit: MAX_HEAD }
        );
    }
}
