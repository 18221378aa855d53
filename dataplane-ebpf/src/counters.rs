//! Bumping a per-CPU [`PktCounter`] slot.

use aya_ebpf::btf_maps::PerCpuArray;
use dataplane_common::stats::PktCounter;

#[inline(always)]
pub fn bump<const N: usize>(map: &PerCpuArray<PktCounter, N>, index: u32, len: u32) {
    if let Some(slot) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is written only by the CPU running this
        // program, and programs do not preempt each other on one CPU.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += u64::from(len);
        }
    }
}
