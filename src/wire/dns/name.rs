//! Names: the view of a name inside a message, compression pointers
//! followed where it lies, and the owned, validated name.

use std::fmt;
use std::hash::{Hash, Hasher};

use super::{ParseError, Section, HEADER_LEN, MAX_LABEL_LEN, MAX_NAME_LEN, MAX_POINTERS};

/// Follow the name at `pos` in `msg`, calling `label` for each label in
/// order. Returns the offset just past the name's octets at `pos` (past
/// its first pointer, if it has one) and its uncompressed length.
pub(super) fn walk_name<'a>(
    msg: &'a [u8],
    mut pos: usize,
    section: Section,
    mut label: impl FnMut(&'a [u8]),
) -> Result<(usize, usize), ParseError> {
    let end_of_msg = ParseError::UnexpectedEnd(section);
    let mut end = None;
    // The root label's length octet.
    let mut len = 1;
    let mut pointers = 0;
    loop {
        let b = *msg.get(pos).ok_or(end_of_msg)?;
        match b >> 6 {
            0b00 if b == 0 => return Ok((end.unwrap_or(pos + 1), len)),
            0b00 => {
                let n = b as usize;
                let text = msg.get(pos + 1..pos + 1 + n).ok_or(end_of_msg)?;
                len += 1 + n;
                if len > MAX_NAME_LEN {
                    return Err(ParseError::NameTooLong);
                }
                label(text);
                pos += 1 + n;
            }
            0b11 => {
                let low = *msg.get(pos + 1).ok_or(end_of_msg)?;
                let target = u16::from_be_bytes([b & 0x3f, low]);
                end.get_or_insert(pos + 2);
                pointers += 1;
                if pointers > MAX_POINTERS {
                    return Err(ParseError::PointerLoop);
                }
                let t = target as usize;
                if t < HEADER_LEN || t >= msg.len() {
                    return Err(ParseError::BadPointer(target));
                }
                pos = t;
            }
            _ => return Err(ParseError::BadLabelType(b)),
        }
    }
}

/// A name inside a message, compression pointers and all: a view that
/// reads its labels where they lie. Only the parser (or
/// [`DnsName::as_name`]) makes one, after checking the name is well
/// formed, so reading it cannot fail.
#[derive(Copy, Clone)]
pub struct Name<'a> {
    pub(super) msg: &'a [u8],
    pub(super) start: usize,
    pub(super) len: u8,
}

impl<'a> Name<'a> {
    /// The labels, first to last, without the root's empty label.
    pub fn labels(&self) -> Labels<'a> {
        Labels {
            msg: self.msg,
            pos: self.start,
            pointers: 0,
        }
    }

    /// Octets of the name's uncompressed wire form (1 for the root).
    pub fn wire_len(&self) -> usize {
        self.len as usize
    }

    /// Whether this is the root name.
    pub fn is_root(&self) -> bool {
        self.labels().next().is_none()
    }

    /// Whether `self` and `other` are the same name, ignoring ASCII case
    /// (RFC 4343 §3).
    pub fn eq_ignore_case(&self, other: &Name<'_>) -> bool {
        self.len == other.len
            && self
                .labels()
                .zip(other.labels())
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// The name copied out, uncompressed, case preserved.
    pub fn to_owned_name(&self) -> DnsName {
        let mut wire = Vec::with_capacity(self.wire_len());
        for l in self.labels() {
            wire.push(l.len() as u8);
            wire.extend_from_slice(l);
        }
        wire.push(0);
        DnsName { wire }
    }
}

impl PartialEq for Name<'_> {
    /// Equal ignoring ASCII case, as [`Name::eq_ignore_case`].
    fn eq(&self, other: &Name<'_>) -> bool {
        self.eq_ignore_case(other)
    }
}

impl Eq for Name<'_> {}

impl fmt::Display for Name<'_> {
    /// Dotted presentation form (RFC 1035 §5.1), without the final dot;
    /// the root is `.`. `.` and `\` inside a label are escaped with `\`,
    /// octets outside printable ASCII as `\DDD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for label in self.labels() {
            if !first {
                f.write_str(".")?;
            }
            first = false;
            for &c in label {
                match c {
                    b'.' | b'\\' => write!(f, "\\{}", c as char)?,
                    0x21..=0x7e => write!(f, "{}", c as char)?,
                    _ => write!(f, "\\{c:03}")?,
                }
            }
        }
        if first {
            f.write_str(".")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({self})")
    }
}

/// The labels of a [`Name`], pointers followed.
#[derive(Clone, Debug)]
pub struct Labels<'a> {
    msg: &'a [u8],
    pos: usize,
    pointers: usize,
}

impl<'a> Iterator for Labels<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // The name was checked when the view was made; the bounds here only
        // make sure a mistake ends the walk instead of panicking or looping.
        loop {
            let b = *self.msg.get(self.pos)?;
            if b & 0xc0 == 0xc0 {
                let low = *self.msg.get(self.pos + 1)?;
                self.pointers += 1;
                if self.pointers > MAX_POINTERS {
                    return None;
                }
                self.pos = u16::from_be_bytes([b & 0x3f, low]) as usize;
                continue;
            }
            if b == 0 || b as usize > MAX_LABEL_LEN {
                return None;
            }
            let label = self.msg.get(self.pos + 1..self.pos + 1 + b as usize)?;
            self.pos += 1 + b as usize;
            return Some(label);
        }
    }
}

/// Why a host name is not one to look up (see [`DnsName::from_dotted`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NameError {
    /// The empty name, or the root `.` alone.
    Empty,
    /// Two dots in a row, or a leading dot.
    EmptyLabel,
    /// A label of more than 63 octets.
    LabelTooLong,
    /// More than 255 octets in wire form (253 characters in dotted form).
    NameTooLong,
    /// A character other than a letter, digit, hyphen or dot.
    BadChar(char),
    /// A label that starts or ends with a hyphen (RFC 952, RFC 1123 §2.1).
    HyphenAtEdge,
    /// A last label of digits only: no top-level domain is numeric
    /// (RFC 3696 §2), and such a name is most likely a mistyped address.
    NumericTld,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "empty host name"),
            NameError::EmptyLabel => write!(f, "empty label in host name"),
            NameError::LabelTooLong => {
                write!(f, "label longer than {MAX_LABEL_LEN} octets in host name")
            }
            NameError::NameTooLong => write!(f, "host name longer than 253 characters"),
            NameError::BadChar(c) => write!(f, "character {c:?} not allowed in a host name"),
            NameError::HyphenAtEdge => write!(f, "host name label starts or ends with '-'"),
            NameError::NumericTld => write!(f, "host name ends in a numeric label"),
        }
    }
}

impl std::error::Error for NameError {}

/// An owned domain name in uncompressed wire form, case preserved.
///
/// Equality and hashing ignore ASCII case (RFC 4343), so two questions
/// that differ only in case are the same question.
#[derive(Clone)]
pub struct DnsName {
    /// Length-prefixed labels ending in the root's 0; at most 255 octets.
    pub(super) wire: Vec<u8>,
}

impl DnsName {
    /// The root name.
    pub fn root() -> DnsName {
        DnsName { wire: vec![0] }
    }

    /// A host name from its dotted form, as a user gives it to a lookup:
    /// letters, digits and hyphens in labels of 1 to 63 octets, no label
    /// starting or ending with a hyphen (RFC 1123 §2.1), at most 253
    /// characters, one final dot allowed, the last label not all digits.
    pub fn from_dotted(s: &str) -> Result<DnsName, NameError> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        // Each label costs its length plus one; the root adds one more.
        if s.len() + 2 > MAX_NAME_LEN {
            return Err(NameError::NameTooLong);
        }
        let mut wire = Vec::with_capacity(s.len() + 2);
        let mut last = "";
        for label in s.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > MAX_LABEL_LEN {
                return Err(NameError::LabelTooLong);
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
            {
                return Err(NameError::BadChar(c));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(NameError::HyphenAtEdge);
            }
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
            last = label;
        }
        if last.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NameError::NumericTld);
        }
        wire.push(0);
        Ok(DnsName { wire })
    }

    /// The uncompressed wire form: length-prefixed labels, then 0.
    pub fn as_wire(&self) -> &[u8] {
        &self.wire
    }

    /// A [`Name`] view of this name, to compare it with names in a message
    /// or to hand it to the [`MessageBuilder`](super::MessageBuilder).
    pub fn as_name(&self) -> Name<'_> {
        Name {
            msg: &self.wire,
            start: 0,
            len: self.wire.len() as u8,
        }
    }
}

impl PartialEq for DnsName {
    /// Equal ignoring ASCII case (RFC 4343 §3).
    fn eq(&self, other: &DnsName) -> bool {
        self.wire.eq_ignore_ascii_case(&other.wire)
    }
}

impl Eq for DnsName {}

impl Hash for DnsName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for b in &self.wire {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

impl PartialEq<Name<'_>> for DnsName {
    fn eq(&self, other: &Name<'_>) -> bool {
        self.as_name().eq_ignore_case(other)
    }
}

impl fmt::Display for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.as_name(), f)
    }
}

impl fmt::Debug for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DnsName({self})")
    }
}
