//! Traffic control on a link's ingress over a blocking `NETLINK_ROUTE`
//! socket of the calling thread's namespace: the `clsact` qdisc, and
//! direct-action `cls_bpf` filters on its ingress hook (create or replace
//! at a priority and handle, list, delete).
//!
//! Blocking, where [`super::netlink`] is async: the datapath's calls that
//! attach, check and remove the endpoint programs are synchronous. A
//! `cls_bpf` filter costs the kernel no RCU grace period, where a tcx
//! attachment waits for one with the RTNL held (`tcx_entry_sync`).
//!
//! Messages are `netlink-packet-route`'s `TcMessage`; every request asks
//! for an acknowledgement, and every reply is read within [`REPLY_TIMEOUT`].

use std::{io, os::fd::AsRawFd as _, time::Duration};

use rtnetlink::{
    packet_core::{
        NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
        NLM_F_REQUEST,
    },
    packet_route::{
        tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
        RouteNetlinkMessage,
    },
    sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
};

/// The longest the kernel may take to answer one request (it answers at
/// once; a hang here would hold a connect forever).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many datagrams in one reply (a dump of a link's filters is
/// one or two).
const MAX_DATAGRAMS: usize = 1024;
/// `ETH_P_ALL` in network byte order: a filter that sees every protocol.
const ETH_P_ALL_BE: u16 = 0x0003_u16.to_be();
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`: the clsact ingress hook.
const INGRESS_HOOK: TcHandle = TcHandle {
    major: TcHandle::CLSACT.major,
    minor: TcHandle::MIN_INGRESS,
};
const CLSACT: &str = "clsact";
const BPF: &str = "bpf";

/// A `cls_bpf` filter on a link's ingress hook, as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    pub priority: u16,
    pub handle: u32,
    /// `TCA_BPF_NAME`: the name the filter was made with (the whole
    /// function name; the program's own kernel name is cut to 15 bytes).
    pub name: String,
    /// The id of the program it runs.
    pub prog_id: u32,
    pub direct_action: bool,
}

/// A `NETLINK_ROUTE` socket bound in the namespace of the thread that
/// opened it.
#[derive(Debug)]
pub struct Tc {
    socket: Socket,
    seq: u32,
}

impl Tc {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Tc> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let tv = libc::timeval {
            tv_sec: REPLY_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: setsockopt reads a timeval we own for the call.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                std::ptr::from_ref(&tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tc { socket, seq: 0 })
    }

    /// Adds the `clsact` qdisc to link `ifindex`; one already there is
    /// kept. Cheapest on a link that is down (an up link's queues are
    /// deactivated around the change, which waits for a grace period).
    pub fn ensure_clsact(&mut self, ifindex: u32) -> io::Result<()> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = TcHandle::CLSACT;
        msg.header.handle = TcHandle {
            major: TcHandle::CLSACT.major,
            minor: 0,
        };
        msg.attributes.push(TcAttribute::Kind(CLSACT.to_owned()));
        match self.request(RouteNetlinkMessage::NewQueueDiscipline(msg), NLM_F_CREATE) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Makes the filter at `priority`/`handle` on link `ifindex`'s ingress
    /// hook run `prog` in direct-action mode (its return value is the
    /// verdict), named `name`: created, or its program replaced atomically
    /// when it exists. Needs the `clsact` qdisc ([`Tc::ensure_clsact`]).
    pub fn replace_bpf_filter(
        &mut self,
        ifindex: u32,
        priority: u16,
        handle: u32,
        prog: std::os::fd::BorrowedFd<'_>,
        name: &str,
    ) -> io::Result<()> {
        let mut msg = filter_message(ifindex, priority, handle);
        msg.attributes.push(TcAttribute::Kind(BPF.to_owned()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_owned())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        self.request(RouteNetlinkMessage::NewTrafficFilter(msg), NLM_F_CREATE)
            .map(|_| ())
    }

    /// Every `cls_bpf` filter on link `ifindex`'s ingress hook; none when
    /// the link has no `clsact` qdisc. ENODEV when there is no such link.
    pub fn bpf_filters(&mut self, ifindex: u32) -> io::Result<Vec<BpfFilter>> {
        let mut msg = TcMessage::with_index(ifindex as i32);
        msg.header.parent = INGRESS_HOOK;
        let replies = match self.request(RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP) {
            Ok(r) => r,
            // No qdisc to hold filters: nothing attached.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        Ok(replies.into_iter().filter_map(bpf_filter).collect())
    }

    /// Deletes the filter at `priority`/`handle` from link `ifindex`'s
    /// ingress hook; ENOENT when there is none.
    pub fn delete_filter(&mut self, ifindex: u32, priority: u16, handle: u32) -> io::Result<()> {
        let mut msg = filter_message(ifindex, priority, handle);
        msg.attributes.push(TcAttribute::Kind(BPF.to_owned()));
        self.request(RouteNetlinkMessage::DelTrafficFilter(msg), 0)
            .map(|_| ())
    }

    /// Sends one request and reads its answer: the messages of a dump, or
    /// nothing for an acknowledged change; the kernel's errno otherwise.
    fn request(&mut self, payload: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<TcMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        for _ in 0..MAX_DATAGRAMS {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut rest = datagram.as_slice();
            while !rest.is_empty() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let len = (reply.header.length as usize).clamp(1, rest.len());
                rest = &rest[len.next_multiple_of(4).min(rest.len())..];
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewTrafficFilter(m)) => {
                        out.push(m);
                    }
                    _ => {}
                }
            }
        }
        Err(io::Error::other(format!(
            "no end to the kernel's answer after {MAX_DATAGRAMS} datagrams"
        )))
    }
}

fn filter_message(ifindex: u32, priority: u16, handle: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = INGRESS_HOOK;
    msg.header.handle = handle.into();
    // tcm_info: the priority in the upper half, the protocol in the lower.
    msg.header.info = (u32::from(priority) << 16) | u32::from(ETH_P_ALL_BE);
    msg
}

/// The filter a dump message describes; None for what is not a `cls_bpf`
/// filter (the dump also lists each priority's classifier without a
/// handle).
fn bpf_filter(msg: TcMessage) -> Option<BpfFilter> {
    let handle = u32::from(msg.header.handle);
    if handle == 0 {
        return None;
    }
    let mut kind_bpf = false;
    let mut filter = BpfFilter {
        priority: (msg.header.info >> 16) as u16,
        handle,
        name: String::new(),
        prog_id: 0,
        direct_action: false,
    };
    for attr in msg.attributes {
        match attr {
            TcAttribute::Kind(k) => kind_bpf = k == BPF,
            TcAttribute::Options(options) => {
                for o in options {
                    match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => filter.name = n,
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.prog_id = id,
                        TcOption::Bpf(TcFilterBpfOption::Flags(f)) => {
                            filter.direct_action = f.contains(TcBpfFlags::DirectAction);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    kind_bpf.then_some(filter)
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_core::{Emitable as _, Parseable as _};

    use super::*;

    /// The filter request carries what `tc filter add dev X ingress prio P
    /// handle H bpf da` sends: the clsact ingress parent, the priority and
    /// ETH_P_ALL in `tcm_info`, and the bpf options.
    #[test]
    fn filter_request_layout() {
        let mut msg = filter_message(7, 3, 1);
        msg.attributes.push(TcAttribute::Kind(BPF.to_owned()));
        msg.attributes.push(TcAttribute::Options(vec![TcOption::Bpf(
            TcFilterBpfOption::Flags(TcBpfFlags::DirectAction),
        )]));
        let mut buf = vec![0; msg.buffer_len()];
        msg.emit(&mut buf);
        // struct tcmsg: family, pads, ifindex, handle, parent, info.
        assert_eq!(&buf[4..8], &7i32.to_ne_bytes());
        assert_eq!(&buf[8..12], &1u32.to_ne_bytes());
        assert_eq!(&buf[12..16], &0xffff_fff2u32.to_ne_bytes());
        assert_eq!(&buf[16..20], &0x0003_0300u32.to_ne_bytes());
        let parsed = TcMessage::parse(buf.as_slice()).expect("parses back");
        let mut with_handle = parsed;
        with_handle.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgName("dp_x".into())),
            TcOption::Bpf(TcFilterBpfOption::ProgId(42)),
        ]));
        assert_eq!(
            bpf_filter(with_handle),
            Some(BpfFilter {
                priority: 3,
                handle: 1,
                name: "dp_x".into(),
                prog_id: 42,
                direct_action: true,
            })
        );
    }
}
