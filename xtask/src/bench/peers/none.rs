//! `none`: no NAT and no filter at all. The client routes to the container's
//! address directly and the container's egress is routed back unchanged: the
//! upper bound every translating peer is measured against.

use std::{net::IpAddr, time::Duration};

use anyhow::Result;

use super::{Install, Peer};
use crate::bench::{topology::Topology, workloads::Workload};

pub struct NoNat;

impl Peer for NoNat {
    fn name(&self) -> &'static str {
        "none"
    }

    fn setup(&mut self, topo: &Topology, _n: usize) -> Result<Install> {
        topo.wire_bridge()?;
        topo.wire_other_bridge()?;
        topo.client_route_to_subnet()?;
        Ok(Install {
            total: Duration::ZERO,
            mappings: Duration::ZERO,
            note: Some("nothing to install".into()),
            cli_mappings: None,
            cli_rules: None,
        })
    }

    fn add_remove(&mut self, _topo: &Topology) -> Result<Option<(Duration, Duration)>> {
        Ok(None)
    }

    fn ingress_addr(&self, topo: &Topology) -> IpAddr {
        topo.addrs().container
    }

    /// Hairpin and across networks: the idle container straight to the
    /// container across the bridge, the other network's routed by the
    /// host (no isolation): the floors the translating peers are measured
    /// against.
    fn skips(&self, _w: &Workload) -> Option<&'static str> {
        None
    }
}
