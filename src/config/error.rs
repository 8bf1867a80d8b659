//! [`ConfigError`], the one-line errors of configuration loading, and the
//! [`Position`] they point at.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A line and a column, both counted from 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

/// Why a configuration was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read {
        /// The file.
        file: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
    /// The file is not valid YAML, does not fit the schema, or holds a value
    /// that does not make sense.
    Invalid {
        /// The file.
        file: PathBuf,
        /// Where, when known.
        position: Option<Position>,
        /// The dotted key path (`sync.channels[0].peer`), when known.
        key: Option<String>,
        /// What is wrong and, where useful, what to write instead.
        message: String,
    },
}

impl ConfigError {
    /// The key the error is about, if known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => key.as_deref(),
            ConfigError::Read { .. } => None,
        }
    }

    /// The line the error is about, if known.
    pub fn line(&self) -> Option<u64> {
        match self {
            ConfigError::Invalid { position, .. } => position.map(|p| p.line),
            ConfigError::Read { .. } => None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, source } => {
                write!(f, "{}: cannot read: {source}", file.display())
            }
            ConfigError::Invalid { file, position, key, message } => {
                write!(f, "{}", file.display())?;
                if let Some(p) = position {
                    write!(f, ":{}:{}", p.line, p.column)?;
                }
                if let Some(key) = key {
                    write!(f, ": {}", Printable(key))?;
                }
                write!(f, ": {}", Printable(message))
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Invalid { .. } => None,
        }
    }
}

/// Text from the file, shown with control characters escaped so that an
/// error stays one line and cannot drive the terminal.
struct Printable<'a>(&'a str);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}
