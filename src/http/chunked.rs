//! The chunked transfer coding (RFC 9112 §7.1), decoded as a resumable state
//! machine so the body can arrive in any split across reads.
//!
//! ```text
//! chunked-body   = *chunk last-chunk trailer-section CRLF
//! chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
//! chunk-size     = 1*HEXDIG
//! last-chunk     = 1*("0") [ chunk-ext ] CRLF
//! chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
//! chunk-ext-name = token
//! chunk-ext-val  = token / quoted-string
//! trailer-section = *( field-line CRLF )
//! ```
//!
//! Strict where request smuggling lives: the size is hex digits only (no
//! sign, no `0x`, no whitespace unless a `;` extension follows, no u64
//! overflow); every line ends in CRLF, never a bare LF or CR; chunk data must
//! be followed by exactly CRLF. Extensions are checked against the grammar
//! above (RFC 9110 §5.6.2 token, §5.6.4 quoted-string), as Gunicorn 27 does,
//! and ignored. Memory is bounded: the size line is capped at
//! [`MAX_CHUNK_LINE`] bytes and the trailer section at [`MAX_TRAILER`] bytes
//! and [`MAX_TRAILER_FIELDS`] fields; payload goes straight to the caller's
//! buffer.
//!
//! Trailer fields are validated with the same rules as header fields
//! (httparse, no obs-fold), then discarded: they never reach the app, as in
//! Gunicorn 27, whose environ holds no trailer either. A field that must not
//! be sent in a trailer section (RFC 9110 §6.5.1, see [`FORBIDDEN_TRAILERS`])
//! or a repeated Content-Type is refused with 400, as Gunicorn does, so a
//! message that a proxy might have merged into its header section is not
//! passed on as if it were fine.

use super::ParseError;

/// Longest chunk-size line (size plus extensions), without CRLF.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section, in bytes.
pub const MAX_TRAILER: usize = 64 * 1024;
/// Most trailer fields.
pub const MAX_TRAILER_FIELDS: usize = 100;

/// Fields refused in a trailer section, as Gunicorn shows them (upper case).
///
/// RFC 9110 §6.5.1: "Many fields cannot be processed outside the header
/// section because their evaluation is necessary prior to receiving the
/// content, such as those that describe message framing, routing,
/// authentication, request modifiers, response controls, or content
/// format." Gunicorn 27 refuses framing (Content-Length, Transfer-Encoding,
/// Trailer, TE), routing (Host) and authentication (Authorization); we add
/// Proxy-Authorization, the other request authentication field (RFC 9110
/// §11.7.2). A trailer is dropped either way, so refusing costs an honest
/// client nothing: no client sends these in a trailer section.
pub const FORBIDDEN_TRAILERS: [&str; 7] = [
    "CONTENT-LENGTH",
    "TRANSFER-ENCODING",
    "TRAILER",
    "TE",
    "HOST",
    "AUTHORIZATION",
    "PROXY-AUTHORIZATION",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk-size; `digits` is how many so far.
    Size { digits: usize },
    /// Whitespace after the size: only more whitespace or `;` may follow.
    SizeSpace,
    /// Inside chunk extensions, up to the CR.
    Ext(Ext),
    /// CR of the size line seen, LF expected.
    SizeLf,
    /// `remaining` bytes of chunk data left.
    Data,
    /// Chunk data done, CR expected.
    DataCr,
    /// CR after the data seen, LF expected.
    DataLf,
    /// At the start of a trailer line, or of the final CRLF.
    TrailerStart,
    /// Inside a trailer field line.
    TrailerLine,
    /// CR of a trailer line seen, LF expected.
    TrailerLf,
    /// CR of the final empty line seen, LF expected.
    EndLf,
    /// The body is complete.
    Done,
    /// An error happened; it is returned again on every call.
    Failed(ParseError),
}

/// Where in a chunk extension (`;name=value`) the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// After `;`: whitespace, then the name.
    BeforeName,
    /// In the name (a token).
    Name,
    /// Whitespace after the name: `=`, `;` may follow, not the CR.
    AfterName,
    /// After `=`: whitespace, then a token or a quoted-string.
    BeforeValue,
    /// In a token value.
    Token,
    /// In a quoted-string value.
    Quoted,
    /// After a backslash in a quoted-string.
    QuotedEscape,
    /// Right after the closing quote: `;`, whitespace or the CR.
    AfterQuote,
    /// Whitespace after a value: only `;` may follow.
    Space,
}

impl Ext {
    /// One byte of a chunk extension (never the LF: a CR ends the line).
    fn step(self, b: u8) -> Result<State, ParseError> {
        let ws = b == b' ' || b == b'\t';
        let next = match self {
            Ext::BeforeName if ws => Ext::BeforeName,
            Ext::BeforeName if super::is_tchar(b) => Ext::Name,
            Ext::Name if super::is_tchar(b) => Ext::Name,
            Ext::Name | Ext::AfterName if ws => Ext::AfterName,
            Ext::Name | Ext::AfterName if b == b'=' => Ext::BeforeValue,
            Ext::BeforeValue if ws => Ext::BeforeValue,
            Ext::BeforeValue if super::is_tchar(b) => Ext::Token,
            Ext::BeforeValue if b == b'"' => Ext::Quoted,
            Ext::Token if super::is_tchar(b) => Ext::Token,
            Ext::Quoted if b == b'"' => Ext::AfterQuote,
            Ext::Quoted if b == b'\\' => Ext::QuotedEscape,
            // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
            Ext::Quoted if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => Ext::Quoted,
            // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            Ext::QuotedEscape if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => {
                Ext::Quoted
            }
            Ext::Token | Ext::AfterQuote | Ext::Space if ws => Ext::Space,
            Ext::Name | Ext::AfterName | Ext::Token | Ext::AfterQuote | Ext::Space if b == b';' => {
                Ext::BeforeName
            }
            Ext::Name | Ext::Token | Ext::AfterQuote if b == b'\r' => return Ok(State::SizeLf),
            _ => return Err(ParseError::InvalidChunkExtension),
        };
        Ok(State::Ext(next))
    }
}

/// Decoder for a `Transfer-Encoding: chunked` request body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// The size of the chunk being read, then the data bytes left in it.
    remaining: u64,
    /// Bytes of the current size line so far.
    line_len: usize,
    /// The trailer section so far, kept only to validate it at the end.
    trailer: Vec<u8>,
    trailer_fields: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            remaining: 0,
            line_len: 0,
            trailer: Vec::new(),
            trailer_fields: 0,
        }
    }

    /// Whether the last chunk, the trailers and the final CRLF have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode as much of `input` as possible, appending payload bytes to
    /// `out`. Returns how many bytes of `input` were consumed: all of it,
    /// unless the body ended inside `input`, in which case the bytes after it
    /// (a pipelined request) are left unconsumed.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ParseError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return Ok(i),
                State::Failed(e) => return Err(e),
                State::Data => {
                    let avail = input.len() - i;
                    let take = usize::try_from(self.remaining).map_or(avail, |r| r.min(avail));
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                }
                _ => {
                    let b = input[i];
                    i += 1;
                    if let Err(e) = self.step(b) {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                }
            }
        }
        match self.state {
            State::Failed(e) => Err(e),
            _ => Ok(i),
        }
    }

    /// Advance the state machine over one byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<(), ParseError> {
        self.state = match self.state {
            State::Size { digits } => {
                self.count_line()?;
                match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = hex_value(b);
                        self.remaining = self
                            .remaining
                            .checked_mul(16)
                            .and_then(|v| v.checked_add(d))
                            .ok_or(ParseError::InvalidChunkSize)?;
                        State::Size { digits: digits + 1 }
                    }
                    _ if digits == 0 => return Err(ParseError::InvalidChunkSize),
                    b';' => State::Ext(Ext::BeforeName),
                    b' ' | b'\t' => State::SizeSpace,
                    b'\r' => State::SizeLf,
                    _ => return Err(ParseError::InvalidChunkSize),
                }
            }
            State::SizeSpace => {
                self.count_line()?;
                match b {
                    b' ' | b'\t' => State::SizeSpace,
                    b';' => State::Ext(Ext::BeforeName),
                    _ => return Err(ParseError::InvalidChunkSize),
                }
            }
            State::Ext(ext) => {
                self.count_line()?;
                ext.step(b)?
            }
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ParseError::InvalidChunkSize);
                }
                self.line_len = 0;
                if self.remaining == 0 {
                    State::TrailerStart
                } else {
                    State::Data
                }
            }
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataLf if b == b'\n' => State::Size { digits: 0 },
            State::DataCr | State::DataLf => return Err(ParseError::MissingChunkTerminator),
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                // obs-fold, a bare LF, or a line starting with a colon.
                b' ' | b'\t' | b'\n' | b':' => return Err(ParseError::InvalidTrailer),
                _ => {
                    self.trailer_fields += 1;
                    if self.trailer_fields > MAX_TRAILER_FIELDS {
                        return Err(ParseError::TrailerTooLarge);
                    }
                    self.push_trailer(b)?;
                    State::TrailerLine
                }
            },
            State::TrailerLine => match b {
                b'\r' => {
                    self.push_trailer(b)?;
                    State::TrailerLf
                }
                b'\n' => return Err(ParseError::InvalidTrailer),
                _ => {
                    self.push_trailer(b)?;
                    State::TrailerLine
                }
            },
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(ParseError::InvalidTrailer);
                }
                self.push_trailer(b)?;
                State::TrailerStart
            }
            State::EndLf => {
                if b != b'\n' {
                    return Err(ParseError::InvalidTrailer);
                }
                self.check_trailers()?;
                State::Done
            }
            // `decode` never steps in these states.
            State::Data | State::Done | State::Failed(_) => self.state,
        };
        Ok(())
    }

    #[inline]
    fn count_line(&mut self) -> Result<(), ParseError> {
        self.line_len += 1;
        if self.line_len > MAX_CHUNK_LINE {
            // Gunicorn: InvalidChunkSize("line over N bytes with no terminator").
            return Err(ParseError::InvalidChunkSize);
        }
        Ok(())
    }

    #[inline]
    fn push_trailer(&mut self, b: u8) -> Result<(), ParseError> {
        if self.trailer.len() >= MAX_TRAILER {
            return Err(ParseError::TrailerTooLarge);
        }
        self.trailer.push(b);
        Ok(())
    }

    /// Validate the whole trailer section with the header-field rules and
    /// RFC 9110 §6.5.1, then drop it.
    fn check_trailers(&mut self) -> Result<(), ParseError> {
        if self.trailer.is_empty() {
            return Ok(());
        }
        let mut section = std::mem::take(&mut self.trailer);
        section.extend_from_slice(b"\r\n");
        let mut slots = vec![httparse::EMPTY_HEADER; self.trailer_fields];
        let fields = match httparse::parse_headers(&section, &mut slots) {
            Ok(httparse::Status::Complete((n, fields))) if n == section.len() => fields,
            _ => return Err(ParseError::InvalidTrailer),
        };
        let mut content_type_seen = false;
        for field in fields {
            let name = field.name.as_bytes();
            if let Some(&forbidden) = FORBIDDEN_TRAILERS
                .iter()
                .find(|f| f.as_bytes().eq_ignore_ascii_case(name))
            {
                return Err(ParseError::ForbiddenTrailer { name: forbidden });
            }
            // Gunicorn applies its singleton rule to the trailer section too.
            if name.eq_ignore_ascii_case(b"content-type") {
                if content_type_seen {
                    return Err(ParseError::DuplicateContentType);
                }
                content_type_seen = true;
            }
        }
        Ok(())
    }
}

#[inline]
fn hex_value(b: u8) -> u64 {
    u64::from(match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode all of `input` in one call.
    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ParseError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let n = d.decode(input, &mut out)?;
        Ok((out, n, d.is_done()))
    }

    /// Decode `input` one byte at a time.
    fn decode_bytewise(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ParseError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut used = 0;
        for i in 0..input.len() {
            if d.is_done() {
                break;
            }
            used += d.decode(&input[i..=i], &mut out)?;
        }
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn valid_bodies() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"0\r\n\r\n", b""),
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
            (b"a\r\n0123456789\r\n00000\r\n\r\n", b"0123456789"),
            (b"5;name=value\r\nhello\r\n0;x\r\n\r\n", b"hello"),
            (b"5 ;name=\"quoted value\"\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"5\t; a ; b = c\r\nhello\r\n0\r\n\r\n", b"hello"),
            (
                b"5\r\nhello\r\n0\r\nX-Trailer: 1\r\nY: two words\r\n\r\n",
                b"hello",
            ),
            // Allowed in a trailer: anything but framing, routing and
            // authentication; one Content-Type is not a repeat.
            (
                b"1\r\nx\r\n0\r\nX-Checksum: abc\r\nServer-Timing: db;dur=1\r\nHosts: 1\r\nContent-Type: a/b\r\n\r\n",
                b"x",
            ),
            (b"0000000000000000000000001\r\nx\r\n0\r\n\r\n", b"x"),
            (b"3\r\n\r\n\r\r\n0\r\n\r\n", b"\r\n\r"),
        ];
        for &(input, payload) in cases {
            let mut piped = input.to_vec();
            piped.extend(b"GET / HTTP/1.1\r\n\r\n");
            for res in [decode_all(&piped), decode_bytewise(&piped)] {
                let (out, used, done) =
                    res.unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(input)));
                assert_eq!(out, payload);
                assert_eq!(used, input.len(), "stops after the final CRLF");
                assert!(done);
            }
        }
    }

    #[test]
    fn incomplete_is_not_done() {
        let input = b"5\r\nhello\r\n0\r\nT: 1\r\n\r\n";
        for cut in 0..input.len() {
            let (_, used, done) = decode_all(&input[..cut]).unwrap();
            assert_eq!(used, cut);
            assert!(!done, "cut at {cut}");
        }
    }

    #[test]
    fn invalid_bodies() {
        use ParseError::*;
        let cases: &[(&[u8], ParseError)] = &[
            (b"\r\n", InvalidChunkSize),
            (b"x\r\n", InvalidChunkSize),
            (b"0x5\r\nhello\r\n0\r\n\r\n", InvalidChunkSize),
            (b"+5\r\nhello\r\n0\r\n\r\n", InvalidChunkSize),
            (b"-5\r\n", InvalidChunkSize),
            (b" 5\r\nhello\r\n0\r\n\r\n", InvalidChunkSize),
            (b"5 \r\nhello\r\n0\r\n\r\n", InvalidChunkSize),
            (b"5 5\r\n", InvalidChunkSize),
            (b"5\nhello\r\n0\r\n\r\n", InvalidChunkSize),
            (b"5\rhello", InvalidChunkSize),
            (b"10000000000000000\r\n", InvalidChunkSize),
            (b"fffffffffffffffff\r\n", InvalidChunkSize),
            (b"5;a\x00b\r\nhello\r\n0\r\n\r\n", InvalidChunkExtension),
            (b"5;a\nb\r\n", InvalidChunkExtension),
            (b"5;a\x7f\r\n", InvalidChunkExtension),
            (b"5\r\nhelloX\r\n", MissingChunkTerminator),
            (b"5\r\nhello\n0\r\n\r\n", MissingChunkTerminator),
            (b"5\r\nhello\rX", MissingChunkTerminator),
            (b"5\r\nhello\r\n0\r\n\n", InvalidTrailer),
            (b"5\r\nhello\r\n0\r\n\rX", InvalidTrailer),
            (b"0\r\nT: 1\n\r\n", InvalidTrailer),
            (b"0\r\nT: 1\r\n folded\r\n\r\n", InvalidTrailer),
            (b"0\r\nT : 1\r\n\r\n", InvalidTrailer),
            (b"0\r\nNoColon\r\n\r\n", InvalidTrailer),
            (b"0\r\n: v\r\n\r\n", InvalidTrailer),
            (b"0\r\nT: a\x00b\r\n\r\n", InvalidTrailer),
            (
                b"0\r\nHost: evil\r\n\r\n",
                ForbiddenTrailer { name: "HOST" },
            ),
            (
                b"0\r\nX: 1\r\ncontent-length: 5\r\n\r\n",
                ForbiddenTrailer {
                    name: "CONTENT-LENGTH",
                },
            ),
            (
                b"0\r\nTransfer-Encoding: chunked\r\n\r\n",
                ForbiddenTrailer {
                    name: "TRANSFER-ENCODING",
                },
            ),
            (
                b"0\r\nTrailer: X\r\n\r\n",
                ForbiddenTrailer { name: "TRAILER" },
            ),
            (
                b"0\r\nTE: trailers\r\n\r\n",
                ForbiddenTrailer { name: "TE" },
            ),
            (
                b"0\r\nAuthorization: Basic eDp5\r\n\r\n",
                ForbiddenTrailer {
                    name: "AUTHORIZATION",
                },
            ),
            (
                b"0\r\nPROXY-AUTHORIZATION: Basic eDp5\r\n\r\n",
                ForbiddenTrailer {
                    name: "PROXY-AUTHORIZATION",
                },
            ),
            (
                b"0\r\nContent-Type: a/b\r\ncontent-type: a/b\r\n\r\n",
                DuplicateContentType,
            ),
        ];
        for &(input, want) in cases {
            let shown = String::from_utf8_lossy(input);
            assert_eq!(decode_all(input).unwrap_err(), want, "{shown:?}");
            assert_eq!(
                decode_bytewise(input).unwrap_err(),
                want,
                "{shown:?} bytewise"
            );
        }
    }

    /// Gunicorn 27's CHUNK_EXT_RE said yes or no to each of these (checked
    /// with gunicorn 27.0.1); the decoder must say the same.
    #[test]
    fn chunk_extension_grammar_matches_gunicorn() {
        let cases: &[(&[u8], bool)] = &[
            (b"a", true),
            (b"a=b", true),
            (b"a=\"x y\"", true),
            (b"a=\"x\\\"y\"", true),
            (b"a;b;c=d", true),
            (b"a=\"\xe9\"", true),
            (b"a=\"x\";b", true),
            (b"a=\"x\"\t;b", true),
            (b"a\t=\tb", true),
            (b" a = b ", false),
            (b"a ", false),
            (b"a=b ", false),
            (b"a=\"q\" ", false),
            (b"=b", false),
            (b"a=", false),
            (b"a b", false),
            (b"a=b c", false),
            (b"", false),
            (b" ", false),
            (b"a=\"unterminated", false),
            (b"a=\"x\"y", false),
            (b"a=\"\\\x01\"", false),
            (b"a\xe9", false),
            (b"a=\"\x7f\"", false),
            (b"a;", false),
            (b";a", false),
            (b"a@b", false),
            (b"a=b@c", false),
        ];
        for &(ext, ok) in cases {
            let body = [b"5;", ext, b"\r\nhello\r\n0\r\n\r\n"].concat();
            let shown = String::from_utf8_lossy(ext);
            for res in [decode_all(&body), decode_bytewise(&body)] {
                match res {
                    Ok((out, _, done)) => {
                        assert!(ok, "{shown:?} accepted");
                        assert!(done && out == b"hello", "{shown:?}");
                    }
                    Err(e) => {
                        assert!(!ok, "{shown:?} refused: {e:?}");
                        assert_eq!(e, ParseError::InvalidChunkExtension, "{shown:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert!(d.decode(b"z", &mut out).is_err());
        assert_eq!(
            d.decode(b"0\r\n\r\n", &mut out),
            Err(ParseError::InvalidChunkSize)
        );
        assert!(!d.is_done());
    }

    #[test]
    fn size_line_and_trailers_are_bounded() {
        let mut line = b"5;".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE));
        assert_eq!(decode_all(&line).unwrap_err(), ParseError::InvalidChunkSize);

        let mut body = b"0\r\n".to_vec();
        for _ in 0..=MAX_TRAILER_FIELDS {
            body.extend(b"T: 1\r\n");
        }
        assert_eq!(decode_all(&body).unwrap_err(), ParseError::TrailerTooLarge);

        let mut body = b"0\r\nT: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_TRAILER));
        assert_eq!(decode_all(&body).unwrap_err(), ParseError::TrailerTooLarge);
    }

    #[test]
    fn huge_declared_chunk_allocates_only_what_arrives() {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        assert_eq!(d.decode(b"ffffffffffffffff\r\nabc", &mut out), Ok(21));
        assert_eq!(out, b"abc");
        assert!(!d.is_done());
    }
}
