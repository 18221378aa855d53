//! Entering a network namespace given by path (`/var/run/netns/NAME`,
//! `/proc/PID/ns/net`) for the rest of the calling thread's life.

use std::{fs::File, io, os::fd::AsRawFd, path::Path};

/// Moves the calling thread into the network namespace at `path`. Threads
/// created afterwards inherit it, so call this before starting a runtime.
pub fn enter(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    // SAFETY: setns on a valid fd we own; CLONE_NEWNET checks its type.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
