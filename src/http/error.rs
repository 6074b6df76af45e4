//! Why a request was refused: one enum of parse-error kinds, and the one
//! `match` that maps each kind to the status line the worker sends back.
//!
//! The statuses mirror Gunicorn's `handle_error` (gunicorn/workers/base.py):
//! a too-long request line is 400 (`LimitRequestLine`), too many or too large
//! header fields are 431 (`LimitRequestHeaders`), an unknown transfer coding
//! is 501 (`UnsupportedTransferCoding`), an expectation other than
//! `100-continue` is 417 (`ExpectationFailed`), everything else is 400.
//!
//! Every error is final for the connection: after sending the error response
//! the worker must close it, because the framing of whatever follows is
//! unknown (RFC 9112 §6.3 asks for exactly that on framing errors).
//!
//! The variants carry no heap data, so building one on the error path costs
//! nothing and the type is `Copy`.

/// A request head or chunked body that cannot be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The request line is longer than `limit_request_line`.
    #[error("request line is too large (more than {limit} bytes)")]
    RequestLineTooLong {
        /// The effective limit, in bytes, without the CRLF.
        limit: usize,
    },
    /// More empty lines before the request line than we skip.
    #[error("too many empty lines before the request line")]
    TooManyEmptyLines,
    /// The request line is not `method SP request-target SP HTTP-version`.
    #[error("invalid request line")]
    InvalidRequestLine,
    /// The method is not a token of 3 to 20 characters from `[A-Z0-9!$%&'*+-.^_`|~]`.
    #[error("invalid HTTP method")]
    InvalidMethod,
    /// The request-target is not origin-form, absolute-form (http/https),
    /// or `*` with OPTIONS.
    #[error("invalid request target")]
    InvalidTarget,
    /// CONNECT (authority-form) is refused: a WSGI server does not tunnel.
    #[error("CONNECT is not supported")]
    ConnectNotSupported,
    /// The version is not `HTTP/1.0` or `HTTP/1.1`.
    #[error("unsupported HTTP version")]
    InvalidVersion,
    /// A line of the head ends in a bare LF instead of CRLF.
    #[error("line does not end in CRLF")]
    InvalidLineEnding,
    /// More header fields than `limit_request_fields`.
    #[error("too many header fields (more than {limit})")]
    TooManyHeaders {
        /// The effective limit.
        limit: usize,
    },
    /// One header field line is longer than `limit_request_field_size`.
    #[error("header field is too large (more than {limit} bytes)")]
    HeaderTooLarge {
        /// The effective limit, in bytes, counting the CRLF as Gunicorn does.
        limit: usize,
    },
    /// The whole head is larger than the buffer we are willing to hold.
    #[error("request head is too large (more than {limit} bytes)")]
    HeadTooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
    /// A field name is empty, is not a token, or is followed by whitespace
    /// before the colon.
    #[error("invalid header name")]
    InvalidHeaderName,
    /// A field value holds NUL, a bare CR, DEL or another control character.
    #[error("invalid header value")]
    InvalidHeaderValue,
    /// A header line starts with SP or HTAB (obs-fold, RFC 9112 §5.2).
    #[error("obsolete line folding is not accepted")]
    ObsoleteFolding,
    /// More than one Host field (RFC 9112 §3.2).
    #[error("more than one Host header")]
    DuplicateHost,
    /// Content-Length is not 1*DIGIT, or overflows u64.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// Content-Length sent more than once (even with the same value).
    #[error("more than one Content-Length header")]
    DuplicateContentLength,
    /// Both Content-Length and Transfer-Encoding (RFC 9112 §6.3, item 3).
    #[error("both Content-Length and Transfer-Encoding")]
    ContentLengthWithTransferEncoding,
    /// Transfer-Encoding on an HTTP/1.0 request (RFC 9112 §6.1).
    #[error("Transfer-Encoding on an HTTP/1.0 request")]
    TransferEncodingOnHttp10,
    /// An empty Transfer-Encoding value or an empty list element in it.
    #[error("invalid Transfer-Encoding")]
    InvalidTransferEncoding,
    /// `chunked` is present but not the final coding, or present twice
    /// (RFC 9112 §6.3, item 4).
    #[error("chunked is not the final transfer coding")]
    ChunkedNotLast,
    /// A transfer coding other than `chunked`.
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
    /// An Expect value other than `100-continue`.
    #[error("unsupported expectation")]
    ExpectationFailed,
    /// A chunk-size that is not 1*HEXDIG, has stray whitespace, or overflows u64.
    #[error("invalid chunk size")]
    InvalidChunkSize,
    /// A chunk extension with control characters, or a chunk-size line too long.
    #[error("invalid chunk extension")]
    InvalidChunkExtension,
    /// Chunk data not followed by exactly CRLF.
    #[error("chunk data not followed by CRLF")]
    MissingChunkTerminator,
    /// A malformed trailer field.
    #[error("invalid trailer field")]
    InvalidTrailer,
    /// The trailer section is larger than we hold.
    #[error("trailer section is too large")]
    TrailerTooLarge,
    /// A malformed PROXY protocol v1 line or v2 header.
    #[error("invalid PROXY protocol header")]
    InvalidProxyHeader,
    /// A PROXY protocol header from a peer not in `proxy_allow_ips` (403).
    #[error("PROXY protocol header from a peer not allowed to send one")]
    ForbiddenProxyRequest,
    /// Two secure-scheme headers (`secure_scheme_headers`) from a trusted
    /// proxy that disagree on the scheme (Gunicorn's `InvalidSchemeHeaders`).
    #[error("Contradictory scheme headers")]
    InvalidSchemeHeaders,
    /// The `SCRIPT_NAME` header a trusted proxy sent is not a prefix of the
    /// path (Gunicorn's `ConfigurationProblem`, a 500).
    #[error("request path does not start with SCRIPT_NAME")]
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
            ParseError::TooManyHeaders { .. }
            | ParseError::HeaderTooLarge { .. }
            | ParseError::HeadTooLarge { .. } => 431,
            ParseError::UnsupportedTransferCoding => 501,
            ParseError::ExpectationFailed => 417,
            ParseError::ForbiddenProxyRequest => 403,
            ParseError::ScriptNameMismatch => 500,
            ParseError::BodyTimeout => 408,
            ParseError::InvalidProxyHeader
            | ParseError::InvalidSchemeHeaders
            | ParseError::RequestLineTooLong { .. }
            | ParseError::TooManyEmptyLines
            | ParseError::InvalidRequestLine
            | ParseError::InvalidMethod
            | ParseError::InvalidTarget
            | ParseError::ConnectNotSupported
            | ParseError::InvalidVersion
            | ParseError::InvalidLineEnding
            | ParseError::InvalidHeaderName
            | ParseError::InvalidHeaderValue
            | ParseError::ObsoleteFolding
            | ParseError::DuplicateHost
            | ParseError::InvalidContentLength
            | ParseError::DuplicateContentLength
            | ParseError::ContentLengthWithTransferEncoding
            | ParseError::TransferEncodingOnHttp10
            | ParseError::InvalidTransferEncoding
            | ParseError::ChunkedNotLast
            | ParseError::InvalidChunkSize
            | ParseError::InvalidChunkExtension
            | ParseError::MissingChunkTerminator
            | ParseError::InvalidTrailer
            | ParseError::TrailerTooLarge => 400,
        }
    }

    /// The reason phrase that goes with [`status`](Self::status).
    pub fn reason(&self) -> &'static str {
        match self.status() {
            431 => "Request Header Fields Too Large",
            501 => "Not Implemented",
            417 => "Expectation Failed",
            403 => "Forbidden",
            500 => "Internal Server Error",
            408 => "Request Timeout",
            _ => "Bad Request",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ParseError;

    #[test]
    fn statuses_and_reasons() {
        let cases = [
            (
                ParseError::RequestLineTooLong { limit: 1 },
                400,
                "Bad Request",
            ),
            (
                ParseError::TooManyHeaders { limit: 1 },
                431,
                "Request Header Fields Too Large",
            ),
            (
                ParseError::HeaderTooLarge { limit: 1 },
                431,
                "Request Header Fields Too Large",
            ),
            (
                ParseError::HeadTooLarge { limit: 1 },
                431,
                "Request Header Fields Too Large",
            ),
            (
                ParseError::UnsupportedTransferCoding,
                501,
                "Not Implemented",
            ),
            (ParseError::ExpectationFailed, 417, "Expectation Failed"),
            (ParseError::ChunkedNotLast, 400, "Bad Request"),
            (ParseError::BodyTimeout, 408, "Request Timeout"),
        ];
        for (err, status, reason) in cases {
            assert_eq!(err.status(), status, "{err:?}");
            assert_eq!(err.reason(), reason, "{err:?}");
            assert!(!err.to_string().is_empty());
        }
    }
}
