//! Process set-up done once, before the runtime starts any thread.
//!
//! **File descriptors.** Linux grows a process's descriptor table by
//! doubling it (64, 128, 256, …) the first time a descriptor beyond its size
//! is allocated. When the process has several threads, each growth waits for
//! an RCU grace period (`expand_fdtable` → `synchronize_rcu`), which stalls
//! the thread calling `accept`/`socket` for 10–20 ms. A proxy whose shadow
//! turns slow opens hundreds of sockets at once, so it met four or five of
//! those stalls on its worker threads exactly when the primary must not
//! notice anything (measured in `tests/faults.rs`: p99 1.4 ms → 13 ms while
//! copies to a trickling shadow piled up). Growing the table once here, while
//! the process is still single-threaded, costs no grace period; the table
//! never shrinks. The soft `RLIMIT_NOFILE` is raised to the hard limit first,
//! as most servers do, since each in-flight copy holds a socket.

use std::os::fd::AsFd;

/// Table size made ready at start: enough for thousands of connections and
/// copies in flight; 8192 slots cost about 64 KiB.
pub const FD_TABLE_SLOTS: u64 = 8192;

/// What [`prepare_file_descriptors`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdSetup {
    /// The soft `RLIMIT_NOFILE` in effect afterwards (`None`: unlimited).
    pub soft_limit: Option<u64>,
    /// Descriptor slots made ready (0 when growing failed).
    pub table_slots: u64,
}

/// Raises the soft descriptor limit to the hard one (when the hard one is
/// finite; otherwise the kernel refuses and the soft one stays) and grows the
/// descriptor table to `min(slots, soft limit)` entries. Best effort: a
/// failure leaves the process as it was (the kernel then grows the table on
/// demand).
pub fn prepare_file_descriptors(slots: u64) -> FdSetup {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let slots = limit.current.map_or(slots, |soft| slots.min(soft));
    let table_slots = if grow_table(slots) { slots } else { 0 };
    FdSetup {
        soft_limit: limit.current,
        table_slots,
    }
}

/// Duplicates a descriptor to the last slot of a `slots`
/// table, then closes it: the table keeps its size.
fn grow_table(slots: u64) -> bool {
    let Some(last) = slots.checked_sub(1).and_then(|l| i32::try_from(l).ok()) else {
        return false;
    };
    let Ok(probe) = std::fs::File::open("/dev/null") else {
        return false;
    };
    rustix::io::fcntl_dupfd_cloexec(probe.as_fd(), last).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_size() -> u64 {
        // `FDSize` in /proc/self/status is the table's current size.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn the_table_is_grown_and_stays_grown() {
        let setup = prepare_file_descriptors(4096);
        assert_eq!(
            setup.table_slots,
            4096.min(setup.soft_limit.unwrap_or(4096))
        );
        assert!(table_size() >= setup.table_slots, "FDSize {}", table_size());
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        // An unlimited hard limit cannot become the soft one (the kernel
        // caps descriptors at `nr_open`); a finite one is taken.
        if limit.maximum.is_some() {
            assert_eq!(limit.current, limit.maximum, "soft limit raised to hard");
        }
    }

    #[test]
    fn zero_slots_is_refused_without_harm() {
        assert_eq!(prepare_file_descriptors(0).table_slots, 0);
    }
}
