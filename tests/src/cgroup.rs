//! A cgroup v2 directory of the test's own, for the host-local (sock_addr)
//! programs: named `dpt-<run>-<n>-cg` under the v2 mount and removed on
//! drop, also on panic.

use std::{
    fs, io,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use dataplane_user::datapath::host_local;

use crate::unique_name;

/// Nothing is moved back out of it: every process put in it is a client the
/// test waited for, and a cgroup can only be removed once empty.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        let mount = host_local::cgroup2_mount().expect("cgroup v2 mount");
        let path = mount.join(unique_name("cg"));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestCgroup { path }
    }
}

impl Default for TestCgroup {
    fn default() -> TestCgroup {
        TestCgroup::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A reaped process has left the cgroup, but its removal from the
        // cgroup's count can lag a moment behind wait(): retry briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!("TestCgroup drop: rmdir {}: {e}", self.path.display());
                    return;
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}
