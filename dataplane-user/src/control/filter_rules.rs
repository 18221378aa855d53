//! DOCKER-USER-style filter rules as the state keeps them and the front
//! doors parse them: `filter add [--network N] [--in IFACE] [--src CIDR |
//! --not-src CIDR] [--dport P[/tcp|udp]] --action drop|accept`.
//!
//! One list holds the rules of both families: a rule whose source is an
//! IPv4 CIDR is an IPv4 rule, one with an IPv6 CIDR an IPv6 rule (each
//! matches packets of its family only, negated or not), and a rule without
//! a source applies to both, as if written to iptables' and ip6tables'
//! DOCKER-USER chains alike.
//!
//! A list of rules comes in as one request (`filter_add_many`,
//! [`parse_request`]) or a rules file (`filter add --from-file`,
//! [`parse_rules`]): one rule per line in `filter add`'s flags, the form
//! `filter ls` prints. Compiling and applying them is the datapath's
//! (`crate::datapath::filter`). Control-plane code: it will move to
//! `control/` with the rest of the model.

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    datapath::{
        filter::{Action, FilterError, RuleConditions, SrcMatch},
        proto::Proto,
    },
    sys::names::ifname_problem,
};

/// ID`); the position in the list passed to [`compile`] is the evaluation
/// order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRule {
    pub id: u32,
    /// Network name; None: every network.
    #[serde(default)]
    pub network: Option<String>,
    /// Interface the packet came in on; None: any.
    #[serde(default)]
    pub in_iface: Option<String>,
    #[serde(default)]
    pub src: Option<SrcMatch>,
    /// Destination port after DNAT (the container's port).
    #[serde(default)]
    pub dport: Option<(u16, Proto)>,
    pub action: Action,
}

impl FilterRule {
    pub fn new(id: u32, spec: FilterSpec) -> FilterRule {
        FilterRule {
            id,
            network: spec.network,
            in_iface: spec.in_iface,
            src: spec.src,
            dport: spec.dport,
            action: spec.action,
        }
    }
}

/// The rule's conditions in CLI form, e.g. `--in eth0 --not-src
/// 192.168.1.1/32 --action drop`.
impl fmt::Display for FilterRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(n) = &self.network {
            write!(f, "--network {n} ")?;
        }
        if let Some(i) = &self.in_iface {
            write!(f, "--in {i} ")?;
        }
        if let Some(s) = &self.src {
            let flag = if s.negate { "--not-src" } else { "--src" };
            write!(f, "{flag} {} ", s.cidr)?;
        }
        if let Some((port, proto)) = &self.dport {
            write!(f, "--dport {port}/{} ", proto.name())?;
        }
        write!(f, "--action {}", self.action.name())
    }
}

/// `filter add`'s flags as typed, before any checking. Absent flags are
/// left out of the JSON, which keeps a request of 10 000 rules small.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_iface: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_src: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<String>,
    pub action: String,
}

/// A checked rule without its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSpec {
    pub network: Option<String>,
    pub in_iface: Option<String>,
    pub src: Option<SrcMatch>,
    pub dport: Option<(u16, Proto)>,
    pub action: Action,
}

impl FilterArgs {
    /// Checks every flag; an error names the flag and the value.
    pub fn parse(&self) -> Result<FilterSpec, FilterError> {
        let src = match (&self.src, &self.not_src) {
            (Some(src), Some(not_src)) => {
                return Err(FilterError::SrcAndNotSrc {
                    src: src.clone(),
                    not_src: not_src.clone(),
                })
            }
            (Some(v), None) => Some(SrcMatch {
                cidr: parse_cidr("--src", v)?,
                negate: false,
            }),
            (None, Some(v)) => Some(SrcMatch {
                cidr: parse_cidr("--not-src", v)?,
                negate: true,
            }),
            (None, None) => None,
        };
        if let Some(n) = &self.network {
            if n.trim().is_empty() {
                return Err(FilterError::Network(n.clone()));
            }
        }
        if let Some(i) = &self.in_iface {
            check_ifname(i)?;
        }
        let dport = self.dport.as_deref().map(parse_dport).transpose()?;
        let action = match self.action.to_ascii_lowercase().as_str() {
            "drop" => Action::Drop,
            "accept" => Action::Accept,
            _ => return Err(FilterError::Action(self.action.clone())),
        };
        Ok(FilterSpec {
            network: self.network.clone(),
            in_iface: self.in_iface.clone(),
            src,
            dport,
            action,
        })
    }
}

/// Checks every rule of a `filter_add_many` request; an error names the
/// rule by its index in `rules`, then the flag and the value.
pub fn parse_request(rules: &[FilterArgs]) -> Result<Vec<FilterSpec>, FilterError> {
    rules
        .iter()
        .enumerate()
        .map(|(index, args)| {
            args.parse().map_err(|e| FilterError::InRequest {
                index,
                source: Box::new(e),
            })
        })
        .collect()
}

/// An address (a /32 or /128) or a CIDR, of either family. Host bits are
/// cleared, as iptables and ip6tables do (`-s 192.168.1.7/24` means
/// 192.168.1.0/24, `-s 2001:db8::1/32` 2001:db8::/32).
fn parse_cidr(flag: &'static str, value: &str) -> Result<IpNet, FilterError> {
    let bad = || FilterError::Cidr {
        flag,
        value: value.to_owned(),
    };
    let net = if value.contains('/') {
        IpNet::from_str(value).map_err(|_| bad())?
    } else {
        IpNet::from(IpAddr::from_str(value).map_err(|_| bad())?)
    };
    Ok(net.trunc())
}

/// `PORT[/tcp|udp]`, TCP when no protocol is given (as Docker's `-p`).
fn parse_dport(value: &str) -> Result<(u16, Proto), FilterError> {
    let (port, proto) = value.split_once('/').unwrap_or((value, "tcp"));
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => {
            return Err(FilterError::Proto {
                value: value.to_owned(),
                proto: proto.to_owned(),
            })
        }
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok((p, proto)),
        _ => Err(FilterError::Port {
            value: value.to_owned(),
            port: port.to_owned(),
        }),
    }
}

/// The kernel's `dev_valid_name`, plus a clear word for iptables' `eth+`.
fn check_ifname(name: &str) -> Result<(), FilterError> {
    if name.len() > 1 && name.ends_with('+') {
        return Err(FilterError::IfaceWildcard(name.to_owned()));
    }
    match ifname_problem(name) {
        None => Ok(()),
        Some(_) => Err(FilterError::Iface(name.to_owned())),
    }
}

impl RuleConditions for FilterRule {
    fn id(&self) -> u32 {
        self.id
    }

    fn network(&self) -> Option<&str> {
        self.network.as_deref()
    }

    fn in_iface(&self) -> Option<&str> {
        self.in_iface.as_deref()
    }

    fn src(&self) -> Option<SrcMatch> {
        self.src
    }

    fn dport(&self) -> Option<(u16, Proto)> {
        self.dport
    }

    fn action(&self) -> Action {
        self.action
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::{Ipv4Addr, Ipv6Addr},
    };

    use dataplane_common::filter::{first_common, first_with_host, HostRules, RuleBits};
    use ipnet::{Ipv4Net, Ipv6Net};

    use super::*;
    use crate::datapath::filter::{compile, Compiled, ResolvedRule, MAX_RULES};

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test CIDR")
    }

    fn bits(positions: &[u32]) -> RuleBits {
        RuleBits::from_positions(positions)
    }

    fn rule(id: u32, args: FilterArgs) -> FilterRule {
        FilterRule::new(id, args.parse().expect("valid test rule"))
    }

    fn drop_args() -> FilterArgs {
        FilterArgs {
            action: "drop".into(),
            ..FilterArgs::default()
        }
    }

    fn src(id: u32, cidr: &str) -> FilterRule {
        rule(
            id,
            FilterArgs {
                src: Some(cidr.into()),
                ..drop_args()
            },
        )
    }

    fn not_src(id: u32, cidr: &str) -> FilterRule {
        rule(
            id,
            FilterArgs {
                not_src: Some(cidr.into()),
                ..drop_args()
            },
        )
    }

    /// Interfaces `eth<N>` resolve to ifindex 100+N, networks `netN` to N.
    fn resolve(r: &FilterRule) -> ResolvedRule {
        let num = |s: &str, prefix: &str| {
            s.strip_prefix(prefix)
                .and_then(|n| n.parse::<u32>().ok())
                .expect("test name")
        };
        ResolvedRule {
            ifindex: r.in_iface.as_deref().map(|i| 100 + num(i, "eth")),
            network: r.network.as_deref().map(|n| num(n, "net")),
        }
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().expect("test CIDR")
    }

    /// The program's decision, computed the way the program does it: the
    /// position of the matching rule, the source looked up in the maps of
    /// the address's family.
    fn evaluate(
        c: &Compiled,
        ifindex: u32,
        addr: impl Into<IpAddr>,
        dport: (u16, Proto),
        network: u32,
    ) -> Option<u32> {
        if c.rules() == 0 {
            return None;
        }
        // As the program: the region (longest match in the trie) and the
        // address's own rules, if the hash holds it.
        let (region, host) = match addr.into() {
            IpAddr::V4(a) => (
                c.src
                    .iter()
                    .filter(|(n, _)| n.contains(&a))
                    .max_by_key(|(n, _)| n.prefix_len())
                    .map_or(&RuleBits::EMPTY, |(_, b)| b),
                c.hosts.get(&Ipv4Net::from(a)),
            ),
            IpAddr::V6(a) => (
                c.src6
                    .iter()
                    .filter(|(n, _)| n.contains(&a))
                    .max_by_key(|(n, _)| n.prefix_len())
                    .map_or(&RuleBits::EMPTY, |(_, b)| b),
                c.hosts6.get(&Ipv6Net::from(a)),
            ),
        };
        let (i, p, n) = (
            c.iface.lookup(&ifindex),
            c.port.lookup(&dport),
            c.network.lookup(&network),
        );
        first_with_host(first_common(region, i, p, n), host, i, p, n)
    }

    /// The reference: walk the rules in order; a source condition of the
    /// other family never holds.
    fn linear(
        rules: &[FilterRule],
        ifindex: u32,
        addr: impl Into<IpAddr>,
        dport: (u16, Proto),
        network: u32,
    ) -> Option<u32> {
        let addr = addr.into();
        (0u32..).zip(rules).find_map(|(pos, r)| {
            let res = resolve(r);
            let ok = res.ifindex.is_none_or(|i| i == ifindex)
                && res.network.is_none_or(|n| n == network)
                && r.dport.is_none_or(|d| d == dport)
                && r.src.is_none_or(|s| {
                    s.cidr.network().is_ipv4() == addr.is_ipv4()
                        && s.cidr.contains(&addr) != s.negate
                });
            ok.then_some(pos)
        })
    }

    #[test]
    fn src_bitmaps_per_region_nested_and_disjoint() {
        let rules = [
            src(10, "10.0.0.0/8"),      // 0
            not_src(11, "10.1.0.0/16"), // 1
            src(12, "10.1.2.0/24"),     // 2
            not_src(13, "192.168.1.1"), // 3
            rule(14, drop_args()),      // 4: no source condition
            src(15, "172.16.0.0/12"),   // 5: disjoint from the others
        ];
        let c = compile(&rules, resolve).expect("compile");
        let want: BTreeMap<Ipv4Net, Box<RuleBits>> = [
            // Outside every listed CIDR: only the negations and rule 4.
            ("0.0.0.0/0", bits(&[1, 3, 4])),
            ("10.0.0.0/8", bits(&[0, 1, 3, 4])),
            // In 10.1/16 but not 10.1.2/24: --not-src 10.1/16 fails.
            ("10.1.0.0/16", bits(&[0, 3, 4])),
            ("10.1.2.0/24", bits(&[0, 2, 3, 4])),
            ("172.16.0.0/12", bits(&[1, 3, 4, 5])),
            ("192.168.1.1/32", bits(&[1, 4])),
        ]
        .into_iter()
        .map(|(n, b)| (net(n), Box::new(b)))
        .collect();
        assert_eq!(c.src, want);
    }

    #[test]
    fn host_bits_are_cleared_and_duplicates_share_an_entry() {
        let rules = [src(1, "10.1.2.3/16"), not_src(2, "10.1.0.0/16")];
        let c = compile(&rules, resolve).expect("compile");
        assert_eq!(
            rules[0].src.map(|s| s.cidr),
            Some(net("10.1.0.0/16").into())
        );
        assert_eq!(c.src.len(), 2, "{:?}", c.src);
        assert_eq!(*c.src[&net("10.1.0.0/16")], bits(&[0]));
        assert_eq!(*c.src[&net("0.0.0.0/0")], bits(&[1]));
    }

    #[test]
    fn wildcard_bitmaps_fold_into_named_values() {
        let rules = [
            rule(
                1,
                FilterArgs {
                    in_iface: Some("eth1".into()),
                    dport: Some("80/tcp".into()),
                    network: Some("net7".into()),
                    ..drop_args()
                },
            ),
            rule(
                2,
                FilterArgs {
                    in_iface: Some("eth2".into()),
                    dport: Some("53/udp".into()),
                    ..drop_args()
                },
            ),
            rule(3, drop_args()),
            rule(
                4,
                FilterArgs {
                    dport: Some("80".into()),
                    action: "accept".into(),
                    ..FilterArgs::default()
                },
            ),
        ];
        let c = compile(&rules, resolve).expect("compile");
        assert_eq!(c.iface.any, bits(&[2, 3]));
        assert_eq!(*c.iface.by_key[&101], bits(&[0, 2, 3]));
        assert_eq!(*c.iface.by_key[&102], bits(&[1, 2, 3]));
        assert_eq!(*c.iface.lookup(&5), bits(&[2, 3]), "unnamed interface");
        assert_eq!(c.port.any, bits(&[2]));
        assert_eq!(*c.port.by_key[&(80, Proto::Tcp)], bits(&[0, 2, 3]));
        assert_eq!(*c.port.by_key[&(53, Proto::Udp)], bits(&[1, 2]));
        assert_eq!(*c.port.lookup(&(80, Proto::Udp)), bits(&[2]));
        assert_eq!(c.network.any, bits(&[1, 2, 3]));
        assert_eq!(*c.network.by_key[&7], bits(&[0, 1, 2, 3]));
        assert_eq!(*c.src[&net("0.0.0.0/0")], bits(&[0, 1, 2, 3]));
        assert_eq!(
            c.actions,
            vec![
                (1, Action::Drop),
                (2, Action::Drop),
                (3, Action::Drop),
                (4, Action::Accept)
            ]
        );
        assert_eq!(c.rules(), 4);
    }

    #[test]
    fn first_match_in_rule_order() {
        let accept_one = rule(
            1,
            FilterArgs {
                src: Some("192.0.2.3".into()),
                action: "accept".into(),
                ..FilterArgs::default()
            },
        );
        let drop_all = rule(2, drop_args());
        let client = |last: u8| Ipv4Addr::new(192, 0, 2, last);
        let c = compile(&[accept_one.clone(), drop_all.clone()], resolve).expect("compile");
        assert_eq!(evaluate(&c, 1, client(3), (80, Proto::Tcp), 1), Some(0));
        assert_eq!(evaluate(&c, 1, client(4), (80, Proto::Tcp), 1), Some(1));
        // Reversed, the drop-all rule shadows the accept.
        let c = compile(&[drop_all, accept_one], resolve).expect("compile");
        assert_eq!(evaluate(&c, 1, client(3), (80, Proto::Tcp), 1), Some(0));
        assert_eq!(c.actions[0], (2, Action::Drop));
        // No rules, no match.
        let c = compile(&[], resolve).expect("compile");
        assert_eq!(evaluate(&c, 1, client(3), (80, Proto::Tcp), 1), None);
    }

    /// The address of the `i`th /32 of the bench's kind: 10.0.0.0/8.
    fn host(i: u32) -> Ipv4Addr {
        Ipv4Addr::from(0x0a00_0000 | (i + 1))
    }

    /// `count` rules `--src 10.x.y.z/32 --action drop`, ids from 1.
    fn sources(count: u32) -> Vec<FilterRule> {
        (0..count)
            .map(|i| src(i + 1, &host(i).to_string()))
            .collect()
    }

    #[test]
    fn ten_thousand_sources_one_entry_each() {
        let mut rules = sources(10_000);
        let c = compile(&rules, resolve).expect("compile");
        // One 32-byte host entry per /32, not a 1952-byte bitmap each.
        assert_eq!(c.src.len(), 1, "only 0.0.0.0/0 in the trie");
        assert_eq!(c.hosts.len(), 10_000, "every /32 in the hash");
        assert!(
            c.src[&net("0.0.0.0/0")].is_empty(),
            "nothing matches elsewhere"
        );
        for i in [0, 1, 63, 64, 4095, 4096, 9_998, 9_999] {
            let entry = &c.hosts[&Ipv4Net::from(host(i))];
            assert_eq!(entry.positions(), [i], "{i}: {entry:?}");
            assert_eq!(evaluate(&c, 1, host(i), (80, Proto::Tcp), 1), Some(i));
        }
        assert_eq!(evaluate(&c, 1, host(10_000), (80, Proto::Tcp), 1), None);
        assert_eq!(c.iface.any.positions().count(), 10_000);

        // A catch-all drop at 10 000 and an accept for one /32 at 10 001
        // (shadowed by its own drop at 17).
        rules.push(rule(10_001, drop_args()));
        rules.push(rule(
            10_002,
            FilterArgs {
                src: Some(host(17).to_string()),
                action: "accept".into(),
                ..FilterArgs::default()
            },
        ));
        let c = compile(&rules, resolve).expect("compile");
        assert_eq!((c.src.len(), c.hosts.len()), (1, 10_000));
        assert!(c.src[&net("0.0.0.0/0")].positions().eq([10_000]));
        // Host 17's rules: the catch-all from its region, and its own two.
        assert_eq!(c.hosts[&Ipv4Net::from(host(17))].positions(), [17, 10_001]);
        assert_eq!(evaluate(&c, 1, host(17), (80, Proto::Tcp), 1), Some(17));
        let outsider = Ipv4Addr::new(192, 0, 2, 2);
        assert_eq!(evaluate(&c, 1, outsider, (80, Proto::Tcp), 1), Some(10_000));
        assert_eq!(c.actions[10_000], (10_001, Action::Drop));
    }

    #[test]
    fn single_addresses_that_do_not_fit_a_host_entry_are_regions() {
        let a = "10.0.0.1";
        // Eight rules naming one address: one more than a host entry holds.
        let mut rules: Vec<FilterRule> = (1..=8).map(|id| src(id, a)).collect();
        let c = compile(&rules, resolve).expect("compile");
        assert!(c.hosts.is_empty(), "{:?}", c.hosts);
        assert!(c.src[&net("10.0.0.1/32")].positions().eq(0..8));
        rules.pop();
        let c = compile(&rules, resolve).expect("compile");
        assert_eq!(
            c.hosts[&net("10.0.0.1/32")].positions(),
            [0, 1, 2, 3, 4, 5, 6]
        );
        assert!(!c.src.contains_key(&net("10.0.0.1/32")));
        // A --not-src naming it takes a region rule away: a region too.
        let rules = [src(1, "10.0.0.0/8"), not_src(2, a), src(3, a)];
        let c = compile(&rules, resolve).expect("compile");
        assert!(c.hosts.is_empty());
        assert!(c.src[&net("10.0.0.1/32")].positions().eq([0, 2]));
        assert!(c.src[&net("10.0.0.0/8")].positions().eq([0, 1]));
        let tcp80 = (80, Proto::Tcp);
        assert_eq!(
            evaluate(&c, 1, Ipv4Addr::new(10, 0, 0, 1), tcp80, 1),
            Some(0)
        );
        assert_eq!(
            evaluate(&c, 1, Ipv4Addr::new(10, 0, 0, 2), tcp80, 1),
            Some(0)
        );
        assert_eq!(
            evaluate(&c, 1, Ipv4Addr::new(11, 0, 0, 1), tcp80, 1),
            Some(1)
        );
    }

    #[test]
    fn matches_past_position_ten_thousand_and_up_to_the_last() {
        // 10 500 rules that do not match, then the ones that do: by port,
        // by network, then by a --not-src at the very last position.
        let mut rules = sources(10_500);
        rules.push(rule(
            20_000,
            FilterArgs {
                dport: Some("53/udp".into()),
                ..drop_args()
            },
        ));
        rules.push(rule(
            20_001,
            FilterArgs {
                network: Some("net9".into()),
                ..drop_args()
            },
        ));
        let last = MAX_RULES as usize - 1;
        while rules.len() < last {
            let id = 30_000 + rules.len() as u32;
            rules.push(rule(
                id,
                FilterArgs {
                    in_iface: Some("eth9".into()),
                    ..drop_args()
                },
            ));
        }
        rules.push(not_src(40_000, "192.0.2.0/24"));
        assert_eq!(rules.len(), MAX_RULES as usize);
        let c = compile(&rules, resolve).expect("compile");
        let outsider = Ipv4Addr::new(198, 51, 100, 7);
        assert_eq!(evaluate(&c, 1, outsider, (53, Proto::Udp), 1), Some(10_500));
        assert_eq!(evaluate(&c, 1, outsider, (80, Proto::Tcp), 9), Some(10_501));
        assert_eq!(
            evaluate(&c, 109, outsider, (80, Proto::Tcp), 1),
            Some(10_502)
        );
        assert_eq!(
            evaluate(&c, 1, outsider, (80, Proto::Tcp), 1),
            Some(MAX_RULES - 1)
        );
        let inside = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(evaluate(&c, 1, inside, (80, Proto::Tcp), 1), None);
        assert_eq!(
            evaluate(&c, 1, host(10_499), (80, Proto::Tcp), 1),
            Some(10_499)
        );
    }

    #[test]
    fn the_digest_follows_what_apply_writes() {
        let rules = sources(300);
        let d = compile(&rules, resolve).expect("compile").digest();
        assert_ne!(d, 0);
        assert_eq!(compile(&rules, resolve).expect("compile").digest(), d);
        // A different action, order, value or id: a different digest.
        let mut other = rules.clone();
        other[299].action = Action::Accept;
        let mut swapped = rules.clone();
        swapped.swap(3, 4);
        let mut moved = rules.clone();
        moved[7].src = Some(SrcMatch {
            cidr: net("10.9.9.9/32").into(),
            negate: false,
        });
        let mut renumbered = rules.clone();
        renumbered[0].id = 9_999;
        for changed in [other, swapped, moved, renumbered] {
            let c = compile(&changed, resolve).expect("compile");
            assert_ne!(c.digest(), d);
        }
        assert_ne!(compile(&[], resolve).expect("compile").digest(), d);
    }

    #[test]
    fn at_most_max_rules() {
        let rules: Vec<FilterRule> = (0..=MAX_RULES).map(|i| rule(i, drop_args())).collect();
        assert!(compile(&rules[..MAX_RULES as usize], resolve).is_ok());
        let err = compile(&rules, resolve).expect_err("one rule too many");
        assert_eq!(
            err.to_string(),
            format!("15361 filter rules: at most {MAX_RULES} are supported")
        );
    }

    #[test]
    fn resolution_and_ids_are_checked() {
        let r = rule(
            5,
            FilterArgs {
                in_iface: Some("eth1".into()),
                ..drop_args()
            },
        );
        let err =
            compile(std::slice::from_ref(&r), |_| ResolvedRule::default()).expect_err("unresolved");
        assert_eq!(
            err.to_string(),
            "filter rule 5: --in \"eth1\" was not resolved to an interface"
        );
        let err = compile(std::slice::from_ref(&r), |_| ResolvedRule {
            ifindex: Some(0),
            network: None,
        })
        .expect_err("zero");
        assert!(
            matches!(err, FilterError::ResolvedZero { id: 5, .. }),
            "{err}"
        );
        let err = compile(&[rule(1, drop_args())], |_| ResolvedRule {
            ifindex: None,
            network: Some(3),
        })
        .expect_err("extra");
        assert!(
            matches!(err, FilterError::ResolvedExtra { id: 1, .. }),
            "{err}"
        );
        let err =
            compile(&[rule(1, drop_args()), rule(1, drop_args())], resolve).expect_err("duplicate");
        assert!(matches!(err, FilterError::DuplicateId(1)), "{err}");
        let mut bad = rule(2, drop_args());
        bad.dport = Some((0, Proto::Udp));
        assert!(matches!(
            compile(&[bad], resolve),
            Err(FilterError::RulePort { id: 2 })
        ));
    }

    /// Random rule sets against the linear walk, over addresses chosen
    /// around every CIDR boundary.
    #[test]
    fn bitmaps_agree_with_a_linear_walk() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..200 {
            // Mostly short lists, every tenth one across several words.
            let count = if round % 10 == 0 {
                200 + next(400)
            } else {
                next(40)
            } as u32;
            let mut rules = Vec::new();
            for id in 0..count {
                let mut args = FilterArgs {
                    action: if next(2) == 0 { "drop" } else { "accept" }.into(),
                    ..FilterArgs::default()
                };
                // A third of the sources IPv6, shaped like the IPv4 ones.
                let cidr = if next(3) == 0 {
                    format!(
                        "2001:db8:{}:{}::/{}",
                        next(3),
                        next(3),
                        [32, 40, 47, 48, 128][next(5) as usize]
                    )
                } else {
                    format!(
                        "10.{}.{}.0/{}",
                        next(3),
                        next(3),
                        [8, 16, 23, 24, 32][next(5) as usize]
                    )
                };
                match next(3) {
                    0 => args.src = Some(cidr),
                    1 => args.not_src = Some(cidr),
                    _ => {}
                }
                if next(3) == 0 {
                    args.in_iface = Some(format!("eth{}", next(3)));
                }
                if next(3) == 0 {
                    args.dport = Some(format!(
                        "{}/{}",
                        80 + next(2),
                        ["tcp", "udp"][next(2) as usize]
                    ));
                }
                if next(3) == 0 {
                    args.network = Some(format!("net{}", 1 + next(2)));
                }
                rules.push(rule(id, args));
            }
            let c = compile(&rules, resolve).expect("compile");
            for _ in 0..200 {
                let addr: IpAddr = if next(2) == 0 {
                    Ipv6Addr::new(
                        [0x2001, 0x2002][next(2) as usize],
                        0xdb8,
                        next(4) as u16,
                        next(4) as u16,
                        0,
                        0,
                        0,
                        [0, 1, 0xffff][next(3) as usize],
                    )
                    .into()
                } else {
                    Ipv4Addr::new(
                        [10, 11][next(2) as usize],
                        next(4) as u8,
                        next(4) as u8,
                        [0, 1, 255][next(3) as usize],
                    )
                    .into()
                };
                let ifindex = 100 + next(4) as u32;
                let dport = (
                    80 + next(3) as u16,
                    [Proto::Tcp, Proto::Udp][next(2) as usize],
                );
                let network = next(4) as u32;
                assert_eq!(
                    evaluate(&c, ifindex, addr, dport, network),
                    linear(&rules, ifindex, addr, dport, network),
                    "round {round}: {addr} if {ifindex} {dport:?} net {network} over {:#?}",
                    rules.iter().map(ToString::to_string).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn parse_errors_name_the_flag_and_value() {
        let cases: [(FilterArgs, &str); 10] = [
            (
                FilterArgs {
                    src: Some("10.0.0.0/33".into()),
                    ..drop_args()
                },
                "--src \"10.0.0.0/33\": not an IP address or CIDR (e.g. 192.168.1.0/24 or 2001:db8::/32)",
            ),
            (
                FilterArgs {
                    not_src: Some("example.com".into()),
                    ..drop_args()
                },
                "--not-src \"example.com\": not an IP address or CIDR (e.g. 192.168.1.0/24 or 2001:db8::/32)",
            ),
            (
                FilterArgs {
                    src: Some("10.0.0.1".into()),
                    not_src: Some("10.0.0.2".into()),
                    ..drop_args()
                },
                "--src \"10.0.0.1\" and --not-src \"10.0.0.2\": give at most one of them",
            ),
            (
                FilterArgs {
                    dport: Some("0".into()),
                    ..drop_args()
                },
                "--dport \"0\": port \"0\" is not a number from 1 to 65535",
            ),
            (
                FilterArgs {
                    dport: Some("70000/udp".into()),
                    ..drop_args()
                },
                "--dport \"70000/udp\": port \"70000\" is not a number from 1 to 65535",
            ),
            (
                FilterArgs {
                    dport: Some("80/sctp".into()),
                    ..drop_args()
                },
                "--dport \"80/sctp\": unknown protocol \"sctp\" (tcp or udp)",
            ),
            (
                FilterArgs {
                    action: "reject".into(),
                    ..FilterArgs::default()
                },
                "--action \"reject\": expected drop or accept",
            ),
            (
                FilterArgs {
                    in_iface: Some("a-very-long-interface".into()),
                    ..drop_args()
                },
                "--in \"a-very-long-interface\": not an interface name (1 to 15 bytes, no '/', ':' or whitespace)",
            ),
            (
                FilterArgs {
                    in_iface: Some("eth+".into()),
                    ..drop_args()
                },
                "--in \"eth+\": interface wildcards are not supported; add a rule per interface",
            ),
            (
                FilterArgs {
                    network: Some(" ".into()),
                    ..drop_args()
                },
                "--network \" \": empty network name",
            ),
        ];
        for (args, want) in cases {
            let err = args.parse().expect_err(want);
            assert_eq!(err.to_string(), want);
        }
    }

    #[test]
    fn parse_accepts_docker_user_forms() {
        let spec = FilterArgs {
            in_iface: Some("eth0".into()),
            not_src: Some("192.168.1.1".into()),
            dport: Some("8080".into()),
            action: "DROP".into(),
            ..FilterArgs::default()
        }
        .parse()
        .expect("valid");
        assert_eq!(
            spec,
            FilterSpec {
                network: None,
                in_iface: Some("eth0".into()),
                src: Some(SrcMatch {
                    cidr: net("192.168.1.1/32").into(),
                    negate: true
                }),
                dport: Some((8080, Proto::Tcp)),
                action: Action::Drop,
            }
        );
        let r = FilterRule::new(3, spec);
        assert_eq!(
            r.to_string(),
            "--in eth0 --not-src 192.168.1.1/32 --dport 8080/tcp --action drop"
        );
        let json = serde_json::to_string(&r).expect("serialize");
        let back: FilterRule = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, r);
    }

    #[test]
    fn rule_bits_first() {
        assert_eq!(RuleBits::EMPTY.first(), None);
        assert_eq!(bits(&[5, 9, 70]).first(), Some(5));
        assert_eq!(bits(&[64]).first(), Some(64));
        assert_eq!(bits(&[127]).first(), Some(127));
        assert!(bits(&[127]).contains(127) && !bits(&[127]).contains(126));
        assert_eq!(bits(&[12_345, 10_000]).first(), Some(10_000));
    }

    #[test]
    fn a_rule_prints_as_filter_add_flags() {
        let args = FilterArgs {
            in_iface: Some("eth0".into()),
            not_src: Some("192.168.1.1/32".into()),
            dport: Some("8080/tcp".into()),
            ..drop_args()
        };
        let spec = args.parse().expect("valid");
        assert_eq!(
            FilterRule::new(1, spec).to_string(),
            "--in eth0 --not-src 192.168.1.1/32 --dport 8080/tcp --action drop"
        );
    }

    #[test]
    fn request_errors_name_the_rule_index() {
        let good = FilterArgs {
            src: Some("10.0.0.1".into()),
            ..drop_args()
        };
        let bad = FilterArgs {
            dport: Some("80/sctp".into()),
            ..drop_args()
        };
        let specs = parse_request(&[good.clone(), good.clone()]).expect("valid");
        assert_eq!(specs.len(), 2);
        let err = parse_request(&[good.clone(), good, bad]).expect_err("bad third");
        assert_eq!(
            error_chain(&err),
            "rules[2]: --dport \"80/sctp\": unknown protocol \"sctp\" (tcp or udp)"
        );
        // A request of absent flags stays small: no nulls.
        let json = serde_json::to_string(&drop_args()).expect("json");
        assert_eq!(json, r#"{"action":"drop"}"#);
        let back: FilterArgs = serde_json::from_str(&json).expect("back");
        assert_eq!(back, drop_args());
    }

    #[test]
    fn parse_accepts_ipv6_sources() {
        let src_of = |v: &str| {
            FilterArgs {
                src: Some(v.into()),
                ..drop_args()
            }
            .parse()
            .map(|s| s.src.map(|m| m.cidr))
        };
        let cases: [(&str, IpNet); 5] = [
            ("2001:db8::/32", net6("2001:db8::/32").into()),
            // Host bits cleared, as ip6tables does.
            ("2001:db8:1:2::7/48", net6("2001:db8:1::/48").into()),
            ("2001:db8::1", net6("2001:db8::1/128").into()),
            ("::/0", net6("::/0").into()),
            ("0.0.0.0/0", net("0.0.0.0/0").into()),
        ];
        for (value, want) in cases {
            assert_eq!(src_of(value).expect(value), Some(want), "{value}");
        }
        for bad in [
            "2001:db8::/129",
            "2001:db8::g",
            "fe80::1%eth0",
            "[2001:db8::1]",
        ] {
            let err = src_of(bad).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!(
                    "--src {bad:?}: not an IP address or CIDR (e.g. 192.168.1.0/24 or 2001:db8::/32)"
                )
            );
        }
        let r = not_src(4, "2001:db8::1/64");
        assert_eq!(r.to_string(), "--not-src 2001:db8::/64 --action drop");
        let json = serde_json::to_string(&r).expect("serialize");
        let back: FilterRule = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, r);
        // A state file written before IPv6 sources reads as it did.
        let old = r#"{"id":1,"src":{"cidr":"10.0.0.0/8","negate":false},"action":"drop"}"#;
        let back: FilterRule = serde_json::from_str(old).expect("old state");
        assert_eq!(back, src(1, "10.0.0.0/8"));
    }

    #[test]
    fn each_family_has_its_own_source_regions() {
        let rules = [
            src(10, "10.0.0.0/8"),          // 0: IPv4 only
            src(11, "2001:db8::/32"),       // 1: IPv6 only
            not_src(12, "2001:db8:1::/48"), // 2: IPv6 only, outside the /48
            src(13, "2001:db8::7"),         // 3: one IPv6 host
            rule(14, drop_args()),          // 4: both families
            not_src(15, "192.168.0.0/16"),  // 5: IPv4 only
        ];
        let c = compile(&rules, resolve).expect("compile");
        let want4: BTreeMap<Ipv4Net, Box<RuleBits>> = [
            ("0.0.0.0/0", bits(&[4, 5])),
            ("10.0.0.0/8", bits(&[0, 4, 5])),
            ("192.168.0.0/16", bits(&[4])),
        ]
        .into_iter()
        .map(|(n, b)| (net(n), Box::new(b)))
        .collect();
        assert_eq!(c.src, want4);
        let want6: BTreeMap<Ipv6Net, Box<RuleBits>> = [
            ("::/0", bits(&[2, 4])),
            ("2001:db8::/32", bits(&[1, 2, 4])),
            ("2001:db8:1::/48", bits(&[1, 4])),
        ]
        .into_iter()
        .map(|(n, b)| (net6(n), Box::new(b)))
        .collect();
        assert_eq!(c.src6, want6);
        // The one IPv6 host adds its own rule to its region, 2001:db8::/32.
        let host6 =
            BTreeMap::from([(net6("2001:db8::7/128"), HostRules::new(&[3]).expect("fits"))]);
        assert_eq!(c.hosts6, host6);
        assert!(c.hosts.is_empty());
        let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("test address");
        let tcp80 = (80, Proto::Tcp);
        assert_eq!(evaluate(&c, 1, v6("2001:db8::7"), tcp80, 1), Some(1));
        assert_eq!(evaluate(&c, 1, v6("2001:db8:1::7"), tcp80, 1), Some(1));
        assert_eq!(evaluate(&c, 1, v6("2001:db9::1"), tcp80, 1), Some(2));
        assert_eq!(
            evaluate(&c, 1, Ipv4Addr::new(10, 1, 1, 1), tcp80, 1),
            Some(0)
        );
        // Neither the IPv4 rule nor the IPv6 ones: the family-less rule.
        let outsider = Ipv4Addr::new(192, 168, 1, 1);
        assert_eq!(evaluate(&c, 1, outsider, tcp80, 1), Some(4));
        // Only IPv6 rules: an IPv4 packet meets no rule at all.
        let only6 = [src(1, "::/0"), not_src(2, "2001:db8::/32")];
        let c = compile(&only6, resolve).expect("compile");
        assert!(c.src[&net("0.0.0.0/0")].is_empty());
        assert_eq!(evaluate(&c, 1, Ipv4Addr::new(10, 1, 1, 1), tcp80, 1), None);
        assert_eq!(evaluate(&c, 1, v6("2001:db8::1"), tcp80, 1), Some(0));
        // The digest sees the IPv6 side: a different IPv6 CIDR, another one.
        let other =
            compile(&[src(1, "::/0"), not_src(2, "2001:db9::/32")], resolve).expect("compile");
        assert_ne!(other.digest(), c.digest());
    }

    /// An error and its sources, as the CLI prints them.
    fn error_chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut cur = e.source();
        while let Some(s) = cur {
            out.push_str(": ");
            out.push_str(&s.to_string());
            cur = s.source();
        }
        out
    }
}
