//! Prometheus metrics: the counters of `ctsyncd -s --json` in the text
//! exposition format, served on `general.metrics_listen`.
//!
//! The encoder is hand-written rather than built on a metrics crate: the
//! counters already live in plain structs that serialise to the `-s --json`
//! document, and a crate would want them registered as its own atomic
//! types. Walking that one document instead means `-s --json` and the
//! metrics can never disagree, and a counter added to a stats struct shows
//! up in both without further code.
//!
//! Names: a JSON path `protocol.drop_bad_crc` becomes
//! `ctsync_protocol_drop_bad_crc_total`; gauges (see [`GAUGES`]) keep their
//! name without `_total`; booleans are 0 or 1; each element of `links` is a
//! series labelled with `link="<name>"`. `docs/metrics.md` lists them all.
//!
//! The server is the smallest HTTP/1.0 that Prometheus accepts: one request
//! per connection, `GET /metrics` answered and the connection closed. It is
//! non-blocking and driven by the reactor's `Poll`, so a slow scraper cannot
//! stall replication.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use serde_json::Value;

/// The listening socket's token.
pub const LISTENER: Token = Token(3);

/// Connections get tokens from here on, clear of the reactor's own.
const FIRST_CONNECTION: usize = 1 << 28;
/// Concurrent scrapes; the oldest is dropped to admit a new one.
const MAX_CONNECTIONS: usize = 16;
/// A request head larger than this is refused.
const MAX_REQUEST: usize = 8192;

/// JSON paths (section and field) whose values go up and down; every other
/// number is a counter.
pub const GAUGES: &[&str] = &[
    "uptime_seconds",
    "synced",
    "internal.active",
    "external.active",
    "netlink_rcvbuf",
    "protocol.tx_queue_len",
    "protocol.resend_queue_len",
    "links.up",
    "links.active",
    "defer.held",
    "defer.hold_p50_us",
    "defer.hold_p99_us",
    "defer.hold_max_us",
];

/// Render the `-s --json` document `stats` in the Prometheus text format.
pub fn render(stats: &Value) -> String {
    let mut families: Vec<Family> = Vec::new();
    if let Value::Object(sections) = stats {
        for (name, value) in sections {
            collect(&mut families, name, value, None);
        }
    }
    let mut out = String::with_capacity(families.len() * 96);
    for family in &families {
        let (kind, suffix) = if family.gauge { ("gauge", "") } else { ("counter", "_total") };
        let name = format!("ctsync_{}{suffix}", family.path.replace('.', "_"));
        let _ = writeln!(out, "# HELP {name} ctsyncd -s --json: {}", family.path);
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (label, value) in &family.samples {
            match label {
                Some(link) => {
                    let _ = writeln!(out, "{name}{{link=\"{}\"}} {value}", escape_label(link));
                }
                None => {
                    let _ = writeln!(out, "{name} {value}");
                }
            }
        }
    }
    out
}

/// What a request head asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics` (or `HEAD`): the metrics.
    Metrics {
        /// Send headers only.
        head: bool,
    },
    /// A path other than `/metrics`.
    NotFound,
    /// A method other than GET or HEAD.
    BadMethod,
    /// Not an HTTP request line.
    Malformed,
}

/// Parse a request head: `None` until the blank line that ends it arrives.
pub fn parse_request(input: &[u8]) -> Option<Request> {
    let end = input.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| {
        // Hand-typed requests (`nc`) often end lines with a bare LF.
        input.windows(2).position(|w| w == b"\n\n")
    })?;
    let head = std::str::from_utf8(&input[..end]).ok();
    let line = head.and_then(|h| h.lines().next()).unwrap_or("");
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Some(Request::Malformed);
    };
    if !version.starts_with("HTTP/1.") {
        return Some(Request::Malformed);
    }
    let path = target.split('?').next().unwrap_or("");
    Some(match (method, path) {
        ("GET" | "HEAD", "/metrics") => Request::Metrics { head: method == "HEAD" },
        ("GET" | "HEAD", _) => Request::NotFound,
        _ => Request::BadMethod,
    })
}

/// The full HTTP/1.0 response to `request`; `render` is called only when
/// the metrics are wanted.
pub fn respond(request: Request, render: impl FnOnce() -> String) -> Vec<u8> {
    let (status, body, head) = match request {
        Request::Metrics { head } => ("200 OK", render(), head),
        Request::NotFound => ("404 Not Found", "metrics are at /metrics\n".to_owned(), false),
        Request::BadMethod => ("405 Method Not Allowed", "use GET\n".to_owned(), false),
        Request::Malformed => ("400 Bad Request", "bad request\n".to_owned(), false),
    };
    let content_type = match request {
        Request::Metrics { .. } => "text/plain; version=0.0.4; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The metrics endpoint: a listener and the scrapes in progress.
pub struct Server {
    listener: TcpListener,
    connections: HashMap<Token, Connection>,
    next: usize,
}

struct Connection {
    stream: TcpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// Accept order, to find the oldest.
    serial: usize,
}

impl Server {
    /// Listen on `addr` and register with `registry` under [`LISTENER`].
    pub fn bind(addr: SocketAddr, registry: &Registry) -> Result<Server, String> {
        let mut listener = TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("cannot register the metrics listener: {e}"))?;
        Ok(Server { listener, connections: HashMap::new(), next: 0 })
    }

    /// Whether `token` is one of this server's connections.
    pub fn owns(token: Token) -> bool {
        token.0 >= FIRST_CONNECTION
    }

    /// The listener is readable: accept every pending connection.
    pub fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.connections.len() >= MAX_CONNECTIONS {
                        self.drop_oldest(registry);
                    }
                    let token = Token(FIRST_CONNECTION + self.next % (1 << 20));
                    if registry.register(&mut stream, token, Interest::READABLE).is_ok() {
                        let connection = Connection {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                            written: 0,
                            serial: self.next,
                        };
                        self.connections.insert(token, connection);
                    }
                    self.next += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("metrics listener accept failed: {e}");
                    break;
                }
            }
        }
    }

    /// A connection is ready: read its request, answer with `render()`'s
    /// text, and close it once the answer is written.
    pub fn on_ready(&mut self, registry: &Registry, token: Token, render: impl FnOnce() -> String) {
        let Some(mut conn) = self.connections.remove(&token) else { return };
        let mut open = true;
        if conn.output.is_empty() {
            let mut buf = [0u8; 1024];
            loop {
                match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        open = false;
                        break;
                    }
                    Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            }
            let request = match parse_request(&conn.input) {
                None if conn.input.len() > MAX_REQUEST => Some(Request::Malformed),
                parsed => parsed,
            };
            if let Some(request) = request {
                conn.output = respond(request, render);
                open = true;
            }
        }
        if open && !conn.output.is_empty() {
            while conn.written < conn.output.len() {
                match conn.stream.write(&conn.output[conn.written..]) {
                    Ok(n) => conn.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            }
            if conn.written == conn.output.len() {
                open = false;
            }
        }
        if !open {
            let _ = registry.deregister(&mut conn.stream);
            return;
        }
        let interest = if conn.output.is_empty() { Interest::READABLE } else { Interest::WRITABLE };
        if registry.reregister(&mut conn.stream, token, interest).is_ok() {
            self.connections.insert(token, conn);
        }
    }

    fn drop_oldest(&mut self, registry: &Registry) {
        let oldest = self.connections.iter().min_by_key(|(_, c)| c.serial).map(|(t, _)| *t);
        if let Some(mut conn) = oldest.and_then(|t| self.connections.remove(&t)) {
            let _ = registry.deregister(&mut conn.stream);
        }
    }
}

/// One metric family: a JSON path and its samples.
struct Family {
    path: String,
    gauge: bool,
    samples: Vec<(Option<String>, String)>,
}

fn collect(families: &mut Vec<Family>, path: &str, value: &Value, link: Option<&str>) {
    let sample = match value {
        Value::Object(fields) => {
            for (name, value) in fields {
                collect(families, &format!("{path}.{name}"), value, link);
            }
            return;
        }
        Value::Array(items) => {
            // Only `links` is a list: one series per link, named by it.
            for item in items {
                let name = item.get("name").and_then(Value::as_str).unwrap_or("");
                if let Value::Object(fields) = item {
                    for (field, value) in fields.iter().filter(|(k, _)| *k != "name") {
                        collect(families, &format!("{path}.{field}"), value, Some(name));
                    }
                }
            }
            return;
        }
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => u8::from(*b).to_string(),
        // Text and absent values (a socket buffer left at the default) have
        // no number to show.
        Value::String(_) | Value::Null => return,
    };
    let label = link.map(str::to_owned);
    match families.iter_mut().find(|f| f.path == path) {
        Some(family) => family.samples.push((label, sample)),
        None => families.push(Family {
            path: path.to_owned(),
            gauge: GAUGES.contains(&path),
            samples: vec![(label, sample)],
        }),
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_stats() -> Value {
        serde_json::json!({
            "uptime_seconds": 42,
            "synced": true,
            "internal": { "active": 3, "created": 10, "failed_full": 0 },
            "protocol": { "drop_bad_crc": 7, "tx_queue_len": 2 },
            "links": [
                { "name": "sync0", "up": true, "active": true, "bytes_sent": 100 },
                { "name": "se\"c", "up": false, "active": false, "bytes_sent": 5 }
            ]
        })
    }

    #[test]
    fn counters_gauges_and_links_render_in_the_text_format() {
        let text = render(&sample_stats());
        for line in [
            "# TYPE ctsync_uptime_seconds gauge",
            "ctsync_uptime_seconds 42",
            "ctsync_synced 1",
            "# TYPE ctsync_internal_active gauge",
            "ctsync_internal_active 3",
            "# TYPE ctsync_internal_created_total counter",
            "ctsync_internal_created_total 10",
            "ctsync_internal_failed_full_total 0",
            "# HELP ctsync_protocol_drop_bad_crc_total ctsyncd -s --json: protocol.drop_bad_crc",
            "ctsync_protocol_drop_bad_crc_total 7",
            "ctsync_protocol_tx_queue_len 2",
            "# TYPE ctsync_links_up gauge",
            "ctsync_links_up{link=\"sync0\"} 1",
            "ctsync_links_up{link=\"se\\\"c\"} 0",
            "ctsync_links_bytes_sent_total{link=\"sync0\"} 100",
            "ctsync_links_bytes_sent_total{link=\"se\\\"c\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // One TYPE line per family, even with two links.
        assert_eq!(text.matches("# TYPE ctsync_links_bytes_sent_total").count(), 1);
        assert!(!text.contains("name"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("ctsync_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn requests_are_recognised_once_complete() {
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Request::Metrics { head: false })
        );
        assert_eq!(
            parse_request(b"HEAD /metrics?x=1 HTTP/1.0\n\n"),
            Some(Request::Metrics { head: true })
        );
        assert_eq!(parse_request(b"GET / HTTP/1.0\r\n\r\n"), Some(Request::NotFound));
        assert_eq!(parse_request(b"POST /metrics HTTP/1.0\r\n\r\n"), Some(Request::BadMethod));
        assert_eq!(parse_request(b"GET /metrics\r\n\r\n"), Some(Request::Malformed));
        assert_eq!(parse_request(b"\xff\xfe\r\n\r\n"), Some(Request::Malformed));
    }

    #[test]
    fn responses_carry_length_and_close() {
        let ok = respond(Request::Metrics { head: false }, || "a 1\n".into());
        let ok = String::from_utf8(ok).unwrap();
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 4\r\n"), "{ok}");
        assert!(ok.contains("Connection: close\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\na 1\n"), "{ok}");
        let head = String::from_utf8(respond(Request::Metrics { head: true }, || "a 1\n".into()));
        assert!(head.unwrap().ends_with("Content-Length: 4\r\nConnection: close\r\n\r\n"));
        let missing = respond(Request::NotFound, || unreachable!("rendered for a 404"))
            .starts_with(b"HTTP/1.0 404");
        assert!(missing);
    }
}
