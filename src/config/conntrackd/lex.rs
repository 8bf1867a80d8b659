//! The lexer of conntrackd.conf and the token cursor of the parser: words,
//! braces and comments as conntrackd's `read_config_lex.l` splits them,
//! then keywords, values, numbers, booleans, paths and blocks read off the
//! tokens, and the errors that point at a token.

use super::{Parser, Result};
use crate::config::{ConfigError, Position};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Kind<'a> {
    Word(&'a str),
    Open,
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Token<'a> {
    pub(super) kind: Kind<'a>,
    pub(super) pos: Position,
}

/// Splits `text` into words and braces. Anything that is not white space, a
/// brace or a comment belongs to a word, so lexing cannot fail; the parser
/// judges the words.
pub(super) fn lex(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    for (index, line) in text.split('\n').enumerate() {
        let line_no = index as u64 + 1;
        let column = |byte: usize| line[..byte].chars().count() as u64 + 1;
        let mut rest = line.char_indices().peekable();
        while let Some((start, c)) = rest.next() {
            let pos = Position { line: line_no, column: column(start) };
            match c {
                '#' => break,
                '{' => tokens.push(Token { kind: Kind::Open, pos }),
                '}' => tokens.push(Token { kind: Kind::Close, pos }),
                c if c.is_whitespace() => {}
                _ => {
                    let mut end = start + c.len_utf8();
                    while let Some(&(i, c)) = rest.peek() {
                        if c.is_whitespace() || matches!(c, '{' | '}' | '#') {
                            break;
                        }
                        end = i + c.len_utf8();
                        rest.next();
                    }
                    tokens.push(Token { kind: Kind::Word(&line[start..end]), pos });
                }
            }
        }
    }
    tokens
}

pub(super) fn end_position(text: &str) -> Position {
    let line = text.split('\n').count() as u64;
    let last = text.rsplit('\n').next().unwrap_or("");
    Position { line, column: last.chars().count() as u64 + 1 }
}

impl<'a> Parser<'a> {
    // ---- tokens and values ----

    pub(super) fn advance(&mut self) -> Option<Token<'a>> {
        let token = self.tokens.get(self.next).copied();
        self.next += usize::from(token.is_some());
        token
    }

    pub(super) fn expect(&mut self, what: &str) -> Result<Token<'a>> {
        self.advance().ok_or_else(|| {
            self.error(self.end, "", format!("unexpected end of file, expected {what}"))
        })
    }

    /// The next token inside a block opened at `pos`.
    pub(super) fn expect_in(&mut self, block: &str, pos: Position) -> Result<Token<'a>> {
        self.advance().ok_or_else(|| {
            self.error(
                self.end,
                "",
                format!(
                    "unexpected end of file: the {block} block opened at line {} has no \
                     closing '}}'",
                    pos.line
                ),
            )
        })
    }

    /// Items of a block whose `{` was just read, up to its `}`.
    pub(super) fn block(
        &mut self,
        name: &str,
        pos: Position,
        mut item: impl FnMut(&mut Self, &'a str, Position) -> Result<()>,
    ) -> Result<()> {
        loop {
            let token = self.expect_in(name, pos)?;
            match token.kind {
                Kind::Close => return Ok(()),
                Kind::Word(word) => item(self, word, token.pos)?,
                Kind::Open => return Err(self.unexpected(token, &format!("a keyword in {name}"))),
            }
        }
    }

    /// A block whose content ctsyncd has no use for; only its braces must
    /// balance.
    pub(super) fn skip_block(&mut self, name: &str, pos: Position) -> Result<()> {
        let mut depth = 1usize;
        while depth > 0 {
            match self.expect_in(name, pos)?.kind {
                Kind::Open => depth += 1,
                Kind::Close => depth -= 1,
                Kind::Word(_) => {}
            }
        }
        Ok(())
    }

    pub(super) fn open(&mut self, after: &str) -> Result<()> {
        let token = self.expect(&format!("'{{' after {after}"))?;
        match token.kind {
            Kind::Open => Ok(()),
            _ => Err(self.unexpected(token, &format!("'{{' after {after}"))),
        }
    }

    pub(super) fn word(&mut self, what: &str) -> Result<(&'a str, Position)> {
        let token = self.expect(what)?;
        match token.kind {
            Kind::Word(w) => Ok((w, token.pos)),
            _ => Err(self.unexpected(token, what)),
        }
    }

    pub(super) fn keyword_of(&self, token: Token<'a>, what: &str) -> Result<(&'a str, Position)> {
        match token.kind {
            Kind::Word(w) => Ok((w, token.pos)),
            _ => Err(self.unexpected(token, what)),
        }
    }

    /// The value after `keyword`.
    pub(super) fn value(&mut self, keyword: &str, what: &str) -> Result<&'a str> {
        self.word(&format!("{what} after {keyword}")).map(|(w, _)| w)
    }

    pub(super) fn number(&mut self, keyword: &str) -> Result<u64> {
        let (value, pos) = self.word(&format!("a number after {keyword}"))?;
        digits(value).ok_or_else(|| self.bad_value(keyword, pos, value, "a number"))
    }

    pub(super) fn boolean(&mut self, keyword: &str) -> Result<bool> {
        let (value, pos) = self.word(&format!("on or off after {keyword}"))?;
        bool_word(value).ok_or_else(|| self.bad_value(keyword, pos, value, "on, off, yes or no"))
    }

    pub(super) fn path(&mut self, keyword: &str) -> Result<&'a str> {
        let (value, pos) = self.word(&format!("a path after {keyword}"))?;
        if !value.starts_with('/') {
            return Err(self.bad_value(keyword, pos, value, "an absolute path"));
        }
        Ok(value)
    }

    // ---- errors ----

    pub(super) fn error(
        &self,
        pos: Position,
        keyword: &str,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            position: Some(pos),
            key: (!keyword.is_empty()).then(|| keyword.to_owned()),
            message: message.into(),
        }
    }

    pub(super) fn unexpected(&self, token: Token<'_>, expected: &str) -> ConfigError {
        let found = match token.kind {
            Kind::Word(w) => format!("\"{w}\""),
            Kind::Open => "'{'".to_owned(),
            Kind::Close => "'}'".to_owned(),
        };
        self.error(token.pos, "", format!("unexpected {found}, expected {expected}"))
    }

    pub(super) fn bad_value(
        &self,
        keyword: &str,
        pos: Position,
        value: &str,
        want: &str,
    ) -> ConfigError {
        self.error(pos, keyword, format!("invalid value \"{value}\": expected {want}"))
    }

    pub(super) fn unknown(
        &self,
        word: &str,
        pos: Position,
        context: &str,
        known: &[&str],
    ) -> ConfigError {
        let hint = known
            .iter()
            .find(|k| k.eq_ignore_ascii_case(word))
            .map(|k| format!(" (keywords are case-sensitive: did you mean {k}?)"))
            .unwrap_or_default();
        self.error(pos, word, format!("unknown keyword \"{word}\" {context}{hint}"))
    }
}

/// conntrackd's booleans, in any case.
pub(super) fn bool_word(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("on") || s.eq_ignore_ascii_case("yes") {
        Some(true)
    } else if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("no") {
        Some(false)
    } else {
        None
    }
}

/// An unsigned decimal number, as conntrackd's `[0-9]+`.
pub(super) fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
