//! The agent's desired state, persisted.
//!
//! Layout of the state directory (default `/var/lib/dataplane`, `--state-dir`):
//! ```text
//! state.json     {"version": 1, "networks": {NAME: Network},
//!                 "endpoints": {ID: Endpoint}, "uplinks": [IFNAME],
//!                 "filters": [FilterRule],
//!                 "cni_attachments": [{network, container_id, ifname, endpoint}],
//!                 "ula_global_id": ID (once an IPv6 network took a ULA /64),
//!                 "journal": GEN}
//! state.journal  {"journal": GEN}, then one JSON line per change since
//!                state.json was written (endpoints, published ports, the
//!                filter rules' list)
//! state.lock     flock(2) target; held exclusively for a whole read-modify-write
//! agent.lock     flock(2)ed by the running agent for its whole life, holding
//!                its pid: a second agent on the same state refuses to start
//! ```
//! A snapshot is atomic: the new content goes to `state.json.tmp`, is
//! fsynced, renamed over `state.json`, and the directory is fsynced, so a
//! crash at any moment leaves either the old or the new file, never a torn
//! one. Rewriting the whole state for one more published port costs
//! milliseconds at 10 000 ports, so the changes the container engines make
//! all day (connect, disconnect, publish add/rm) are appended to the journal
//! instead, one fdatasync'd line each (grouped: [`JournalSync`]); the next
//! snapshot starts a new
//! journal generation, and a journal whose generation is not the snapshot's
//! is stale and ignored. A torn last line (a crash during the append, so the
//! change was never acknowledged) is cut off. A journal whose header is not
//! a valid one is corrupt: an error, never read as "no journal" (that would
//! forget its endpoints). An append that fails (a full disk) is cut back
//! before the error returns, so the next append never follows a torn
//! fragment; if even the cut fails, the next change writes a snapshot. IP allocations are not stored
//! separately: they are the endpoints' addresses and the networks' gateways.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

pub use changes::apply_ports;
use changes::{changes, Change};
use serde::{Deserialize, Serialize};
pub use sync::{Durable, JournalSync};

use crate::control::{
    model::{Endpoint, Network},
    ports::PortMapping,
};

mod changes;
mod sync;

pub const DEFAULT_DIR: &str = "/var/lib/dataplane";
/// The state files' format, written into every snapshot.
pub const VERSION: u32 = 1;
/// Journal lines after which the next change writes a snapshot instead.
const JOURNAL_MAX_ENTRIES: usize = 4096;
/// Journal bytes after which the next change writes a snapshot instead.
const JOURNAL_MAX_BYTES: u64 = 4 << 20;

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
    #[error(
        "another agent (pid {pid}) runs on this state: {path} is locked; stop it first, or \
         give this one its own --state-dir"
    )]
    Busy { path: PathBuf, pid: String },
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
    #[error(
        "{path} line {line}: not a valid journal entry (fix or move it away; nothing was changed)"
    )]
    Journal {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: the journal header is corrupt ({found:?}); nothing was changed (move the file \
         away to start from state.json alone, losing the changes it holds)"
    )]
    JournalHeader { path: PathBuf, found: String },
    #[error("{path}: state version {found}, this agent reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "syncing the state journal to disk failed: the change is made but may not survive a \
         crash (the next change writes a whole snapshot)"
    )]
    Sync(#[source] io::Error),
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
    pub filters: Vec<crate::control::filter_rules::FilterRule>,
    /// Endpoints made by the CNI plugin, by container id and interface name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_attachments: Vec<CniAttachment>,
    /// The host's random 40-bit global ID (RFC 4193): IPv6 networks
    /// created without a subnet get a /64 of `fdXX:XXXX:XXXX::/48` from
    /// it. Made with the first such network and kept, so the prefix
    /// stays the same across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ula_global_id: Option<u64>,
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

/// state.json as written: the state and the journal generation continuing it.
#[derive(Serialize)]
struct SnapshotOut<'a> {
    #[serde(flatten)]
    state: &'a State,
    journal: u64,
}

#[derive(Deserialize)]
struct SnapshotIn {
    #[serde(flatten)]
    state: State,
    #[serde(default)]
    journal: u64,
}

#[derive(Serialize, Deserialize)]
struct JournalHeader {
    journal: u64,
}

/// A file's identity and version, to tell whether it changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        fs::metadata(path).ok().map(|m| FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
        })
    }
}

/// The running agent's claim on a state directory, held until dropped (or
/// the process ends: the kernel drops a flock with its last fd).
#[derive(Debug)]
pub struct AgentLock {
    _file: File,
}

impl AgentLock {
    /// Takes `dir`/agent.lock without waiting, and writes this process's
    /// pid into it; [`StateError::Busy`] names the holder when another
    /// process has it.
    pub fn take(dir: &Path) -> Result<AgentLock, StateError> {
        create_dir(dir)?;
        let path = dir.join("agent.lock");
        let lerr = |source| StateError::Lock {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(lerr)?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(lerr(e));
            }
            let pid = fs::read_to_string(&path).unwrap_or_default();
            let pid = pid.trim();
            return Err(StateError::Busy {
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.into()
                },
                path,
            });
        }
        file.set_len(0).map_err(lerr)?;
        writeln!(file, "{}", std::process::id()).map_err(lerr)?;
        Ok(AgentLock { _file: file })
    }
}

/// Creates the state directory if needed, mode 0700 (it describes the
/// host's networking).
fn create_dir(dir: &Path) -> Result<(), StateError> {
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
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(dir_err)
}

/// Where the files stood when this process last read or wrote them: a
/// cached state is current as long as [`StateStore::mark`] still equals it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    snapshot: Option<FileStamp>,
    journal: Option<FileStamp>,
    gen: u64,
    entries: usize,
    live: bool,
}

/// The state directory, locked for as long as this value lives.
pub struct StateStore {
    dir: PathBuf,
    _lock: File,
    /// The journal generation continuing state.json, and its line count.
    gen: u64,
    entries: usize,
    /// Whether state.journal is that generation's (appending to a stale or
    /// missing one would lose the change).
    live: bool,
    sync: Arc<JournalSync>,
    /// Whether an append returns before its fsync (see [`Self::defer`]).
    deferred: bool,
    /// The ticket of this store's last append not yet waited for (0: none).
    pending: u64,
}

impl StateStore {
    /// Creates the directory if needed (mode 0700: it describes the host's
    /// networking) and takes the lock, waiting for another holder.
    pub fn open(dir: &Path) -> Result<StateStore, StateError> {
        StateStore::lock(dir, true)?.ok_or_else(|| StateError::Lock {
            path: dir.join("state.lock"),
            source: io::Error::from_raw_os_error(libc::EWOULDBLOCK),
        })
    }

    /// Like [`Self::open`] without waiting: None while another holds the
    /// lock (the caller waits elsewhere, off its async thread).
    pub fn try_open(dir: &Path) -> Result<Option<StateStore>, StateError> {
        StateStore::lock(dir, false)
    }

    fn lock(dir: &Path, wait: bool) -> Result<Option<StateStore>, StateError> {
        create_dir(dir)?;
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
        let how = if wait {
            libc::LOCK_EX
        } else {
            libc::LOCK_EX | libc::LOCK_NB
        };
        // SAFETY: flock on an fd we own; with `wait` it blocks until the
        // lock is ours.
        if unsafe { libc::flock(lock.as_raw_fd(), how) } != 0 {
            let source = io::Error::last_os_error();
            if !wait && source.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(StateError::Lock {
                path: lock_path,
                source,
            });
        }
        Ok(Some(StateStore {
            dir: dir.to_owned(),
            _lock: lock,
            gen: 0,
            entries: 0,
            live: false,
            sync: Arc::default(),
            deferred: false,
            pending: 0,
        }))
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join("state.journal")
    }

    /// The files as they are now, with what this store knows of them.
    pub fn mark(&self) -> Mark {
        Mark {
            snapshot: FileStamp::of(&self.path()),
            journal: FileStamp::of(&self.journal_path()),
            gen: self.gen,
            entries: self.entries,
            live: self.live,
        }
    }

    /// Takes over what an earlier store of this process knew, when the files
    /// have not changed since (`mark` is that store's last [`Self::mark`]):
    /// true if so, and the caller's copy of the state is current.
    pub fn resume(&mut self, mark: &Mark) -> bool {
        let now = Mark {
            snapshot: FileStamp::of(&self.path()),
            journal: FileStamp::of(&self.journal_path()),
            gen: mark.gen,
            entries: mark.entries,
            live: mark.live,
        };
        if now != *mark || now.snapshot.is_none() {
            return false;
        }
        self.gen = mark.gen;
        self.entries = mark.entries;
        self.live = mark.live;
        true
    }

    /// The stored state (the snapshot with its journal replayed), or None
    /// when there is none yet.
    pub fn load(&mut self) -> Result<Option<State>, StateError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let snap: SnapshotIn = serde_json::from_str(&text).map_err(|source| StateError::Parse {
            path: path.clone(),
            source,
        })?;
        let mut state = snap.state;
        if state.version != VERSION {
            return Err(StateError::Version {
                path,
                found: state.version,
            });
        }
        self.gen = snap.journal;
        let replayed = self.replay(&mut state)?;
        self.live = replayed.is_some();
        self.entries = replayed.unwrap_or(0);
        Ok(Some(state))
    }

    /// Applies the journal of the current generation to `state`; returns
    /// its number of entries, None when there is no journal of this
    /// generation. A torn last line is cut off.
    fn replay(&self, state: &mut State) -> Result<Option<usize>, StateError> {
        let path = self.journal_path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let mut lines = text[..whole]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or_default();
        let Ok(header) = serde_json::from_slice::<JournalHeader>(first) else {
            let shown = if first.is_empty() { &text[..] } else { first };
            let shown = String::from_utf8_lossy(&shown[..shown.len().min(64)]).into_owned();
            return Err(StateError::JournalHeader { path, found: shown });
        };
        if header.journal != self.gen {
            return Ok(None); // stale: the snapshot already holds it
        }
        let mut n = 0;
        for (i, line) in lines.enumerate() {
            let change: Change =
                serde_json::from_slice(line).map_err(|source| StateError::Journal {
                    path: path.clone(),
                    line: i + 2,
                    source,
                })?;
            change.apply(state);
            n += 1;
        }
        if whole < text.len() {
            let werr = |source| StateError::Write {
                path: path.clone(),
                source,
            };
            let f = OpenOptions::new().write(true).open(&path).map_err(werr)?;
            f.set_len(whole as u64).map_err(werr)?;
            f.sync_all().map_err(werr)?;
        }
        Ok(Some(n))
    }

    /// Makes `new` the stored state, `old` being the one stored now: a few
    /// journal lines when the change is to endpoints only and the journal
    /// has room, a snapshot otherwise.
    pub fn commit(&mut self, old: &State, new: &State) -> Result<(), StateError> {
        match changes(old, new).filter(|_| self.journal_has_room()) {
            Some(lines) => self.append(&lines),
            None => self.save(new),
        }
    }

    /// [`Self::commit`] of a change known to be `ports` added to (`added`)
    /// or removed from endpoint `endpoint`, without comparing two states:
    /// one journal line; `new` (the state after it) is only asked for when
    /// a snapshot is due.
    pub fn commit_ports(
        &mut self,
        endpoint: &str,
        ports: &[PortMapping],
        added: bool,
        new: impl FnOnce() -> State,
    ) -> Result<(), StateError> {
        if !self.journal_has_room() {
            return self.save(&new());
        }
        let (endpoint, ports) = (endpoint.to_owned(), ports.to_vec());
        self.append(&[if added {
            Change::PortsAdd { endpoint, ports }
        } else {
            Change::PortsRm { endpoint, ports }
        }])
    }

    /// [`Self::commit`] of a change known to be the filter rules becoming
    /// `rules`, without comparing two states: one journal line; `new` (the
    /// state after it) is only asked for when a snapshot is due.
    pub fn commit_filters(
        &mut self,
        rules: &[crate::control::filter_rules::FilterRule],
        new: impl FnOnce() -> State,
    ) -> Result<(), StateError> {
        if !self.journal_has_room() {
            return self.save(&new());
        }
        self.append(&[Change::Filters(rules.to_vec())])
    }

    /// Whether the next change may be a journal line (else a snapshot).
    fn journal_has_room(&self) -> bool {
        !self.sync.broken()
            && self.live
            && self.entries < JOURNAL_MAX_ENTRIES
            && FileStamp::of(&self.journal_path()).is_some_and(|j| j.len < JOURNAL_MAX_BYTES)
            && FileStamp::of(&self.path()).is_some()
    }

    fn append(&mut self, changes: &[Change]) -> Result<(), StateError> {
        if changes.is_empty() {
            return Ok(());
        }
        let path = self.journal_path();
        let werr = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        let mut buf = Vec::new();
        for c in changes {
            serde_json::to_writer(&mut buf, c).map_err(|e| werr(io::Error::other(e)))?;
            buf.push(b'\n');
        }
        // One write of whole lines: a crash tears at most the last one.
        let mut f = OpenOptions::new().append(true).open(&path).map_err(werr)?;
        let start = f.metadata().map_err(werr)?.len();
        if let Err(e) = write_all(&mut f, &buf) {
            // Not acknowledged: cut it off, so the next append does not
            // follow a torn fragment (which would fail the next load).
            if f.set_len(start).and_then(|()| f.sync_data()).is_err() {
                self.live = false;
            }
            return Err(werr(e));
        }
        self.entries += changes.len();
        let f = Arc::new(f);
        let ticket = self.sync.written(f.clone());
        if self.deferred {
            self.pending = ticket;
            return Ok(());
        }
        let r = self.sync.wait(ticket);
        if r.is_err() && f.set_len(start).and_then(|()| f.sync_data()).is_err() {
            // Not acknowledged, as above (appends before it stay).
            self.live = false;
        }
        r
    }

    /// Writes a whole snapshot and starts a new, empty journal generation.
    pub fn save(&mut self, state: &State) -> Result<(), StateError> {
        let path = self.path();
        let gen = self.gen + 1;
        // Copied only to stamp another release's version (a copy of
        // 100 000 mappings is milliseconds); compact JSON, as the journal:
        // indentation made a snapshot of 100 000 mappings half again as
        // long to write.
        let state = match state.version {
            VERSION => std::borrow::Cow::Borrowed(state),
            _ => std::borrow::Cow::Owned(State {
                version: VERSION,
                ..state.clone()
            }),
        };
        let text = serde_json::to_vec(&SnapshotOut {
            state: &state,
            journal: gen,
        })
        .map_err(|e| StateError::Write {
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        self.replace(&path, &text)?;
        self.gen = gen;
        self.entries = 0;
        self.live = false;
        let header =
            serde_json::to_vec(&JournalHeader { journal: gen }).map_err(|e| StateError::Write {
                path: self.journal_path(),
                source: io::Error::other(e),
            })?;
        self.replace(&self.journal_path(), &[header.as_slice(), b"\n"].concat())?;
        self.live = true;
        self.sync.covered();
        Ok(())
    }

    /// Atomically replaces `path` with `content` (tmp file, fsync, rename,
    /// directory fsync).
    fn replace(&self, path: &Path, content: &[u8]) -> Result<(), StateError> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let werr = |p: &Path| {
            let p = p.to_owned();
            move |source| StateError::Write { path: p, source }
        };
        let mut f = File::create(&tmp).map_err(werr(&tmp))?;
        if let Err(e) = write_all(&mut f, content).and_then(|()| f.sync_all()) {
            let _ = fs::remove_file(&tmp);
            return Err(werr(&tmp)(e));
        }
        drop(f);
        fs::rename(&tmp, path).map_err(werr(path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(werr(&self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    /// Test seam: Some(n) makes every state write on this thread write its
    /// first `n` bytes and then fail with ENOSPC, as a full disk does.
    static FAIL_WRITES: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Makes the state writes of this thread fail after `n` bytes (None: work
/// again). Tests only.
#[cfg(test)]
pub(crate) fn fail_writes(n: Option<usize>) {
    FAIL_WRITES.with(|f| f.set(n));
}

fn write_all(f: &mut File, buf: &[u8]) -> io::Result<()> {
    #[cfg(test)]
    if let Some(n) = FAIL_WRITES.with(std::cell::Cell::get) {
        f.write_all(&buf[..n.min(buf.len())])?;
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    f.write_all(buf)
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
        let mut store = StateStore::open(&dir).unwrap();
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
        let mut store = StateStore::open(&dir).unwrap();
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

    fn endpoint(id: &str, ports: &[u16]) -> Endpoint {
        use crate::control::{model::Attachment, ports::Proto};
        Endpoint {
            id: id.into(),
            name: format!("ep-{id}"),
            network: "bridge".into(),
            netns: PathBuf::from("/var/run/netns/x"),
            attachment: Attachment::Veth {
                host_ifname: format!("veth{id}"),
            },
            ifname: Some("eth0".into()),
            mac: None,
            ipv4: None,
            ipv6: None,
            published: ports
                .iter()
                .map(|p| PortMapping {
                    host_ip: None,
                    host_port: *p,
                    container_port: 80,
                    proto: Proto::Tcp,
                    stats_index: u32::from(*p),
                    stats_index6: None,
                })
                .collect(),
            aliases: Vec::new(),
        }
    }

    fn journal_lines(dir: &Path) -> usize {
        fs::read_to_string(dir.join("state.journal"))
            .unwrap()
            .lines()
            .count()
    }

    #[test]
    fn endpoint_changes_go_to_the_journal_and_replay() {
        let dir = tempdir("journal");
        let mut store = StateStore::open(&dir).unwrap();
        let mut s0 = State {
            version: VERSION,
            ..State::default()
        };
        store.save(&s0).unwrap();
        let snapshot = fs::read(store.path()).unwrap();
        let mut s1 = s0.clone();
        s1.endpoints.insert("a".into(), endpoint("a", &[8080]));
        store.commit(&s0, &s1).unwrap();
        let mut s2 = s1.clone();
        s2.endpoints
            .insert("a".into(), endpoint("a", &[8080, 8081, 8082]));
        store.commit(&s1, &s2).unwrap();
        let mut s3 = s2.clone();
        s3.endpoints
            .insert("a".into(), endpoint("a", &[8080, 8082]));
        s3.endpoints.insert("b".into(), endpoint("b", &[]));
        store.commit(&s2, &s3).unwrap();
        let mut s4 = s3.clone();
        s4.endpoints.remove("b");
        store.commit(&s3, &s4).unwrap();
        // A filter change is a line of the rules as they now are.
        let mut s5 = s4.clone();
        s5.filters = vec![crate::control::filter_rules::FilterRule::new(
            1,
            crate::control::filter_rules::FilterArgs {
                src: Some("192.0.2.7".into()),
                action: "drop".into(),
                ..Default::default()
            }
            .parse()
            .unwrap(),
        )];
        store.commit(&s4, &s5).unwrap();
        let mut s4 = s5;
        // The snapshot was not rewritten; the journal holds header + 6 lines.
        assert_eq!(fs::read(store.path()).unwrap(), snapshot);
        assert_eq!(journal_lines(&dir), 7);
        let text = fs::read_to_string(dir.join("state.journal")).unwrap();
        assert!(
            text.contains("ports_add") && text.contains("ports_rm") && text.contains("filters"),
            "{text}"
        );
        drop(store);
        let mut store = StateStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), Some(s4.clone()));
        // A network change writes a snapshot and a new, empty generation.
        s0 = s4.clone();
        s4.uplinks.push("eth0".into());
        store.commit(&s0, &s4).unwrap();
        assert_eq!(journal_lines(&dir), 1);
        drop(store);
        assert_eq!(
            StateStore::open(&dir).unwrap().load().unwrap(),
            Some(s4.clone())
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn torn_and_stale_journals() {
        let dir = tempdir("torn");
        let mut store = StateStore::open(&dir).unwrap();
        let s0 = State {
            version: VERSION,
            ..State::default()
        };
        store.save(&s0).unwrap();
        let mut s1 = s0.clone();
        s1.endpoints.insert("a".into(), endpoint("a", &[1]));
        store.commit(&s0, &s1).unwrap();
        // A crash during the next append: half a line, never acknowledged.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("state.journal"))
            .unwrap();
        f.write_all(br#"{"endpoint_del":"#).unwrap();
        drop(f);
        drop(store);
        let mut store = StateStore::open(&dir).unwrap();
        assert_eq!(store.load().unwrap(), Some(s1.clone()));
        assert_eq!(journal_lines(&dir), 2, "the torn line is cut off");
        let mut s2 = s1.clone();
        s2.endpoints.remove("a");
        store.commit(&s1, &s2).unwrap();
        drop(store);
        assert_eq!(
            StateStore::open(&dir).unwrap().load().unwrap(),
            Some(s2.clone())
        );
        // A journal of another generation (a crash between the snapshot's
        // rename and the new journal's) is not replayed.
        let stale = fs::read(dir.join("state.journal")).unwrap();
        let mut store = StateStore::open(&dir).unwrap();
        store.load().unwrap();
        store.save(&s1).unwrap();
        fs::write(dir.join("state.journal"), &stale).unwrap();
        drop(store);
        assert_eq!(
            StateStore::open(&dir).unwrap().load().unwrap(),
            Some(s1.clone())
        );
        // Changes after loading with a stale journal are not appended to
        // it (they would be ignored on the next load).
        let mut store = StateStore::open(&dir).unwrap();
        store.load().unwrap();
        let mut s3 = s1.clone();
        s3.endpoints.insert("c".into(), endpoint("c", &[3]));
        store.commit(&s1, &s3).unwrap();
        drop(store);
        assert_eq!(
            StateStore::open(&dir).unwrap().load().unwrap(),
            Some(s3.clone())
        );
        store = StateStore::open(&dir).unwrap();
        store.load().unwrap();
        store.save(&s1).unwrap();
        drop(store);
        fs::write(dir.join("state.journal"), &stale).unwrap();
        // A garbled line in the middle is an error naming the line.
        let snap: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("state.json")).unwrap()).unwrap();
        let gen = snap["journal"].as_u64().unwrap();
        fs::write(
            dir.join("state.journal"),
            format!("{{\"journal\":{gen}}}\n{{\"endpoint_del\":\"a\"}}\nnot json\n{{\"endpoint_del\":\"b\"}}\n"),
        )
        .unwrap();
        let e = StateStore::open(&dir).unwrap().load().unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resume_sees_other_writers() {
        let dir = tempdir("resume");
        let mut store = StateStore::open(&dir).unwrap();
        let s0 = State {
            version: VERSION,
            ..State::default()
        };
        store.save(&s0).unwrap();
        let mark = store.mark();
        drop(store);
        let mut again = StateStore::open(&dir).unwrap();
        assert!(again.resume(&mark));
        let mut s1 = s0.clone();
        s1.endpoints.insert("a".into(), endpoint("a", &[1]));
        again.commit(&s0, &s1).unwrap();
        drop(again);
        // The first store's mark is out of date now.
        let mut third = StateStore::open(&dir).unwrap();
        assert!(!third.resume(&mark));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_journal_header_is_an_error_not_an_empty_journal() {
        let dir = tempdir("header");
        let mut store = StateStore::open(&dir).unwrap();
        let s0 = State {
            version: VERSION,
            ..State::default()
        };
        store.save(&s0).unwrap();
        let mut s1 = s0.clone();
        s1.endpoints.insert("a".into(), endpoint("a", &[1]));
        store.commit(&s0, &s1).unwrap();
        drop(store);
        let journal = dir.join("state.journal");
        let text = fs::read_to_string(&journal).unwrap();
        let garbled = text.replacen("journal", "jXurnal", 1);
        for bad in [garbled.as_str(), "", "{\"journal\":"] {
            fs::write(&journal, bad).unwrap();
            let e = StateStore::open(&dir).unwrap().load().unwrap_err();
            assert!(
                matches!(e, StateError::JournalHeader { .. }),
                "{bad:?}: {e}"
            );
            assert!(e.to_string().contains("state.journal"), "{e}");
            assert_eq!(fs::read_to_string(&journal).unwrap(), bad, "left as it was");
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_appends_share_fsyncs_and_all_become_durable() {
        const N: usize = 8;
        let dir = tempdir("group");
        let s0 = State {
            version: VERSION,
            ..State::default()
        };
        StateStore::open(&dir).unwrap().save(&s0).unwrap();
        // A slow disk: requests arrive while an fsync is in flight.
        let sync = Arc::new(JournalSync::slow(std::time::Duration::from_millis(100)));
        let start = Arc::new(std::sync::Barrier::new(N));
        let threads: Vec<_> = (0..N)
            .map(|i| {
                let (dir, sync, start) = (dir.clone(), sync.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut store = StateStore::open(&dir).unwrap();
                    store.set_sync(sync.clone());
                    store.defer();
                    let old = store.load().unwrap().unwrap();
                    let mut new = old.clone();
                    let id = format!("e{i}");
                    new.endpoints
                        .insert(id.clone(), endpoint(&id, &[i as u16 + 1]));
                    store.commit(&old, &new).unwrap();
                    let durable = store.take_durable();
                    let ticket = durable.ticket;
                    assert!(durable.pending());
                    drop(store); // the lock goes first, then the wait
                    durable.wait().unwrap();
                    // Answered only once an fsync covered the append.
                    assert!(sync.lock().durable >= ticket);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let syncs = sync.syncs();
        assert!(
            (1..N as u64).contains(&syncs),
            "{syncs} fsyncs for {N} appends"
        );
        assert_eq!(sync.lock().durable, N as u64);
        let loaded = StateStore::open(&dir).unwrap().load().unwrap().unwrap();
        assert_eq!(loaded.endpoints.len(), N, "every change is in the journal");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_append_is_cut_back_and_the_next_one_loads() {
        let dir = tempdir("enospc");
        let mut store = StateStore::open(&dir).unwrap();
        let s0 = State {
            version: VERSION,
            ..State::default()
        };
        store.save(&s0).unwrap();
        let mut s1 = s0.clone();
        s1.endpoints.insert("a".into(), endpoint("a", &[1]));
        store.commit(&s0, &s1).unwrap();
        let before = fs::read(dir.join("state.journal")).unwrap();
        let mut s2 = s1.clone();
        s2.endpoints.insert("b".into(), endpoint("b", &[2]));
        fail_writes(Some(10));
        let e = store.commit(&s1, &s2).unwrap_err();
        fail_writes(None);
        assert!(e.to_string().contains("state.journal"), "{e}");
        assert_eq!(
            fs::read(dir.join("state.journal")).unwrap(),
            before,
            "no fragment left"
        );
        // The disk has room again: the change goes through and loads.
        store.commit(&s1, &s2).unwrap();
        drop(store);
        assert_eq!(StateStore::open(&dir).unwrap().load().unwrap(), Some(s2));
        // A failed snapshot leaves the old one and no temporary file.
        let mut store = StateStore::open(&dir).unwrap();
        let s2 = store.load().unwrap().unwrap();
        let mut s3 = s2.clone();
        s3.uplinks.push("eth9".into());
        fail_writes(Some(3));
        store.commit(&s2, &s3).unwrap_err();
        fail_writes(None);
        assert!(!dir.join("state.json.tmp").exists());
        drop(store);
        assert_eq!(StateStore::open(&dir).unwrap().load().unwrap(), Some(s2));
        fs::remove_dir_all(&dir).unwrap();
    }
}
