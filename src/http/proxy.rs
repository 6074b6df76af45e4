//! What a front-end proxy may tell us: IP allow-lists with CIDR ranges
//! (`forwarded_allow_ips`, `proxy_allow_ips`) and the PROXY protocol
//! (HAProxy's v1 text line and v2 binary header), as Gunicorn reads them.
//!
//! Everything here is parsed once per worker ([`AllowList::parse`]) or once
//! per connection ([`parse_header`]); nothing runs per request.
//!
//! The PROXY protocol parser follows Gunicorn's `_handle_proxy_protocol`:
//! with mode `v1`, `v2` or `auto`, a connection whose first bytes are the v2
//! signature (`v2`/`auto`) or `PROXY ` (`v1`/`auto`) carries a header that
//! names the real client; any other connection is plain HTTP. A header from
//! a peer outside `proxy_allow_ips` is refused with 403, a malformed one
//! with 400.

use super::ParseError;
use std::net::IpAddr;

/// An IP allow-list: `*`, addresses, and networks in CIDR notation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    any: bool,
    nets: Vec<(IpAddr, u8)>,
}

impl AllowList {
    /// Parse Gunicorn's list (`127.0.0.1`, `::1`, `10.0.0.0/8`, `*`).
    /// Errors name the entry, as Gunicorn's `ipaddress.ip_network` does;
    /// host bits set under the mask (`192.168.1.1/24`) are refused (strict).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<AllowList, String> {
        let mut list = AllowList::default();
        for item in items {
            let item = item.as_ref().trim();
            if item == "*" {
                list.any = true;
                continue;
            }
            let (addr, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (item, None),
            };
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("{item:?} is not an IP address or network"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => match b.parse::<u8>() {
                    Ok(n) if n <= max => n,
                    _ => return Err(format!("{item:?} has an invalid prefix length")),
                },
            };
            if masked(ip, bits) != ip {
                return Err(format!("{item:?} has host bits set"));
            }
            list.nets.push((ip, bits));
        }
        Ok(list)
    }

    /// Is `ip` in the list? `*` admits everything (also non-IP peers).
    pub fn contains(&self, ip: Option<IpAddr>) -> bool {
        if self.any {
            return true;
        }
        let Some(ip) = ip else { return false };
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        self.nets
            .iter()
            .any(|&(net, bits)| net.is_ipv4() == ip.is_ipv4() && masked(ip, bits) == net)
    }
}

fn masked(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let m = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            IpAddr::V4((u32::from(v4) & m).into())
        }
        IpAddr::V6(v6) => {
            let m = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            IpAddr::V6((u128::from(v6) & m).into())
        }
    }
}

/// `--proxy-protocol`: which headers to look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    V1,
    V2,
    Auto,
}

impl Mode {
    /// Gunicorn's setting values: off, v1, v2, auto.
    pub fn parse(s: &str) -> Mode {
        match s {
            "v1" => Mode::V1,
            "v2" => Mode::V2,
            "auto" => Mode::Auto,
            _ => Mode::Off,
        }
    }
}

/// What a PROXY header said (Gunicorn's `proxy_protocol_info`). The
/// addresses are `None` for v2 LOCAL and UNSPEC: the socket peer stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    /// `TCP4`, `TCP6`, `LOCAL` or `UNSPEC` (the `PROXY_PROTOCOL` key).
    pub protocol: &'static str,
    pub client: Option<(IpAddr, u16)>,
    pub proxy: Option<(IpAddr, u16)>,
}

/// The v2 signature.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The longest v1 line, CRLF included (the spec's 107 bytes).
const V1_MAX: usize = 107;

/// Look for a PROXY header at the start of `buf`.
///
/// - `Ok(None)`: more bytes are needed to decide (call again after reading);
/// - `Ok(Some((None, 0)))`: no header, plain HTTP follows;
/// - `Ok(Some((Some(info), n)))`: the header was `buf[..n]`.
///
/// `allowed` says whether the peer may send a header at all.
pub fn parse_header(
    buf: &[u8],
    mode: Mode,
    allowed: bool,
) -> Result<Option<(Option<ProxyInfo>, usize)>, ParseError> {
    if mode == Mode::Off {
        return Ok(Some((None, 0)));
    }
    let v2 = matches!(mode, Mode::V2 | Mode::Auto);
    let v1 = matches!(mode, Mode::V1 | Mode::Auto);
    // Decide as soon as the bytes seen can no longer be either prefix.
    let could_be = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    let maybe_v2 = v2 && could_be(V2_SIGNATURE);
    let maybe_v1 = v1 && could_be(b"PROXY ");
    if !maybe_v1 && !maybe_v2 {
        return Ok(Some((None, 0)));
    }
    if maybe_v2 && buf.len() < V2_SIGNATURE.len() {
        return Ok(None);
    }
    if maybe_v1 && buf.len() < 6 {
        return Ok(None);
    }
    if !allowed {
        return Err(ParseError::ForbiddenProxyRequest);
    }
    if maybe_v2 {
        parse_v2(buf)
    } else {
        parse_v1(buf)
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Option<ProxyInfo>, usize)>, ParseError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(ParseError::InvalidProxyHeader);
        }
        return Ok(None);
    };
    if end + 2 > V1_MAX {
        return Err(ParseError::InvalidProxyHeader);
    }
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::InvalidProxyHeader)?;
    let bits: Vec<&str> = line.split(' ').collect();
    if bits.len() != 6 {
        return Err(ParseError::InvalidProxyHeader);
    }
    let protocol = match bits[1] {
        "TCP4" => "TCP4",
        "TCP6" => "TCP6",
        _ => return Err(ParseError::InvalidProxyHeader),
    };
    let addr = |s: &str| -> Result<IpAddr, ParseError> {
        let ip: IpAddr = s.parse().map_err(|_| ParseError::InvalidProxyHeader)?;
        if ip.is_ipv4() != (protocol == "TCP4") {
            return Err(ParseError::InvalidProxyHeader);
        }
        Ok(ip)
    };
    let port = |s: &str| -> Result<u16, ParseError> {
        s.parse::<u16>().map_err(|_| ParseError::InvalidProxyHeader)
    };
    let info = ProxyInfo {
        protocol,
        client: Some((addr(bits[2])?, port(bits[4])?)),
        proxy: Some((addr(bits[3])?, port(bits[5])?)),
    };
    Ok(Some((Some(info), end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Option<ProxyInfo>, usize)>, ParseError> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let ver_cmd = buf[12];
    let fam_proto = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err(ParseError::InvalidProxyHeader);
    }
    let command = ver_cmd & 0x0f;
    if command > 1 {
        return Err(ParseError::InvalidProxyHeader);
    }
    let total = 16 + len;
    if buf.len() < total {
        return Ok(None);
    }
    if command == 0 {
        let info = ProxyInfo {
            protocol: "LOCAL",
            client: None,
            proxy: None,
        };
        return Ok(Some((Some(info), total)));
    }
    let family = fam_proto >> 4;
    if fam_proto & 0x0f != 1 && family != 0 {
        // Only STREAM (TCP) is served.
        return Err(ParseError::InvalidProxyHeader);
    }
    let a = &buf[16..total];
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let info = match family {
        1 => {
            if a.len() < 12 {
                return Err(ParseError::InvalidProxyHeader);
            }
            let ip = |b: &[u8]| IpAddr::from([b[0], b[1], b[2], b[3]]);
            ProxyInfo {
                protocol: "TCP4",
                client: Some((ip(&a[0..4]), port(&a[8..10]))),
                proxy: Some((ip(&a[4..8]), port(&a[10..12]))),
            }
        }
        2 => {
            if a.len() < 36 {
                return Err(ParseError::InvalidProxyHeader);
            }
            let ip = |b: &[u8]| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[..16]);
                IpAddr::from(o)
            };
            ProxyInfo {
                protocol: "TCP6",
                client: Some((ip(&a[0..16]), port(&a[32..34]))),
                proxy: Some((ip(&a[16..32]), port(&a[34..36]))),
            }
        }
        0 => ProxyInfo {
            protocol: "UNSPEC",
            client: None,
            proxy: None,
        },
        _ => return Err(ParseError::InvalidProxyHeader),
    };
    Ok(Some((Some(info), total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn allow_lists_with_networks() {
        let l = AllowList::parse(&["127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8"]).unwrap();
        assert!(l.contains(ip("127.0.0.1")));
        assert!(!l.contains(ip("127.0.0.2")));
        assert!(l.contains(ip("10.200.3.4")));
        assert!(!l.contains(ip("11.0.0.1")));
        assert!(l.contains(ip("::1")));
        assert!(l.contains(ip("fd12::5")));
        assert!(l.contains(ip("::ffff:10.1.1.1")));
        assert!(!l.contains(None));
        assert!(AllowList::parse(&["*"]).unwrap().contains(None));
        assert!(AllowList::parse(&["192.168.1.1/24"]).is_err());
        assert!(AllowList::parse(&["localhost"]).is_err());
        assert!(AllowList::parse(&["10.0.0.0/33"]).is_err());
        assert!(AllowList::parse(&["0.0.0.0/0"])
            .unwrap()
            .contains(ip("8.8.8.8")));
    }

    #[test]
    fn v1_lines() {
        let buf = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 8000\r\nGET / HTTP/1.1\r\n";
        let (info, n) = parse_header(buf, Mode::V1, true).unwrap().unwrap();
        let info = info.unwrap();
        assert_eq!(&buf[n..n + 3], b"GET");
        assert_eq!(info.client, Some((ip("192.0.2.7").unwrap(), 56324)));
        assert_eq!(info.protocol, "TCP4");
        let six = b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n";
        assert!(parse_header(six, Mode::Auto, true).unwrap().is_some());
        assert_eq!(
            parse_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", Mode::V1, true),
            Err(ParseError::InvalidProxyHeader)
        );
        assert_eq!(
            parse_header(b"PROXY UNKNOWN\r\n", Mode::V1, true),
            Err(ParseError::InvalidProxyHeader)
        );
        assert_eq!(
            parse_header(buf, Mode::V1, false),
            Err(ParseError::ForbiddenProxyRequest)
        );
        assert_eq!(parse_header(b"PROX", Mode::V1, true), Ok(None));
        assert_eq!(parse_header(b"PROXY TCP4 1.2", Mode::V1, true), Ok(None));
        assert_eq!(
            parse_header(b"GET / HTTP/1.1\r\n", Mode::Auto, false),
            Ok(Some((None, 0)))
        );
        // v1 only: a v2 header is not looked for.
        assert_eq!(
            parse_header(V2_SIGNATURE, Mode::V1, true),
            Ok(Some((None, 0)))
        );
    }

    #[test]
    fn v2_headers() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend([
            0x21, 0x11, 0, 12, 192, 0, 2, 9, 127, 0, 0, 1, 0x1f, 0x90, 0, 80,
        ]);
        h.extend(b"GET /");
        let (info, n) = parse_header(&h, Mode::V2, true).unwrap().unwrap();
        let info = info.unwrap();
        assert_eq!(n, 28);
        assert_eq!(info.client, Some((ip("192.0.2.9").unwrap(), 8080)));
        assert_eq!(info.proxy, Some((ip("127.0.0.1").unwrap(), 80)));
        assert_eq!(parse_header(&h[..20], Mode::Auto, true), Ok(None));
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        let (info, n) = parse_header(&local, Mode::V2, true).unwrap().unwrap();
        assert_eq!((info.unwrap().client, n), (None, 16));
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend([0x31, 0x11, 0, 0]);
        assert_eq!(
            parse_header(&bad, Mode::V2, true),
            Err(ParseError::InvalidProxyHeader)
        );
    }
}
