//! The outbox channel: each rendered message appended as one JSON line to a file.
//!
//! A send is answered once its line is on disk (`fdatasync`). Sends in flight together share
//! one sync (group commit): each appends its line under the lock, then the first to reach the
//! sync makes every line written so far durable, and those it covered return without another.

#[allow(unused_imports)]
use super::*;

/// Appends one JSON line per message to a file.
pub struct OutboxChannel {
    path: PathBuf,
    idempotent: bool,
    state: Mutex<Option<HashSet<String>>>,
    /// Lines appended so far (under `state`).
    written: std::sync::atomic::AtomicU64,
    /// Lines known to be on disk; held while syncing.
    synced: Mutex<u64>,
}

impl OutboxChannel {
    /// An outbox writing to `path`. With `idempotent`, a key already in the file is not
    /// written again.
    pub fn new(path: PathBuf, idempotent: bool) -> Self {
        OutboxChannel {
            path,
            idempotent,
            state: Mutex::new(None),
            written: std::sync::atomic::AtomicU64::new(0),
            synced: Mutex::new(0),
        }
    }

    fn known_keys(&self) -> HashSet<String> {
        let mut keys = HashSet::new();
        if let Ok(f) = std::fs::File::open(&self.path) {
            for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if let Some(k) = v.get("idempotency_key").and_then(Value::as_str) {
                        keys.insert(k.to_string());
                    }
                }
            }
        }
        keys
    }
}

impl Channel for OutboxChannel {
    fn supports_idempotency(&self) -> bool {
        self.idempotent
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> SendFuture<'a> {
        // A short local write and its fsync: other sends move to another thread meanwhile.
        Box::pin(async move { tokio::task::block_in_place(|| self.append(message)) })
    }
}

impl OutboxChannel {
    fn append(&self, message: &OutboundMessage) -> Result<Delivery, ChannelError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| ChannelError::Transient("outbox lock poisoned".into()))?;
        if self.idempotent {
            let keys = state.get_or_insert_with(|| self.known_keys());
            if keys.contains(&message.idempotency_key) {
                return Ok(Delivery {
                    provider_id: Some(message.idempotency_key.clone()),
                    detail: Value::Null,
                });
            }
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| ChannelError::Transient(format!("{}: {e}", dir.display())))?;
        }
        let mut line =
            serde_json::to_vec(message).map_err(|e| ChannelError::InvalidInput(e.to_string()))?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| ChannelError::Transient(format!("{}: {e}", self.path.display())))?;
        f.write_all(&line)
            .map_err(|e| ChannelError::Ambiguous(format!("{}: {e}", self.path.display())))?;
        let mine = 1 + self
            .written
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Some(keys) = state.as_mut() {
            keys.insert(message.idempotency_key.clone());
        }
        drop(state);
        // Group commit: one sync covers every line written before it.
        let mut synced = self
            .synced
            .lock()
            .map_err(|_| ChannelError::Ambiguous("outbox sync lock poisoned".into()))?;
        if *synced < mine {
            let upto = self.written.load(std::sync::atomic::Ordering::Acquire);
            f.sync_data()
                .map_err(|e| ChannelError::Ambiguous(format!("{}: {e}", self.path.display())))?;
            *synced = upto;
        }
        Ok(Delivery {
            provider_id: Some(message.idempotency_key.clone()),
            detail: Value::Null,
        })
    }
}
