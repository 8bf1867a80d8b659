//! Where each key of a YAML document is: a map from dotted key paths
//! (`sync.channels[0].peer`) to line and column, built from the parser's
//! events. Serde errors only carry a position and semantic checks only know
//! a path; this index translates between the two so that every error names
//! both.

use serde_saphyr::granit_parser::{Event, Parser};

use super::Position;

/// Key paths and their positions, in document order.
#[derive(Debug, Default)]
pub(super) struct Locations {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    path: String,
    /// Where the key is (for sequence items: where the item starts).
    key: Position,
    /// Where the value starts.
    value: Position,
}

impl Locations {
    /// Index `text`. A syntax error ends the scan; what was seen before it is
    /// kept (the deserializer reports the syntax error itself).
    pub(super) fn scan(text: &str) -> Locations {
        let mut scan = Scan::default();
        let mut parser = Parser::new_from_str(text);
        while let Some(Ok((event, span))) = parser.next_event() {
            let pos =
                Position { line: span.start.line() as u64, column: span.start.col() as u64 + 1 };
            match event {
                Event::Scalar(text, ..) => scan.node(pos, Some(&text), None),
                Event::Alias(_) => scan.node(pos, Some("*"), None),
                Event::MappingStart(..) => scan.node(pos, None, Some(Container::Map)),
                Event::SequenceStart(..) => scan.node(pos, None, Some(Container::Seq)),
                Event::MappingEnd | Event::SequenceEnd => scan.end(),
                _ => {}
            }
        }
        Locations { entries: scan.entries }
    }

    /// Where the value of `path` starts.
    pub(super) fn value_of(&self, path: &str) -> Option<Position> {
        self.entries.iter().find(|e| e.path == path).map(|e| e.value)
    }

    /// Where the key `path` is.
    pub(super) fn key_of(&self, path: &str) -> Option<Position> {
        self.entries.iter().find(|e| e.path == path).map(|e| e.key)
    }

    /// Every key path and where its value starts, in document order.
    pub(super) fn values(&self) -> impl Iterator<Item = (&str, Position)> {
        self.entries.iter().map(|e| (e.path.as_str(), e.value))
    }

    /// The innermost key whose entry starts at or before `pos`: the key an
    /// error at `pos` is about.
    pub(super) fn path_at(&self, pos: Position) -> Option<&str> {
        self.entries.iter().rev().find(|e| e.key <= pos).map(|e| e.path.as_str())
    }
}

#[derive(Clone, Copy)]
enum Container {
    Map,
    Seq,
}

enum Frame {
    Map { path: String, key: String, key_pos: Position, awaiting_value: bool },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Scan {
    stack: Vec<Frame>,
    entries: Vec<Entry>,
}

impl Scan {
    /// A scalar (`text`) or the start of a container.
    fn node(&mut self, pos: Position, text: Option<&str>, container: Option<Container>) {
        let path = match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { key, key_pos, awaiting_value, .. }) if !*awaiting_value => {
                match text {
                    Some(text) => {
                        *key = text.to_owned();
                        *key_pos = pos;
                        *awaiting_value = true;
                        return;
                    }
                    // A complex key: index nothing inside it.
                    None => "?".to_owned(),
                }
            }
            Some(Frame::Map { path, key, key_pos, .. }) => {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                self.entries.push(Entry { path: child.clone(), key: *key_pos, value: pos });
                child
            }
            Some(Frame::Seq { path, index }) => {
                let child = format!("{path}[{index}]");
                self.entries.push(Entry { path: child.clone(), key: pos, value: pos });
                child
            }
        };
        match container {
            Some(Container::Map) => self.stack.push(Frame::Map {
                path,
                key: String::new(),
                key_pos: pos,
                awaiting_value: false,
            }),
            Some(Container::Seq) => self.stack.push(Frame::Seq { path, index: 0 }),
            None => self.complete(),
        }
    }

    fn end(&mut self) {
        self.stack.pop();
        self.complete();
    }

    /// The current node is done: the parent moves to its next key or item.
    fn complete(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, awaiting_value, .. }) => {
                if !*awaiting_value {
                    // The complex key just ended; its value comes next.
                    *key = "?".to_owned();
                }
                *awaiting_value = !*awaiting_value;
            }
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: u64, column: u64) -> Position {
        Position { line, column }
    }

    #[test]
    fn indexes_nested_keys_and_items() {
        let text = "\
general:
  log: { level: debug }
sync:
  channels:
    - type: udp
      peer: 10.0.0.2
    - local: 10.0.1.1
  ack_window: 3
";
        let loc = Locations::scan(text);
        assert_eq!(loc.key_of("general"), Some(pos(1, 1)));
        assert_eq!(loc.value_of("general.log.level"), Some(pos(2, 17)));
        assert_eq!(loc.key_of("sync.channels[0].peer"), Some(pos(6, 7)));
        assert_eq!(loc.value_of("sync.channels[0].peer"), Some(pos(6, 13)));
        assert_eq!(loc.key_of("sync.channels[1]"), Some(pos(7, 7)));
        assert_eq!(loc.key_of("sync.channels[1].local"), Some(pos(7, 7)));
        assert_eq!(loc.key_of("sync.ack_window"), Some(pos(8, 3)));
        assert_eq!(loc.path_at(pos(6, 15)), Some("sync.channels[0].peer"));
        assert_eq!(loc.path_at(pos(7, 7)), Some("sync.channels[1].local"));
        assert_eq!(loc.path_at(pos(8, 15)), Some("sync.ack_window"));
        assert_eq!(loc.value_of("sync.nothing"), None);
    }

    #[test]
    fn survives_odd_documents() {
        for text in ["", "- a\n- b", "? [a, b]\n: c\nd: e", "a: *x", "a: [b, {c: d}]\n", "{{{"] {
            let _ = Locations::scan(text);
        }
        let loc = Locations::scan("? [a, b]\n: c\nd: e\n");
        assert_eq!(loc.key_of("d"), Some(pos(3, 1)));
    }
}
