//! HTTP/1.1 for the workers: request parsing (the request head, the body's
//! framing, and the chunked transfer coding), and in [`response`] the
//! response side (framing, head encoding, error responses).
//!
//! This is the part of rgunicorn that stands where Gunicorn's `gunicorn/http/`
//! stands, and it keeps Gunicorn's limits (`--limit-request-line`,
//! `--limit-request-fields`, `--limit-request-field-size`) and status codes,
//! but it is stricter than Gunicorn wherever RFC 9112 lets a request be read
//! two ways, because two readings of one byte stream are how request
//! smuggling works. docs/http-conformance.md lists every decision, with its
//! RFC section and what Gunicorn 27 does.
//!
//! Theory of operation, for the worker:
//!
//! 1. Append what the socket gives to a buffer and call [`parse_head`] with
//!    it. `Ok(None)` means read more; an `Err` means answer with
//!    [`response::parse_error`] (Gunicorn 27's status line from
//!    [`ParseError::status`] / [`ParseError::reason`], and its error page
//!    with [`ParseError::message`]) and close the connection.
//! 2. `Ok(Some((request, n)))`: the head was `buf[..n]`. Build the environ
//!    from the [`Request`] (`path` and `query` are already the PEP 3333
//!    strings).
//! 3. Read the body as [`Request::body`] says: nothing, exactly
//!    `Length(n)` bytes, or through a [`ChunkedDecoder`] until
//!    [`ChunkedDecoder::is_done`]. What follows is the next pipelined request.
//! 4. Keep the connection only if [`Request::keep_alive`], and if
//!    [`Request::expect_continue`], send `100 Continue` before reading the
//!    body.
//!
//! Nothing here does I/O, allocates without bound, or panics on any input.

mod chunked;
mod error;
pub mod proxy;
pub mod rate;
mod request;
pub mod response;

pub use chunked::{
    ChunkedDecoder, FORBIDDEN_TRAILERS, MAX_CHUNK_LINE, MAX_TRAILER, MAX_TRAILER_FIELDS,
};
pub use error::ParseError;
pub use request::{
    parse_head, BodyFraming, Header, Limits, Request, Version, MAX_HEAD, MAX_HEADERS,
    MAX_LEADING_EMPTY_LINES, MAX_REQUEST_LINE, UNLIMITED_LINE_CAP,
};

#[cfg(test)]
mod tests;

/// RFC 9110 §5.6.2 tchar, by byte: one table look-up per byte of a name.
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// Whether `b` is an RFC 9110 §5.6.2 `tchar` (a byte of a token).
#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}
