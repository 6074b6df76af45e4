//! Why a request was refused: one enum of parse-error kinds, the one `match`
//! that maps each kind to the status line the worker sends back, and the
//! message the error page shows.
//!
//! The statuses are Gunicorn 27's (`handle_error` in gunicorn/workers/base.py
//! maps its exceptions, from gunicorn/http/errors.py): a too-long request
//! line is `414 URI Too Long` (`LimitRequestLine`); too many or too large
//! header fields, and a trailer section beyond its bound, are `431`
//! (`LimitRequestHeaders`); an unknown transfer coding is `501`
//! (`UnsupportedTransferCoding`); an expectation other than `100-continue` is
//! `417` (`ExpectationFailed`); a PROXY header from a peer not allowed to send
//! one is `403`; a SCRIPT_NAME that is not a prefix of the path is `500`
//! (`ConfigurationProblem`); everything else is `400`. Each variant's doc
//! names the Gunicorn exception it stands for; docs/http-conformance.md has
//! the whole table.
//!
//! [`ParseError::message`] (the `Display` text) follows the message Gunicorn's
//! `handle_error` puts in its error page, with a description of what was
//! wrong where Gunicorn quotes the client's bytes: the variants carry no heap
//! data, so building one on the error path costs nothing and the type is
//! `Copy`, and no client input is echoed back.
//!
//! Every error is final for the connection: after sending the error response
//! the worker must close it, because the framing of whatever follows is
//! unknown (RFC 9112 §6.3 asks for exactly that on framing errors).

/// A request head or chunked body that cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The request line is longer than `limit_request_line` (Gunicorn's
    /// `LimitRequestLine`, 414).
    #[error("Request Line is too large ({size} > {limit})")]
    RequestLineTooLong {
        /// The length seen so far, in bytes, without the CRLF.
        size: usize,
        /// The effective limit, in bytes, without the CRLF.
        limit: usize,
    },
    /// More empty lines before the request line than we skip
    /// (`InvalidRequestLine`).
    #[error("Invalid Request Line 'too many empty lines before the request line'")]
    TooManyEmptyLines,
    /// The request line is not `method SP request-target SP HTTP-version`
    /// (`InvalidRequestLine`).
    #[error("Invalid Request Line 'not method SP request-target SP HTTP-version'")]
    InvalidRequestLine,
    /// The method is not a token of 3 to 20 characters from
    /// `[A-Z0-9!$%&'*+-.^_`|~]` (`InvalidRequestMethod`).
    #[error("Invalid Method 'not a token of 3 to 20 characters without lowercase letters or #'")]
    InvalidMethod,
    /// The request-target is not origin-form, absolute-form (http/https),
    /// `*` with OPTIONS, or authority-form with CONNECT (`InvalidRequestLine`).
    #[error("Invalid Request Line 'the request-target is not in a form the method allows'")]
    InvalidTarget,
    /// A raw byte outside printable ASCII (0x80 and above) in the
    /// request-target (RFC 9112 §3.2, RFC 3986 §2: `InvalidRequestLine`).
    #[error("Invalid Request Line 'the request-target holds a byte that is not printable ASCII'")]
    NonAsciiTarget,
    /// The version is not `HTTP/1.0` or `HTTP/1.1` (`InvalidHTTPVersion`).
    #[error("Invalid HTTP Version 'not HTTP/1.0 or HTTP/1.1'")]
    InvalidVersion,
    /// A line of the head ends in a bare LF instead of CRLF (`InvalidHeader`).
    #[error("Invalid HTTP Header: 'bare LF as line terminator'")]
    InvalidLineEnding,
    /// More header fields than `limit_request_fields` (`LimitRequestHeaders`).
    #[error("Error parsing headers: 'limit request headers fields' (more than {limit})")]
    TooManyHeaders {
        /// The effective limit.
        limit: usize,
    },
    /// One header field line is longer than `limit_request_field_size`
    /// (`LimitRequestHeaders`).
    #[error(
        "Error parsing headers: 'limit request headers fields size' (more than {limit} bytes)"
    )]
    HeaderTooLarge {
        /// The effective limit, in bytes, counting the CRLF as Gunicorn does.
        limit: usize,
    },
    /// The whole head is larger than the buffer we are willing to hold
    /// (`LimitRequestHeaders`).
    #[error("Error parsing headers: 'max buffer headers' (more than {limit} bytes)")]
    HeadTooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
    /// A field name is empty, is not a token, or is followed by whitespace
    /// before the colon (`InvalidHeaderName`).
    #[error("Invalid HTTP header name: not a token")]
    InvalidHeaderName,
    /// A field name with `_` under `header_map = refuse`, from a peer that
    /// may not send it (Gunicorn's `InvalidHeaderName`).
    #[error("Invalid HTTP header name: underscores are refused (header_map)")]
    UnderscoreHeaderName,
    /// A field value holds NUL, a bare CR, DEL or another control character
    /// (`InvalidHeader`).
    #[error("Invalid HTTP Header: 'control character in a field value'")]
    InvalidHeaderValue,
    /// A header line starts with SP or HTAB (obs-fold, RFC 9112 §5.2:
    /// `ObsoleteFolding`).
    #[error("Obsolete line folding is unacceptable")]
    ObsoleteFolding,
    /// More than one Host field line (RFC 9112 §3.2: `InvalidHeader`).
    #[error("Invalid HTTP Header: 'HOST'")]
    DuplicateHost,
    /// More than one Content-Type field line: a singleton field (RFC 9110
    /// §5.3, §8.3) that cannot be combined (`InvalidHeader`).
    #[error("Invalid HTTP Header: 'CONTENT-TYPE'")]
    DuplicateContentType,
    /// Content-Length is not 1*DIGIT, or overflows u64 (`InvalidHeader`).
    #[error("Invalid HTTP Header: 'CONTENT-LENGTH'")]
    InvalidContentLength,
    /// Content-Length sent more than once, even with the same value
    /// (`InvalidHeader`).
    #[error("Invalid HTTP Header: 'CONTENT-LENGTH' (more than one)")]
    DuplicateContentLength,
    /// Both Content-Length and Transfer-Encoding (RFC 9112 §6.3 item 3:
    /// `InvalidHeader`).
    #[error("Invalid HTTP Header: 'CONTENT-LENGTH' (with Transfer-Encoding)")]
    ContentLengthWithTransferEncoding,
    /// Transfer-Encoding on an HTTP/1.0 request (RFC 9112 §6.1:
    /// `InvalidHeader`).
    #[error("Invalid HTTP Header: 'TRANSFER-ENCODING' (on HTTP/1.0)")]
    TransferEncodingOnHttp10,
    /// Transfer-Encoding without `chunked` (`gzip`, `identity`): the length
    /// of the body cannot be determined (RFC 9112 §6.3 item 4:
    /// `InvalidHeader`).
    #[error("Invalid HTTP Header: 'TRANSFER-ENCODING' (chunked is not the final coding)")]
    TransferEncodingWithoutChunked,
    /// `chunked` twice, or a coding after `chunked` (RFC 9112 §6.3 item 4:
    /// `InvalidHeader`).
    #[error("Invalid HTTP Header: 'TRANSFER-ENCODING' (a coding after chunked)")]
    ChunkedNotLast,
    /// A transfer coding other than `chunked`, `gzip`, `deflate`,
    /// `compress` and `identity`, or an empty list element
    /// (`UnsupportedTransferCoding`, 501).
    #[error("Unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// An Expect value other than `100-continue` (`ExpectationFailed`, 417).
    #[error("Unable to comply with expectation")]
    ExpectationFailed,
    /// A chunk-size that is not 1*HEXDIG, has stray whitespace, overflows
    /// u64, or a chunk-size line too long (`InvalidChunkSize`).
    #[error("Invalid chunk size")]
    InvalidChunkSize,
    /// A chunk extension that is not `;name[=value]` with a token name and a
    /// token or quoted-string value (RFC 9112 §7.1.1: `InvalidChunkExtension`).
    #[error("Invalid chunk extension: invalid chunk extension")]
    InvalidChunkExtension,
    /// Chunk data not followed by exactly CRLF (`ChunkMissingTerminator`).
    #[error("Invalid chunk terminator is not '\\r\\n'")]
    MissingChunkTerminator,
    /// A malformed trailer field (`InvalidHeader`).
    #[error("Invalid HTTP Header: 'invalid trailer field'")]
    InvalidTrailer,
    /// A field that must not be sent in a trailer section: framing, routing
    /// or authentication (RFC 9110 §6.5.1: `InvalidHeaderName`).
    #[error("Invalid HTTP header name: '{name}' (not allowed in a trailer section)")]
    ForbiddenTrailer {
        /// The field name, upper-cased as Gunicorn shows it.
        name: &'static str,
    },
    /// The trailer section is larger than we hold (`LimitRequestHeaders`).
    #[error("Error parsing headers: 'limit request trailer section size'")]
    TrailerTooLarge,
    /// A malformed PROXY protocol v1 line or v2 header (`InvalidProxyLine`).
    #[error("'Invalid PROXY line'")]
    InvalidProxyHeader,
    /// A PROXY protocol header from a peer not in `proxy_allow_ips`
    /// (`ForbiddenProxyRequest`, 403).
    #[error("Request forbidden")]
    ForbiddenProxyRequest,
    /// Two secure-scheme headers (`secure_scheme_headers`) from a trusted
    /// proxy that disagree on the scheme (`InvalidSchemeHeaders`).
    #[error("Contradictory scheme headers")]
    InvalidSchemeHeaders,
    /// The `SCRIPT_NAME` header a trusted proxy sent is not a prefix of the
    /// path (`ConfigurationProblem`, 500).
    #[error("Configuration problem: Request path does not start with SCRIPT_NAME")]
    ScriptNameMismatch,
    /// The request body did not arrive in time: slower than the minimum
    /// rate, or not at all within the body timeout (408, rgunicorn's own:
    /// Gunicorn waits for the body as long as the app does).
    #[error("request body timed out")]
    BodyTimeout,
}

impl ParseError {
    /// The HTTP status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::RequestLineTooLong { .. } => 414,
            ParseError::TooManyHeaders { .. }
            | ParseError::HeaderTooLarge { .. }
            | ParseError::HeadTooLarge { .. }
            | ParseError::TrailerTooLarge => 431,
            ParseError::UnsupportedTransferCoding => 501,
            ParseError::ExpectationFailed => 417,
            ParseError::ForbiddenProxyRequest => 403,
            ParseError::ScriptNameMismatch => 500,
            ParseError::BodyTimeout => 408,
            ParseError::InvalidProxyHeader
            | ParseError::InvalidSchemeHeaders
            | ParseError::TooManyEmptyLines
            | ParseError::InvalidRequestLine
            | ParseError::InvalidMethod
            | ParseError::InvalidTarget
            | ParseError::NonAsciiTarget
            | ParseError::InvalidVersion
            | ParseError::InvalidLineEnding
            | ParseError::InvalidHeaderName
            | ParseError::UnderscoreHeaderName
            | ParseError::InvalidHeaderValue
            | ParseError::ObsoleteFolding
            | ParseError::DuplicateHost
            | ParseError::DuplicateContentType
            | ParseError::InvalidContentLength
            | ParseError::DuplicateContentLength
            | ParseError::ContentLengthWithTransferEncoding
            | ParseError::TransferEncodingOnHttp10
            | ParseError::TransferEncodingWithoutChunked
            | ParseError::ChunkedNotLast
            | ParseError::InvalidChunkSize
            | ParseError::InvalidChunkExtension
            | ParseError::MissingChunkTerminator
            | ParseError::InvalidTrailer
            | ParseError::ForbiddenTrailer { .. } => 400,
        }
    }

    /// The reason phrase that goes with [`status`](Self::status).
    pub fn reason(&self) -> &'static str {
        match self.status() {
            414 => "URI Too Long",
            431 => "Request Header Fields Too Large",
            501 => "Not Implemented",
            417 => "Expectation Failed",
            403 => "Forbidden",
            500 => "Internal Server Error",
            408 => "Request Timeout",
            _ => "Bad Request",
        }
    }

    /// The message for the error page (the `Display` text): Gunicorn's
    /// wording, with a description where Gunicorn quotes the client's bytes.
    /// Plain text; the page escapes it.
    pub fn message(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::ParseError;

    /// Gunicorn 27's status line for each kind (handle_error in
    /// gunicorn/workers/base.py), and its message.
    #[test]
    fn statuses_reasons_and_messages() {
        let cases = [
            (
                ParseError::RequestLineTooLong {
                    size: 4095,
                    limit: 4094,
                },
                414,
                "URI Too Long",
                "Request Line is too large (4095 > 4094)",
            ),
            (
                ParseError::TooManyHeaders { limit: 100 },
                431,
                "Request Header Fields Too Large",
                "Error parsing headers: 'limit request headers fields' (more than 100)",
            ),
            (
                ParseError::HeaderTooLarge { limit: 1 },
                431,
                "Request Header Fields Too Large",
                "Error parsing headers: 'limit request headers fields size' (more than 1 bytes)",
            ),
            (
                ParseError::HeadTooLarge { limit: 1 },
                431,
                "Request Header Fields Too Large",
                "Error parsing headers: 'max buffer headers' (more than 1 bytes)",
            ),
            (
                ParseError::TrailerTooLarge,
                431,
                "Request Header Fields Too Large",
                "Error parsing headers: 'limit request trailer section size'",
            ),
            (
                ParseError::UnsupportedTransferCoding,
                501,
                "Not Implemented",
                "Unsupported transfer coding",
            ),
            (
                ParseError::ExpectationFailed,
                417,
                "Expectation Failed",
                "Unable to comply with expectation",
            ),
            (
                ParseError::ForbiddenProxyRequest,
                403,
                "Forbidden",
                "Request forbidden",
            ),
            (
                ParseError::ScriptNameMismatch,
                500,
                "Internal Server Error",
                "Configuration problem: Request path does not start with SCRIPT_NAME",
            ),
            (
                ParseError::DuplicateHost,
                400,
                "Bad Request",
                "Invalid HTTP Header: 'HOST'",
            ),
            (
                ParseError::DuplicateContentType,
                400,
                "Bad Request",
                "Invalid HTTP Header: 'CONTENT-TYPE'",
            ),
            (
                ParseError::ForbiddenTrailer { name: "HOST" },
                400,
                "Bad Request",
                "Invalid HTTP header name: 'HOST' (not allowed in a trailer section)",
            ),
            (
                ParseError::MissingChunkTerminator,
                400,
                "Bad Request",
                "Invalid chunk terminator is not '\\r\\n'",
            ),
            (
                ParseError::NonAsciiTarget,
                400,
                "Bad Request",
                "Invalid Request Line 'the request-target holds a byte that is not printable ASCII'",
            ),
            (
                ParseError::BodyTimeout,
                408,
                "Request Timeout",
                "request body timed out",
            ),
        ];
        for (err, status, reason, message) in cases {
            assert_eq!(err.status(), status, "{err:?}");
            assert_eq!(err.reason(), reason, "{err:?}");
            assert_eq!(err.message(), message, "{err:?}");
        }
    }
}
