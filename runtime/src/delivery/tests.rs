//! The stage on its own, with a stand-in channel and sink: limits are counted, not timed.

use super::*;
use crate::clock::SystemClock;
use crate::store::SledStore;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;

/// A channel that blocks every call until the test lets it go, counting calls at once.
struct Gate {
    running: AtomicUsize,
    most: AtomicUsize,
    calls: Mutex<Vec<String>>,
    open: tokio::sync::watch::Sender<bool>,
    answer: Mutex<Option<ChannelError>>,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Gate {
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            calls: Mutex::new(Vec::new()),
            open: tokio::sync::watch::channel(false).0,
            answer: Mutex::new(None),
        })
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Channel for Gate {
    fn supports_idempotency(&self) -> bool {
        true
    }

    fn send<'a>(&'a self, message: &'a OutboundMessage) -> crate::channels::SendFuture<'a> {
        Box::pin(async move {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            self.calls.locked().push(message.idempotency_key.clone());
            let mut open = self.open.subscribe();
            let _ = open.wait_for(|o| *o).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            match self.answer.locked().take() {
                Some(e) => Err(e),
                None => Ok(Delivery::default()),
            }
        })
    }
}

struct Results(Mutex<mpsc::Sender<Outcome>>);

impl Sink for Results {
    fn delivered(&self, outcome: Outcome) {
        let _ = self.0.locked().send(outcome);
    }
}

struct Fixture {
    stage: Arc<DeliveryStage>,
    results: mpsc::Receiver<Outcome>,
    _sink: Arc<dyn Sink>,
    _dir: tempfile::TempDir,
}

fn fixture(channel: Arc<dyn Channel>, delivery: DeliveryConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path(), 8 << 20).unwrap());
    let flusher = Flusher::start(store.clone());
    let stage = DeliveryStage::new(store, flusher, Arc::new(SystemClock));
    let (tx, rx) = mpsc::channel();
    let sink: Arc<dyn Sink> = Arc::new(Results(Mutex::new(tx)));
    stage.set_sink(Arc::downgrade(&sink));
    stage.configure(&[("email".to_string(), channel, delivery)]);
    Fixture {
        stage,
        results: rx,
        _sink: sink,
        _dir: dir,
    }
}

fn send(key: &str, priority: Priority) -> QueuedSend {
    QueuedSend {
        key: key.to_string(),
        run: "r".into(),
        contact: "c".into(),
        step: 0,
        attempt: 1,
        intent: Intent {
            run: "r".into(),
            step: 0,
            channel: "email".into(),
            at: 0,
            dispatched_at: None,
            priority,
            answered: None,
        },
        message: Some(Box::new(OutboundMessage {
            idempotency_key: key.to_string(),
            channel: "email".into(),
            template: Some("welcome".into()),
            operation: None,
            run: "r".into(),
            workflow: "w".into(),
            contact: "c".into(),
            to: None,
            to_name: None,
            subject: None,
            body: None,
            html: None,
            front_matter: Default::default(),
            fields: Default::default(),
            payload: serde_json::Value::Null,
            topic: None,
            unsubscribe: None,
            tracked: false,
            seed: false,
            holdout: false,
        })),
    }
}

/// Wait until `n` calls reached the channel (no clock: the calls are counted).
fn calls_reach(gate: &Gate, n: usize) {
    while gate.calls.locked().len() < n {
        std::thread::yield_now();
    }
}

#[test]
fn no_more_sends_run_at_once_than_the_concurrency_allows() {
    let gate = Gate::new();
    let f = fixture(
        gate.clone(),
        DeliveryConfig {
            concurrency: 3,
            ..DeliveryConfig::default()
        },
    );
    for i in 0..10 {
        assert!(f.stage.submit(send(&format!("k{i}"), Priority::Normal)));
    }
    calls_reach(&gate, 3);
    let status = &f.stage.status()["email"];
    assert_eq!(status.in_flight, 3);
    assert_eq!(status.queued["normal"], 7);
    gate.open();
    let outcomes: Vec<Outcome> = (0..10).map(|_| f.results.recv().unwrap()).collect();
    assert!(outcomes.iter().all(|o| o.result.is_ok() && o.called));
    assert_eq!(gate.most.load(Ordering::SeqCst), 3);
    // Every intent was marked dispatched before its call.
    assert_eq!(gate.calls.locked().len(), 10);
}

#[test]
fn the_same_send_is_queued_once_until_its_result_is_recorded() {
    let gate = Gate::new();
    let f = fixture(gate.clone(), DeliveryConfig::default());
    assert!(f.stage.submit(send("k", Priority::Normal)));
    assert!(!f.stage.submit(send("k", Priority::Normal)));
    assert!(f.stage.holds("k"));
    gate.open();
    f.results.recv().unwrap();
    assert!(
        f.stage.holds("k"),
        "held until the worker recorded the result"
    );
    f.stage.release("k");
    assert!(!f.stage.holds("k"));
}

#[test]
fn a_transactional_send_overtakes_queued_bulk_sends() {
    let gate = Gate::new();
    let f = fixture(
        gate.clone(),
        DeliveryConfig {
            concurrency: 1,
            ..DeliveryConfig::default()
        },
    );
    f.stage.submit(send("first", Priority::Bulk));
    calls_reach(&gate, 1);
    for i in 0..5 {
        f.stage.submit(send(&format!("bulk{i}"), Priority::Bulk));
    }
    f.stage.submit(send("normal", Priority::Normal));
    f.stage.submit(send("reset", Priority::Transactional));
    gate.open();
    for _ in 0..8 {
        f.results.recv().unwrap();
    }
    let calls = gate.calls.locked().clone();
    assert_eq!(
        calls,
        ["first", "reset", "normal", "bulk0", "bulk1", "bulk2", "bulk3", "bulk4"]
    );
}

#[test]
fn a_paused_channel_starts_nothing_until_resumed() {
    let gate = Gate::new();
    gate.open();
    let f = fixture(gate.clone(), DeliveryConfig::default());
    assert!(f.stage.set_paused("email", true).unwrap());
    for i in 0..4 {
        f.stage.submit(send(&format!("k{i}"), Priority::Normal));
    }
    // Paused: the queue holds them all and nothing reached the channel.
    assert_eq!(f.stage.status()["email"].queued["normal"], 4);
    assert!(f.stage.status()["email"].paused);
    assert!(gate.calls.locked().is_empty());
    assert!(f.stage.set_paused("email", false).unwrap());
    for _ in 0..4 {
        f.results.recv().unwrap();
    }
    assert_eq!(gate.calls.locked().len(), 4);
    assert!(!f.stage.set_paused("sms", true).unwrap(), "no such channel");
}

#[test]
fn a_provider_asking_to_slow_down_halves_the_sends_in_flight() {
    let gate = Gate::new();
    let f = fixture(
        gate.clone(),
        DeliveryConfig {
            concurrency: 8,
            ..DeliveryConfig::default()
        },
    );
    *gate.answer.locked() = Some(ChannelError::RateLimited {
        retry_after_ms: 0,
        message: "HTTP 429".into(),
    });
    f.stage.submit(send("k0", Priority::Normal));
    gate.open();
    let o = f.results.recv().unwrap();
    assert!(matches!(o.result, Err(ChannelError::RateLimited { .. })));
    let status = &f.stage.status()["email"];
    assert_eq!(status.allowance, 4);
    assert_eq!(status.throttled, 1);
    // Successes grow it back, one send at a time.
    for i in 1..=GROW_AFTER as usize {
        f.stage.submit(send(&format!("k{i}"), Priority::Normal));
        f.results.recv().unwrap();
    }
    assert_eq!(f.stage.status()["email"].allowance, 5);
}

#[test]
fn an_intent_is_marked_dispatched_before_the_provider_is_called() {
    let gate = Gate::new();
    let f = fixture(gate.clone(), DeliveryConfig::default());
    f.stage.submit(send("k", Priority::Normal));
    calls_reach(&gate, 1);
    let intent = f.stage.store.intent("k").unwrap().unwrap();
    assert!(intent.dispatched_at.is_some());
    gate.open();
    f.results.recv().unwrap();
}
