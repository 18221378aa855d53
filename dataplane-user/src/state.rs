//! The agent's desired state, persisted.
//!
//! Layout of the state directory (default `/var/lib/dataplane`, `--state-dir`):
//! ```text
//! state.json   {"version": 1, "networks": {NAME: Network},
//!               "endpoints": {ID: Endpoint}, "uplinks": [IFNAME],
//!               "filters": [FilterRule],
//!               "cni_attachments": [{network, container_id, ifname, endpoint}]}
//! state.lock   flock(2) target; held exclusively for a whole read-modify-write
//! ```
//! Writes are atomic: the new content goes to `state.json.tmp`, is fsynced,
//! renamed over `state.json`, and the directory is fsynced, so a crash at any
//! moment leaves either the old or the new file, never a torn one. IP
//! allocations are not stored separately: they are the endpoints' addresses
//! and the networks' gateways.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::network::model::{Endpoint, Network};

pub const DEFAULT_DIR: &str = "/var/lib/dataplane";
const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("locking {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid state file (fix or move it away; nothing was changed)")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: state version {found}, this agent reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub networks: BTreeMap<String, Network>,
    pub endpoints: BTreeMap<String, Endpoint>,
    /// Interfaces whose traffic the NAT programs translate.
    #[serde(default)]
    pub uplinks: Vec<String>,
    /// DOCKER-USER-style filter rules, in evaluation order.
    #[serde(default)]
    pub filters: Vec<crate::filter::FilterRule>,
    /// Endpoints made by the CNI plugin, by container id and interface name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_attachments: Vec<CniAttachment>,
}

/// A CNI attachment (`network/manager/cni.rs`): the runtime's key for it
/// and the endpoint it is (recorded before the endpoint is made).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniAttachment {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The endpoint's name on `network`.
    pub endpoint: String,
}

impl State {
    pub fn endpoints_of<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints
            .values()
            .filter(move |e| e.network == network)
    }
}

/// The state directory, locked for as long as this value lives.
pub struct StateStore {
    dir: PathBuf,
    _lock: File,
}

impl StateStore {
    /// Creates the directory if needed (mode 0700: it describes the host's
    /// networking) and takes the lock, waiting for another holder.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let dir_err = |source| StateError::Dir {
            path: dir.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        let lock_path = dir.join("state.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| StateError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        // SAFETY: flock on an fd we own; blocks until the lock is ours.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(StateError::Lock {
                path: lock_path,
                source: io::Error::last_os_error(),
            });
        }
        Ok(StateStore {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The stored state, or None when there is none yet.
    pub fn load(&self) -> Result<Option<State>, StateError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let state: State = serde_json::from_str(&text).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
        if state.version != VERSION {
            return Err(StateError::Version {
                path,
                found: state.version,
            });
        }
        Ok(Some(state))
    }

    pub fn save(&self, state: &State) -> Result<(), StateError> {
        let path = self.path();
        let tmp = self.dir.join("state.json.tmp");
        let werr = |p: &Path| {
            let p = p.to_owned();
            move |source| StateError::Write { path: p, source }
        };
        let mut state = state.clone();
        state.version = VERSION;
        let text = serde_json::to_vec_pretty(&state).map_err(|e| StateError::Write {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let mut f = File::create(&tmp).map_err(werr(&tmp))?;
        f.write_all(&text).map_err(werr(&tmp))?;
        f.sync_all().map_err(werr(&tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(werr(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(werr(&self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dp-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempdir("rt");
        let store = StateStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), None);
        let s = State {
            version: VERSION,
            ..State::default()
        };
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), Some(s));
        assert!(!dir.join("state.json.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_or_foreign_files_are_errors_not_defaults() {
        let dir = tempdir("bad");
        let store = StateStore::open(&dir).unwrap();
        fs::write(store.path(), "{not json").unwrap();
        let e = store.load().unwrap_err();
        assert!(e.to_string().contains("is not a valid state file"), "{e}");
        fs::write(
            store.path(),
            r#"{"version":7,"networks":{},"endpoints":{}}"#,
        )
        .unwrap();
        assert!(matches!(
            store.load(),
            Err(StateError::Version { found: 7, .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
