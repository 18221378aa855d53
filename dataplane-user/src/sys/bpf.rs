//! Raw `bpf(2)` map calls on byte buffers, for code that handles a map
//! whose layout it only knows at run time (adopting, migrating or creating
//! a pinned map of any shape); typed access goes through aya.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_LINK_UPDATE: libc::c_long = 29;
/// `BPF_NOEXIST`: an update that only creates.
const NOEXIST: u64 = 1;

/// Entries asked for per `BPF_MAP_LOOKUP_BATCH` call (more come back only
/// with a bucket that holds more: ENOSPC, retried with room for them).
const BATCH: usize = 4096;
/// At most this many bytes of keys and values per batch: a map with large
/// values (the filter's bitmaps) reads fewer entries a call, so no walk
/// allocates megabytes that the allocator then keeps (the agent's RSS grew
/// by 16 MB over a soak with 4 096-entry buffers for every map).
pub const BATCH_BYTES: usize = 256 * 1024;
/// The kernel's ENOTSUPP (not in libc: a map type without batch calls).
const ENOTSUPP: i32 = 524;

/// Map types whose values are one slot per possible CPU.
const PERCPU_TYPES: [u32; 4] = [5, 6, 10, 21]; // PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH, PERCPU_CGROUP_STORAGE

/// The shape of a map as the kernel reports it (`bpf_map_info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapShape {
    /// Whether the map's values are per CPU.
    pub fn per_cpu(&self) -> bool {
        PERCPU_TYPES.contains(&self.map_type)
    }
}

#[repr(C)]
#[derive(Default)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_map_info`; the kernel fills what fits.
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// The head of `struct bpf_link_info`.
#[repr(C)]
#[derive(Default)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
}

/// The head of `struct bpf_prog_info`, up to its name.
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
    load_time: u64,
    created_by_uid: u32,
    nr_map_ids: u32,
    map_ids: u64,
    name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct ByIdAttr {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr` for `cmd`,
    // with every pointer in it valid for the call; the kernel zero-extends
    // a shorter attr.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

fn info<T>(fd: BorrowedFd<'_>, info: &mut T) -> io::Result<()> {
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<T>() as u32,
        info: std::ptr::from_mut(info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &attr).map(|_| ())
}

/// Opens the object (map, program or link) pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        ..ObjAttr::default()
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The program a link runs: its id and its kernel name (the function name,
/// cut to 15 bytes).
pub fn link_program(link: BorrowedFd<'_>) -> io::Result<(u32, String)> {
    let mut li = LinkInfo::default();
    info(link, &mut li)?;
    let attr = ByIdAttr {
        id: li.prog_id,
        ..ByIdAttr::default()
    };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &attr)?;
    // SAFETY: a new fd that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut pi = ProgInfo::default();
    info(prog.as_fd(), &mut pi)?;
    let end = pi
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(pi.name.len());
    Ok((
        li.prog_id,
        String::from_utf8_lossy(&pi.name[..end]).into_owned(),
    ))
}

/// The ids of the maps the program with id `prog_id` uses (at most 64):
/// what tells the programs of one pin root from another's.
pub fn prog_map_ids(prog_id: u32) -> io::Result<Vec<u32>> {
    let attr = ByIdAttr {
        id: prog_id,
        ..ByIdAttr::default()
    };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &attr)?;
    // SAFETY: a new fd that nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut ids = vec![0u32; 64];
    let mut pi = ProgInfo {
        nr_map_ids: ids.len() as u32,
        map_ids: ids.as_mut_ptr() as u64,
        ..ProgInfo::default()
    };
    info(prog.as_fd(), &mut pi)?;
    ids.truncate((pi.nr_map_ids as usize).min(64));
    Ok(ids)
}

/// The id of the map (or other object) pinned at `path`.
pub fn pinned_map_id(path: &Path) -> io::Result<u32> {
    let fd = obj_get(path)?;
    let mut mi = MapInfo::default();
    info(fd.as_fd(), &mut mi)?;
    Ok(mi.id)
}

/// Pins the object (map, program or link) `fd` at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &attr).map(|_| ())
}

/// Makes `link` run `prog` instead of its program, atomically.
pub fn link_update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let attr = LinkUpdateAttr {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: prog.as_raw_fd() as u32,
        ..LinkUpdateAttr::default()
    };
    bpf(BPF_LINK_UPDATE, &attr).map(|_| ())
}

/// Writes entries given as keys and values packed back to back (`klen` and
/// `vlen` bytes each) with `BPF_MAP_UPDATE_BATCH`, at most `BATCH_BYTES`
/// a call. Ok(false), with nothing written, when the map type or kernel
/// has no batch updates (the caller writes one entry at a time). An error
/// part way leaves the entries before it written, as a loop of single
/// updates would.
pub fn update_batch(
    map: BorrowedFd<'_>,
    keys: &[u8],
    values: &[u8],
    (klen, vlen): (usize, usize),
) -> io::Result<bool> {
    let whole = |b: &[u8], len: usize| len != 0 && b.len().is_multiple_of(len);
    if !whole(keys, klen) || !whole(values, vlen) || keys.len() / klen != values.len() / vlen {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "keys and values of different counts for a batch update",
        ));
    }
    let total = keys.len() / klen;
    let per_call = (BATCH_BYTES / (klen + vlen)).max(1);
    let mut done = 0;
    while done < total {
        let n = per_call.min(total - done);
        let mut attr = BatchAttr {
            keys: keys[done * klen..].as_ptr() as u64,
            values: values[done * vlen..].as_ptr() as u64,
            count: n as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: as `bpf`; the kernel reads `count` keys and values from
        // the buffers (in bounds: `n` entries from `done` on) and writes
        // the count it did back into the attr, passed as mutable.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                std::ptr::from_mut(&mut attr),
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            let unsupported = matches!(
                e.raw_os_error(),
                Some(ENOTSUPP | libc::EINVAL | libc::EOPNOTSUPP)
            );
            if done == 0 && attr.count == 0 && unsupported {
                return Ok(false);
            }
            return Err(e);
        }
        done += n;
    }
    Ok(true)
}

/// An open map, handled as bytes.
#[derive(Debug)]
pub struct RawMap {
    fd: OwnedFd,
    shape: MapShape,
}

impl RawMap {
    /// Creates a map (not pinned) named `name` (cut to 15 bytes).
    pub fn create(name: &str, shape: MapShape) -> io::Result<RawMap> {
        let mut attr = CreateAttr {
            map_type: shape.map_type,
            key_size: shape.key_size,
            value_size: shape.value_size,
            max_entries: shape.max_entries,
            map_flags: shape.flags,
            ..CreateAttr::default()
        };
        for (d, s) in attr.map_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        let fd = bpf(BPF_MAP_CREATE, &attr)?;
        // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(RawMap { fd, shape })
    }

    /// Opens the map pinned at `path` and reads its shape. A pin that is
    /// not a map is an error (EINVAL from the info call).
    pub fn from_pin(path: &Path) -> io::Result<RawMap> {
        RawMap::from_owned(obj_get(path)?)
    }

    /// The map behind `fd` (another handle on it, for byte-level reads of
    /// a map opened elsewhere).
    pub fn from_fd(fd: BorrowedFd<'_>) -> io::Result<RawMap> {
        RawMap::from_owned(fd.try_clone_to_owned()?)
    }

    fn from_owned(fd: OwnedFd) -> io::Result<RawMap> {
        let mut mi = MapInfo::default();
        info(fd.as_fd(), &mut mi)?;
        let shape = MapShape {
            map_type: mi.map_type,
            key_size: mi.key_size,
            value_size: mi.value_size,
            max_entries: mi.max_entries,
            flags: mi.map_flags,
        };
        Ok(RawMap { fd, shape })
    }

    /// The map pinned at `path`, or a new one named `name` of `shape`
    /// pinned there when nothing is (the pinned records of one value: the
    /// layout schema, the attached build).
    pub fn pinned_or_created(path: &Path, name: &str, shape: MapShape) -> io::Result<RawMap> {
        match RawMap::from_pin(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let m = RawMap::create(name, shape)?;
                m.pin(path)?;
                Ok(m)
            }
            other => other,
        }
    }

    pub fn shape(&self) -> MapShape {
        self.shape
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Pins the map at `path`.
    pub fn pin(&self, path: &Path) -> io::Result<()> {
        obj_pin(self.fd.as_fd(), path)
    }

    /// Bytes of one value as user space reads and writes it (per-CPU maps:
    /// one 8-byte aligned slot per possible CPU).
    pub fn value_len(&self) -> io::Result<usize> {
        let size = self.shape.value_size as usize;
        if !self.shape.per_cpu() {
            return Ok(size);
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        Ok(size.div_ceil(8) * 8 * cpus)
    }

    /// Every key, in the kernel's order, at most `limit` of them.
    pub fn keys(&self, limit: usize) -> io::Result<Vec<Vec<u8>>> {
        let len = self.shape.key_size as usize;
        let mut keys: Vec<Vec<u8>> = Vec::new();
        while keys.len() < limit {
            let mut next = vec![0u8; len];
            let attr = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                key: keys.last().map_or(0, |k| k.as_ptr() as u64),
                value: next.as_mut_ptr() as u64,
                ..ElemAttr::default()
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &attr) {
                Ok(_) => keys.push(next),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(keys)
    }

    /// Every entry, as key and value bytes, handed to `each`, at most
    /// `limit`: read up to `BATCH` at a time (`BPF_MAP_LOOKUP_BATCH`: a few
    /// hundred calls for a million entries, where a walk takes two per
    /// entry). None, with nothing read, for a map type without batch reads
    /// (an LPM trie, an old kernel): the caller walks the keys instead.
    pub fn for_each_batched(
        &self,
        limit: usize,
        mut each: impl FnMut(&[u8], &[u8]),
    ) -> io::Result<Option<usize>> {
        let (klen, vlen) = (self.shape.key_size as usize, self.value_len()?);
        // The cursor is the map's own (a bucket number for hash maps, a key
        // for arrays): room for either.
        let token = klen.max(8);
        let (mut cursor, mut next) = (vec![0u8; token], vec![0u8; token]);
        let mut room = (BATCH_BYTES / (klen + vlen).max(1))
            .clamp(16, BATCH)
            .min((self.shape.max_entries as usize).max(16));
        let (mut keys, mut values) = (vec![0u8; room * klen], vec![0u8; room * vlen]);
        let mut n = 0;
        let mut first = true;
        while n < limit {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { cursor.as_ptr() as u64 },
                out_batch: next.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: room as u32,
                map_fd: self.fd.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            // SAFETY: as `bpf`, and the kernel writes `count` back into the
            // attr, which therefore is passed as mutable.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_LOOKUP_BATCH,
                    std::ptr::from_mut(&mut attr),
                    size_of::<BatchAttr>() as libc::c_uint,
                )
            };
            let err = (rc < 0).then(io::Error::last_os_error);
            match err.as_ref().and_then(io::Error::raw_os_error) {
                None | Some(libc::ENOENT) => {}
                Some(libc::ENOSPC) if room < BATCH * 16 => {
                    room *= 4;
                    keys.resize(room * klen, 0);
                    values.resize(room * vlen, 0);
                    continue;
                }
                Some(ENOTSUPP | libc::EINVAL | libc::EOPNOTSUPP) if first => return Ok(None),
                Some(_) => return Err(err.unwrap_or_else(|| io::Error::other("bpf"))),
            }
            let got = (attr.count as usize).min(room);
            for i in 0..got.min(limit - n) {
                each(
                    &keys[i * klen..(i + 1) * klen],
                    &values[i * vlen..(i + 1) * vlen],
                );
            }
            n += got;
            if err.is_some() {
                break;
            }
            std::mem::swap(&mut cursor, &mut next);
            first = false;
        }
        Ok(Some(n.min(limit)))
    }

    /// How many keys the map holds, counting at most `limit` (a walk the
    /// kernel restarts because keys vanish under it must still end):
    /// [`RawMap::for_each_batched`] where the map type allows.
    pub fn count_keys(&self, limit: usize) -> io::Result<usize> {
        if let Some(n) = self.for_each_batched(limit, |_, _| {})? {
            return Ok(n);
        }
        let len = self.shape.key_size as usize;
        let (mut key, mut next) = (vec![0u8; len], vec![0u8; len]);
        let mut n = 0;
        while n < limit {
            let attr = ElemAttr {
                map_fd: self.fd.as_raw_fd() as u32,
                key: if n == 0 { 0 } else { key.as_ptr() as u64 },
                value: next.as_mut_ptr() as u64,
                ..ElemAttr::default()
            };
            match bpf(BPF_MAP_GET_NEXT_KEY, &attr) {
                Ok(_) => n += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
                Err(e) => return Err(e),
            }
            std::mem::swap(&mut key, &mut next);
        }
        Ok(n)
    }

    /// The value at `key`, or None.
    pub fn lookup(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let mut value = vec![0u8; self.value_len()?];
        let attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &attr) {
            Ok(_) => Ok(Some(value)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` (of [`RawMap::value_len`] bytes) at `key`.
    pub fn update(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.write(key, value, 0)
    }

    /// Writes `value` at `key` unless the key is there: false if it was.
    pub fn insert_new(&self, key: &[u8], value: &[u8]) -> io::Result<bool> {
        match self.write(key, value, NOEXIST) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn write(&self, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
        if key.len() != self.shape.key_size as usize || value.len() != self.value_len()? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "key or value of the wrong size for this map",
            ));
        }
        let attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: key.as_ptr() as u64,
            value: value.as_ptr() as u64,
            flags,
            ..ElemAttr::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &attr).map(|_| ())
    }
}
