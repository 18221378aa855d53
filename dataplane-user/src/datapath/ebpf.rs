//! The eBPF object: embedding it, loading it with every map pinned under the
//! [`PinRoot`] (an existing pin is reused, so a second load shares the maps of
//! the first and counters survive agent restarts; one of another layout is
//! migrated, replaced or refused first, see [`layout`]), and attaching its tc
//! programs through tcx links that are pinned too (the uplinks' and
//! loopback's; an endpoint's are `cls_bpf` filters, see [`super::endpoints`]).

use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::TcAttachOptions,
        LinkOrder, Program, ProgramError, ProgramFd, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use dataplane_common::{maps, nat::NatConfig};

use super::{
    bpffs::{current_netns_cookie, current_netns_ino, BpffsError, PinRoot},
    build::{self, BuildRecordError},
    layout::{self, Adoption, LayoutError},
    limits::{self, MapSizes},
};
use crate::sys::bpf as sys_bpf;

/// The object built by build.rs from `dataplane-ebpf` (bin `dataplane`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane"));

/// The ring buffer aya-log-ebpf writes log records to.
pub const AYA_LOGS: &str = "AYA_LOGS";

/// Every map in the object, pinned by name.
pub const PINNED_MAPS: [&str; 40] = [
    maps::PROTO_STATS,
    maps::DROP_STATS,
    maps::PORTS,
    maps::PORT_STATS,
    maps::SUBNETS,
    maps::HOST_ADDRS,
    maps::UPLINKS,
    maps::CT_TCP,
    maps::CT_OTHER,
    maps::FRAGS,
    maps::FRAGS6,
    maps::SOCK_REVNAT,
    maps::ENDPOINTS,
    maps::ENDPOINT_ROUTES,
    maps::SANDBOX_ADDRS,
    maps::OPEN_PORTS,
    maps::TRUSTED_IFACES,
    maps::FILTER_CONFIG,
    maps::FILTER_SRC,
    maps::FILTER_HOST,
    maps::FILTER_SRC6,
    maps::FILTER_HOST6,
    maps::FILTER_IFACE,
    maps::FILTER_PORT,
    maps::FILTER_NET,
    maps::FILTER_ACTIONS,
    maps::FILTER_STATS,
    maps::EVENTS,
    maps::EVENTS_LOST,
    maps::SUBNETS6,
    maps::ENDPOINTS6,
    maps::ENDPOINT_ROUTES6,
    maps::SANDBOX_ADDRS6,
    maps::PORTS6,
    maps::HOST_ADDRS6,
    maps::UPLINKS6,
    maps::CT6_TCP,
    maps::CT6_OTHER,
    maps::OPEN_PORTS6,
    maps::SOCK_REVNAT6,
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("loading the eBPF object failed")]
    Object(#[source] Box<EbpfError>),
    #[error("the record of the configured map sizes ({})", limits::SIZES_MAP)]
    Sizes(#[source] std::io::Error),
    #[error("rewriting the older pins' filter rules for this build's programs")]
    FilterUpgrade(#[source] Box<super::filter::upgrade::UpgradeError>),
    #[error("the eBPF object has no program {0}")]
    NoProgram(&'static str),
    #[error("program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("cannot read the network namespace of this thread")]
    Netns(#[source] std::io::Error),
    #[error("attaching {program} to {ifname} ({direction})")]
    Attach {
        program: &'static str,
        ifname: String,
        direction: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("pinning the link at {path}")]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{ifname} already has {program} attached ({direction}); pinned at {path}")]
    AlreadyAttached {
        program: &'static str,
        ifname: String,
        direction: &'static str,
        path: PathBuf,
    },
    #[error("nothing of {program} is attached to {ifname} ({direction}): no pin at {path}")]
    NotAttached {
        program: &'static str,
        ifname: String,
        direction: &'static str,
        path: PathBuf,
    },
    #[error("detaching the link pinned at {path}")]
    Detach {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildRecordError),
    #[error("moving the link pinned at {path} to the new program")]
    Relink {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {ifname}")]
    Filter {
        ifname: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("link for {path}")]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
}

/// Which side of an interface a tc program sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }

    const fn attach_type(self) -> TcAttachType {
        match self {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        }
    }
}

/// Puts the size of every configurable map into `want`: the one asked
/// (or recorded), else the object's. Returns the sizes for the loader.
fn resize(
    want: &mut std::collections::BTreeMap<String, sys_bpf::MapShape>,
    sizes: &MapSizes,
) -> Vec<(&'static str, u32)> {
    let mut out = Vec::new();
    for name in limits::GROUPS.iter().flat_map(|g| g.maps.iter().copied()) {
        let Some(shape) = want.get_mut(name) else {
            continue;
        };
        if let Some(size) = sizes.of_map(name) {
            shape.max_entries = size;
        }
        out.push((name, shape.max_entries));
    }
    out
}

/// A loaded instance of the object whose maps are the pinned ones.
pub struct Dataplane {
    ebpf: Ebpf,
    pins: PinRoot,
    adopted: Vec<Adoption>,
}

impl Dataplane {
    /// Loads the object, creating or reusing the pinned maps under `pins`.
    pub fn load(pins: &PinRoot) -> Result<Dataplane, LoadError> {
        Dataplane::load_with(pins, &NatConfig::DEFAULT)
    }

    /// Like [`Dataplane::load`], with masquerade settings other than the
    /// defaults (programs attached from this instance use them). Pinned
    /// maps are checked first and migrated or replaced when their layout is
    /// not the object's (see [`layout`]); each such map is logged and
    /// listed by [`Dataplane::adopted`].
    pub fn load_with(pins: &PinRoot, nat: &NatConfig) -> Result<Dataplane, LoadError> {
        Dataplane::load_sized(pins, nat, &MapSizes::default())
    }

    /// Like [`Dataplane::load_with`], with the configurable maps sized by
    /// `sizes` (the agent's `[maps]`): a pinned map of another size is
    /// migrated into one of the new size (see [`layout`]; a size below its
    /// live entry count is refused). The sizes set are recorded under the
    /// pins ([`limits::SIZES_MAP`]); a size left unset is the recorded one,
    /// else the object's, so loads without settings never undo the
    /// agent's.
    pub fn load_sized(
        pins: &PinRoot,
        nat: &NatConfig,
        sizes: &MapSizes,
    ) -> Result<Dataplane, LoadError> {
        pins.ensure()?;
        let mut names: Vec<&str> = PINNED_MAPS.to_vec();
        names.push(AYA_LOGS);
        let mut want = layout::declared(OBJECT, &names)?;
        let recorded = limits::recorded_sizes(pins).map_err(LoadError::Sizes)?;
        let resized = resize(&mut want, &sizes.or(recorded));
        // Read before any map is set aside: the endpoint filters' programs
        // use the maps pinned now.
        let owned = super::endpoints::OwnedMaps::read(pins);
        let mut plan = layout::prepare(pins, &want)?;
        let ebpf = match Dataplane::load_object(pins, nat, &resized) {
            Ok(ebpf) => ebpf,
            Err(e) => {
                plan.abort();
                return Err(e);
            }
        };
        let mut dp = Dataplane {
            ebpf,
            pins: pins.clone(),
            adopted: Vec::new(),
        };
        // Links made by another build (an upgrade) move to this one's
        // programs, so it runs its own datapath code.
        let ours = build::object_hash(OBJECT);
        let other_build = build::recorded(pins)? != Some(ours);
        if !plan.is_empty() {
            plan.copy()?;
        }
        // Before any link moves: the new programs must find the live rules.
        let converted = super::filter::upgrade::convert_v1_hosts(pins)
            .map_err(|e| LoadError::FilterUpgrade(Box::new(e)))?;
        if converted != 0 {
            tracing::info!(
                entries = converted,
                "the filter rules' single addresses are in this build's maps now"
            );
        }
        if !plan.is_empty() || other_build {
            // The programs attached earlier use the maps set aside (or are
            // another build's): they move to this load's programs.
            dp.relink();
            super::endpoints::relink_filters(&mut dp, &owned);
        }
        dp.adopted = plan.finish()?;
        if other_build {
            build::record(pins, ours)?;
        }
        if *sizes != MapSizes::default() {
            limits::record_sizes(pins, sizes).map_err(LoadError::Sizes)?;
        }
        for a in &dp.adopted {
            tracing::warn!("{a}");
        }
        Ok(dp)
    }

    /// Moves every pinned link under the pin root to this instance's
    /// program of the same name (`BPF_LINK_UPDATE`, atomic per link). Best
    /// effort: a link that cannot be moved keeps its program (and the old
    /// maps), with a warning naming it.
    fn relink(&mut self) {
        let dir = self.pins.links_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match self.relink_one(&path) {
                Ok(Some(kname)) => {
                    tracing::info!(link = %path.display(), "moved to the new {kname}");
                }
                Ok(None) => tracing::warn!(
                    link = %path.display(),
                    "its program is not in this object; left on the old maps"
                ),
                Err(e) => tracing::warn!(
                    link = %path.display(),
                    "left on the old maps: {}",
                    crate::sys::error_chain(&e)
                ),
            }
        }
    }

    fn relink_one(&mut self, path: &std::path::Path) -> Result<Option<String>, LoadError> {
        let relink_err = |source| LoadError::Relink {
            path: path.to_owned(),
            source,
        };
        let link = sys_bpf::obj_get(path).map_err(relink_err)?;
        let (_, kname) = sys_bpf::link_program(link.as_fd()).map_err(relink_err)?;
        let pin = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(prog) = self.loaded_program(&kname, &pin)? else {
            return Ok(None);
        };
        sys_bpf::link_update(link.as_fd(), prog.as_fd()).map_err(relink_err)?;
        Ok(Some(kname))
    }

    /// This object's program whose kernel name (cut to 15 bytes) is
    /// `kname`, loaded (verified) if it was not yet. Names that share their
    /// first 15 bytes (`dp_from_container` and `dp_from_container6`) are
    /// told apart by the link's pin name, which holds the whole name
    /// (`{ino}_{ifname}_{program}_{direction}`, `cgroup{ino}_{program}`).
    fn loaded_program(&mut self, kname: &str, pin: &str) -> Result<Option<ProgramFd>, LoadError> {
        let in_pin =
            |name: &str| pin.contains(&format!("_{name}_")) || pin.ends_with(&format!("_{name}"));
        let candidates: Vec<String> = self
            .ebpf
            .programs()
            .map(|(name, _)| name.to_owned())
            .filter(|name| name.len().min(15) == kname.len() && name.starts_with(kname))
            .collect();
        let chosen = match candidates.as_slice() {
            [one] => Some(one.clone()),
            many => many.iter().find(|n| in_pin(n)).cloned(),
        };
        let Some((name, prog)) = chosen.and_then(|c| {
            self.ebpf
                .programs_mut()
                .find(|(name, _)| *name == c.as_str())
        }) else {
            return Ok(None);
        };
        let name = name.to_owned();
        let err = |source| LoadError::Relink {
            path: PathBuf::from(&name),
            source: std::io::Error::other(source),
        };
        let fd = match prog {
            Program::SchedClassifier(p) => {
                if p.fd().is_err() {
                    p.load().map_err(err)?;
                }
                p.fd().map_err(err)?.try_clone()
            }
            Program::CgroupSockAddr(p) => {
                if p.fd().is_err() {
                    p.load().map_err(err)?;
                }
                p.fd().map_err(err)?.try_clone()
            }
            _ => return Ok(None),
        };
        fd.map(Some).map_err(|e| err(ProgramError::from(e)))
    }

    fn load_object(
        pins: &PinRoot,
        nat: &NatConfig,
        sizes: &[(&'static str, u32)],
    ) -> Result<Ebpf, LoadError> {
        let paths: Vec<(&str, PathBuf)> = PINNED_MAPS.iter().map(|m| (*m, pins.map(m))).collect();
        let cookie = current_netns_cookie().map_err(LoadError::Netns)?;
        let mut loader = EbpfLoader::new();
        for (name, size) in sizes {
            loader.map_max_entries(name, *size);
        }
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        // aya-log's ring buffer, shared like the rest so the agent reads the
        // log lines of programs other processes attached.
        let logs = pins.map(AYA_LOGS);
        loader.map_pin_path(AYA_LOGS, logs.as_path());
        // The namespace this loader runs in is the host's (see the sock
        // programs).
        loader.override_global("HOST_NETNS_COOKIE", &cookie, true);
        loader.override_global("NAT_CONFIG", nat, true);
        loader
            .load(OBJECT)
            .map_err(|e| LoadError::Object(Box::new(e)))
    }

    /// The pinned maps this load migrated or replaced (empty when every
    /// pin was as the object declares).
    pub fn adopted(&self) -> &[Adoption] {
        &self.adopted
    }

    /// Where this instance's maps are pinned.
    pub fn pins(&self) -> &PinRoot {
        &self.pins
    }

    /// The loaded object, for test runs and map access.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Loads (verifies) a tc program and returns it.
    pub fn tc_program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, LoadError> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(LoadError::NoProgram(name))?
            .try_into()
            .map_err(|e| LoadError::Program {
                name,
                source: Box::new(e),
            })?;
        if prog.fd().is_err() {
            prog.load().map_err(|e| LoadError::Program {
                name,
                source: Box::new(e),
            })?;
        }
        Ok(prog)
    }

    /// Attaches a tc program with tcx to `ifname` (in this thread's network
    /// namespace), after the programs already there, and pins the link, so
    /// the attachment outlives this process. Refuses a second attachment of
    /// the same program and direction.
    pub fn attach_tc(
        &mut self,
        program: &'static str,
        ifname: &str,
        direction: Direction,
    ) -> Result<PathBuf, LoadError> {
        self.attach_tc_with(program, ifname, direction, LinkOrder::default())
    }

    /// [`Dataplane::attach_tc`] at the given place in the tcx chain.
    pub fn attach_tc_with(
        &mut self,
        program: &'static str,
        ifname: &str,
        direction: Direction,
        order: LinkOrder,
    ) -> Result<PathBuf, LoadError> {
        let path = self.link_pin(program, ifname, direction)?;
        if path.exists() {
            return Err(LoadError::AlreadyAttached {
                program,
                ifname: ifname.to_owned(),
                direction: direction.name(),
                path,
            });
        }
        let prog = self.tc_program(program)?;
        let attach_err = |e| LoadError::Attach {
            program,
            ifname: ifname.to_owned(),
            direction: direction.name(),
            source: Box::new(e),
        };
        let link_id = prog
            .attach_with_options(
                ifname,
                direction.attach_type(),
                TcAttachOptions::TcxOrder(order),
            )
            .map_err(attach_err)?;
        let link = prog.take_link(link_id).map_err(attach_err)?;
        let fd_link: FdLink = link.try_into().map_err(|source| LoadError::Link {
            path: path.clone(),
            source,
        })?;
        fd_link.pin(&path).map_err(|source| LoadError::PinLink {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// [`Dataplane::attach_tc`], keeping an attachment that exists already.
    pub fn ensure_attached(
        &mut self,
        program: &'static str,
        ifname: &str,
        direction: Direction,
    ) -> Result<(), LoadError> {
        match self.attach_tc(program, ifname, direction) {
            Ok(_) | Err(LoadError::AlreadyAttached { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A tc program's fd, the program loaded (verified) first, for an
    /// attachment made elsewhere (a `cls_bpf` filter).
    pub fn program_fd(&mut self, program: &'static str) -> Result<OwnedFd, LoadError> {
        let program_err = |e| LoadError::Program {
            name: program,
            source: Box::new(e),
        };
        self.tc_program(program)?
            .fd()
            .map_err(program_err)?
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| program_err(ProgramError::IOError(e)))
    }

    fn link_pin(
        &self,
        program: &'static str,
        ifname: &str,
        direction: Direction,
    ) -> Result<PathBuf, LoadError> {
        let ino = current_netns_ino().map_err(LoadError::Netns)?;
        Ok(self.pins.link(ino, ifname, program, direction.name()))
    }
}

/// Detaches a pinned attachment made by [`Dataplane::attach_tc`] in this
/// thread's network namespace.
pub fn detach_tc(
    pins: &PinRoot,
    program: &'static str,
    ifname: &str,
    direction: Direction,
) -> Result<(), LoadError> {
    let ino = current_netns_ino().map_err(LoadError::Netns)?;
    let path = pins.link(ino, ifname, program, direction.name());
    if !path.exists() {
        return Err(LoadError::NotAttached {
            program,
            ifname: ifname.to_owned(),
            direction: direction.name(),
            path,
        });
    }
    let link = PinnedLink::from_pin(&path).map_err(|source| LoadError::Link {
        path: path.clone(),
        source,
    })?;
    // Unpinning removes the bpffs entry; dropping the returned fd then
    // releases the last reference and the kernel detaches the program.
    let fd_link = link
        .unpin()
        .map_err(|source| LoadError::Detach { path, source })?;
    drop(fd_link);
    Ok(())
}

/// [`detach_tc`], with nothing attached being fine.
pub fn ensure_detached(
    pins: &PinRoot,
    program: &'static str,
    ifname: &str,
    direction: Direction,
) -> Result<(), LoadError> {
    match detach_tc(pins, program, ifname, direction) {
        Ok(()) | Err(LoadError::NotAttached { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}
