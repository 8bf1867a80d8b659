//! What the benchmarks send: established IPv4 TCP flows, distinct per index.

use ctsync::flow::{Flow, TcpInfo, proto, status, tcp_state};

/// Flow `i`: 10.x.y.z to 192.168.0.1:443, established, window scaling on.
pub fn flow(i: u32) -> Flow {
    let b = i.to_be_bytes();
    let mut f = Flow::new_v4(
        proto::TCP,
        [10, b[1], b[2], b[3]].into(),
        [192, 168, 0, 1].into(),
        (i % 60000) as u16 + 1024,
        443,
    );
    f.proto_state = tcp_state::ESTABLISHED;
    f.status |= status::SEEN_REPLY | status::ASSURED;
    f.timeout = 432000;
    f.tcp = TcpInfo { wscale_orig: 7, wscale_reply: 7, flags_orig: 0x23, flags_reply: 0x23 };
    f
}
