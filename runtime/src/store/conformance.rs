//! The storage contract as tests: every [`Store`] implementation must pass them. The sled
//! backend runs them in `cli/tests/store_conformance.rs`; a server database's backend runs the
//! same functions against itself (they are compiled with the `test-hooks` feature).
//!
//! [`check_all`] runs every check against fresh stores; [`crash_writer`] and
//! [`check_after_crash`] are the two halves of the crash test: a process writes batches
//! until it is killed with SIGKILL, and the store reopened afterwards must hold every batch
//! whole or not at all.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::*;
use crate::model::{ConsentStatus, RunStatus, StepStatus, SuppressionReason};

/// Run every check, each against a new, empty store from `open`.
pub fn check_all(open: &mut dyn FnMut() -> Box<dyn Store>) {
    contacts_identities_and_their_count(open().as_ref());
    events_stay_in_order_per_contact(open().as_ref());
    inbox_records_come_back_oldest_first_until_done(open().as_ref());
    runs_journals_and_entries(open().as_ref());
    summaries_read_what_the_whole_records_say(open().as_ref());
    timers_come_back_due_first_and_are_counted(open().as_ref());
    a_batch_is_visible_whole_once_applied(open().as_ref());
    a_batch_moves_a_merged_contacts_timeline_and_waits(open().as_ref());
    an_empty_batch_writes_nothing(open().as_ref());
    ids_are_unique_and_increase(open().as_ref());
    consent_is_kept_per_contact_and_topic_and_erased_with_the_contact(open().as_ref());
    suppressions_are_listed_per_channel_in_pages_and_can_be_lifted(open().as_ref());
    a_broadcast_snapshot_is_read_in_order_from_a_number_and_cleared(open().as_ref());
    consent_follows_a_merge_and_the_newer_record_per_topic_wins(open().as_ref());
}

pub fn consent_follows_a_merge_and_the_newer_record_per_topic_wins(s: &dyn Store) {
    let record = |topic: &str, status, at| ConsentRecord {
        topic: topic.into(),
        status,
        at,
        source: "api".into(),
        ip: None,
        user_agent: None,
        message: None,
    };
    let mut b = WriteBatch::new();
    for (contact, topic, status, at) in [
        ("anon", "newsletter", ConsentStatus::Unsubscribed, 5),
        ("anon", "product", ConsentStatus::Subscribed, 1),
        ("anon", "offers", ConsentStatus::Subscribed, 2),
        ("known", "product", ConsentStatus::Unsubscribed, 3),
        ("known", "newsletter", ConsentStatus::Subscribed, 4),
    ] {
        b.push(Write::Consent {
            contact: contact.into(),
            record: record(topic, status, at),
        });
    }
    s.apply(&b).unwrap();
    let mut b = WriteBatch::new();
    b.push(Write::MoveConsent {
        from: "anon".into(),
        to: "known".into(),
    });
    s.apply(&b).unwrap();
    assert!(
        s.consent("anon").unwrap().is_empty(),
        "nothing stays behind"
    );
    let mut got: Vec<(String, ConsentStatus, i64)> = s
        .consent("known")
        .unwrap()
        .into_iter()
        .map(|r| (r.topic, r.status, r.at))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("newsletter".to_string(), ConsentStatus::Unsubscribed, 5),
            ("offers".to_string(), ConsentStatus::Subscribed, 2),
            ("product".to_string(), ConsentStatus::Unsubscribed, 3),
        ],
        "the newer choice per topic, whichever contact made it"
    );
}

pub fn a_broadcast_snapshot_is_read_in_order_from_a_number_and_cleared(s: &dyn Store) {
    let mut b = WriteBatch::new();
    b.push(Write::Recipients {
        broadcast: "spring".into(),
        first: 0,
        contacts: vec!["c3".into(), "c1".into()],
    })
    .push(Write::Recipients {
        broadcast: "spring2".into(),
        first: 0,
        contacts: vec!["x".into()],
    })
    .push(Write::Meta {
        key: "broadcast:spring".into(),
        value: "2".into(),
    });
    s.apply(&b).unwrap();
    let mut b = WriteBatch::new();
    b.push(Write::Recipients {
        broadcast: "spring".into(),
        first: 2,
        contacts: (0..300).map(|i| format!("d{i}")).collect(),
    });
    s.apply(&b).unwrap();
    let page = s.recipients("spring", 0, 3).unwrap();
    assert_eq!(
        page,
        [(0, "c3".to_string()), (1, "c1".into()), (2, "d0".into())],
        "snapshot order, not contact order"
    );
    let rest = s.recipients("spring", 3, 1000).unwrap();
    assert_eq!(rest.len(), 299, "the rest of this broadcast only");
    assert_eq!(rest.last().unwrap(), &(301, "d299".to_string()));
    assert_eq!(s.recipients("spring", 302, 10).unwrap(), []);
    // Erasing a contact takes it out of every snapshot; the others keep their numbers.
    let mut b = WriteBatch::new();
    b.push(Write::EraseContact {
        contact: "c1".into(),
    });
    s.apply(&b).unwrap();
    assert_eq!(
        s.recipients("spring", 0, 3).unwrap(),
        [(0, "c3".to_string()), (2, "d0".into()), (3, "d1".into())]
    );
    s.clear_recipients("spring").unwrap();
    assert_eq!(s.recipients("spring", 0, 10).unwrap(), []);
    assert_eq!(
        s.recipients("spring2", 0, 10).unwrap(),
        [(0, "x".to_string())],
        "another broadcast's snapshot stays"
    );
}

fn contact(id: &str, email: &str) -> Contact {
    let mut c = Contact::new(id.into(), 1_000);
    c.attributes.insert("email".into(), json!(email));
    c
}

fn event(seq: u64, name: &str) -> Event {
    Event {
        seq,
        kind: "track".into(),
        event: name.into(),
        properties: json!({"n": seq}),
        message_id: None,
        timestamp: 1_000 + seq as i64,
        received_at: 1_000 + seq as i64,
        context: Value::Null,
    }
}

fn step(seq: u32, at: i64) -> Step {
    Step {
        seq,
        kind: "wait".into(),
        name: "wait".into(),
        input: json!({}),
        status: StepStatus::Pending,
        result: Value::Null,
        error: None,
        attempts: 0,
        due_at: Some(at + 1_000),
        contact: None,
        idempotency_key: None,
        line: None,
        started_at: at,
        finished_at: None,
        label: None,
    }
}

fn run(id: &str, contact: &str, created_at: i64) -> Run {
    Run::new(
        id.into(),
        "w".into(),
        "hash".into(),
        contact.into(),
        json!({"type": "manual"}),
        json!({}),
        created_at,
    )
}

/// Contacts are read back as written, rewrites do not count twice, identities point at them.
pub fn contacts_identities_and_their_count(s: &dyn Store) {
    assert_eq!(s.contact_count().unwrap(), 0);
    s.put_contact(&contact("c1", "a@example.com")).unwrap();
    s.put_contact(&contact("c2", "b@example.com")).unwrap();
    s.put_contact(&contact("c1", "a2@example.com")).unwrap();
    assert_eq!(s.contact_count().unwrap(), 2);
    assert_eq!(
        s.contact("c1").unwrap().unwrap().attributes["email"],
        "a2@example.com"
    );
    assert!(s.contact("nobody").unwrap().is_none());
    s.link_identity(IdKind::User, "ada", "c1").unwrap();
    s.link_identity(IdKind::Anonymous, "ada", "c2").unwrap();
    assert_eq!(
        s.identity(IdKind::User, "ada").unwrap().as_deref(),
        Some("c1")
    );
    assert_eq!(
        s.identity(IdKind::Anonymous, "ada").unwrap().as_deref(),
        Some("c2")
    );
    assert!(s.identity(IdKind::User, "bob").unwrap().is_none());
}

/// A contact's events come back in sequence order, newest first for `recent_events`.
pub fn events_stay_in_order_per_contact(s: &dyn Store) {
    for seq in [3, 1, 2] {
        s.put_event("c1", &event(seq, "e")).unwrap();
    }
    s.put_event("c2", &event(4, "other")).unwrap();
    let seqs: Vec<u64> = s.events_of("c1").unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    let recent: Vec<u64> = s
        .recent_events("c1", 2)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(recent, [3, 2]);
    assert_eq!(s.event("c1", 2).unwrap().unwrap().properties["n"], 2);
    assert!(s.event("c1", 4).unwrap().is_none());
}

/// Inbox records are returned oldest first and gone once done.
pub fn inbox_records_come_back_oldest_first_until_done(s: &dyn Store) {
    let item = |seq| InboxItem {
        contact: "c1".into(),
        event_seq: seq,
    };
    s.push_inbox(20, &[item(20), item(21)]).unwrap();
    s.push_inbox(10, &[item(10)]).unwrap();
    let keys: Vec<u64> = s.inbox().unwrap().iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, [10, 20]);
    s.remove_inbox(10).unwrap();
    let left = s.inbox().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].1.len(), 2);
}

/// Runs, their journals and the last entry of a contact into a workflow.
pub fn runs_journals_and_entries(s: &dyn Store) {
    s.create_run(&run("r1", "c1", 100)).unwrap();
    s.create_run(&run("r2", "c1", 200)).unwrap();
    let mut r1 = s.run("r1").unwrap().unwrap();
    r1.status = RunStatus::Completed;
    s.put_run(&r1).unwrap();
    assert_eq!(s.run("r1").unwrap().unwrap().status, RunStatus::Completed);
    let ids: Vec<String> = s
        .runs_of_contact("c1")
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["r1", "r2"]);
    let entry = s.entry("w", "c1").unwrap().unwrap();
    assert_eq!((entry.run.as_str(), entry.started_at), ("r2", 200));
    s.put_step("r1", &step(1, 100)).unwrap();
    s.put_step("r1", &step(0, 100)).unwrap();
    let seqs: Vec<u32> = s.journal("r1").unwrap().iter().map(|st| st.seq).collect();
    assert_eq!(seqs, [0, 1]);
}

/// A run's and a journal's summaries (what the analytics fold reads) say what the whole
/// records say, whatever shape a trigger's properties have.
pub fn summaries_read_what_the_whole_records_say(s: &dyn Store) {
    let triggers = [
        json!({"type": "broadcast", "holdout": true,
               "properties": {"broadcast": "b", "seed": true, "phase": "test", "arms": {"a": 1}}}),
        json!({"type": "event", "event": "go",
               "properties": {"seed": "yes", "phase": 3, "nested": {"phase": "x"}}}),
        json!({"type": "event", "event": "go", "properties": [true, "winner"]}),
        json!({"type": "manual", "properties": null}),
        json!({"type": 7}),
        json!(["broadcast", true, {"seed": true}]),
    ];
    for (i, trigger) in triggers.into_iter().enumerate() {
        let id = format!("sum{i}");
        let mut r = run(&id, "c1", 100);
        r.trigger = trigger;
        r.start_contact = json!({"traits": {"first_name": "Ada"}});
        if i == 0 {
            r.ended = Some((RunStatus::Converted, 150));
        }
        s.create_run(&r).unwrap();
        assert_eq!(
            s.run_summary(&id).unwrap(),
            Some(RunSummary::of(&r)),
            "trigger {}",
            r.trigger
        );
    }
    assert_eq!(s.run_summary("no-such-run").unwrap(), None);
    let summary = s.run_summary("sum0").unwrap().unwrap();
    assert!(summary.is_broadcast() && summary.is_seed() && summary.in_holdout());
    assert_eq!(summary.phase().as_deref(), Some("test"));
    let other = s.run_summary("sum2").unwrap().unwrap();
    assert!(!other.is_seed() && other.phase().is_none());

    let mut send = step(0, 100);
    send.kind = "send".into();
    send.name = "email:news".into();
    send.input = json!({"channel": "email", "template": "news", "to": "Ada <ada@example.com>",
                        "html": "<p>A long rendered message</p>", "body": "text"});
    send.status = StepStatus::Done;
    send.result = json!({"status": "sent"});
    send.label = Some("news".into());
    let mut variant = step(1, 100);
    variant.kind = "variant".into();
    variant.name = "subject".into();
    variant.status = StepStatus::Done;
    variant.result = json!("b");
    let mut odd = step(2, 100);
    odd.input = Value::Null;
    let mut listed = step(3, 100);
    listed.input = json!(["email", "news", "ada@example.com"]);
    for st in [&send, &variant, &odd, &listed] {
        s.put_step("sum0", st).unwrap();
    }
    let whole: Vec<StepSummary> = s
        .journal("sum0")
        .unwrap()
        .iter()
        .map(StepSummary::of)
        .collect();
    assert_eq!(s.journal_summary("sum0").unwrap(), whole);
    assert_eq!(whole[0].input.to(), Some("Ada <ada@example.com>"));
    assert_eq!(whole[0].input.template(), Some("news"));
}

/// Timers come back earliest first, only once due, and are counted exactly.
pub fn timers_come_back_due_first_and_are_counted(s: &dyn Store) {
    let timer = |due, run: &str| Timer {
        due,
        target: TimerTarget::Run(run.into()),
        contact: "c1".into(),
    };
    s.set_timer(&timer(300, "b")).unwrap();
    s.set_timer(&timer(-5, "neg")).unwrap();
    s.set_timer(&timer(100, "a")).unwrap();
    s.set_timer(&Timer {
        due: 200,
        target: TimerTarget::Audience("c9".into()),
        contact: "c9".into(),
    })
    .unwrap();
    s.set_timer(&timer(100, "a")).unwrap();
    assert_eq!(s.timer_count().unwrap(), 4);
    let due: Vec<(i64, TimerTarget)> = s
        .due_timers(200, 10)
        .unwrap()
        .into_iter()
        .map(|t| (t.due, t.target))
        .collect();
    assert_eq!(
        due,
        [
            (-5, TimerTarget::Run("neg".into())),
            (100, TimerTarget::Run("a".into())),
            (200, TimerTarget::Audience("c9".into())),
        ]
    );
    s.clear_timer(100, &TimerTarget::Run("a".into())).unwrap();
    s.clear_timer(100, &TimerTarget::Run("never-set".into()))
        .unwrap();
    assert_eq!(s.timer_count().unwrap(), 3);
    assert_eq!(s.next_timer().unwrap(), Some(-5));
}

/// A batch of every kind of write: each is readable once `apply` returned, counts included.
pub fn a_batch_is_visible_whole_once_applied(s: &dyn Store) {
    s.set_timer(&Timer {
        due: 50,
        target: TimerTarget::Run("old".into()),
        contact: "c1".into(),
    })
    .unwrap();
    s.put_intent(
        "r0:0",
        &Intent {
            run: "r0".into(),
            step: 0,
            channel: "email".into(),
            at: 40,
            dispatched_at: None,
            priority: herald_dsl::Priority::Normal,
            answered: None,
        },
    )
    .unwrap();
    s.push_inbox(1, &[]).unwrap();
    s.push_inbox(
        2,
        &[InboxItem {
            contact: "c1".into(),
            event_seq: 2,
        }],
    )
    .unwrap();
    let mut b = WriteBatch::new();
    b.push(Write::Contact(contact("c1", "a@example.com")))
        .push(Write::Identity {
            kind: IdKind::User,
            id: "ada".into(),
            contact: "c1".into(),
        })
        .push(Write::Event {
            contact: "c1".into(),
            event: event(7, "signed_up"),
        })
        .push(Write::MessageIds {
            at: 1_000,
            ids: vec!["m1".into(), "m2".into()],
        })
        .push(Write::Inbox {
            key: 7,
            items: vec![InboxItem {
                contact: "c1".into(),
                event_seq: 7,
            }],
        })
        .push(Write::InboxDone { key: 2 })
        .push(Write::NewRun(run("r1", "c1", 300)))
        .push(Write::Step {
            run: "r1".into(),
            step: step(0, 300),
        })
        .push(Write::Timer(Timer {
            due: 900,
            target: TimerTarget::Run("r1".into()),
            contact: "c1".into(),
        }))
        .push(Write::ClearTimer {
            due: 50,
            target: TimerTarget::Run("old".into()),
        })
        .push(Write::Meta {
            key: "conformance".into(),
            value: "yes".into(),
        })
        .push(Write::SegmentChanges {
            segment: "vip".into(),
            changes: vec![SegmentChange {
                contact: "c1".into(),
                entered: true,
                at: 300,
            }],
        })
        .push(Write::Audience {
            contact: "c1".into(),
            encoded: crate::store::enc_audience(&AudienceState {
                score: 7.0,
                ..AudienceState::default()
            })
            .unwrap(),
        })
        .push(Write::Intent {
            key: "r1:1".into(),
            intent: Intent {
                run: "r1".into(),
                step: 1,
                channel: "email".into(),
                at: 300,
                dispatched_at: Some(301),
                priority: herald_dsl::Priority::Transactional,
                answered: None,
            },
        })
        .push(Write::IntentDone { key: "r0:0".into() })
        .push(Write::ProviderMessage {
            channel: "email".into(),
            provider_id: "pm-1".into(),
            owner: ProviderMessage {
                contact: "c1".into(),
                run: "r1".into(),
                step: 1,
                key: "r1:1".into(),
            },
        });
    assert_eq!(b.len(), 16);
    s.apply(&b).unwrap();
    assert_eq!(s.contact_count().unwrap(), 1);
    assert_eq!(
        s.identity(IdKind::User, "ada").unwrap().as_deref(),
        Some("c1")
    );
    assert_eq!(s.event("c1", 7).unwrap().unwrap().event, "signed_up");
    let mut ids = Vec::new();
    s.message_ids_since(0, &mut |_, id| ids.push(id.to_string()))
        .unwrap();
    assert_eq!(ids, ["m1", "m2"]);
    let inbox: Vec<u64> = s.inbox().unwrap().iter().map(|(k, _)| *k).collect();
    assert_eq!(inbox, [7]);
    assert_eq!(s.run("r1").unwrap().unwrap().contact, "c1");
    assert_eq!(s.entry("w", "c1").unwrap().unwrap().run, "r1");
    assert_eq!(s.journal("r1").unwrap().len(), 1);
    assert_eq!(s.timer_count().unwrap(), 1);
    assert_eq!(s.next_timer().unwrap(), Some(900));
    assert_eq!(s.meta("conformance").unwrap().as_deref(), Some("yes"));
    let owner = s.provider_message("email", "pm-1").unwrap().unwrap();
    assert_eq!((owner.run.as_str(), owner.step), ("r1", 1));
    assert_eq!(s.provider_message("sms", "pm-1").unwrap(), None);
    assert_eq!(s.members("vip", 10).unwrap(), ["c1"]);
    assert_eq!(s.audience("c1").unwrap().unwrap().score, 7.0);
    let intent = s.intent("r1:1").unwrap().unwrap();
    assert_eq!(
        (intent.dispatched_at, intent.priority),
        (Some(301), herald_dsl::Priority::Transactional)
    );
    assert!(s.intent("r0:0").unwrap().is_none());
}

/// A merge in a batch: the stored events and waits of the contact merged away join the
/// survivor's, beside the batch's other writes.
pub fn a_batch_moves_a_merged_contacts_timeline_and_waits(s: &dyn Store) {
    s.put_event("gone", &event(1, "viewed")).unwrap();
    s.put_event("gone", &event(3, "clicked")).unwrap();
    s.put_event("kept", &event(2, "signed_up")).unwrap();
    let wait = WaitReg {
        run: "r1".into(),
        step: 2,
        filter: Default::default(),
    };
    s.put_wait("gone", "clicked", &wait).unwrap();
    let mut b = WriteBatch::new();
    b.push(Write::MoveEvents {
        from: "gone".into(),
        to: "kept".into(),
    })
    .push(Write::MoveWaits {
        from: "gone".into(),
        to: "kept".into(),
    })
    .push(Write::Event {
        contact: "kept".into(),
        event: event(4, "identify"),
    });
    s.apply(&b).unwrap();
    let names: Vec<String> = s
        .events_of("kept")
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert_eq!(names, ["viewed", "signed_up", "clicked", "identify"]);
    assert!(s.events_of("gone").unwrap().is_empty());
    assert_eq!(s.waits("kept", "clicked").unwrap(), [wait]);
    assert!(s.waits("gone", "clicked").unwrap().is_empty());
}

/// An empty batch is no write at all.
pub fn an_empty_batch_writes_nothing(s: &dyn Store) {
    s.apply(&WriteBatch::new()).unwrap();
    assert_eq!(s.contact_count().unwrap(), 0);
    assert_eq!(s.timer_count().unwrap(), 0);
    assert!(s.inbox().unwrap().is_empty());
}

/// `next_id` never repeats and only grows.
pub fn consent_is_kept_per_contact_and_topic_and_erased_with_the_contact(s: &dyn Store) {
    let record = |topic: &str, status, at| ConsentRecord {
        topic: topic.into(),
        status,
        at,
        source: "preference_page".into(),
        ip: Some("127.0.0.1".into()),
        user_agent: Some("test".into()),
        message: None,
    };
    assert!(s.consent("c1").unwrap().is_empty());
    let mut b = WriteBatch::new();
    b.push(Write::Contact(contact("c1", "a@example.com")))
        .push(Write::Consent {
            contact: "c1".into(),
            record: record("product", ConsentStatus::Subscribed, 1),
        })
        .push(Write::Consent {
            contact: "c1".into(),
            record: record("newsletter", ConsentStatus::Subscribed, 2),
        })
        .push(Write::Consent {
            contact: "c10".into(),
            record: record("newsletter", ConsentStatus::Unsubscribed, 3),
        });
    s.apply(&b).unwrap();
    // A later record for the same topic replaces the earlier one.
    let mut b = WriteBatch::new();
    b.push(Write::Consent {
        contact: "c1".into(),
        record: record("newsletter", ConsentStatus::Unsubscribed, 4),
    });
    s.apply(&b).unwrap();
    let got = s.consent("c1").unwrap();
    assert_eq!(
        got,
        vec![
            record("newsletter", ConsentStatus::Unsubscribed, 4),
            record("product", ConsentStatus::Subscribed, 1)
        ]
    );
    // Another contact whose id starts the same is not mixed in.
    assert_eq!(s.consent("c10").unwrap().len(), 1);
    let mut b = WriteBatch::new();
    b.push(Write::EraseContact {
        contact: "c1".into(),
    });
    s.apply(&b).unwrap();
    assert!(s.consent("c1").unwrap().is_empty());
    assert_eq!(s.consent("c10").unwrap().len(), 1);
}

pub fn suppressions_are_listed_per_channel_in_pages_and_can_be_lifted(s: &dyn Store) {
    let sup = |channel: &str, address: &str, reason| Suppression {
        channel: channel.into(),
        address: address.into(),
        reason,
        at: 7,
        source: "callback".into(),
        detail: None,
    };
    let mut b = WriteBatch::new();
    for a in ["c@example.com", "a@example.com", "b@example.com"] {
        b.push(Write::Suppress(sup(
            "email",
            a,
            SuppressionReason::HardBounce,
        )));
    }
    b.push(Write::Suppress(sup(
        "email2",
        "z@example.com",
        SuppressionReason::Complaint,
    )))
    .push(Write::Suppress(sup(
        "sms",
        "+15550100",
        SuppressionReason::Unsubscribed,
    )));
    s.apply(&b).unwrap();
    assert_eq!(
        s.suppression("email", "b@example.com").unwrap(),
        Some(sup("email", "b@example.com", SuppressionReason::HardBounce))
    );
    assert_eq!(s.suppression("sms", "b@example.com").unwrap(), None);
    let addresses =
        |page: Vec<Suppression>| -> Vec<String> { page.into_iter().map(|x| x.address).collect() };
    assert_eq!(
        addresses(s.suppressions("email", None, 2).unwrap()),
        ["a@example.com", "b@example.com"]
    );
    assert_eq!(
        addresses(s.suppressions("email", Some("b@example.com"), 10).unwrap()),
        ["c@example.com"],
        "the next page, and nothing of channel email2"
    );
    let mut b = WriteBatch::new();
    b.push(Write::Unsuppress {
        channel: "email".into(),
        address: "a@example.com".into(),
    });
    s.apply(&b).unwrap();
    assert_eq!(s.suppression("email", "a@example.com").unwrap(), None);
    assert_eq!(s.suppressions("email", None, 10).unwrap().len(), 2);
}

pub fn ids_are_unique_and_increase(s: &dyn Store) {
    let ids: Vec<u64> = (0..1000).map(|_| s.next_id().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

/// Events per batch in the crash test: big enough that a kill lands inside one.
pub const CRASH_BATCH_EVENTS: usize = 64;

/// Crash-test batch `n` holds only new records (events and an inbox record, an ingest
/// request's shape), which a backend may make atomic differently from a batch that also
/// overwrites records.
fn new_records_only(n: u64) -> bool {
    n % 2 == 1
}

/// The contact of crash-test batch `n` of `round`.
fn crash_contact(round: u32, n: u64) -> String {
    format!("crash-{round}-{n}")
}

/// The crash test's writer: apply batch after batch (each: a contact, an identity,
/// [`CRASH_BATCH_EVENTS`] events, an inbox record, a timer and a marker; every other one only
/// the events and the inbox record), with another thread
/// flushing all the time so that the durable prefix ends at arbitrary points, and print
/// `batch N` once batch N and every one before it are durable. Never returns; the test kills
/// the process.
pub fn crash_writer(s: std::sync::Arc<dyn Store>, round: u32) -> ! {
    use std::io::Write as _;
    let flusher = s.clone();
    std::thread::spawn(move || loop {
        let _ = flusher.flush();
    });
    let mut n = 0u64;
    loop {
        let contact = crash_contact(round, n);
        let mut b = WriteBatch::new();
        let full = !new_records_only(n);
        if full {
            b.push(Write::Contact(Contact::new(contact.clone(), n as i64)));
            b.push(Write::Identity {
                kind: IdKind::User,
                id: contact.clone(),
                contact: contact.clone(),
            });
        }
        for i in 0..CRASH_BATCH_EVENTS as u64 {
            b.push(Write::Event {
                contact: contact.clone(),
                event: event(i, "crash"),
            });
        }
        b.push(Write::Inbox {
            key: (u64::from(round) << 40) | n,
            items: vec![InboxItem {
                contact: contact.clone(),
                event_seq: 0,
            }],
        });
        if full {
            b.push(Write::Timer(Timer {
                due: n as i64,
                target: TimerTarget::Run(contact.clone()),
                contact: contact.clone(),
            }));
            b.push(Write::Meta {
                key: format!("crash:{contact}"),
                value: "whole".into(),
            });
        }
        s.apply(&b).expect("apply");
        if n.is_multiple_of(16) {
            s.flush().expect("flush");
            println!("batch {n}");
            let _ = std::io::stdout().flush();
        }
        n += 1;
    }
}

/// The crash test's check, on the store reopened after the kill: every batch `round` wrote is
/// there whole or not at all, and the batches there are 0..N with no gap. Returns N.
pub fn check_after_crash(s: &dyn Store, round: u32) -> u64 {
    let mut whole = 0u64;
    let mut absent_run = 0;
    let inbox: BTreeMap<u64, usize> = s
        .inbox()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.len()))
        .collect();
    let timers: std::collections::HashSet<TimerTarget> = s
        .due_timers(i64::MAX - 1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|t| t.target)
        .collect();
    let mut n = 0u64;
    while absent_run < 64 {
        let contact = crash_contact(round, n);
        let events = s.events_of(&contact).unwrap().len();
        let mut parts = vec![
            events == CRASH_BATCH_EVENTS,
            inbox.contains_key(&((u64::from(round) << 40) | n)),
        ];
        if !new_records_only(n) {
            parts.extend([
                s.contact(&contact).unwrap().is_some(),
                s.identity(IdKind::User, &contact).unwrap().is_some(),
                timers.contains(&TimerTarget::Run(contact.clone())),
                s.meta(&format!("crash:{contact}")).unwrap().is_some(),
            ]);
        }
        if parts.iter().all(|p| *p) {
            assert_eq!(absent_run, 0, "batch {n} is there after a missing one");
            whole += 1;
        } else if parts.iter().all(|p| !p) && events == 0 {
            absent_run += 1;
        } else {
            panic!(
                "batch {n} of round {round} is partly stored: all events, inbox (and for a full \
                 batch contact, identity, timer, marker) = {parts:?} ({events} of \
                 {CRASH_BATCH_EVENTS} events)"
            );
        }
        n += 1;
    }
    whole
}
