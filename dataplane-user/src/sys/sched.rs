//! The agent's background work (conntrack GC, map walks) at the lowest
//! CPU priority: it must not take CPU from the traffic the datapath
//! carries. On a 2-CPU host a tick's walk of a conntrack table holding the
//! last 10 s of a 10 000 conn/s load took whole rounds of egress CRR down
//! to half their rate at normal priority (docs/benchmarks.md).

/// Runs `f` on this thread at nice 19 (the lowest CFS weight), then puts
/// the thread's priority back: blocking-pool threads are reused for
/// requests, which must not inherit it.
pub fn in_background<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: gettid and getpriority/setpriority on this thread's own id;
    // no memory is passed.
    let tid = unsafe { libc::gettid() } as libc::id_t;
    // SAFETY: as above.
    let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
    // SAFETY: as above. Best effort: a refusal leaves the priority as it
    // was, which only costs the traffic some CPU.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 19) };
    let out = f();
    // SAFETY: as above; raising it back needs CAP_SYS_NICE, which the
    // agent (root) has.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, before) };
    out
}

#[cfg(test)]
mod tests {
    use super::in_background;

    #[test]
    fn the_priority_is_lowered_inside_and_restored_after() {
        // SAFETY: this thread's own id.
        let tid = unsafe { libc::gettid() } as libc::id_t;
        // SAFETY: as above.
        let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        // SAFETY: as above.
        let inside = in_background(|| unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) });
        assert_eq!(inside, 19);
        // SAFETY: as above.
        let after = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        // Unprivileged runs cannot raise it back; root restores it.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(after, before);
        }
    }
}
