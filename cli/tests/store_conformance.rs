//! The sled backend passes the storage contract's conformance suite
//! (`herald_runtime::store::conformance`), including the crash test: a process applying write
//! batches is killed with SIGKILL, again and again, and every batch it wrote is found whole or
//! not at all after reopening.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::HANG_GUARD;
use herald_runtime::store::{conformance, SledStore, Store};

#[test]
fn the_sled_store_meets_the_storage_contract() {
    let dirs = std::cell::RefCell::new(Vec::new());
    conformance::check_all(&mut || {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        dirs.borrow_mut().push(dir);
        Box::new(store)
    });
}

/// The child side of the crash test: writes batches until killed (runs only when the parent
/// test starts it with `HERALD_CRASH_DIR`).
#[test]
fn crash_child() {
    let (Some(dir), Some(round)) = (
        std::env::var_os("HERALD_CRASH_DIR"),
        std::env::var("HERALD_CRASH_ROUND").ok(),
    ) else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.as_ref(), 8 << 20).unwrap());
    conformance::crash_writer(store, round.parse().unwrap());
}

#[test]
fn a_batch_cut_off_by_sigkill_is_found_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..4u32 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("HERALD_CRASH_DIR", dir.path())
            .env("HERALD_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill it once it has made a few batches durable (and is in the middle of more).
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("batch ") {
                    if tx.send(n.parse::<u64>().unwrap()).is_err() {
                        return;
                    }
                }
            }
        });
        let target = 32 + 16 * u64::from(round);
        let durable = loop {
            let n = rx
                .recv_timeout(HANG_GUARD)
                .expect("hang guard: the crash writer went quiet");
            if n >= target {
                break n;
            }
        };
        // SAFETY: SIGKILL to a child this test started and still owns.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();

        let store = SledStore::open(dir.path(), 8 << 20).unwrap();
        let whole = conformance::check_after_crash(&store, round);
        assert!(
            whole > durable,
            "round {round}: batch {durable} was reported durable, {whole} batches are stored"
        );
        // Earlier rounds are untouched by later crashes.
        for earlier in 0..round {
            conformance::check_after_crash(&store, earlier);
        }
    }
}
