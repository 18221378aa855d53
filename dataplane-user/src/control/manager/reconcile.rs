//! Making the kernel match the state after a restart or a crash (bridges,
//! veths, program attachments, maps), and `dataplane cleanup`'s teardown.

use std::fs;

use super::{Manager, NetworkError};
use crate::{
    control::{
        driver::{self, EndpointPlan, HostEndPrograms, NetworkDriver as _},
        host::Host,
        model::{Attachment, Endpoint},
    },
    datapath::Datapath,
};

impl<D: Datapath, H: Host> Manager<D, H> {
    /// Makes the kernel match the state after a restart or reboot: every
    /// bridge exists with its gateway address and is up. Returns what it
    /// changed.
    pub async fn reconcile(&mut self) -> Result<Vec<String>, NetworkError> {
        let mut changed = Vec::new();
        let mut forwarding = false;
        for net in self.state.networks.values() {
            let driver = driver::for_network(net);
            changed.extend(driver.restore(&self.host, net).await?);
            forwarding |= driver.needs_forwarding(net);
        }
        changed.extend(self.repair_endpoints().await?);
        // A bridge re-created above has lost its ports: put the endpoints'
        // host ends (still alive with their namespaces) back on it.
        for ep in self.state.endpoints.values() {
            let Attachment::Veth { host_ifname } = &ep.attachment else {
                continue;
            };
            let Some(bridge) = self
                .state
                .networks
                .get(&ep.network)
                .and_then(|n| driver::for_network(n).bridge().map(str::to_owned))
            else {
                continue;
            };
            let (Some(port), Some(br)) = (
                self.host.link_by_name(host_ifname).await?,
                self.host.link_by_name(&bridge).await?,
            ) else {
                continue;
            };
            if port.master != Some(br.index) {
                self.host.set_master(port.index, br.index).await?;
                changed.push(format!("attached {host_ifname} to {bridge}"));
            }
        }
        if forwarding {
            self.host
                .enable_forwarding()
                .map_err(NetworkError::Forwarding)?;
        }
        for u in &self.state.uplinks {
            self.dp.attach_uplink(u)?;
        }
        for ep in self.state.endpoints.values() {
            if let Attachment::Veth { host_ifname } = &ep.attachment {
                if self.host.link_by_name(host_ifname).await?.is_some() {
                    self.dp.attach_endpoint(host_ifname, ep.ipv6.is_some())?;
                }
            }
        }
        self.sync_datapath().await?;
        Ok(changed)
    }

    /// After a crash between a kernel change and its state write, the two
    /// disagree; the state wins. A veth on one of our bridges that no
    /// endpoint owns is an interrupted connect's: removed. An endpoint whose
    /// veth is gone while its namespace lives (an interrupted disconnect, a
    /// link deleted by hand) is set up again as recorded.
    pub(super) async fn repair_endpoints(&mut self) -> Result<Vec<String>, NetworkError> {
        let mut changed = Vec::new();
        let mut bridges = Vec::new();
        for net in self.state.networks.values() {
            if let Some(b) = driver::for_network(net).bridge() {
                if let Some(l) = self.host.link_by_name(b).await? {
                    bridges.push(l.index);
                }
            }
        }
        let owned: std::collections::BTreeSet<&str> = self
            .state
            .endpoints
            .values()
            .filter_map(|e| match &e.attachment {
                Attachment::Veth { host_ifname } => Some(host_ifname.as_str()),
                _ => None,
            })
            .collect();
        for link in self.host.links().await? {
            let on_ours = link.master.is_some_and(|m| bridges.contains(&m));
            if on_ours
                && link.kind.as_deref() == Some("veth")
                && !owned.contains(link.name.as_str())
            {
                match self.host.delete_link(link.index).await {
                    Ok(()) => {
                        changed.push(format!("removed {}, a veth no endpoint owns", link.name))
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let missing: Vec<Endpoint> = {
            let mut v = Vec::new();
            for ep in self.state.endpoints.values() {
                if let Attachment::Veth { host_ifname } = &ep.attachment {
                    if self.host.link_by_name(host_ifname).await?.is_none()
                        && self.host.netns_id(&ep.netns).is_some()
                    {
                        v.push(ep.clone());
                    }
                }
            }
            v
        };
        for ep in missing {
            let (Some(net), Some(ifname), Some(mac), Attachment::Veth { host_ifname }) = (
                self.state.networks.get(&ep.network).cloned(),
                ep.ifname.clone(),
                ep.mac.map(|m| m.octets()),
                &ep.attachment,
            ) else {
                continue;
            };
            let suffix = host_ifname.trim_start_matches("veth").to_owned();
            // An earlier build's tcx link pin outlived its veth: remove it.
            self.dp.detach_endpoint(host_ifname)?;
            let programs =
                HostEndPrograms::new(self.dp.prepare_endpoint(host_ifname, ep.ipv6.is_some())?);
            let plan = EndpointPlan {
                network: &net,
                netns: &ep.netns,
                ifname: &ifname,
                ipv4: ep.ipv4,
                ipv6: ep.ipv6,
                mac,
                suffix: &suffix,
                programs: &programs,
            };
            // A half-made endpoint in the namespace would block the rename.
            let _ = self
                .host
                .teardown_endpoint(&ep.netns, Some(&ifname), &ep.attachment)
                .await;
            driver::for_network(&net)
                .setup_endpoint(&self.host, &plan)
                .await?;
            // Kept when the host layer attached them already.
            self.dp.attach_endpoint(host_ifname, ep.ipv6.is_some())?;
            changed.push(format!(
                "set up endpoint {} on {} again",
                ep.name, ep.network
            ));
        }
        Ok(changed)
    }

    /// Disconnects every endpoint and removes every bridge, then the state
    /// file: what `dataplane cleanup` does to networking. Best effort.
    pub async fn teardown_all(mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let eps: Vec<Endpoint> = self.state.endpoints.values().cloned().collect();
        for ep in &eps {
            if self.state.endpoints.contains_key(&ep.id) {
                if let Err(e) = self.disconnect_endpoint(ep).await {
                    errors.push(e.to_string());
                }
            }
        }
        for net in self.state.networks.values() {
            errors.extend(driver::for_network(net).remove(&self.host).await);
        }
        let path = self.store.path();
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("removing {}: {e}", path.display()));
            }
        }
        errors
    }
}
