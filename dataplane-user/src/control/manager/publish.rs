//! Published ports: the one port allocator (a request's host port, fixed,
//! one of a range or any free ephemeral one, checked against the other
//! requests, every endpoint's mappings and the host's own sockets), counter
//! slots, and mappings added to and removed from live endpoints.

use std::{collections::HashMap, ops::RangeInclusive};

use super::{Manager, NetworkError, PublishSpecs};
use crate::{
    control::{
        host::Host,
        model::{Attachment, Endpoint},
        ports::{self, PortMapping, PortRequest, Proto},
        state::State,
    },
    datapath::Datapath,
    sys::sockets::HeldPort,
};

/// Ports a request may ask about one by one (a trial bind each, a scan of
/// the endpoints' mappings); more go through an index and one read of the
/// host's socket tables.
const MANY_PORTS: usize = 8;

/// Who publishes each (protocol, host port) now, apart from `except`
/// (mappings about to be replaced): the one port-conflict search.
pub(super) struct PortHolders<'a> {
    state: &'a State,
    except: &'a [PortMapping],
    /// Built in one pass over the state when many lookups will follow (K
    /// lookups at N cost K + N, not K * N); a few are a plain scan.
    index: Option<HashMap<(Proto, u16), Vec<Held<'a>>>>,
    /// The index kept across requests, when there is one: no pass at all.
    kept: Option<&'a PortIndex>,
}

/// What the port allocator asks of every published mapping, kept across
/// requests so that one more mapping costs what it touches, not a pass
/// over all of them: who publishes each (protocol, host port) (by endpoint
/// id) and the counter slots in use. Derived from the state only: built
/// from it when missing, changed with it by `publish add|rm`
/// ([`Manager::change_ports`]), dropped by every other change.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PortIndex {
    holders: HashMap<(Proto, u16), Vec<(PortMapping, String)>>,
    /// Indexed by slot.
    used: Vec<bool>,
}

impl PortIndex {
    pub(super) fn of(state: &State) -> PortIndex {
        let mut index = PortIndex::default();
        for ep in state.endpoints.values() {
            index.change(&ep.id, &ep.published, true);
        }
        index
    }

    /// `mappings` of endpoint `id` added (`added`) or removed.
    pub(super) fn change(&mut self, id: &str, mappings: &[PortMapping], added: bool) {
        for m in mappings {
            let key = (m.proto, m.host_port);
            if added {
                self.holders
                    .entry(key)
                    .or_default()
                    .push((*m, id.to_owned()));
            } else if let Some(v) = self.holders.get_mut(&key) {
                v.retain(|(p, e)| !(p == m && e == id));
                if v.is_empty() {
                    self.holders.remove(&key);
                }
            }
            for slot in [Some(m.stats_index), m.stats_index6].into_iter().flatten() {
                let slot = slot as usize;
                if slot >= self.used.len() {
                    self.used.resize(slot + 1, false);
                }
                self.used[slot] = added;
            }
        }
    }

    /// The mappings of endpoint `id` on one of `keys`.
    pub(super) fn of_endpoint(&self, id: &str, keys: &[(Proto, u16)]) -> Vec<PortMapping> {
        let mut out: Vec<PortMapping> = keys
            .iter()
            .filter_map(|k| self.holders.get(k))
            .flatten()
            .filter(|(_, e)| e == id)
            .map(|(p, _)| *p)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// An index's content in one canonical form (holders by key, sorted; the
/// slots in use), to compare an index kept across changes with one built
/// afresh.
#[cfg(test)]
pub(super) type CanonicalIndex = (
    std::collections::BTreeMap<(u8, u16), Vec<(PortMapping, String)>>,
    Vec<usize>,
);

#[cfg(test)]
impl PortIndex {
    pub(super) fn canonical(&self) -> CanonicalIndex {
        let holders = self
            .holders
            .iter()
            .map(|((proto, port), v)| {
                let mut v = v.clone();
                v.sort();
                ((proto.number(), *port), v)
            })
            .collect();
        let used = (0..self.used.len()).filter(|i| self.used[*i]).collect();
        (holders, used)
    }
}

/// A published mapping and the endpoint publishing it.
type Held<'a> = (&'a PortMapping, &'a Endpoint);

impl<'a> PortHolders<'a> {
    pub(super) fn new(
        state: &'a State,
        except: &'a [PortMapping],
        many: bool,
        kept: Option<&'a PortIndex>,
    ) -> Self {
        let mut holders = PortHolders {
            state,
            except,
            index: None,
            kept,
        };
        if many && kept.is_none() {
            let mut index: HashMap<_, Vec<_>> = HashMap::new();
            for (p, ep) in holders.all() {
                index
                    .entry((p.proto, p.host_port))
                    .or_default()
                    .push((p, ep));
            }
            holders.index = Some(index);
        }
        holders
    }

    fn all(&self) -> impl Iterator<Item = Held<'a>> + 'a {
        let except = self.except;
        self.state.endpoints.values().flat_map(move |ep| {
            ep.published
                .iter()
                .filter(move |p| !except.contains(p))
                .map(move |p| (p, ep))
        })
    }

    /// The mapping `m` conflicts with, and its endpoint.
    pub(super) fn find(&self, m: &PortMapping) -> Option<Held<'a>> {
        if let Some(kept) = self.kept {
            let except = self.except;
            return kept.holders.get(&(m.proto, m.host_port)).and_then(|v| {
                v.iter()
                    .filter(|(p, _)| !except.contains(p) && p.conflicts(m))
                    .find_map(|(p, id)| Some((p, self.state.endpoints.get(id)?)))
            });
        }
        match &self.index {
            Some(index) => index
                .get(&(m.proto, m.host_port))
                .and_then(|v| v.iter().find(|(p, _)| p.conflicts(m)).copied()),
            None => self.all().find(|(p, _)| p.conflicts(m)),
        }
    }
}

/// What holds a host port a request wanted.
#[derive(Clone, Debug)]
pub(super) enum Holder {
    /// Another mapping: of an endpoint (`by` names it) or of the same
    /// request.
    Mapping { by: String, existing: PortMapping },
    /// A host socket: a listening TCP one or a bound UDP one.
    Socket(HeldPort),
}

/// Host sockets by (tcp, port).
/// A request could not get a host port: the index of the request, and
/// what holds the (last) port it tried.
pub(super) struct Refused {
    pub index: usize,
    pub holder: Holder,
}

impl<D: Datapath, H: Host> Manager<D, H> {
    /// The one port allocator: a concrete mapping for each request, the
    /// first port of its candidates (the fixed one, its range, or the
    /// host's ephemeral range) that no other request of the call, no
    /// endpoint's mapping (but `except`, about to be replaced) and no host
    /// socket holds. Stats slots are left 0 (see [`Self::claim_slots`]).
    pub(super) fn choose_ports(
        &self,
        wanted: &[PortRequest],
        except: &[PortMapping],
    ) -> Result<Result<Vec<PortMapping>, Refused>, NetworkError> {
        if wanted.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let picks = wanted.iter().any(|r| r.fixed().is_none());
        let many = picks || wanted.len() > MANY_PORTS;
        let holders = PortHolders::new(&self.state, except, many, self.ports.as_ref());
        // Many ports to check: the ports host sockets are bound to, read
        // once, and a trial bind only on those (one per mapping was most of
        // a 100 000-mapping request). A few: a trial bind each, cheaper
        // than reading the socket tables.
        let bound = match many {
            true => Some(self.host.bound_ports().map_err(NetworkError::HostSockets)?),
            false => None,
        };
        let ephemeral = self.host.ephemeral_ports();
        let mut out: Vec<PortMapping> = Vec::new();
        // This call's own picks by (protocol, host port): a request of
        // 100 000 mappings checks each against its few namesakes, not all.
        let mut ours: HashMap<(Proto, u16), Vec<PortMapping>> = HashMap::new();
        for (index, r) in wanted.iter().enumerate() {
            let mut last = None;
            for port in candidates(r, &ephemeral) {
                let m = r.at(port);
                let holder = ours
                    .get(&(m.proto, m.host_port))
                    .and_then(|v| v.iter().find(|o| o.conflicts(&m)))
                    .map(|o| Holder::Mapping {
                        by: "this command".into(),
                        existing: *o,
                    })
                    .or_else(|| {
                        holders.find(&m).map(|(p, ep)| Holder::Mapping {
                            by: format!("endpoint {} on network {}", ep.name, ep.network),
                            existing: *p,
                        })
                    });
                // Host sockets of the mapping's family (an IPv6 host
                // address asks the IPv6 side only), of both for one on
                // every address.
                let tcp = m.proto == Proto::Tcp;
                let holder = match holder {
                    Some(h) => Some(h),
                    None if bound.as_ref().is_some_and(|b| !b.contains(&(tcp, port))) => None,
                    None => self.port_holder(tcp, m.host_ip, m.host_port)?,
                };
                match holder {
                    Some(h) => last = Some(h),
                    None => {
                        out.push(m);
                        ours.entry((m.proto, m.host_port)).or_default().push(m);
                        last = None;
                        break;
                    }
                }
            }
            if let Some(holder) = last {
                return Ok(Err(Refused { index, holder }));
            }
        }
        Ok(Ok(out))
    }

    /// The text of what holds a port: `endpoint c1 on network n1 already
    /// publishes 0.0.0.0:8080->80/tcp`, `nc (pid 42) listens on
    /// 0.0.0.0:8080/tcp`.
    pub(super) fn describe(&self, holder: &Holder) -> (String, String) {
        match holder {
            Holder::Mapping { by, existing } => (by.clone(), existing.to_string()),
            Holder::Socket(h) => (
                self.host
                    .socket_owner(h.inode)
                    .unwrap_or_else(|| format!("a process (socket inode {})", h.inode)),
                format!(
                    "{}/{}",
                    std::net::SocketAddr::new(
                        h.ip.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                        h.port
                    ),
                    if h.tcp { "tcp" } else { "udp" }
                ),
            ),
        }
    }

    /// What holds a port, as one phrase.
    pub(super) fn holder_text(&self, holder: &Holder) -> String {
        let (who, what) = self.describe(holder);
        match holder {
            Holder::Socket(_) => format!("{what} is in use on the host by {who}"),
            Holder::Mapping { .. } => format!("{who} already publishes {what}"),
        }
    }

    /// Chooses the ports of `wanted` (see [`Self::choose_ports`]) and
    /// assigns their counter slots; a refusal names the port and its
    /// holder, and nothing is created.
    pub(super) fn new_mappings(
        &mut self,
        wanted: &[PortRequest],
        except: &[PortMapping],
        dual: bool,
    ) -> Result<Vec<PortMapping>, NetworkError> {
        let Refused { index, holder } = match self.choose_ports(wanted, except)? {
            Ok(chosen) => return self.claim_slots(chosen, dual),
            Err(refused) => refused,
        };
        let r = wanted[index];
        let (who, what) = self.describe(&holder);
        let socket = matches!(holder, Holder::Socket(_));
        Err(match r.fixed() {
            Some(m) if socket => NetworkError::HostPortInUse {
                mapping: m.to_string(),
                socket: what,
                process: who,
            },
            Some(m) => NetworkError::PortConflict {
                mapping: m.to_string(),
                holder: who,
                existing: what,
            },
            None => NetworkError::NoFreePort {
                request: r.to_string(),
                range: range_text(&candidates(&r, &self.host.ephemeral_ports())),
                last: self.holder_text(&holder),
            },
        })
    }

    /// Counter slots for new mappings, zeroing their old counts; with
    /// `dual` (an endpoint with both families) a second slot for the IPv6
    /// side of each mapping on every address.
    pub(super) fn claim_slots(
        &mut self,
        mut out: Vec<PortMapping>,
        dual: bool,
    ) -> Result<Vec<PortMapping>, NetworkError> {
        if out.is_empty() {
            return Ok(out);
        }
        // Indexed by slot, as far as the highest in use (the slots' number
        // follows `[maps] published_ports`); kept across requests.
        let used = &self
            .ports
            .get_or_insert_with(|| PortIndex::of(&self.state))
            .used;
        // Free slots in ascending order, found in one pass and zeroed in
        // one batch.
        let count = out.len()
            + if dual {
                out.iter().filter(|m| m.host_ip.is_none()).count()
            } else {
                0
            };
        let mut slots = self.dp.claim_stats_slots(used, count)?.into_iter();
        let mut next = || {
            slots
                .next()
                .ok_or(crate::datapath::nat::NatError::StatsFull(0))
        };
        for m in &mut out {
            m.stats_index = next()?;
            m.stats_index6 = None;
            if dual && m.host_ip.is_none() {
                m.stats_index6 = Some(next()?);
            }
        }
        Ok(out)
    }

    fn port_holder(
        &self,
        tcp: bool,
        ip: Option<std::net::IpAddr>,
        port: u16,
    ) -> Result<Option<Holder>, NetworkError> {
        Ok(self
            .host
            .port_holder(tcp, ip, port)
            .map_err(NetworkError::HostSockets)?
            .map(Holder::Socket))
    }

    /// `publish add`: more published ports on a live endpoint.
    pub async fn publish_add(
        &mut self,
        network: &str,
        endpoint: &str,
        specs: impl PublishSpecs,
    ) -> Result<Vec<PortMapping>, NetworkError> {
        let ep = self.endpoint_named(network, endpoint)?;
        if !matches!(ep.attachment, Attachment::Veth { .. }) {
            return Err(NetworkError::NotApplicable {
                network: ep.network.clone(),
                option: "--publish",
                driver: self.network(&ep.network)?.driver.name(),
            });
        }
        let (id, dual) = (ep.id.clone(), ep.ipv4.is_some() && ep.ipv6.is_some());
        let wanted = specs.mappings()?;
        let net = self.network(&ep.network)?;
        ports::check_families(&net.name, net.enable_ipv6, &wanted)?;
        let added = self.new_mappings(&wanted, &[], dual)?;
        self.change_ports(&id, &added, true).await?;
        Ok(added)
    }

    /// `publish rm`: stop publishing ports of a live endpoint. Their flows
    /// go with them (see [`Manager::persist`]): a client sending on one
    /// tuple must reach whatever publishes the port next, not the old
    /// target (moby#53384).
    pub async fn publish_rm(
        &mut self,
        network: &str,
        endpoint: &str,
        specs: impl PublishSpecs,
    ) -> Result<(), NetworkError> {
        let ep = self.endpoint_named(network, endpoint)?;
        let mut remove: Vec<PortMapping> = Vec::new();
        // What `remove` holds, for the check below (a request of 10 000
        // specs scanned `remove` for each: 10^8 comparisons).
        let mut taken: std::collections::HashSet<PortMapping> = std::collections::HashSet::new();
        for r in specs.mappings()? {
            // `-p 80` or a range removes the mapping it was given. One host
            // port (and address) is one mapping at most: the index has it.
            let wanted = |p: &PortMapping| r.matches(p) && !taken.contains(p);
            let found = match (r.host_ports, &self.ports) {
                (Some((a, b)), Some(index)) if a == b => index
                    .of_endpoint(&ep.id, &[(r.proto, a)])
                    .into_iter()
                    .find(wanted),
                _ => ep.published.iter().copied().find(wanted),
            }
            .ok_or_else(|| NetworkError::NotPublished {
                mapping: r.to_string(),
                endpoint: ep.name.clone(),
            })?;
            taken.insert(found);
            remove.push(found);
        }
        let id = ep.id.clone();
        self.change_ports(&id, &remove, false).await
    }
}

/// The host ports a request may take, in the order tried.
fn candidates(r: &PortRequest, ephemeral: &RangeInclusive<u16>) -> RangeInclusive<u16> {
    match r.host_ports {
        Some((a, b)) => a..=b,
        None => ephemeral.clone(),
    }
}

fn range_text(r: &RangeInclusive<u16>) -> String {
    format!("{}-{}", r.start(), r.end())
}
