//! The `Date` response header, formatted once per second per thread.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`): always 29 bytes.
#[derive(Clone, Copy)]
pub struct HttpDate([u8; 29]);

impl HttpDate {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

thread_local! {
    static CACHE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
}

/// The current date, as the `Date` header wants it.
pub fn now() -> HttpDate {
    let now = SystemTime::now();
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHE.with(|c| {
        let (s, buf) = c.get();
        if s == secs {
            return HttpDate(buf);
        }
        let text = httpdate::fmt_http_date(now);
        let mut buf = [b' '; 29];
        let n = text.len().min(29);
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        c.set((secs, buf));
        HttpDate(buf)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_is_imf_fixdate() {
        let d = super::now();
        let s = std::str::from_utf8(d.as_bytes()).unwrap_or("");
        assert!(s.ends_with(" GMT"), "{s}");
        assert_eq!(s.len(), 29);
    }
}
