//! The dataplane's bpffs layout, and mounting bpffs where nobody did.
//!
//! ```text
//! <root>/                      default /sys/fs/bpf/dataplane
//!   DP_PROTO_STATS, ...        every map, pinned under its own name
//!   links/<netns>_<ifname>_<program>_<direction>
//!                              one pinned bpf_link per attachment; the
//!                              attachment lives as long as the pin does
//! ```
//! `<netns>` is the inode number of the network namespace, so the same
//! interface name in two namespaces gets two pins. The root and `links/`
//! are made mode 0700; one that another user owns, or that group or others
//! may write to, is refused (bpffs itself is mode 1777).

use std::{
    ffi::CString,
    fs, io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt},
    path::{Path, PathBuf},
};

/// bpffs magic number from `statfs(2)`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("cannot inspect {path}")]
    Stat {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount bpffs on {path}")]
    Mount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not on a bpffs mount (mount one with `mount -t bpf bpf {mount}`)")]
    NotBpffs { path: PathBuf, mount: String },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is owned by uid {uid} with mode {mode:o}: another user could swap the \
         dataplane's maps and links; it must be owned by uid {want_uid} and not writable by \
         group or others (remove it, or fix its owner and mode)"
    )]
    Unsafe {
        path: PathBuf,
        uid: u32,
        mode: u32,
        want_uid: u32,
    },
    #[error("cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the dataplane keeps its pins.
#[derive(Clone, Debug)]
pub struct PinRoot {
    root: PathBuf,
}

impl PinRoot {
    pub fn new(root: impl Into<PathBuf>) -> PinRoot {
        PinRoot { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Pin path of one attachment in the current network namespace.
    pub fn link(&self, netns_ino: u64, ifname: &str, program: &str, direction: &str) -> PathBuf {
        self.links_dir()
            .join(format!("{netns_ino}_{ifname}_{program}_{direction}"))
    }

    /// Makes sure the root exists on a bpffs mount, mounting bpffs on
    /// `/sys/fs/bpf` when the root is under it and nothing is mounted there
    /// (fresh machines and containers often have none).
    pub fn ensure(&self) -> Result<(), BpffsError> {
        let sys_bpf = Path::new("/sys/fs/bpf");
        if self.root.starts_with(sys_bpf) && !is_bpffs(sys_bpf)? {
            mount_bpffs(sys_bpf)?;
        }
        // bpffs is mode 1777: anyone may have made the root before us, and
        // whoever owns it could replace a pinned map under the agent.
        for dir in [self.root.clone(), self.links_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| BpffsError::Create {
                    path: dir.clone(),
                    source,
                })?;
            check_owner(&dir)?;
        }
        if !is_bpffs(&self.root)? {
            return Err(BpffsError::NotBpffs {
                path: self.root.clone(),
                mount: self
                    .root
                    .parent()
                    .unwrap_or(&self.root)
                    .display()
                    .to_string(),
            });
        }
        Ok(())
    }

    /// Removes every pin under the root, and the root. Unpinning a link
    /// detaches its program; unpinning a map frees it once no program uses it.
    /// Best effort: every failure is reported, none stops the rest.
    pub fn remove_all(&self) -> Vec<BpffsError> {
        let mut errors = Vec::new();
        if self.root.exists() {
            remove_tree(&self.root, &mut errors);
        }
        errors
    }
}

/// Refuses a directory another user owns or may write to.
fn check_owner(dir: &Path) -> Result<(), BpffsError> {
    let meta = fs::symlink_metadata(dir).map_err(|source| BpffsError::Stat {
        path: dir.to_owned(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions.
    let want_uid = unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o7777;
    if meta.uid() != want_uid || mode & 0o022 != 0 || !meta.is_dir() {
        return Err(BpffsError::Unsafe {
            path: dir.to_owned(),
            uid: meta.uid(),
            mode,
            want_uid,
        });
    }
    Ok(())
}

fn remove_tree(dir: &Path, errors: &mut Vec<BpffsError>) {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let path = entry.path();
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir {
                    remove_tree(&path, errors);
                } else if let Err(source) = fs::remove_file(&path) {
                    errors.push(BpffsError::Remove { path, source });
                }
            }
        }
        Err(source) => errors.push(BpffsError::Remove {
            path: dir.to_owned(),
            source,
        }),
    }
    if let Err(source) = fs::remove_dir(dir) {
        errors.push(BpffsError::Remove {
            path: dir.to_owned(),
            source,
        });
    }
}

/// Whether the nearest existing ancestor of `path` lies on bpffs.
fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let mut probe = path;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => return Ok(false),
        }
    }
    let c = CString::new(probe.as_os_str().as_encoded_bytes()).map_err(|e| BpffsError::Stat {
        path: probe.to_owned(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: statfs on a NUL-terminated path into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(BpffsError::Stat {
            path: probe.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(st.f_type as i64 == BPF_FS_MAGIC)
}

fn mount_bpffs(path: &Path) -> Result<(), BpffsError> {
    let err = |source| BpffsError::Mount {
        path: path.to_owned(),
        source,
    };
    let target = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let fstype = c"bpf";
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Inode number of the calling thread's network namespace.
pub fn current_netns_ino() -> io::Result<u64> {
    Ok(fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// The network namespace cookie of the calling thread's namespace (what
/// `bpf_get_netns_cookie` returns for its sockets), via SO_NETNS_COOKIE.
pub fn current_netns_cookie() -> io::Result<u64> {
    // Linux's SO_NETNS_COOKIE (since 5.14); not in every libc version.
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a socket we close below; getsockopt writes at most `len` bytes
    // into `cookie`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        );
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(cookie)
    }
}
