//! HTTP/1.1 for the built-in web service and for `ephemera fetch`, sans-IO:
//! [`server`] answers requests, [`client`] makes one GET. Both parse what
//! arrives incrementally, never touch a socket or a clock, and are driven
//! over ephemera's own TCP connections by the services and with byte
//! slices by the tests.

mod client;
mod server;

pub use client::{ResponseParser, Url};
#[cfg(test)]
pub use server::pattern_byte;
pub use server::{ServerConn, ServerContext};

/// Index just past the blank line that ends a message head starting at
/// `start`, searching for line ends from `scan` on (earlier ones were checked).
fn find_head_end(buf: &[u8], start: usize, scan: usize) -> Option<usize> {
    let mut i = scan.max(start);
    while let Some(rel) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + rel;
        if nl > start && buf[nl - 1] == b'\n' {
            return Some(nl + 1);
        }
        if nl > start + 1 && buf[nl - 1] == b'\r' && buf[nl - 2] == b'\n' {
            return Some(nl + 1);
        }
        i = nl + 1;
    }
    None
}

/// Splits a head into lines, dropping the CR of CRLF (RFC 9112 §2.2 lets a
/// recipient accept a bare LF). A bare CR elsewhere is an error.
fn head_lines(head: &[u8]) -> Result<Vec<&[u8]>, ()> {
    let mut lines = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            return Err(());
        }
        lines.push(line);
    }
    // The head ends with a blank line, so the split leaves two empty tails.
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    Ok(lines)
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// A decimal u64 with digits only (no sign, no spaces).
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

fn trim_ows(s: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = s.iter().position(|b| !is_ows(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ows(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

/// A header field as (name, value).
type Field<'a> = (&'a [u8], &'a [u8]);

/// All values of `name`, comma-split and trimmed (RFC 9110 §5.3).
fn list_values<'a>(fields: &[Field<'a>], name: &str) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(trim_ows)
        .filter(|v| !v.is_empty())
        .collect()
}

/// RFC 9110 §8.6: several identical Content-Length values are one value;
/// differing or malformed ones are an error.
fn content_length(fields: &[Field<'_>]) -> Result<Option<u64>, ()> {
    let mut found = None;
    for (name, value) in fields {
        if !name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        for v in value.split(|&b| b == b',') {
            let n = parse_decimal(trim_ows(v)).ok_or(())?;
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}
