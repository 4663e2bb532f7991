//! Pod names held once, shared by the [`crate::store`] and the [`crate::metadata`] view.
//!
//! Both key pods by name: the store by the scrapes' names, the metadata view by the watch's.
//! Each used to allocate its own copy (a 26-character name takes 64 bytes with its counts and
//! the allocator's header: ~9.6 MB at 150k pods); through one [`PodNames`] the second copy is
//! a reference count. The table itself costs ~30 bytes a name (16-byte slots, at most 7/8
//! full, a power of two of them), so a frontend holds ~34 bytes a pod less with such names
//! (~18 with the 24-character names of the `ingest_cpu` bench, where the heap fell 1.7 MB).
//! A replica without an API server has no metadata view and so no table
//! ([`PodNames::unshared`]): there it would only cost.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The shared pod-name table, or none ([`PodNames::unshared`]: each name a copy of its own,
/// for a store without a metadata view, where a table would only cost). Cheap to clone (one
/// table). Its lock is a leaf: nothing else is locked while it is held, so callers may hold
/// their own locks when they call it.
#[derive(Clone, Default)]
pub struct PodNames {
    set: Option<Arc<Mutex<NameSet>>>,
}

type NameSet = HashSet<Arc<str>, foldhash::fast::RandomState>;

impl std::fmt::Debug for PodNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodNames").field("shared", &self.set.is_some()).field("len", &self.len()).finish()
    }
}

impl PodNames {
    /// A table for a store and a metadata view to share.
    pub fn shared() -> PodNames {
        PodNames { set: Some(Arc::default()) }
    }

    /// No table: [`PodNames::share`] copies every name (the same as [`PodNames::default`]).
    pub fn unshared() -> PodNames {
        PodNames::default()
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, NameSet>> {
        self.set.as_ref().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The shared copy of `name`: the one already held, else a new one (kept); without a
    /// table, a new one.
    pub fn share(&self, name: &str) -> Arc<str> {
        let Some(mut set) = self.lock() else { return Arc::from(name) };
        if let Some(a) = set.get(name) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(name);
        set.insert(a.clone());
        a
    }

    /// Forgets the names only the table still holds (pods gone from both sides). Returns how
    /// many were forgotten.
    pub fn purge(&self) -> usize {
        let Some(mut set) = self.lock() else { return 0 };
        let before = set.len();
        set.retain(|a| Arc::strong_count(a) > 1);
        before - set.len()
    }

    /// Names held (0 without a table).
    pub fn len(&self) -> usize {
        self.lock().map_or(0, |s| s.len())
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_held_once_and_forgotten_when_nobody_holds_it() {
        let names = PodNames::shared();
        let a = names.share("web-1");
        let b = names.clone().share("web-1");
        assert!(Arc::ptr_eq(&a, &b), "the second holder shares the first's copy");
        let c = names.share("web-2");
        assert_eq!(names.len(), 2);
        drop((a, c));
        assert_eq!(names.purge(), 1, "web-2 had no holder left; web-1 still has one");
        assert_eq!(names.len(), 1);
        drop(b);
        assert_eq!(names.purge(), 1);
        assert!(names.is_empty());
    }

    #[test]
    fn without_a_table_every_name_is_a_copy_of_its_own() {
        let names = PodNames::unshared();
        let (a, b) = (names.share("web-1"), names.share("web-1"));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!((names.len(), names.purge()), (0, 0));
    }
}
