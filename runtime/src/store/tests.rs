//! The sled backend's own tests: records, counts, checkpoints, timers, crash order.

use super::*;

#[test]
fn a_data_directory_of_another_layout_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        s.put_contact(&Contact::new("c_1".into(), 0)).unwrap();
        s.put_meta("layout", "1").unwrap();
        s.flush().unwrap();
    }
    let err = SledStore::open(dir.path(), 8 << 20).err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("uses record layout 1, from before layouts were migrated")
            && msg.contains("start with a new data directory"),
        "{msg}"
    );
    // A directory written by a newer Herald is refused as such.
    let newer = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(newer.path(), 8 << 20).unwrap();
        s.put_meta("layout", "99").unwrap();
        s.flush().unwrap();
    }
    let msg = SledStore::open(newer.path(), 8 << 20)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        msg.contains("uses record layout 99, written by a newer Herald"),
        "{msg}"
    );

    // A new directory gets the current layout and opens again.
    let fresh = tempfile::tempdir().unwrap();
    drop(SledStore::open(fresh.path(), 8 << 20).unwrap());
    assert!(SledStore::open(fresh.path(), 8 << 20).is_ok());
}

#[test]
fn timer_targets_are_stored_as_run_ids_or_marked_audience_ids() {
    for t in [
        TimerTarget::Run("r_1".into()),
        TimerTarget::Audience("c_1".into()),
    ] {
        assert_eq!(TimerTarget::decode(&t.encode()), t);
    }
    // The stored form of data directories written before the enum.
    assert_eq!(
        TimerTarget::Audience("c_1".into()).encode(),
        "~audience:c_1"
    );
    assert_eq!(TimerTarget::decode("r_1"), TimerTarget::Run("r_1".into()));
}

#[test]
fn timers_come_back_in_due_order_and_only_when_due() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    for (due, run) in [(300, "b"), (-5, "neg"), (100, "a"), (200, "c")] {
        s.set_timer(&Timer {
            due,
            target: TimerTarget::Run(run.into()),
            contact: "k".into(),
        })
        .unwrap();
    }
    let due: Vec<_> = s
        .due_timers(200, 10)
        .unwrap()
        .into_iter()
        .map(|t| (t.due, t.target.encode()))
        .collect();
    assert_eq!(
        due,
        vec![
            (-5, "neg".to_string()),
            (100, "a".into()),
            (200, "c".into())
        ]
    );
    s.clear_timer(100, &TimerTarget::Run("a".into())).unwrap();
    assert_eq!(s.next_timer().unwrap(), Some(-5));
    assert_eq!(s.timer_count().unwrap(), 3);
}

#[test]
fn contact_and_timer_counts_stay_exact_across_rewrites_removals_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let timer = |due, run: &str| Timer {
        due,
        target: TimerTarget::Run(run.into()),
        contact: "k".into(),
    };
    {
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        for id in ["c1", "c2", "c1"] {
            s.put_contact(&Contact::new(id.to_string(), 0)).unwrap();
        }
        s.set_timer(&timer(10, "a")).unwrap();
        s.set_timer(&timer(10, "a")).unwrap();
        s.set_timer(&timer(20, "b")).unwrap();
        s.clear_timer(20, &TimerTarget::Run("b".into())).unwrap();
        s.clear_timer(20, &TimerTarget::Run("b".into())).unwrap();
        s.clear_timer(99, &TimerTarget::Run("never-set".into()))
            .unwrap();
        assert_eq!(s.contact_count().unwrap(), 2);
        assert_eq!(s.timer_count().unwrap(), 1);
        s.flush().unwrap();
    }
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    assert_eq!(s.contact_count().unwrap(), 2);
    assert!(s.take_segments().is_none(), "no clean shutdown yet");
    assert_eq!(s.timer_count().unwrap(), 1);
    s.set_timer(&timer(30, "c")).unwrap();
    assert_eq!(s.timer_count().unwrap(), 2);
}

#[test]
fn the_last_entry_is_the_latest_run_of_that_workflow_for_that_contact() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    let run = |id: &str, workflow: &str, contact: &str, at: i64| {
        let null = serde_json::Value::Null;
        Run::new(
            id.into(),
            workflow.into(),
            "h".into(),
            contact.into(),
            null.clone(),
            null,
            at,
        )
    };
    for r in [
        run("w-9", "w", "c1", 100),
        run("w-10", "w", "c1", 300),
        run("w-11", "w", "c1", 200),
        run("w2-1", "w2", "c1", 900),
        run("w-12", "w", "c2", 950),
    ] {
        s.create_run(&r).unwrap();
    }
    // Rewriting a run (a status change) does not make it a new entry.
    let mut again = run("w-9", "w", "c1", 100);
    again.updated_at = 1000;
    s.put_run(&again).unwrap();
    let e = s.entry("w", "c1").unwrap().unwrap();
    assert_eq!((e.run.as_str(), e.started_at), ("w-10", 300));
    assert_eq!(s.entry("w2", "c1").unwrap().unwrap().run, "w2-1");
    assert!(s.entry("w", "c3").unwrap().is_none());
    // A crash between a run's index key and its first record: the key is not an entry.
    s.runs_by_contact
        .insert(run_index_key("c1", "w", 5000, "w-99"), &[])
        .unwrap();
    assert_eq!(s.entry("w", "c1").unwrap().unwrap().run, "w-10");
    assert!(s.entry("x", "c1").unwrap().is_none());
    let ids: Vec<_> = s
        .runs_of_contact("c1")
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["w-9", "w-11", "w-10", "w2-1"]);
}

fn change(at: i64, contact: &str, entered: bool) -> SegmentChange {
    SegmentChange {
        at,
        contact: contact.into(),
        entered,
    }
}

#[test]
fn changes_logged_together_read_like_changes_logged_one_by_one_and_older_records_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    // A record in the layout that held one change, its contact in the key.
    let mut k = prefix("vip");
    k.extend_from_slice(&s.db.generate_id().unwrap().to_be_bytes());
    k.extend_from_slice(b"old");
    let mut v = vec![1u8];
    v.extend_from_slice(&time_key(1));
    s.segment_log.insert(k, v).unwrap();
    s.log_segment_changes(
        "vip",
        &[
            change(2, "a", true),
            change(3, "b", true),
            change(4, "a", false),
        ],
    )
    .unwrap();
    s.log_segment_changes("vip", &[change(5, "c", true)])
        .unwrap();
    s.log_segment_changes("vip", &[]).unwrap();
    let recent: Vec<_> = s
        .segment_changes("vip", 10)
        .unwrap()
        .into_iter()
        .map(|c| (c.at, c.contact, c.entered))
        .collect();
    assert_eq!(
        recent,
        [
            (5, "c".to_string(), true),
            (4, "a".into(), false),
            (3, "b".into(), true),
            (2, "a".into(), true),
            (1, "old".into(), true)
        ]
    );
    assert_eq!(s.segment_changes("vip", 2).unwrap().len(), 2);
    assert_eq!(s.members("vip", 10).unwrap(), ["c", "b", "old"]);
    assert_eq!(s.member_count("vip").unwrap(), 3);
    // A damaged record is an error, not a silent gap.
    let mut k = prefix("bad");
    k.extend_from_slice(&7u64.to_be_bytes());
    s.segment_log.insert(k, &[1u8, 0, 0][..]).unwrap();
    assert!(matches!(
        s.segment_changes("bad", 10),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn current_members_are_the_contacts_whose_newest_change_is_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    for c in [
        change(1, "a", true),
        change(2, "b", true),
        change(3, "c", true),
        change(4, "a", false),
        change(5, "b", false),
        change(6, "b", true),
        change(7, "d", true),
    ] {
        s.log_segment_change("vip", &c).unwrap();
    }
    s.log_segment_change("other", &change(8, "a", true))
        .unwrap();
    assert_eq!(s.members("vip", 10).unwrap(), ["d", "b", "c"]);
    assert_eq!(s.members("vip", 2).unwrap(), ["d", "b"]);
    assert_eq!(s.member_count("vip").unwrap(), 3);
    assert_eq!(s.member_count("other").unwrap(), 1);
    assert_eq!(s.member_count("none").unwrap(), 0);
    // The clock steps back: the change written last still decides.
    s.log_segment_change("vip", &change(3, "c", false)).unwrap();
    s.log_segment_change("vip", &change(2, "c", true)).unwrap();
    s.log_segment_change("vip", &change(1, "d", false)).unwrap();
    assert_eq!(s.members("vip", 10).unwrap(), ["c", "b"]);
    let recent: Vec<_> = s
        .segment_changes("vip", 2)
        .unwrap()
        .into_iter()
        .map(|c| (c.at, c.contact, c.entered))
        .collect();
    assert_eq!(recent, [(1, "d".to_string(), false), (2, "c".into(), true)]);
}

#[test]
fn events_come_back_exactly_as_stored_in_their_compact_form() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    let full = Event {
        seq: 7,
        kind: "track".into(),
        event: "order_completed".into(),
        properties: serde_json::json!({"total": 42.5, "items": [{"sku": "a"}], "gift": null}),
        message_id: Some("m-1".into()),
        timestamp: 1_700_000_000_000,
        received_at: 1_700_000_003_000,
        context: serde_json::json!({"ip": "127.0.0.1"}),
    };
    // Sent "from the future" (received before its timestamp), no messageId, no context.
    let bare = Event {
        seq: 300,
        kind: "identify".into(),
        event: "identify".into(),
        properties: serde_json::json!({}),
        message_id: None,
        timestamp: 5_000,
        received_at: 1_000,
        context: serde_json::Value::Null,
    };
    s.put_events(&[("c".into(), full.clone()), ("c".into(), bare.clone())])
        .unwrap();
    assert_eq!(s.event("c", 7).unwrap().unwrap(), full);
    assert_eq!(s.events_of("c").unwrap(), [full.clone(), bare.clone()]);
    assert_eq!(s.recent_events("c", 1).unwrap(), [bare]);
    let facts = s.event_facts("c").unwrap();
    assert_eq!(
        (facts[0].seq, facts[0].event.as_str(), facts[0].timestamp),
        (7, "order_completed", 1_700_000_000_000)
    );
    let filter = |v: serde_json::Value| v.as_object().unwrap().clone();
    assert!(facts[0].matches(&filter(serde_json::json!({"total": 42.5}))));
    assert!(!facts[0].matches(&filter(serde_json::json!({"total": 1}))));
    assert!(enc_event(&full).unwrap().len() < serde_json::to_vec(&full).unwrap().len() / 2);
}

#[test]
fn a_checkpoint_is_used_once_and_withdrawn_by_any_later_counted_write() {
    let dir = tempfile::tempdir().unwrap();
    let runs = BTreeMap::from([("waiting".to_string(), 4)]);
    let sizes = BTreeMap::from([("vip".to_string(), 2)]);
    let change = SegmentChange {
        at: 1,
        contact: "c".into(),
        entered: true,
    };
    let writes: [&dyn Fn(&SledStore); 3] = [
        &|s| s.log_segment_change("vip", &change).unwrap(),
        &|s| s.put_contact(&Contact::new("c9".into(), 0)).unwrap(),
        &|s| s.clear_timer(5, &TimerTarget::Run("r".into())).unwrap(),
    ];
    for write in writes {
        {
            let s = SledStore::open(dir.path(), 8 << 20).unwrap();
            s.set_timer(&Timer {
                due: 5,
                target: TimerTarget::Run("r".into()),
                contact: "c".into(),
            })
            .unwrap();
            CountCheckpoint::save(&s, &runs, &sizes).unwrap();
        }
        // A clean stop: the next open gets the counts, once.
        {
            let s = SledStore::open(dir.path(), 8 << 20).unwrap();
            assert_eq!(s.take_runs(), Some(runs.clone()));
            assert_eq!(s.take_segments(), Some(sizes.clone()));
            assert_eq!(s.take_segments(), None);
            CountCheckpoint::save(&s, &runs, &sizes).unwrap();
            // A counted write after the checkpoint, then a crash (no second save).
            write(&s);
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(s.take_runs(), None);
        assert_eq!(s.take_segments(), None);
    }
}

#[test]
fn message_ids_are_logged_per_request_read_back_from_a_time_and_expired_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    s.log_message_ids(100, &["a".into(), "b".into()]).unwrap();
    s.log_message_ids(200, &["c".into()]).unwrap();
    s.log_message_ids(300, &[]).unwrap();
    s.log_message_ids(300, &["d".into(), "".into()]).unwrap();
    let read = |since| {
        let mut out = Vec::new();
        s.message_ids_since(since, &mut |at, id| out.push((at, id.to_string())))
            .unwrap();
        out
    };
    assert_eq!(
        read(0),
        [
            (100, "a".to_string()),
            (100, "b".into()),
            (200, "c".into()),
            (300, "d".into()),
            (300, "".into())
        ]
    );
    assert_eq!(read(200).len(), 3);
    assert_eq!(s.expire_message_ids(250, 1).unwrap(), 1);
    assert_eq!(s.expire_message_ids(250, 10).unwrap(), 1);
    assert_eq!(s.expire_message_ids(250, 10).unwrap(), 0);
    assert_eq!(read(0).len(), 2);
    s.message_ids.insert("old-marker", &[1u8][..]).unwrap();
    s.flush().unwrap();
    drop(s);
    // A data directory with markers from before the dedupe log: moved over at open.
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    assert!(s.message_ids.is_empty());
    let mut ids = Vec::new();
    s.message_ids_since(0, &mut |_, id| ids.push(id.to_string()))
        .unwrap();
    assert!(ids.iter().any(|i| i == "old-marker"), "{ids:?}");
}

#[test]
fn a_cut_off_batch_of_new_records_is_taken_back_and_any_other_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let event = |seq: u64| Event {
        seq,
        event: "signed_up".into(),
        kind: "track".into(),
        properties: serde_json::json!({}),
        context: serde_json::json!({}),
        timestamp: 0,
        received_at: 0,
        message_id: None,
    };
    {
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        // As a crash leaves them: the records of two batches, and some of their writes.
        let fresh = [
            event_op("c1", &event(1)).unwrap(),
            inbox_op(
                1,
                &[InboxItem {
                    contact: "c1".into(),
                    event_seq: 1,
                }],
            )
            .unwrap()
            .unwrap(),
        ];
        assert!(fresh.iter().all(|o| o.fresh));
        s.batches
            .insert(1u64.to_be_bytes(), encode_undo(&fresh))
            .unwrap();
        s.apply_ops(&fresh[..1]).unwrap();
        let other = [
            contact_op(&Contact::new("c2".into(), 0)).unwrap(),
            meta_op("m", "v"),
        ];
        s.batches
            .insert(2u64.to_be_bytes(), encode_ops(&other))
            .unwrap();
        s.apply_ops(&other[..1]).unwrap();
        s.flush().unwrap();
    }
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    assert!(
        s.event("c1", 1).unwrap().is_none(),
        "new records taken back"
    );
    assert!(s.inbox().unwrap().is_empty());
    assert!(
        s.contact("c2").unwrap().is_some(),
        "the other batch finished"
    );
    assert_eq!(s.meta("m").unwrap().as_deref(), Some("v"));
    assert!(s.batches.is_empty());
}

#[test]
fn a_sends_first_attempt_is_recorded_with_its_keys_only_and_a_crash_takes_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let step = Step {
        seq: 0,
        kind: "send".into(),
        name: "email".into(),
        input: serde_json::json!({"channel": "email", "body": "x".repeat(2_000)}),
        status: crate::model::StepStatus::Queued,
        result: serde_json::Value::Null,
        error: None,
        attempts: 1,
        due_at: None,
        contact: None,
        idempotency_key: Some("r1:0".into()),
        line: None,
        started_at: 5,
        finished_at: None,
        label: None,
    };
    let intent = Intent {
        run: "r1".into(),
        step: 0,
        channel: "email".into(),
        at: 5,
        dispatched_at: None,
        priority: Default::default(),
        answered: None,
    };
    let mut batch = WriteBatch::new();
    batch.push(Write::NewEffect {
        run: "r1".into(),
        step: step.clone(),
        key: "r1:0".into(),
        intent: intent.clone(),
    });
    {
        let s = SledStore::open(dir.path(), 8 << 20).unwrap();
        let (ops, facts) = s.ops(&batch).unwrap();
        assert_eq!(ops.len(), 2);
        assert!(facts.is_empty(), "a queued send notes no fact");
        assert!(ops.iter().all(|o| o.fresh), "both keys are new");
        // Its commit record names the two keys, not the rendered message.
        let record = encode_undo(&ops);
        assert!(record.len() < 100, "{} bytes", record.len());
        // Applied whole, it reads as a queued step and its intent.
        s.apply(&batch).unwrap();
        assert_eq!(s.journal("r1").unwrap(), vec![step.clone()]);
        assert_eq!(s.intent("r1:0").unwrap(), Some(intent.clone()));
        // The next send's batch cut off by a crash after its step.
        let mut next = step.clone();
        next.seq = 1;
        let mut second = WriteBatch::new();
        second.push(Write::NewEffect {
            run: "r1".into(),
            step: next,
            key: "r1:1".into(),
            intent,
        });
        let (ops, _) = s.ops(&second).unwrap();
        s.batches
            .insert(9u64.to_be_bytes(), encode_undo(&ops))
            .unwrap();
        s.apply_ops(&ops[..1]).unwrap();
        s.flush().unwrap();
    }
    let s = SledStore::open(dir.path(), 8 << 20).unwrap();
    assert_eq!(
        s.journal("r1").unwrap(),
        vec![step],
        "the cut-off step is taken back, the one before stays"
    );
    assert!(s.intent("r1:1").unwrap().is_none());
    assert!(s.intent("r1:0").unwrap().is_some());
    assert!(s.batches.is_empty());
}
