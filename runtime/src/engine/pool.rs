//! Instance slots: runs are instantiated into wasmtime's pooling allocator,
//! whose slots (linear memories, tables, instance state) are reserved once
//! per runtime and reused, so that instantiating a cached action costs no
//! `mmap` of a fresh 4 GiB reservation. The pool has room for
//! [`MAX_CONCURRENT_RUNS`] runs; [`RunSlots`] makes further runs wait for a
//! slot instead of failing.

use std::sync::{Condvar, Mutex};

use wasmtime::{InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::capabilities::MAX_TABLE_ELEMENTS;
use crate::error::{Error, Result};

/// Runs one runtime instantiates at once; more wait for a slot.
pub const MAX_CONCURRENT_RUNS: u32 = 32;
/// Core module instances (and tables) one component may have: a few for
/// Rust and C, a few dozen for Python and JavaScript.
const CORE_INSTANCES_PER_COMPONENT: u32 = 64;
/// Linear memories one component may have (one for Rust, C, Python and
/// JavaScript components).
const MEMORIES_PER_COMPONENT: u32 = 2;

/// The pooling allocator sized for [`MAX_CONCURRENT_RUNS`]. Each memory slot
/// reserves (but does not commit) 4 GiB of address space, as a 32-bit
/// linear memory needs; a run's memory stays bounded by its own limit.
pub fn allocation_strategy() -> InstanceAllocationStrategy {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(MAX_CONCURRENT_RUNS)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_core_instances(MAX_CONCURRENT_RUNS * CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .total_memories(MAX_CONCURRENT_RUNS * MEMORIES_PER_COMPONENT)
        .max_tables_per_component(CORE_INSTANCES_PER_COMPONENT)
        .total_tables(MAX_CONCURRENT_RUNS * CORE_INSTANCES_PER_COMPONENT)
        .table_elements(MAX_TABLE_ELEMENTS)
        // Fiber stacks of async calls (runs are sync): the default 1000 would
        // cost a guard-page mprotect each at every process start (~8 ms).
        .total_stacks(MAX_CONCURRENT_RUNS);
    InstanceAllocationStrategy::Pooling(pool)
}

/// A counting gate over the pool's run slots.
#[derive(Debug)]
pub struct RunSlots {
    free: Mutex<u32>,
    freed: Condvar,
}

impl Default for RunSlots {
    fn default() -> Self {
        Self {
            free: Mutex::new(MAX_CONCURRENT_RUNS),
            freed: Condvar::new(),
        }
    }
}

impl RunSlots {
    /// Takes a slot, waiting while all are in use; the slot is given back
    /// when the returned guard drops.
    pub fn take(&self) -> Result<Slot<'_>> {
        let poisoned = |_| Error::Host("run slot lock poisoned".into());
        let mut free = self.free.lock().map_err(poisoned)?;
        while *free == 0 {
            free = self.freed.wait(free).map_err(poisoned)?;
        }
        *free -= 1;
        Ok(Slot { slots: self })
    }
}

/// A taken run slot.
#[derive(Debug)]
pub struct Slot<'a> {
    slots: &'a RunSlots,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        // A poisoned lock cannot lose the count: take it back as is.
        let mut free = self
            .slots
            .free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *free += 1;
        self.slots.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn no_more_than_the_slots_run_at_once_and_every_waiter_gets_one() {
        let slots = Arc::new(RunSlots::default());
        let (running, most) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let threads: Vec<_> = (0..3 * MAX_CONCURRENT_RUNS)
            .map(|_| {
                let (slots, running, most) = (slots.clone(), running.clone(), most.clone());
                std::thread::spawn(move || {
                    let _slot = slots.take().unwrap();
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= MAX_CONCURRENT_RUNS);
        assert_eq!(*slots.free.lock().unwrap(), MAX_CONCURRENT_RUNS);
    }
}
