//! The sync key file of `sync.auth.key_file`: reading it, checking who
//! may read it, and the errors that name the file and line.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// How to make a key, for error messages.
pub const KEY_HOWTO: &str = "create one with `ctsyncd --gen-key /etc/ctsync/sync.key` on one \
     firewall, copy it to the other (`scp -p`), and set \
     `sync.auth: { key_file: /etc/ctsync/sync.key }`";

/// Read the key file of `sync.auth.key_file`: lines `KEYID HEX` (blank
/// lines and `#` comments ignored), one or two keys, the first one signs.
/// Refuses a file that is not owned by root or that group or others may
/// read or write, and keys shorter than 32 bytes; errors name the file and
/// the line.
pub fn load_key_file(path: &Path) -> Result<Vec<crate::wire::native::AuthKey>, KeyFileError> {
    use std::os::unix::fs::MetadataExt;
    let fail = |line, problem| KeyFileError { file: path.to_owned(), line, problem };
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => fail(None, KeyProblem::Missing),
        _ => fail(None, KeyProblem::Unreadable(e)),
    })?;
    if meta.uid() != 0 {
        return Err(fail(None, KeyProblem::NotRoot(meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(fail(None, KeyProblem::Mode(meta.mode() & 0o7777)));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(None, KeyProblem::Unreadable(e)))?;
    let mut keys: Vec<crate::wire::native::AuthKey> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = Some(i + 1);
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(id), Some(hex), None) = (words.next(), words.next(), words.next()) else {
            return Err(fail(at, KeyProblem::Syntax));
        };
        let id: u32 =
            id.parse().ok().filter(|&id| id != 0).ok_or_else(|| fail(at, KeyProblem::BadId))?;
        let secret = decode_hex(hex).ok_or_else(|| fail(at, KeyProblem::NotHex))?;
        if secret.len() < crate::wire::native::MIN_KEY_LEN {
            return Err(fail(at, KeyProblem::TooShort(secret.len())));
        }
        if keys.iter().any(|k| k.id == id) {
            return Err(fail(at, KeyProblem::DuplicateId(id)));
        }
        if keys.len() == 2 {
            return Err(fail(at, KeyProblem::TooMany));
        }
        keys.push(crate::wire::native::AuthKey::new(id, secret));
    }
    if keys.is_empty() {
        return Err(fail(None, KeyProblem::NoKey));
    }
    Ok(keys)
}

/// Why a key file was refused: the file, the line when one is at fault,
/// and the problem.
#[derive(Debug)]
pub struct KeyFileError {
    /// The key file.
    pub file: PathBuf,
    /// The 1-based line at fault, if the problem is in one line.
    pub line: Option<usize>,
    /// What is wrong.
    pub problem: KeyProblem,
}

/// What is wrong with a key file.
#[derive(Debug)]
pub enum KeyProblem {
    /// The file does not exist.
    Missing,
    /// The file cannot be read.
    Unreadable(io::Error),
    /// The file is owned by this uid, not by root.
    NotRoot(u32),
    /// The file's mode lets group or others read or write it.
    Mode(u32),
    /// A line is not `KEYID HEX`.
    Syntax,
    /// A key id is not a number from 1 to 4294967295.
    BadId,
    /// A key is not hexadecimal.
    NotHex,
    /// A key has this many bytes, fewer than the minimum.
    TooShort(usize),
    /// A key id appears on an earlier line too.
    DuplicateId(u32),
    /// A third key.
    TooMany,
    /// The file holds no key.
    NoKey,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.line {
            Some(line) => write!(f, "{file}:{line}: ")?,
            None => write!(f, "{file}: ")?,
        }
        match &self.problem {
            KeyProblem::Missing => write!(
                f,
                "no such key file: create it with `ctsyncd --gen-key {file}` on one firewall \
                 and copy it to the other (`scp -p`)"
            ),
            KeyProblem::Unreadable(e) => write!(f, "cannot read: {e}"),
            KeyProblem::NotRoot(uid) => write!(f, "owned by uid {uid}, must be owned by root"),
            KeyProblem::Mode(mode) => write!(
                f,
                "mode {mode:04o} lets group or others read or write the key; run `chmod 600 {file}`"
            ),
            KeyProblem::Syntax => f.write_str("expected `KEYID HEX`"),
            KeyProblem::BadId => f.write_str("key id must be a number from 1 to 4294967295"),
            KeyProblem::NotHex => f.write_str("key is not hex"),
            KeyProblem::TooShort(len) => write!(
                f,
                "key is {len} bytes, at least {} are required ({KEY_HOWTO})",
                crate::wire::native::MIN_KEY_LEN
            ),
            KeyProblem::DuplicateId(id) => write!(f, "key id {id} appears twice"),
            KeyProblem::TooMany => f.write_str("at most two keys (the one in use and the next)"),
            KeyProblem::NoKey => write!(f, "no key ({KEY_HOWTO})"),
        }
    }
}

impl std::error::Error for KeyFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            KeyProblem::Unreadable(e) => Some(e),
            _ => None,
        }
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}
