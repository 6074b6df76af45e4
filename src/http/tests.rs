//! Tests over the whole module: the data-driven cases in `testdata/`
//! (Gunicorn's `tests/requests/{valid,invalid}` layout; see
//! `testdata/README.md`) and a bounded fuzz-style run that feeds random and
//! truncated input to the parser and the chunked decoder and asserts nothing
//! panics.

use super::*;
use std::path::{Path, PathBuf};

fn testdata(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/http/testdata")
        .join(kind)
}

/// Undo the escapes of a `.http` file; real newlines are dropped.
pub(super) fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes().filter(|&b| b != b'\n');
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex = [bytes.next().unwrap(), bytes.next().unwrap()];
                let hex = std::str::from_utf8(&hex).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
            }
            other => panic!("bad escape \\{other:?}"),
        }
    }
    out
}

/// `.expect` lines as (key, value), in order.
pub(super) fn expectations(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("{}: bad line {l:?}", path.display()));
            (
                k.trim().to_owned(),
                v.strip_prefix(' ').unwrap_or(v).to_owned(),
            )
        })
        .collect()
}

fn limits_of(exp: &[(String, String)]) -> Limits {
    match exp.iter().find(|(k, _)| k == "limits") {
        None => Limits::default(),
        Some((_, v)) => {
            let n: Vec<usize> = v.split_whitespace().map(|x| x.parse().unwrap()).collect();
            Limits {
                request_line: n[0],
                fields: n[1],
                field_size: n[2],
            }
        }
    }
}

/// One test case: its name, the raw bytes, and the `.expect` lines.
type Case = (String, Vec<u8>, Vec<(String, String)>);

/// Every `NAME.http` in `testdata/KIND`, with its expectations.
fn cases(kind: &str) -> Vec<Case> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(testdata(kind)).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "http") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let raw = unescape(&std::fs::read_to_string(&path).unwrap());
            let exp = expectations(&path.with_extension("expect"));
            out.push((name, raw, exp));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no cases in testdata/{kind}");
    out
}

/// Parse head and body of `raw`, the head from the whole buffer and the body
/// both in one call and byte by byte. Returns the request, the payload, and
/// how many bytes were used in all.
fn run(raw: &[u8], limits: &Limits) -> Result<(Request, Vec<u8>, usize), ParseError> {
    let (req, n) = parse_head(raw, limits)?.expect("head incomplete");
    // Every shorter prefix is incomplete or already an error, never a request.
    for cut in 0..n {
        if let Ok(Some(_)) = parse_head(&raw[..cut], limits) {
            panic!("prefix of {cut} bytes parsed as a whole head");
        }
    }
    let rest = &raw[n..];
    let (payload, used) = match req.body {
        BodyFraming::None => (Vec::new(), 0),
        BodyFraming::Length(len) => {
            let len = usize::try_from(len).unwrap().min(rest.len());
            (rest[..len].to_vec(), len)
        }
        BodyFraming::Chunked => {
            let mut whole = ChunkedDecoder::new();
            let mut payload = Vec::new();
            let used = whole.decode(rest, &mut payload)?;
            assert!(whole.is_done(), "chunked body incomplete");
            let mut bytewise = ChunkedDecoder::new();
            let mut again = Vec::new();
            for i in 0..used {
                bytewise.decode(&rest[i..=i], &mut again)?;
            }
            assert!(bytewise.is_done());
            assert_eq!(again, payload, "bytewise decoding differs");
            (payload, used)
        }
    };
    Ok((req, payload, n + used))
}

#[test]
fn valid_requests() {
    for (name, raw, exp) in cases("valid") {
        let limits = limits_of(&exp);
        let (req, payload, used) =
            run(&raw, &limits).unwrap_or_else(|e| panic!("{name}: unexpected error {e:?}"));
        assert_eq!(used, raw.len(), "{name}: bytes left over");
        let flag = |v: &str| match v {
            "true" => true,
            "false" => false,
            _ => panic!("{name}: not a bool: {v}"),
        };
        let latin1 = |v: &str| unescape(v).into_iter().map(char::from).collect::<String>();
        let mut headers = Vec::new();
        for (key, value) in &exp {
            match key.as_str() {
                "limits" => {}
                "method" => assert_eq!(req.method, *value, "{name}: method"),
                "uri" => assert_eq!(req.uri, latin1(value), "{name}: uri"),
                "path" => assert_eq!(req.path, latin1(value), "{name}: path"),
                "query" => assert_eq!(req.query, latin1(value), "{name}: query"),
                "version" => {
                    let want = match value.as_str() {
                        "1.0" => Version::Http10,
                        "1.1" => Version::Http11,
                        _ => panic!("{name}: bad version"),
                    };
                    assert_eq!(req.version, want, "{name}: version");
                }
                "body" => {
                    let want = match value.split_once(' ') {
                        Some(("length", n)) => BodyFraming::Length(n.parse().unwrap()),
                        None if value == "none" => BodyFraming::None,
                        None if value == "chunked" => BodyFraming::Chunked,
                        _ => panic!("{name}: bad body {value}"),
                    };
                    assert_eq!(req.body, want, "{name}: body");
                }
                "keep_alive" => assert_eq!(req.keep_alive, flag(value), "{name}: keep_alive"),
                "expect_continue" => {
                    assert_eq!(req.expect_continue, flag(value), "{name}: expect_continue")
                }
                "header" => {
                    let (n, v) = value.split_once(':').unwrap();
                    headers.push((n.as_bytes().to_vec(), unescape(v.trim_start())));
                }
                "payload" => assert_eq!(payload, unescape(value), "{name}: payload"),
                other => panic!("{name}: unknown key {other}"),
            }
        }
        if !headers.is_empty() {
            let got: Vec<_> = req
                .headers
                .iter()
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect();
            assert_eq!(got, headers, "{name}: headers");
        }
    }
}

#[test]
fn invalid_requests() {
    for (name, raw, exp) in cases("invalid") {
        let limits = limits_of(&exp);
        let get = |k: &str| {
            exp.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("{name}: no {k}"))
        };
        let err = match run(&raw, &limits) {
            Err(e) => e,
            Ok((req, ..)) => panic!("{name}: accepted as {req:?}"),
        };
        let status: u16 = get("status").parse().unwrap();
        assert_eq!(err.status(), status, "{name}: {err:?}");
        let variant = format!("{err:?}");
        let variant = variant.split([' ', '{']).next().unwrap_or_default();
        assert_eq!(variant, get("error"), "{name}");
    }
}

/// xorshift64*: a tiny deterministic PRNG, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Feed `input` to the decoder in random pieces; it must never panic, never
/// emit more payload than it was given, and never report consuming more
/// than it got.
fn decode_in_pieces(input: &[u8], rng: &mut Rng) {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let len = 1 + rng.below(input.len() - pos);
        let piece = &input[pos..pos + len];
        match d.decode(piece, &mut out) {
            Ok(n) => {
                assert!(n <= piece.len());
                pos += n;
                if n < piece.len() {
                    assert!(d.is_done());
                    break;
                }
            }
            Err(_) => break,
        }
    }
    assert!(out.len() <= input.len());
}

#[test]
fn random_input_never_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let small = Limits {
        request_line: 64,
        fields: 4,
        field_size: 64,
    };
    let unlimited = Limits {
        request_line: 0,
        fields: 0,
        field_size: 0,
    };
    let seeds: Vec<Vec<u8>> = cases("valid")
        .into_iter()
        .chain(cases("invalid"))
        .map(|(_, raw, _)| raw)
        .collect();
    // Bytes that matter to the grammar, weighted in.
    let alphabet = b"\r\n\r\n :;,\t\0\x7f\x80\xff%/?#*0aA9fFxHTP/1.chunked";

    for round in 0..3000 {
        let mut buf = seeds[rng.below(seeds.len())].clone();
        match round % 4 {
            // Random truncation of a real request.
            0 => buf.truncate(rng.below(buf.len() + 1)),
            // A few random byte flips or insertions.
            1 => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(buf.len() + 1);
                    let b = if rng.below(2) == 0 {
                        alphabet[rng.below(alphabet.len())]
                    } else {
                        rng.next() as u8
                    };
                    if at < buf.len() && rng.below(2) == 0 {
                        buf[at] = b;
                    } else {
                        buf.insert(at, b);
                    }
                }
            }
            // Pure noise from the grammar's alphabet.
            2 => {
                buf = (0..rng.below(200))
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect()
            }
            // Pure random bytes.
            _ => buf = (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
        }
        for limits in [Limits::default(), small, unlimited] {
            if let Ok(Some((_, n))) = parse_head(&buf, &limits) {
                assert!(n <= buf.len());
                decode_in_pieces(&buf[n..], &mut rng);
            }
        }
        decode_in_pieces(&buf, &mut rng);
    }
}
