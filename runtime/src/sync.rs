//! Locks that ignore poisoning.
//!
//! A panic while a lock is held (a panicking activation, caught and parked) must not take every
//! later user of that lock down with it: the data behind Herald's locks stays consistent at
//! every await-free step, so a poisoned lock is used as it is.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `lock` that takes over a poisoned [`Mutex`] instead of failing.
pub trait LockExt<T: ?Sized> {
    /// The guard.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reading and writing an [`RwLock`], taking over a poisoned one.
pub trait RwLockExt<T: ?Sized> {
    /// A read guard.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// A write guard.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockExt<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Striped locks for contacts and the external ids that lead to them, so writers of unrelated
/// contacts never wait for each other (one lock per stripe, not one for the whole store).
///
/// Order, which keeps every taker free of deadlock: identity stripes first (all at once, in
/// stripe order), then contact stripes (all at once, in stripe order). Nobody holding a
/// contact stripe waits for an identity stripe.
pub struct StripedLocks {
    identities: Vec<Mutex<()>>,
    contacts: Vec<Mutex<()>>,
}

/// Guards of the stripes taken together; dropping it releases them all.
pub struct Stripes<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

impl StripedLocks {
    /// `stripes` locks for identities and as many for contacts.
    pub fn new(stripes: usize) -> Self {
        let make = || (0..stripes.max(1)).map(|_| Mutex::new(())).collect();
        StripedLocks {
            identities: make(),
            contacts: make(),
        }
    }

    /// The stripe a name falls in.
    fn stripe(&self, name: &str) -> usize {
        use std::hash::Hasher as _;
        // Fixed keys: the same name is the same stripe in every process.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(name.as_bytes());
        (h.finish() % self.contacts.len() as u64) as usize
    }

    fn take<'a, S: AsRef<str>>(
        &self,
        locks: &'a [Mutex<()>],
        names: impl IntoIterator<Item = S>,
    ) -> Stripes<'a> {
        let mut idx: Vec<usize> = names.into_iter().map(|n| self.stripe(n.as_ref())).collect();
        idx.sort_unstable();
        idx.dedup();
        Stripes {
            _guards: idx.into_iter().map(|i| locks[i].locked()).collect(),
        }
    }

    /// Lock the stripes of these external ids (take before any contact stripe).
    pub fn identities<S: AsRef<str>>(&self, ids: impl IntoIterator<Item = S>) -> Stripes<'_> {
        self.take(&self.identities, ids)
    }

    /// Lock the stripes of these contacts.
    pub fn contacts<S: AsRef<str>>(&self, ids: impl IntoIterator<Item = S>) -> Stripes<'_> {
        self.take(&self.contacts, ids)
    }

    /// Is the contact stripe of `name` free right now?
    #[cfg(test)]
    pub fn contact_stripe_free(&self, name: &str) -> bool {
        self.contacts[self.stripe(name)].try_lock().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_poisoned_by_a_panic_is_taken_over() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
        let rw = RwLock::new(5);
        *rw.write_locked() += 1;
        assert_eq!(*rw.read_locked(), 6);
    }
}

/// A background thread's wake-up: it sleeps until poked or a timeout passes; a poke while it
/// works is kept for its next sleep.
#[derive(Debug, Default)]
pub struct Wakeup {
    wake: std::sync::Condvar,
    woken: Mutex<bool>,
}

impl Wakeup {
    /// Wake the sleeper now (or make its next sleep return at once).
    pub fn poke(&self) {
        *self.woken.locked() = true;
        self.wake.notify_all();
    }

    /// Sleep until poked or `timeout` passes.
    pub fn sleep(&self, timeout: std::time::Duration) {
        let mut woken = self.woken.locked();
        if !*woken {
            woken = self
                .wake
                .wait_timeout(woken, timeout)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *woken = false;
    }
}
