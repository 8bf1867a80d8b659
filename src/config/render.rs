//! Rendering: a typed [`Config`] back into the raw tree, every key present,
//! for `--print-config` ([`Config::to_yaml`]).

use std::num::NonZeroUsize;
use std::time::Duration;

use super::raw::{ChannelType, RawChannel, RawConfig, RawLists, Scalar};
use super::*;

/// Typed `Config` → raw tree, for printing.
pub(super) fn unconvert(c: &Config) -> RawConfig {
    let g = &c.general;
    let text = |s: String| Scalar::Text(s);
    let size = |n: NonZeroUsize| Scalar::Int(n.get() as u64);
    let dur = |d: Duration| text(value::format_duration(d));
    let lists = |l: &AcceptIgnore<String>| RawLists {
        accept: l.accept.iter().cloned().map(text).collect(),
        ignore: l.ignore.iter().cloned().map(text).collect(),
    };
    let map = |l: &AcceptIgnore<u8>, name: fn(u8) -> String| AcceptIgnore {
        accept: l.accept.iter().map(|&x| name(x)).collect(),
        ignore: l.ignore.iter().map(|&x| name(x)).collect(),
    };
    let cidrs = AcceptIgnore {
        accept: g.filter.addresses.accept.iter().map(Cidr::to_string).collect(),
        ignore: g.filter.addresses.ignore.iter().map(Cidr::to_string).collect(),
    };
    let s = &c.sync;
    RawConfig {
        general: raw::RawGeneral {
            lock_file: g.lock_file.display().to_string(),
            control_socket: g.control_socket.display().to_string(),
            control_group: g.control_group.clone(),
            ready_file: g.ready_file.as_ref().map(|f| f.display().to_string()),
            log: raw::RawLog {
                target: g.log.target,
                level: g.log.level,
                file: g.log.file.as_ref().map(|f| f.display().to_string()),
                syslog_facility: g.log.syslog_facility,
            },
            cache_limit: size(g.cache_limit),
            netlink: raw::RawNetlink {
                rcvbuf: size(g.netlink.rcvbuf),
                rcvbuf_max: size(g.netlink.rcvbuf_max),
                reliable_events: g.netlink.reliable_events,
                overrun_resync: dur(g.netlink.overrun_resync),
            },
            filter: raw::RawFilter {
                ignore_loopback: g.filter.ignore_loopback,
                ignore_sync_addresses: g.filter.ignore_sync_addresses,
                protocols: lists(&map(&g.filter.protocols, value::protocol_name)),
                addresses: lists(&cidrs),
                tcp_states: lists(&map(&g.filter.tcp_states, |s| {
                    crate::flow::tcp_state::name(s).to_owned()
                })),
            },
            metrics_listen: g.metrics_listen.map(|a| a.to_string()),
        },
        sync: raw::RawSync {
            mode: s.mode,
            wire: s.wire,
            resend_queue: Scalar::Int(s.resend_queue.get().into()),
            ack_window: Scalar::Int(s.ack_window.get().into()),
            alive_interval: dur(s.alive_interval),
            peer_timeout: dur(s.peer_timeout),
            stall_timeout: dur(s.stall_timeout),
            anti_entropy_interval: dur(s.anti_entropy_interval),
            max_datagram: Scalar::Int(s.max_datagram.into()),
            commit_timeout: dur(s.commit_timeout.unwrap_or_default()),
            purge_timeout: dur(s.purge_timeout),
            tcp_window_tracking: s.tcp_window_tracking,
            startup_resync: s.startup_resync,
            expectations: match &s.expectations {
                ExpectSync::Off => None,
                ExpectSync::All => Some(raw::RawExpectations::Word("all".into())),
                ExpectSync::Helpers(names) => Some(raw::RawExpectations::List(names.clone())),
            },
            direct_to_kernel: s.direct_to_kernel,
            defer: s.defer.map(|d| raw::RawDefer {
                queue: Some(Scalar::Int(d.queue.into())),
                timeout: dur(d.timeout),
                max_held: Scalar::Int(d.max_held.into()),
            }),
            auth: match &s.auth {
                SyncAuth::KeyFile(f) => raw::RawAuth {
                    key_file: Some(f.display().to_string()),
                    insecure: false,
                    encrypt: s.encrypt,
                },
                SyncAuth::Insecure => raw::RawAuth {
                    key_file: None,
                    insecure: s.wire == Dialect::Native,
                    encrypt: false,
                },
            },
            channels: s
                .channels
                .iter()
                .map(|ch| {
                    let (kind, peer, group) = match ch.kind {
                        ChannelKind::Udp { peer } => (ChannelType::Udp, Some(peer), None),
                        ChannelKind::Multicast { group } => {
                            (ChannelType::Multicast, None, Some(group))
                        }
                    };
                    let ip = |a: Option<IpAddr>| a.map(|a| text(a.to_string()));
                    RawChannel {
                        kind,
                        local: Some(text(ch.local.to_string())),
                        peer: ip(peer),
                        group: ip(group),
                        interface: ch.interface.clone(),
                        port: Scalar::Int(ch.port.into()),
                        sndbuf: ch.sndbuf.map(size),
                        rcvbuf: ch.rcvbuf.map(size),
                    }
                })
                .collect(),
        },
    }
}
