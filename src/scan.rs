//! A leak scanner (feature `client`): finds `tm_live_`/`tm_test_` keys in
//! source, logs and configuration, and reports where — never the key.
//!
//! A candidate is reported only if its checksum is right, so random
//! look-alikes (`tm_live_XXXXXXXX…` in docs, a key with a character changed)
//! are not; the chance that random text passes is one in four billion. A key
//! broken across lines (a newline, then indentation) is still found: it is
//! still leaked. Scanning is one pass, linear in the input, and allocates
//! nothing but the findings; [`scan_reader`] scans any `Read` through one
//! fixed 64 KiB buffer.
//!
//! ```
//! use tm_auth::scan::find_keys;
//! use tm_auth::{Environment, TmKey};
//!
//! let key = TmKey::generate(Environment::Live);
//! let config = format!("api_key = \"{}\"\nother = tm_live_notakeynotakeynotakeynotakey12", key.expose_secret());
//! let findings: Vec<_> = find_keys(&config).collect();
//! assert_eq!(findings.len(), 1);
//! assert_eq!(findings[0].offset, 11);
//! assert_eq!(findings[0].environment, Environment::Live);
//! assert_eq!(findings[0].hint, key.hint().to_string());
//! ```

use std::collections::VecDeque;
use std::io::{self, Read};

use crate::key::{Environment, TmKey, KEY_LEN};

/// A key found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Byte offset of the key's first character (`t` of `tm_`).
    pub offset: usize,
    /// Live or test.
    pub environment: Environment,
    /// The key's hint (`tm_live_...abcd`): enough to find it in a dashboard
    /// and revoke it, useless to an attacker.
    pub hint: String,
}

const PREFIX_LEN: usize = 8;
/// Line breaks allowed inside one key.
const MAX_BREAKS: usize = 3;
/// Indentation allowed after each break.
const MAX_INDENT: usize = 64;
/// The most bytes one key can span: its characters plus its breaks.
const MAX_SPAN: usize = KEY_LEN + MAX_BREAKS * (2 + MAX_INDENT);

/// Every key in `text`, in order.
pub fn find_keys(text: &str) -> Findings<'_> {
    find_keys_in_bytes(text.as_bytes())
}

/// Every key in `bytes` (any encoding in which ASCII is ASCII), in order.
pub fn find_keys_in_bytes(bytes: &[u8]) -> Findings<'_> {
    Findings { bytes, at: 0 }
}

/// The iterator of [`find_keys`].
#[derive(Debug, Clone)]
pub struct Findings<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Iterator for Findings<'_> {
    type Item = Finding;

    fn next(&mut self) -> Option<Finding> {
        while let Some(found) = find_prefix(&self.bytes[self.at..]) {
            let start = self.at + found;
            match key_at(self.bytes, start) {
                Some((finding, end)) => {
                    self.at = end;
                    return Some(finding);
                }
                // "tm_" cannot start again within its own first three bytes.
                None => self.at = start + 3,
            }
        }
        self.at = self.bytes.len();
        None
    }
}

/// The offset of the next `tm_live_` or `tm_test_`.
fn find_prefix(bytes: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(t) = bytes.get(from..)?.iter().position(|&b| b == b't') {
        let at = from + t;
        let rest = &bytes[at..];
        if Environment::from_prefix(rest).is_some() {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The key starting at `start` (a prefix), with the offset after it, if its
/// characters — across at most `MAX_BREAKS` line breaks — pass the checksum.
fn key_at(bytes: &[u8], start: usize) -> Option<(Finding, usize)> {
    let mut key = [0u8; KEY_LEN];
    key[..PREFIX_LEN].copy_from_slice(&bytes[start..start + PREFIX_LEN]);
    let mut filled = PREFIX_LEN;
    let mut at = start + PREFIX_LEN;
    let mut breaks = 0;
    while filled < KEY_LEN {
        let b = *bytes.get(at)?;
        if b.is_ascii_alphanumeric() {
            key[filled] = b;
            filled += 1;
            at += 1;
        } else if (b == b'\n' || b == b'\r') && breaks < MAX_BREAKS {
            breaks += 1;
            at += if bytes[at..].starts_with(b"\r\n") {
                2
            } else {
                1
            };
            let indent = bytes[at..]
                .iter()
                .take(MAX_INDENT)
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            at += indent;
        } else {
            return None;
        }
    }
    let text = std::str::from_utf8(&key).ok()?;
    let parsed = TmKey::parse(text).ok();
    // The copy on the stack is wiped like the key itself.
    zeroize::Zeroize::zeroize(&mut key);
    let parsed = parsed?;
    Some((
        Finding {
            offset: start,
            environment: parsed.environment(),
            hint: parsed.hint().to_string(),
        },
        at,
    ))
}

/// Size of [`scan_reader`]'s buffer.
pub const READ_BUFFER: usize = 64 * 1024;

/// Every key in what `reader` yields, read through one fixed buffer, so
/// memory stays constant whatever the input's size. Offsets count from the
/// start of the stream.
///
/// ```
/// use tm_auth::scan::scan_reader;
/// use tm_auth::{Environment, TmKey};
///
/// let key = TmKey::generate(Environment::Test);
/// let log = format!("GET /v1/check?key={} 200\n", key.expose_secret());
/// let found: Vec<_> = scan_reader(log.as_bytes()).collect::<Result<_, _>>().unwrap();
/// assert_eq!(found[0].offset, 18);
/// ```
pub fn scan_reader<R: Read>(reader: R) -> ReaderFindings<R> {
    ReaderFindings {
        reader,
        buffer: vec![0; READ_BUFFER + MAX_SPAN].into_boxed_slice(),
        len: 0,
        base: 0,
        pending: VecDeque::new(),
        done: false,
    }
}

/// The iterator of [`scan_reader`]: findings, or the read error that
/// stopped it.
#[derive(Debug)]
pub struct ReaderFindings<R> {
    reader: R,
    buffer: Box<[u8]>,
    /// Bytes of `buffer` in use.
    len: usize,
    /// Stream offset of `buffer[0]`.
    base: usize,
    pending: VecDeque<Finding>,
    done: bool,
}

impl<R: Read> ReaderFindings<R> {
    /// Reads the next chunk and scans the part of it no later read can
    /// change: keys starting in the last `MAX_SPAN` bytes wait for more.
    fn refill(&mut self) -> io::Result<()> {
        let mut eof = false;
        while self.len < self.buffer.len() {
            match self.reader.read(&mut self.buffer[self.len..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.len += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        let settled = if eof { self.len } else { self.len - MAX_SPAN };
        for finding in find_keys_in_bytes(&self.buffer[..self.len]) {
            if finding.offset >= settled {
                break;
            }
            self.pending.push_back(Finding {
                offset: finding.offset + self.base,
                ..finding
            });
        }
        self.buffer.copy_within(settled..self.len, 0);
        self.len -= settled;
        self.base += settled;
        self.done = eof;
        Ok(())
    }
}

impl<R: Read> Iterator for ReaderFindings<R> {
    type Item = io::Result<Finding>;

    fn next(&mut self) -> Option<io::Result<Finding>> {
        loop {
            if let Some(finding) = self.pending.pop_front() {
                return Some(Ok(finding));
            }
            if self.done {
                return None;
            }
            if let Err(err) = self.refill() {
                self.done = true;
                return Some(Err(err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_live_and_test_keys_with_offsets_and_hints() {
        let live = TmKey::generate(Environment::Live);
        let test = TmKey::generate(Environment::Test);
        let text = format!("a={}\nb='{}'\n", live.expose_secret(), test.expose_secret());
        let found: Vec<Finding> = find_keys(&text).collect();
        assert_eq!(found.len(), 2);
        assert_eq!(
            (found[0].offset, found[0].environment),
            (2, Environment::Live)
        );
        assert_eq!(
            (found[1].offset, found[1].environment),
            (46, Environment::Test)
        );
        assert_eq!(found[1].hint, test.hint().to_string());
        assert!(!format!("{found:?}").contains(&live.expose_secret()[8..34]));
    }

    #[test]
    fn a_changed_character_or_a_look_alike_is_not_reported() {
        let key = TmKey::generate(Environment::Live);
        for i in 8..KEY_LEN {
            let mut changed = key.expose_secret().as_bytes().to_vec();
            changed[i] = if changed[i] == b'a' { b'b' } else { b'a' };
            assert_eq!(find_keys_in_bytes(&changed).count(), 0, "position {i}");
        }
        let alikes = "tm_live_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX tm_test_ tm_live_short tm_live_\
                      a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6 tm_tm_live_";
        assert_eq!(find_keys(alikes).count(), 0);
    }

    #[test]
    fn keys_broken_across_lines_are_found() {
        let key = TmKey::generate(Environment::Live);
        let s = key.expose_secret();
        for text in [
            format!("{}\n{}", &s[..20], &s[20..]),
            format!("{}\r\n    {}", &s[..9], &s[9..]),
            format!("{}\n\t{}\n{}", &s[..15], &s[15..30], &s[30..]),
        ] {
            let found: Vec<_> = find_keys(&text).collect();
            assert_eq!(found.len(), 1, "{text:?}");
            assert_eq!(found[0].hint, key.hint().to_string());
        }
        // Broken anywhere else (a space, a quote), it is not a key.
        assert_eq!(find_keys(&format!("{} {}", &s[..20], &s[20..])).count(), 0);
    }

    #[test]
    fn the_reader_finds_keys_across_its_chunk_boundaries() {
        let key = TmKey::generate(Environment::Live);
        for at in [
            READ_BUFFER - 100,
            READ_BUFFER - 20,
            READ_BUFFER - 1,
            READ_BUFFER,
            READ_BUFFER + 5,
            2 * READ_BUFFER - 30,
        ] {
            let mut text = vec![b'.'; at];
            text.extend_from_slice(key.expose_secret().as_bytes());
            text.extend(std::iter::repeat_n(b'.', 1000));
            let found: Vec<Finding> = scan_reader(&text[..]).map(Result::unwrap).collect();
            assert_eq!(found.len(), 1, "at {at}");
            assert_eq!(found[0].offset, at);
        }
    }

    #[test]
    fn binary_input_around_a_key_is_fine() {
        let key = TmKey::generate(Environment::Test);
        let mut bytes = vec![0xff, 0xfe, 0x00, b't', b'm', b'_'];
        bytes.extend_from_slice(key.expose_secret().as_bytes());
        bytes.extend_from_slice(&[0xc3, 0x28, b't', b'm', b'_', b'l']);
        let found: Vec<Finding> = find_keys_in_bytes(&bytes).collect();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].offset, 6);
        assert_eq!(found[0].environment, Environment::Test);
    }

    #[test]
    fn a_read_error_is_reported() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk"))
            }
        }
        let mut findings = scan_reader(Failing);
        assert!(findings.next().unwrap().is_err());
        assert!(findings.next().is_none());
    }
}
