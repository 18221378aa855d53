//! Published ports for host-local clients: the cgroup sock_addr programs
//! (`dp_connect4`, `dp_sendmsg4`, `dp_recvmsg4`, `dp_getpeername4`), attached
//! to a cgroup v2 directory so every socket of the processes below it reaches
//! a published port (`127.0.0.1:8080`, `<host-ip>:8080`) at its container
//! without a proxy process, and sees the published address, never the
//! container's, in `getpeername`/`recvfrom`.
//!
//! With them, [`LOCAL_PROGRAMS`] (`dp_local_out`, then `dp_local_out6`) on
//! `lo`'s egress, in the namespace of the thread that attaches (the host's,
//! where the programs were loaded): they translate per packet the
//! connections `dp_connect4`/`dp_connect6` leave alone (a socket bound to
//! a loopback address, or with its own port whose translated tuple another
//! socket holds). Their replies are put into `lo`'s ingress with the host's
//! own addresses, which the IPv4 stack accepts there only with
//! `accept_local` (a local source) and `route_localnet` (127.0.0.0/8) on
//! `lo`: [`attach`] turns both on, and they stay on (only packets that
//! arrive on `lo` without a route, which only such redirects make, are
//! concerned; IPv6 needs neither). They are attached once per namespace
//! and detached with the last cgroup.
//!
//! Each attachment is a bpf_link pinned under [`PinRoot::links_dir`] as
//! `cgroup<inode>_<program>`, the inode being the cgroup directory's (its
//! cgroup id), so it outlives the process that made it and is removed by
//! [`detach`] (or by removing the pins). The programs read the pinned maps
//! `DP_PORTS`, `DP_HOST_ADDRS` and `DP_SOCK_REVNAT` of the same [`Dataplane`].

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::programs::{
    links::{FdLink, LinkError},
    CgroupAttachMode, CgroupSockAddr, ProgramError,
};

use super::{
    bpffs::{BpffsError, PinRoot},
    ebpf::{ensure_detached, Dataplane, Direction, LoadError},
};

/// The programs, in attach order: the reverse hooks come after the forward
/// ones, so a partial attach never rewrites replies of untranslated sockets
/// (and they would find no state anyway).
pub const PROGRAMS: [&str; 8] = [
    "dp_connect4",
    "dp_sendmsg4",
    "dp_connect6",
    "dp_sendmsg6",
    "dp_recvmsg4",
    "dp_getpeername4",
    "dp_recvmsg6",
    "dp_getpeername6",
];

/// The per-packet programs of host-local connections, IPv4's and IPv6's,
/// in their order on `lo`'s egress.
pub const LOCAL_PROGRAMS: [&str; 2] = ["dp_local_out", "dp_local_out6"];
const LOOPBACK: &str = "lo";
/// Sysctls `lo` needs for the replies IPv4's per-packet flows put into its
/// ingress (see the module docs).
const LOOPBACK_SYSCTLS: [&str; 2] = [
    "/proc/sys/net/ipv4/conf/lo/accept_local",
    "/proc/sys/net/ipv4/conf/lo/route_localnet",
];

/// `statfs(2)` magic of cgroup v2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

const PROC_MOUNTS: &str = "/proc/mounts";

#[derive(Debug, thiserror::Error)]
pub enum SockError {
    #[error("cannot read {path}")]
    Mounts {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup v2 filesystem is mounted (no cgroup2 line in {PROC_MOUNTS}); mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`")]
    NoCgroup2,
    #[error("cannot open cgroup {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a cgroup v2 directory (sock_addr programs attach only to cgroup2; its mount is the cgroup2 line of {PROC_MOUNTS})")]
    NotCgroup2 { path: PathBuf },
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("cgroup {cgroup} already has the published-port programs attached ({program} pinned at {path}); detach first")]
    AlreadyAttached {
        cgroup: PathBuf,
        program: &'static str,
        path: PathBuf,
    },
    #[error("nothing is attached to cgroup {cgroup}: no pins cgroup{ino}_* under {dir}")]
    NotAttached {
        cgroup: PathBuf,
        ino: u64,
        dir: PathBuf,
    },
    #[error("the eBPF object has no program {0}")]
    NoProgram(&'static str),
    #[error("loading {program} (for cgroup {cgroup})")]
    Load {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("attaching {program} to cgroup {cgroup}")]
    Attach {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("link of {program} on cgroup {cgroup}")]
    Link {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("pinning the link of {program} on cgroup {cgroup} at {path}")]
    PinLink {
        program: &'static str,
        cgroup: PathBuf,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{program} on {LOOPBACK} (egress), for cgroup {cgroup}")]
    Loopback {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: Box<LoadError>,
    },
    #[error("cannot set {path} to 1 (for dp_local_out's replies)")]
    Sysctl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("detaching {program} from cgroup {cgroup}: cannot remove the pin {path}")]
    Detach {
        program: &'static str,
        cgroup: PathBuf,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where cgroup v2 is mounted: the first `cgroup2` line of `/proc/mounts`
/// (`/sys/fs/cgroup` on unified hosts, often `/sys/fs/cgroup/unified` on
/// hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf, SockError> {
    let text = fs::read_to_string(PROC_MOUNTS).map_err(|source| SockError::Mounts {
        path: PROC_MOUNTS.into(),
        source,
    })?;
    parse_cgroup2_mount(&text).ok_or(SockError::NoCgroup2)
}

/// The mount point of the first cgroup2 line of a `/proc/mounts` text.
fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_dev, mountpoint, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_field(mountpoint)))
    })
}

/// `/proc/mounts` writes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = (bytes[i] == b'\\')
            .then(|| bytes.get(i + 1..i + 4))
            .flatten()
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pin path of one program's link on the cgroup with inode `ino`.
fn link_pin(pins: &PinRoot, ino: u64, program: &str) -> PathBuf {
    pins.links_dir().join(format!("cgroup{ino}_{program}"))
}

/// Inode (cgroup id) of a cgroup v2 directory, checked to be one.
fn cgroup_ino(cgroup: &Path) -> Result<u64, SockError> {
    let err = |source| SockError::Cgroup {
        path: cgroup.to_owned(),
        source,
    };
    let meta = fs::metadata(cgroup).map_err(err)?;
    let c = CString::new(cgroup.as_os_str().as_encoded_bytes())
        .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC || !meta.is_dir() {
        return Err(SockError::NotCgroup2 {
            path: cgroup.to_owned(),
        });
    }
    Ok(meta.ino())
}

/// Loads the four programs of `dp`, attaches each to the cgroup v2 directory
/// `cgroup` with a bpf_link and pins the links under `pins.links_dir()`,
/// after making sure [`LOCAL_PROGRAMS`] are on `lo` in this thread's network
/// namespace (which must be the one `dp` was loaded in). Returns the pin
/// paths of the cgroup's links. Refuses a cgroup that already has them; a failure
/// half-way removes the links it made.
pub fn attach(
    dp: &mut Dataplane,
    pins: &PinRoot,
    cgroup: &Path,
) -> Result<Vec<PathBuf>, SockError> {
    let ino = cgroup_ino(cgroup)?;
    pins.ensure()?;
    // First, and also for a cgroup attached already: an attachment made
    // before the program existed gets it too.
    attach_loopback(dp, pins, cgroup)?;
    for program in PROGRAMS {
        let path = link_pin(pins, ino, program);
        if path.exists() {
            return Err(SockError::AlreadyAttached {
                cgroup: cgroup.to_owned(),
                program,
                path,
            });
        }
    }
    let dir = File::open(cgroup).map_err(|source| SockError::Cgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    let mut pinned = Vec::with_capacity(PROGRAMS.len());
    for program in PROGRAMS {
        let path = link_pin(pins, ino, program);
        match attach_one(dp, &dir, cgroup, program, &path) {
            Ok(()) => pinned.push(path),
            Err(e) => {
                // Unpinning drops the last reference: the kernel detaches.
                for p in &pinned {
                    let _ = fs::remove_file(p);
                }
                if !any_cgroup_attached(pins) {
                    detach_loopback(pins);
                }
                return Err(e);
            }
        }
    }
    Ok(pinned)
}

/// [`LOCAL_PROGRAMS`] on `lo` and their sysctls, in this thread's
/// namespace; kept when there already (another cgroup's attachment, or an
/// attachment made before `dp_local_out6` existed, which gets it now). A
/// failure takes off what it put on when no cgroup uses it.
fn attach_loopback(dp: &mut Dataplane, pins: &PinRoot, cgroup: &Path) -> Result<(), SockError> {
    for path in LOOPBACK_SYSCTLS {
        fs::write(path, "1").map_err(|source| SockError::Sysctl {
            path: path.into(),
            source,
        })?;
    }
    for program in LOCAL_PROGRAMS {
        if let Err(source) = dp.ensure_attached(program, LOOPBACK, Direction::Egress) {
            if !any_cgroup_attached(pins) {
                detach_loopback(pins);
            }
            return Err(SockError::Loopback {
                program,
                cgroup: cgroup.to_owned(),
                source: Box::new(source),
            });
        }
    }
    Ok(())
}

/// Takes [`LOCAL_PROGRAMS`] off `lo` after a failed attach, best effort
/// (the attach's own error is the one reported).
fn detach_loopback(pins: &PinRoot) {
    for program in LOCAL_PROGRAMS {
        let _ = ensure_detached(pins, program, LOOPBACK, Direction::Egress);
    }
}

/// Whether some cgroup still has the programs attached (its connect4 pin).
fn any_cgroup_attached(pins: &PinRoot) -> bool {
    let suffix = format!("_{}", PROGRAMS[0]);
    fs::read_dir(pins.links_dir()).is_ok_and(|dir| {
        dir.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("cgroup") && name.ends_with(&suffix)
        })
    })
}

fn attach_one(
    dp: &mut Dataplane,
    dir: &File,
    cgroup: &Path,
    program: &'static str,
    path: &Path,
) -> Result<(), SockError> {
    let load_err = |source| SockError::Load {
        program,
        cgroup: cgroup.to_owned(),
        source: Box::new(source),
    };
    let prog: &mut CgroupSockAddr = dp
        .ebpf_mut()
        .program_mut(program)
        .ok_or(SockError::NoProgram(program))?
        .try_into()
        .map_err(load_err)?;
    if prog.fd().is_err() {
        prog.load().map_err(load_err)?;
    }
    let attach_err = |source| SockError::Attach {
        program,
        cgroup: cgroup.to_owned(),
        source: Box::new(source),
    };
    // bpf_link attachments to a cgroup always run alongside others (the
    // kernel treats them as BPF_F_ALLOW_MULTI); mode flags must be 0.
    let id = prog
        .attach(dir, CgroupAttachMode::Single)
        .map_err(attach_err)?;
    let link = prog.take_link(id).map_err(attach_err)?;
    let fd_link = FdLink::try_from(link).map_err(|source| SockError::Link {
        program,
        cgroup: cgroup.to_owned(),
        source,
    })?;
    fd_link.pin(path).map_err(|source| SockError::PinLink {
        program,
        cgroup: cgroup.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    Ok(())
}

/// Removes the pinned links [`attach`] made on `cgroup`, which detaches the
/// programs ([`LOCAL_PROGRAMS`] too, from this thread's namespace, when no
/// other cgroup has them). Tries every program; reports the first failure. Errors when
/// nothing was attached.
pub fn detach(pins: &PinRoot, cgroup: &Path) -> Result<(), SockError> {
    let ino = cgroup_ino(cgroup)?;
    let mut found = false;
    let mut first_err = None;
    for program in PROGRAMS {
        let path = link_pin(pins, ino, program);
        match fs::remove_file(&path) {
            Ok(()) => found = true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                found = true;
                first_err.get_or_insert(SockError::Detach {
                    program,
                    cgroup: cgroup.to_owned(),
                    path,
                    source,
                });
            }
        }
    }
    if found && !any_cgroup_attached(pins) {
        for program in LOCAL_PROGRAMS {
            ensure_detached(pins, program, LOOPBACK, Direction::Egress).map_err(|source| {
                SockError::Loopback {
                    program,
                    cgroup: cgroup.to_owned(),
                    source: Box::new(source),
                }
            })?;
        }
    }
    match (first_err, found) {
        (Some(e), _) => Err(e),
        (None, true) => Ok(()),
        (None, false) => Err(SockError::NotAttached {
            cgroup: cgroup.to_owned(),
            ino,
            dir: pins.links_dir(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_line_of_a_hybrid_host() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
        assert_eq!(
            parse_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn unescapes_octal_in_mount_points() {
        assert_eq!(unescape_mount_field(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(unescape_mount_field(r"/mnt/x\09"), r"/mnt/x\09");
        assert_eq!(unescape_mount_field("/plain"), "/plain");
    }

    #[test]
    fn link_pins_are_named_by_cgroup_inode() {
        let pins = PinRoot::new("/sys/fs/bpf/x");
        assert_eq!(
            link_pin(&pins, 42, "dp_connect4"),
            PathBuf::from("/sys/fs/bpf/x/links/cgroup42_dp_connect4")
        );
    }
}
