//! Group commit: many writers wait on one flush ([`Flusher`]), so a burst of requests costs
//! one fsync instead of one each.

#[allow(unused_imports)]
use super::*;

/// Group commit: callers ask for durability of everything written so far; one flush serves
/// every caller that asked before it started.
pub struct Flusher {
    store: Arc<dyn Store>,
    state: Mutex<FlushState>,
    cond: Condvar,
    flushed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
pub(super) struct FlushState {
    pub(super) requested: u64,
    pub(super) flushed: u64,
    pub(super) failed: Option<String>,
    pub(super) stop: bool,
}

impl Flusher {
    /// Start the flusher thread.
    pub fn start(store: Arc<dyn Store>) -> Arc<Flusher> {
        let (tx, _) = tokio::sync::watch::channel(0);
        let f = Arc::new(Flusher {
            store,
            state: Mutex::new(FlushState::default()),
            cond: Condvar::new(),
            flushed: tx,
        });
        let worker = f.clone();
        std::thread::Builder::new()
            .name("herald-flush".into())
            .spawn(move || worker.run())
            .expect("spawn flusher");
        f
    }

    fn run(&self) {
        loop {
            let target = {
                let mut st = self.state.locked();
                while st.requested == st.flushed && !st.stop {
                    st = self
                        .cond
                        .wait(st)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                if st.stop && st.requested == st.flushed {
                    return;
                }
                st.requested
            };
            let result = self.store.flush();
            let mut st = self.state.locked();
            match result {
                Ok(()) => st.failed = None,
                Err(e) => {
                    tracing::error!(error = %e, "flush failed");
                    st.failed = Some(e.to_string());
                }
            }
            st.flushed = target;
            self.cond.notify_all();
            let _ = self.flushed.send(target);
        }
    }

    /// Ask for a flush of everything written so far without waiting for it.
    pub fn request_flush(&self) {
        self.request();
    }

    fn request(&self) -> u64 {
        let mut st = self.state.locked();
        st.requested += 1;
        self.cond.notify_all();
        st.requested
    }

    fn outcome(&self) -> Result<(), String> {
        match &self.state.locked().failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Block until everything written before this call is durable.
    pub fn commit_blocking(&self) -> Result<(), String> {
        let ticket = self.request();
        let mut st = self.state.locked();
        while st.flushed < ticket {
            st = self
                .cond
                .wait(st)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(st);
        self.outcome()
    }

    /// Wait (asynchronously) until everything written before this call is durable.
    pub async fn commit(&self) -> Result<(), String> {
        let mut rx = self.flushed.subscribe();
        let ticket = self.request();
        while *rx.borrow_and_update() < ticket {
            if rx.changed().await.is_err() {
                return Err("flusher stopped".into());
            }
        }
        self.outcome()
    }

    /// Flush what is pending and stop the thread.
    pub fn stop(&self) {
        let _ = self.commit_blocking();
        let mut st = self.state.locked();
        st.stop = true;
        self.cond.notify_all();
    }
}
