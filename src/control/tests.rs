//! Tests of the control protocol: admission rules, request and response
//! frames round trip and refuse bad input, and the client against a real
//! UNIX socket (answers, hang-ups, timeouts).

#[test]
fn root_gets_in_where_others_are_turned_away() {
    use super::{Busy, MAX_CLIENTS, MAX_CLIENTS_PER_UID, ROOT_SLOTS, admit};
    let others = MAX_CLIENTS - ROOT_SLOTS;
    assert_eq!(admit(1000, 0, MAX_CLIENTS_PER_UID - 1), Ok(()));
    assert_eq!(admit(1000, 0, MAX_CLIENTS_PER_UID), Err(Busy::PerUser));
    assert_eq!(admit(1000, others - 1, 0), Ok(()));
    assert_eq!(admit(1000, others, 0), Err(Busy::Full));
    assert_eq!(admit(0, others, others), Ok(()));
    assert_eq!(admit(0, MAX_CLIENTS - 1, MAX_CLIENTS - 1), Ok(()));
    assert_eq!(admit(0, MAX_CLIENTS, 0), Err(Busy::Full));
}

use super::*;
use proptest::prelude::*;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[test]
fn the_control_group_admits_primary_and_supplementary_members_only() {
    let g = Some(1234);
    assert!(client_allowed(0, 0, &[], None), "root");
    assert!(client_allowed(0, 5, &[], g), "root in any group");
    assert!(client_allowed(1000, 1234, &[], g), "primary group");
    assert!(client_allowed(1000, 1000, &[27, 1234], g), "supplementary group");
    assert!(!client_allowed(1000, 1000, &[27, 100], g), "other groups");
    assert!(!client_allowed(1000, 1234, &[1234], None), "no control group configured");
}

#[test]
fn supplementary_groups_come_from_the_status_groups_line() {
    let status = "Name:\tctsyncd\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t24 27 1234 \nNSpid:\t1\n";
    assert_eq!(status_groups(status), vec![24, 27, 1234]);
    assert_eq!(status_groups("Name:\tx\nGroups:\t\n"), Vec::<u32>::new());
    assert_eq!(status_groups("Name:\tx\n"), Vec::<u32>::new());
    assert_eq!(status_groups("Groups:\t12 x 13\n"), vec![12]);
    // Our own process: whatever its groups, the line parses.
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert_eq!(process_groups(std::process::id() as i32), status_groups(&own));
}

fn all_requests() -> Vec<Request> {
    let mut v = vec![
        Request::Commit,
        Request::FlushCache(None),
        Request::FlushCache(Some(CacheSel::Internal)),
        Request::FlushCache(Some(CacheSel::External)),
        Request::FlushKernel,
        Request::ResyncKernel,
        Request::BulkSend,
        Request::RequestResync,
        Request::Purge,
        Request::Kill,
        Request::Stats(None),
        Request::DumpInternal,
        Request::DumpExternal,
        Request::DumpExpectations(CacheSel::Internal),
        Request::DumpExpectations(CacheSel::External),
        Request::Reload,
        Request::CheckReady,
        Request::Metrics,
        Request::TestDropPeerFlows(true),
        Request::TestDropPeerFlows(false),
    ];
    v.extend(StatsSection::ALL.iter().map(|&s| Request::Stats(Some(s))));
    v
}

#[test]
fn every_request_round_trips() {
    let mut seen = std::collections::HashSet::new();
    for req in all_requests() {
        for json in [false, true] {
            let bytes = encode_request(&req, json);
            assert_eq!(bytes.len(), 8);
            assert_eq!(request_frame_len(&bytes), Ok(Some(8)));
            assert_eq!(decode_request(&bytes), Ok((req, json)));
            assert!(seen.insert(bytes), "two requests share an encoding: {req:?}");
        }
    }
}

#[test]
fn bad_requests_are_refused() {
    let ok = encode_request(&Request::Stats(Some(StatsSection::Link)), true);
    for cut in 0..ok.len() {
        assert_eq!(decode_request(&ok[..cut]), Err(ControlError::Truncated), "{cut}");
        assert_eq!(request_frame_len(&ok[..cut]), Ok(None));
    }
    let mut long = ok.clone();
    long.push(0);
    assert_eq!(decode_request(&long), Err(ControlError::TrailingBytes));
    assert_eq!(decode_request(&[0, 0, 0, 65]), Err(ControlError::TooLong(65)));
    assert_eq!(request_frame_len(&[0xff, 0xff, 0xff, 0xff]), Err(ControlError::TooLong(u32::MAX)));
    assert_eq!(decode_request(&[0, 0, 0, 5, 1, 1, 0, 0, 0]), Err(ControlError::TooLong(5)));
    assert_eq!(decode_request(&[0, 0, 0, 3, 1, 1, 0]), Err(ControlError::Truncated));
    assert_eq!(decode_request(&[0, 0, 0, 4, 2, 1, 0, 0]), Err(ControlError::BadVersion(2)));
    assert_eq!(decode_request(&[0, 0, 0, 4, 1, 0, 0, 0]), Err(ControlError::BadRequest(0)));
    assert_eq!(decode_request(&[0, 0, 0, 4, 1, 99, 0, 0]), Err(ControlError::BadRequest(99)));
    assert_eq!(decode_request(&[0, 0, 0, 4, 1, 1, 2, 0]), Err(ControlError::BadFlags(2)));
    assert_eq!(decode_request(&[0, 0, 0, 4, 1, 1, 0, 1]), Err(ControlError::BadArgument(1)));
    assert_eq!(decode_request(&[0, 0, 0, 4, 1, 2, 0, 3]), Err(ControlError::BadArgument(3)));
    assert_eq!(decode_request(&[0, 0, 0, 4, 1, 9, 0, 10]), Err(ControlError::BadArgument(10)));
}

#[test]
fn check_ready_has_its_own_tag_and_takes_no_argument() {
    // Tag 14, no flags, no argument: a client of another version that
    // does not know it gets BadRequest, never another request.
    let bytes = encode_request(&Request::CheckReady, false);
    assert_eq!(bytes, [0, 0, 0, 4, VERSION, 14, 0, 0]);
    assert_eq!(decode_request(&bytes), Ok((Request::CheckReady, false)));
    assert_eq!(decode_request(&[0, 0, 0, 4, VERSION, 14, 0, 1]), Err(ControlError::BadArgument(1)));
    assert_eq!(decode_request(&[0, 0, 0, 4, VERSION, 14, 4, 0]), Err(ControlError::BadFlags(4)));
    assert_eq!(decode_request(&[0, 0, 0, 4, VERSION, 15, 0, 0]), Ok((Request::Metrics, false)));
    assert_eq!(decode_request(&[0, 0, 0, 4, VERSION, 16, 0, 0]), Err(ControlError::BadRequest(16)));
}

fn decode_all(bytes: &[u8], step: usize) -> Result<Vec<ResponseFrame>, ControlError> {
    let mut d = ResponseDecoder::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(step.max(1)) {
        d.push(piece);
        while let Some(f) = d.next()? {
            frames.push(f);
        }
    }
    assert!(d.is_empty());
    Ok(frames)
}

#[test]
fn responses_stream_in_any_read_size() {
    let mut bytes = encode_chunk(b"first\n");
    bytes.extend(encode_chunk(b""));
    bytes.extend(encode_chunk("second \u{e9}\n".as_bytes()));
    bytes.extend(encode_status(false, "3 entries can't be committed"));
    let expected = vec![
        ResponseFrame::Chunk(b"first\n".to_vec()),
        ResponseFrame::Chunk("second \u{e9}\n".as_bytes().to_vec()),
        ResponseFrame::Status { ok: false, message: "3 entries can't be committed".into() },
    ];
    for step in [1, 2, 3, 7, 64, 4096] {
        assert_eq!(decode_all(&bytes, step).unwrap(), expected, "step {step}");
    }
}

#[test]
fn big_bodies_are_split_into_frames() {
    let body = vec![b'x'; MAX_RESPONSE_FRAME * 2 + 10];
    let bytes = encode_chunk(&body);
    let frames = decode_all(&bytes, 100_000).unwrap();
    assert_eq!(frames.len(), 3);
    let joined: Vec<u8> = frames
        .into_iter()
        .flat_map(|f| match f {
            ResponseFrame::Chunk(b) => b,
            ResponseFrame::Status { .. } => panic!("status"),
        })
        .collect();
    assert_eq!(joined, body);
}

#[test]
fn bad_responses_are_errors() {
    let mut d = ResponseDecoder::new();
    d.push(&[0, 0x20, 0, 0, 1]);
    assert_eq!(d.next(), Err(ControlError::TooLong(0x20_0000)));
    for (bytes, err) in [
        (&[0, 0, 0, 0][..], ControlError::Truncated),
        (&[0, 0, 0, 1, 9], ControlError::BadFrame(9)),
        (&[0, 0, 0, 1, 2], ControlError::BadStatus),
        (&[0, 0, 0, 2, 2, 7], ControlError::BadStatus),
    ] {
        let mut d = ResponseDecoder::new();
        d.push(bytes);
        assert_eq!(d.next(), Err(err), "{bytes:?}");
    }
}

#[test]
fn response_encoding() {
    let frames = decode_all(&ControlReply::Ok("stats\n".into()).encode(), 5).unwrap();
    assert_eq!(
        frames,
        vec![
            ResponseFrame::Chunk(b"stats\n".to_vec()),
            ResponseFrame::Status { ok: true, message: String::new() }
        ]
    );
    let frames = decode_all(&ControlReply::Failed("no peer".into()).encode(), 5).unwrap();
    assert_eq!(frames, vec![ResponseFrame::Status { ok: false, message: "no peer".into() }]);
}

/// The bytes a reply puts on the wire: a long body in frames of
/// [`REPLY_CHUNK`] bytes, each `[len][1][bytes]`, then `[len][2][ok]`;
/// an empty body in no frame; a failure in the status frame alone.
#[test]
fn reply_bytes_on_the_wire() {
    let body = "x".repeat(REPLY_CHUNK + 1);
    let bytes = ControlReply::Ok(body.clone()).encode();
    let mut expected = Vec::new();
    expected.extend_from_slice(&(REPLY_CHUNK as u32 + 1).to_be_bytes());
    expected.push(1);
    expected.extend_from_slice(&body.as_bytes()[..REPLY_CHUNK]);
    expected.extend_from_slice(&[0, 0, 0, 2, 1, b'x']);
    expected.extend_from_slice(&[0, 0, 0, 2, 2, 1]);
    assert_eq!(bytes, expected);
    assert_eq!(ControlReply::Ok(String::new()).encode(), [0, 0, 0, 2, 2, 1]);
    assert_eq!(
        ControlReply::from(Err::<String, _>("no peer")).encode(),
        [&[0u8, 0, 0, 9, 2, 0][..], b"no peer"].concat()
    );
}

fn temp_socket(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ctsync-ctl-{}-{name}.sock", std::process::id()))
}

#[test]
fn client_talks_to_a_server() {
    let path = temp_socket("ok");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = [0u8; 8];
        conn.read_exact(&mut req).unwrap();
        let (req, json) = decode_request(&req).unwrap();
        let mut reply = encode_chunk(format!("{req:?} {json}\n").as_bytes());
        reply.extend(encode_status(false, "partly failed"));
        conn.write_all(&reply).unwrap();
    });
    let mut out = Vec::new();
    let ok = call(&path, &Request::Stats(Some(StatsSection::Cache)), true, None, &mut out).unwrap();
    server.join().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(!ok);
    assert_eq!(String::from_utf8(out).unwrap(), "Stats(Some(Cache)) true\npartly failed\n");
}

#[test]
fn client_reports_a_missing_daemon_and_a_hang_up() {
    let path = temp_socket("missing");
    let _ = std::fs::remove_file(&path);
    let e = call(&path, &Request::Commit, false, None, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, ClientError::NotRunning { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "cannot connect to {}: is ctsyncd running? (start it with: systemctl start \
             ctsyncd, or ctsyncd -C FILE -d)",
            path.display()
        )
    );
    // A socket file nobody listens on any more: connection refused.
    drop(UnixListener::bind(&path).unwrap());
    let e = call(&path, &Request::Commit, false, None, &mut Vec::new()).unwrap_err();
    assert!(matches!(e, ClientError::NotRunning { .. }), "{e}");
    let _ = std::fs::remove_file(&path);

    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || drop(listener.accept().unwrap()));
    let e = call(&path, &Request::Commit, false, None, &mut Vec::new()).unwrap_err();
    server.join().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(matches!(e, ClientError::Closed { .. }) || matches!(e, ClientError::Io { .. }), "{e}");
}

/// `call(CheckReady)` with `timeout`, in a thread so that a client that
/// hangs fails the test instead of hanging it; its error and duration.
fn check_ready_failing(path: &Path, timeout: Duration) -> (ClientError, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let path = path.to_owned();
    std::thread::spawn(move || {
        let started = Instant::now();
        let result = call(&path, &Request::CheckReady, false, Some(timeout), &mut Vec::new());
        let _ = tx.send((result, started.elapsed()));
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok((Err(e), took)) => (e, took),
        Ok((Ok(ok), _)) => panic!("answered {ok} instead of timing out"),
        Err(_) => panic!("--check-ready with a {timeout:?} timeout still waits after 10 s"),
    }
}

/// `--check-ready` against a stopped daemon (DESIGN.md principle 8):
/// its socket still takes connections, the kernel queues them, and
/// nothing answers. The timeout ends the call, not the caller.
#[test]
fn client_gives_up_at_its_timeout_when_nothing_answers() {
    let path = temp_socket("silent");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let timeout = Duration::from_millis(300);
    let (e, took) = check_ready_failing(&path, timeout);
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(took >= timeout && took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "the daemon at {} did not answer within 0.3 s (stopped or busy: see \
             `systemctl status ctsyncd` and its log)",
            path.display()
        )
    );
    drop(listener);
    let _ = std::fs::remove_file(&path);
}

/// The timeout bounds the whole answer, not each read: a daemon that
/// trickles bytes cannot keep the check waiting.
#[test]
fn client_timeout_bounds_the_whole_answer() {
    let path = temp_socket("trickle");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = [0u8; 8];
        conn.read_exact(&mut req).unwrap();
        let reply = encode_status(true, "ready: this node holds the peer's complete table");
        for byte in reply {
            if conn.write_all(&[byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let timeout = Duration::from_millis(300);
    let (e, took) = check_ready_failing(&path, timeout);
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    server.join().unwrap();
    let _ = std::fs::remove_file(&path);
}

/// A daemon stopped long enough has a full listen queue: connecting
/// would block until it accepts, so the timeout must cover the connect.
#[test]
fn client_timeout_covers_a_connect_to_a_full_listen_queue() {
    use socket2::{Domain, SockAddr, Socket, Type};
    let path = temp_socket("full");
    let _ = std::fs::remove_file(&path);
    let addr = SockAddr::unix(&path).unwrap();
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&addr).unwrap();
    listener.listen(0).unwrap();
    let mut queued = Vec::new();
    loop {
        let client = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
        client.set_nonblocking(true).unwrap();
        match client.connect(&addr) {
            Ok(()) => queued.push(client),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        assert!(queued.len() < 64, "the listen queue never filled");
    }
    let timeout = Duration::from_millis(300);
    let (e, took) = check_ready_failing(&path, timeout);
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert!(took >= timeout && took < Duration::from_secs(3), "{took:?}");
    drop(listener);
    let _ = std::fs::remove_file(&path);
}

proptest! {
    #[test]
    fn decode_request_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
        if let Ok((req, json)) = decode_request(&bytes) {
            prop_assert_eq!(encode_request(&req, json), bytes);
        }
    }

    #[test]
    fn decode_request_never_panics_near_valid(tag in any::<u8>(), flags in any::<u8>(), arg in any::<u8>()) {
        let bytes = [0, 0, 0, 4, VERSION, tag, flags, arg];
        if let Ok((req, json)) = decode_request(&bytes) {
            prop_assert_eq!(encode_request(&req, json), bytes.to_vec());
        }
    }

    #[test]
    fn response_decoder_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        step in 1usize..10,
    ) {
        let mut d = ResponseDecoder::new();
        for piece in bytes.chunks(step) {
            d.push(piece);
            while let Ok(Some(_)) = d.next() {}
        }
    }
}
