//! Netlink and nfnetlink framing: headers of the messages we send, and a
//! checked iterator over the messages of one received buffer.

use netlink_packet_core::NetlinkBuffer;

use super::convert::AttrWriter;

/// `NFNL_SUBSYS_CTNETLINK`.
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
/// `NFNL_SUBSYS_CTNETLINK_EXP`: expectations.
pub const NFNL_SUBSYS_CTNETLINK_EXP: u16 = 2;
/// `IPCTNL_MSG_EXP_NEW`, also the type of expectation NEW events.
pub const IPCTNL_MSG_EXP_NEW: u8 = 0;
/// `IPCTNL_MSG_EXP_GET`.
pub const IPCTNL_MSG_EXP_GET: u8 = 1;
/// `IPCTNL_MSG_EXP_DELETE`, also the type of expectation DESTROY events.
pub const IPCTNL_MSG_EXP_DELETE: u8 = 2;
/// `IPCTNL_MSG_CT_NEW`, also the type of NEW and UPDATE events.
pub const IPCTNL_MSG_CT_NEW: u8 = 0;
/// `IPCTNL_MSG_CT_GET`.
pub const IPCTNL_MSG_CT_GET: u8 = 1;
/// `IPCTNL_MSG_CT_DELETE`, also the type of DESTROY events.
pub const IPCTNL_MSG_CT_DELETE: u8 = 2;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg`: family, version, res_id.
pub const NFGENMSG_LEN: usize = 4;
const NFNETLINK_V0: u8 = 0;

/// The netlink message type of a ctnetlink message.
pub const fn ct_msg_type(ct: u8) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | ct as u16
}

/// Append one complete ctnetlink message (netlink header, `nfgenmsg`, and
/// the attributes `attrs` writes) to `buf`.
pub fn ct_message(
    buf: &mut Vec<u8>,
    ct: u8,
    flags: u16,
    seq: u32,
    family: u8,
    attrs: impl FnOnce(&mut AttrWriter<'_>),
) {
    nfnl_message(buf, NFNL_SUBSYS_CTNETLINK, ct, flags, seq, family, 0, attrs)
}

/// As [`ct_message`], for the expectation subsystem.
pub fn exp_message(
    buf: &mut Vec<u8>,
    exp: u8,
    flags: u16,
    seq: u32,
    family: u8,
    attrs: impl FnOnce(&mut AttrWriter<'_>),
) {
    nfnl_message(buf, NFNL_SUBSYS_CTNETLINK_EXP, exp, flags, seq, family, 0, attrs)
}

/// One nfnetlink message of subsystem `subsys`; `res_id` is the `nfgenmsg`
/// resource id (0 for ctnetlink, the queue number for nfnetlink_queue).
#[allow(clippy::too_many_arguments)]
pub(super) fn nfnl_message(
    buf: &mut Vec<u8>,
    subsys: u16,
    msg: u8,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: impl FnOnce(&mut AttrWriter<'_>),
) {
    let start = buf.len();
    buf.resize(start + NLMSG_HDRLEN, 0);
    buf.extend_from_slice(&[family, NFNETLINK_V0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    attrs(&mut AttrWriter::new(buf));
    let len = u32::try_from(buf.len() - start).unwrap_or(u32::MAX);
    let mut hdr = NetlinkBuffer::new(&mut buf[start..]);
    hdr.set_length(len);
    hdr.set_message_type((subsys << 8) | u16::from(msg));
    hdr.set_flags(flags);
    hdr.set_sequence_number(seq);
    hdr.set_port_number(0);
}

/// Add flags to the message that starts at `start` in `buf`.
pub fn add_flags(buf: &mut [u8], start: usize, flags: u16) {
    if let Some(msg) = buf.get_mut(start..) {
        let mut hdr = NetlinkBuffer::new(msg);
        let old = hdr.flags();
        hdr.set_flags(old | flags);
    }
}

/// One received netlink message.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    pub payload: &'a [u8],
}

impl<'a> Msg<'a> {
    /// For `NLMSG_ERROR`: the positive errno, 0 for an acknowledgement.
    pub fn errno(&self) -> Option<i32> {
        if self.msg_type != NLMSG_ERROR {
            return None;
        }
        let b = self.payload.get(..4)?;
        Some(i32::from_ne_bytes([b[0], b[1], b[2], b[3]]).wrapping_neg())
    }

    /// For ctnetlink messages: the `IPCTNL_MSG_CT_*` type and the attribute
    /// bytes after `nfgenmsg`.
    pub fn ctnetlink(&self) -> Option<(u8, &'a [u8])> {
        let [subsys, ct] = self.msg_type.to_be_bytes();
        if u16::from(subsys) != NFNL_SUBSYS_CTNETLINK {
            return None;
        }
        Some((ct, self.payload.get(NFGENMSG_LEN..)?))
    }

    /// For ctnetlink expectation messages: the `IPCTNL_MSG_EXP_*` type and
    /// the attribute bytes after `nfgenmsg`.
    pub fn ctnetlink_exp(&self) -> Option<(u8, &'a [u8])> {
        let [subsys, exp] = self.msg_type.to_be_bytes();
        if u16::from(subsys) != NFNL_SUBSYS_CTNETLINK_EXP {
            return None;
        }
        Some((exp, self.payload.get(NFGENMSG_LEN..)?))
    }
}

/// The netlink messages of one `recvmsg` buffer. Yields `Err` once, at the
/// first header whose length does not fit, and stops.
pub struct Messages<'a> {
    buf: &'a [u8],
}

/// A netlink header that does not fit its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameError {
    /// Offset of the bad header in the buffer.
    pub offset: usize,
}

impl<'a> Messages<'a> {
    /// Iterate over `buf`.
    pub fn new(buf: &'a [u8]) -> Messages<'a> {
        Messages { buf }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<(usize, Msg<'a>), FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let whole = self.buf;
        let Ok(nl) = NetlinkBuffer::new_checked(whole) else {
            self.buf = &[];
            return Some(Err(FrameError { offset: 0 }));
        };
        let len = nl.length() as usize;
        let msg = Msg {
            msg_type: nl.message_type(),
            flags: nl.flags(),
            seq: nl.sequence_number(),
            pid: nl.port_number(),
            payload: whole.get(NLMSG_HDRLEN..len).unwrap_or(&[]),
        };
        self.buf = whole.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some(Ok((len, msg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_nfgenmsg_layout() {
        let mut buf = Vec::new();
        ct_message(&mut buf, IPCTNL_MSG_CT_NEW, NLM_F_REQUEST | NLM_F_CREATE, 7, 2, |w| {
            w.put_u32_be(7, 60)
        });
        #[rustfmt::skip]
        let want: &[u8] = &[
            28, 0, 0, 0,   0x00, 0x01,  0x01, 0x04,  7, 0, 0, 0,  0, 0, 0, 0,
            2, 0, 0, 0,
            8, 0, 7, 0, 0, 0, 0, 60,
        ];
        assert_eq!(buf, want);
        add_flags(&mut buf, 0, NLM_F_ACK);
        let (_, m) = Messages::new(&buf).next().unwrap().unwrap();
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK);
        assert_eq!(m.ctnetlink().unwrap().0, IPCTNL_MSG_CT_NEW);
        assert_eq!(m.ctnetlink().unwrap().1, &[8, 0, 7, 0, 0, 0, 0, 60]);
    }

    #[test]
    fn error_messages_and_bad_frames() {
        let mut buf = vec![36, 0, 0, 0, 2, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0];
        buf.extend_from_slice(&(-17i32).to_ne_bytes());
        buf.extend_from_slice(&[0; 16]);
        buf.extend_from_slice(&[200, 0, 0, 0, 2, 0]); // truncated second header
        let mut it = Messages::new(&buf);
        let (_, m) = it.next().unwrap().unwrap();
        assert_eq!((m.errno(), m.seq), (Some(17), 9));
        assert!(matches!(it.next(), Some(Err(FrameError { offset: 0 }))));
        assert!(it.next().is_none());
    }
}
