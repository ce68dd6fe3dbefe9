//! Pretouching: the process's memory made resident at start, before the shards need it.
//!
//! A page the process touches for the first time costs a fault and a zeroed page from the
//! kernel, and on a virtual machine whose host backs guest memory lazily (or takes freed
//! memory back, as a balloon's free-page reporting does) much more: on the development
//! machine 800 MiB of first touches took 2.5 s (0.3 GB/s), the same pages touched again
//! 0.04 s. A node that builds the state of a million new entities, after a restart, a
//! failover or a bulk load, pays that inside its consume path. With `node.pretouch_mib`
//! the node allocates and writes that much through the allocator at start, frees it, and
//! tells the allocator to keep freed memory instead of returning it to the OS, so entity
//! state lands in pages that are already resident. The cost: that start-up time, and
//! resident memory that never falls below what the node once used (as a JVM with
//! `-XX:+AlwaysPreTouch` and a fixed heap).
//!
//! Not for: sizing (see docs/OPERATIONS.md, which says how much a player takes).

use std::time::{Duration, Instant};

/// mimalloc's `mi_option_purge_delay` in the enum of the mimalloc 3 that
/// `libmimalloc-sys` builds (its bindings leave the experimental options out): milliseconds
/// before freed memory is returned to the OS, -1 for never. Pinned by a test.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The largest piece allocated at once: big enough to come from the allocator's arenas in
/// whole pages, small enough that freeing it leaves them reusable for small objects.
const PIECE: usize = 1 << 20;

/// Makes `mib` MiB resident through the global allocator and keeps it with the process
/// (see the module). Returns how long it took. 0 does nothing and changes nothing.
pub fn pretouch(mib: u64) -> Duration {
    let started = Instant::now();
    if mib == 0 {
        return started.elapsed();
    }
    // SAFETY: mi_option_set only stores the option; it is read when memory is freed.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let page = page_size();
    let mut pieces: Vec<Box<[u8]>> = Vec::with_capacity(mib as usize);
    for _ in 0..mib {
        let mut piece = vec![0u8; PIECE].into_boxed_slice();
        // One write per page: calloc-style zeroed memory may not be touched yet.
        for i in (0..PIECE).step_by(page) {
            // SAFETY: i < PIECE, and the volatile write keeps the compiler from eliding it.
            unsafe { std::ptr::write_volatile(piece.as_mut_ptr().add(i), 1) };
        }
        pieces.push(piece);
    }
    drop(pieces);
    started.elapsed()
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purge_delay() -> std::ffi::c_long {
        // SAFETY: reads an option; no other test of this binary sets options.
        unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
    }

    #[test]
    fn a_pretouch_turns_purging_off_and_zero_changes_nothing() {
        pretouch(0);
        // mimalloc 3's default purge delay is 1000 ms unless MIMALLOC_PURGE_DELAY is set: any
        // other value means the enum moved and the constant must follow it.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(
                purge_delay(),
                1000,
                "mi_option_purge_delay is not option 15"
            );
        }
        pretouch(2);
        assert_eq!(purge_delay(), -1);
    }
}
