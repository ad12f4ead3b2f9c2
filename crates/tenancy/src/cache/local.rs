//! The in-process cache: one partition per tenant, each an LRU bounded in
//! bytes, inside an LRU of partitions bounded in bytes as a whole. A tenant
//! may fill at most its own partition (an eighth of the whole), so no tenant
//! can evict all the others' entries.
//!
//! Generations come from one counter for the whole process: a partition
//! dropped and made again starts at a generation never used before, so its
//! old entries could never be read again even if they survived.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::{Ticket, entry_key};
use crate::id::TenantId;

/// At most this many tenants have a partition at once.
const MAX_TENANTS: usize = 100_000;

pub(super) struct Local {
    state: Mutex<State>,
}

struct State {
    partitions: LruCache<TenantId, Partition>,
    next_generation: u64,
    bytes: usize,
    max_bytes: usize,
    max_tenant_bytes: usize,
}

struct Partition {
    generation: u64,
    entries: LruCache<String, Entry>,
    bytes: usize,
}

struct Entry {
    value: Vec<u8>,
    expires: Instant,
}

fn size(key: &str, e: &Entry) -> usize {
    key.len() + e.value.len() + 64
}

impl Local {
    pub(super) fn new(max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                partitions: LruCache::new(
                    NonZeroUsize::new(MAX_TENANTS).unwrap_or(NonZeroUsize::MIN),
                ),
                next_generation: 1,
                bytes: 0,
                max_bytes,
                max_tenant_bytes: max_bytes / 8,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(&self, env: &str, tenant: TenantId, key: &str) -> (Ticket, Option<Vec<u8>>) {
        let mut st = self.state();
        let part = st.partition(tenant);
        let generation = part.generation.to_string();
        let full = entry_key(env, tenant, &generation, key);
        let mut freed = 0;
        let found = match part.entries.get(&full) {
            Some(e) if e.expires > Instant::now() => Some(e.value.clone()),
            Some(_) => {
                if let Some(e) = part.entries.pop(&full) {
                    freed = size(&full, &e);
                    part.bytes -= freed;
                }
                None
            }
            None => None,
        };
        st.bytes -= freed;
        (Ticket(generation), found)
    }

    pub(super) fn put(
        &self,
        env: &str,
        tenant: TenantId,
        generation: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) {
        let mut st = self.state();
        let max_tenant = st.max_tenant_bytes;
        let Some(part) = st.partitions.get_mut(&tenant) else {
            return;
        };
        if part.generation.to_string() != generation {
            // Flushed since the read: the value may be stale.
            return;
        }
        let full = entry_key(env, tenant, generation, key);
        let entry = Entry {
            value,
            expires: Instant::now() + ttl,
        };
        let added = size(&full, &entry);
        if added > max_tenant {
            return;
        }
        let mut freed = 0;
        if let Some(old) = part.entries.put(full.clone(), entry) {
            freed += size(&full, &old);
        }
        part.bytes = part.bytes + added - freed;
        // The tenant's own entries make room first.
        while part.bytes > max_tenant {
            match part.entries.pop_lru() {
                Some((k, e)) => {
                    part.bytes -= size(&k, &e);
                    freed += size(&k, &e);
                }
                None => break,
            }
        }
        st.bytes = st.bytes + added - freed;
        // Then, if the whole is too big, the least recently used tenants go.
        while st.bytes > st.max_bytes {
            match st.partitions.pop_lru() {
                Some((_, p)) => st.bytes -= p.bytes,
                None => break,
            }
        }
    }

    pub(super) fn flush(&self, tenant: TenantId) {
        let mut st = self.state();
        let generation = st.fresh_generation();
        let mut freed = 0;
        if let Some(part) = st.partitions.get_mut(&tenant) {
            freed = part.bytes;
            part.generation = generation;
            part.entries.clear();
            part.bytes = 0;
        }
        st.bytes -= freed;
    }
}

impl Local {
    /// Whether the tenant has a partition (entries, or a generation).
    pub(super) fn holds(&self, tenant: TenantId) -> bool {
        self.state().partitions.contains(&tenant)
    }

    /// Drops the tenant's partition altogether.
    pub(super) fn forget(&self, tenant: TenantId) {
        let mut st = self.state();
        if let Some(p) = st.partitions.pop(&tenant) {
            st.bytes -= p.bytes;
        }
    }
}

impl State {
    fn fresh_generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    fn partition(&mut self, tenant: TenantId) -> &mut Partition {
        if !self.partitions.contains(&tenant) {
            let generation = self.fresh_generation();
            if let Some((_, evicted)) = self.partitions.push(
                tenant,
                Partition {
                    generation,
                    entries: LruCache::unbounded(),
                    bytes: 0,
                },
            ) {
                self.bytes -= evicted.bytes;
            }
        }
        self.partitions
            .get_mut(&tenant)
            .expect("the partition was just made")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> TenantId {
        TenantId::from(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn one_tenant_cannot_evict_the_others() {
        let cache = Local::new(80_000);
        let (Ticket(gb), _) = cache.get("t", id(2), "k");
        cache.put("t", id(2), &gb, "k", vec![1; 100], Duration::from_secs(60));
        // Tenant 1 writes far more than its share.
        for i in 0..1000 {
            let key = format!("k{i}");
            let (Ticket(g), _) = cache.get("t", id(1), &key);
            cache.put("t", id(1), &g, &key, vec![0; 500], Duration::from_secs(60));
        }
        assert!(cache.get("t", id(2), "k").1.is_some());
        let st = cache.state();
        let p1 = st.partitions.peek(&id(1)).expect("tenant 1");
        assert!(p1.bytes <= st.max_tenant_bytes);
        assert!(st.bytes <= st.max_bytes);
    }

    #[test]
    fn expired_entries_are_not_served() {
        let cache = Local::new(1 << 20);
        let (Ticket(g), _) = cache.get("t", id(1), "k");
        cache.put("t", id(1), &g, "k", vec![1], Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.get("t", id(1), "k").1.is_none());
        assert_eq!(cache.state().bytes, 0);
    }

    #[test]
    fn a_partition_made_again_starts_at_a_fresh_generation() {
        let cache = Local::new(1 << 20);
        let (Ticket(g1), _) = cache.get("t", id(1), "k");
        cache.state().partitions.pop(&id(1));
        let (Ticket(g2), _) = cache.get("t", id(1), "k");
        assert_ne!(g1, g2);
    }
}
