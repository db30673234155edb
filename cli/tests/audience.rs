//! Segments, lead scoring and the triggers they fire, over simulated time.

mod common;

use common::*;
use serde_json::json;

const ACTIVE: &str =
    "segment(\"active\");\nfn matches(contact) {\n    count(\"page_viewed\", days(7)) >= 2\n}\n";

fn members(c: &Client, segment: &str) -> Vec<String> {
    let (s, b) = c.admin_get(&format!("/v1/segments/{segment}"));
    assert_eq!(s, 200, "{b}");
    b["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn contact_id(c: &Client, user: &str) -> String {
    c.admin_get(&format!("/v1/contacts/{user}")).1["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_window_segment_is_entered_by_events_and_left_when_they_age_out_without_new_events() {
    let p = TestProject::new("");
    p.segment("active.rhai", ACTIVE);
    let d = p.start();
    let c = Client::new(d.url());
    c.track("w", "page_viewed", json!({}));
    c.advance(DAY);
    assert!(members(&c, "active").is_empty(), "one view is not enough");
    c.track("w", "page_viewed", json!({}));
    let id = contact_id(&c, "w");
    eventually("entered", || {
        (members(&c, "active") == [id.clone()]).then_some(())
    });
    let (_, contact) = c.admin_get("/v1/contacts/w");
    assert_eq!(contact["segments"], json!(["active"]));

    // Six days after the first view it leaves the window: no event needed.
    c.advance(6 * DAY + 1);
    eventually("exited by itself", || {
        members(&c, "active").is_empty().then_some(())
    });
    let (_, seg) = c.admin_get("/v1/segments/active");
    let recent: Vec<bool> = seg["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["entered"].as_bool().unwrap())
        .collect();
    assert_eq!(
        recent,
        [false, true],
        "newest first: the exit, then the entry"
    );
    assert!(c
        .get_text("/metrics")
        .contains("herald_segment_size{segment=\"active\"} 0"));
}

#[test]
fn a_segment_entry_workflow_fires_exactly_once_per_entry() {
    let p = TestProject::new("");
    p.segment("active.rhai", ACTIVE);
    p.workflow("hello.rhai", "workflow(\"hello\").on_segment_entered(\"active\").reentry(\"always\");\nfn run(contact, trigger) {\n    send(\"email\", \"tips\", #{ segment: trigger.properties.segment });\n}\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("s", json!({"email": "s@example.com"}));
    for _ in 0..4 {
        c.track("s", "page_viewed", json!({}));
    }
    eventually("one message", || {
        (p.outbox("email").len() == 1).then_some(())
    });
    c.advance(8 * DAY);
    eventually("left", || members(&c, "active").is_empty().then_some(()));
    c.track("s", "page_viewed", json!({}));
    c.track("s", "page_viewed", json!({}));
    eventually("second entry, second message", || {
        (p.outbox("email").len() == 2).then_some(())
    });
    c.track("s", "page_viewed", json!({}));
    c.advance(1000);
    let runs = c.runs_of("s");
    assert_eq!(
        runs.len(),
        2,
        "one run per entry, none for events while already inside: {runs:?}"
    );
}

#[test]
fn segments_can_build_on_attributes_and_other_segments() {
    let p = TestProject::new("");
    p.segment("active.rhai", ACTIVE);
    p.segment(
        "pro.rhai",
        "segment(\"pro\");\nfn matches(contact) { contact.plan == \"pro\" }\n",
    );
    p.segment("hot.rhai", "segment(\"hot\");\nfn matches(contact) { in_segment(\"pro\") && in_segment(\"active\") }\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.track("h", "page_viewed", json!({}));
    c.track("h", "page_viewed", json!({}));
    c.identify("h", json!({"plan": "pro"}));
    let id = contact_id(&c, "h");
    eventually("hot", || (members(&c, "hot") == [id.clone()]).then_some(()));
    c.identify("h", json!({"plan": "free"}));
    eventually("not hot", || members(&c, "hot").is_empty().then_some(()));
    assert_eq!(members(&c, "active"), [id]);
}

const SCORING: &str = "scoring().half_life(days(7)).stage(\"lead\", 20).stage(\"mql\", 50);\n\
rule(\"requested a demo\").on_event(\"demo_requested\").points(40);\n\
rule(\"viewed pricing\").on_event(\"page\", #{ name: \"Pricing\" }).points(10).cap(20, days(1));\n\
rule(\"big company\").when(\"company_size\", \">=\", 500).points(5);\n";

fn score(c: &Client, user: &str) -> serde_json::Value {
    let (s, b) = c.admin_get(&format!("/v1/contacts/{user}/score"));
    assert_eq!(s, 200, "{b}");
    b
}

#[test]
fn scores_decay_with_the_half_life_and_explain_themselves() {
    let p = TestProject::new("");
    std::fs::write(p.path().join("scoring.rhai"), SCORING).unwrap();
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("k", json!({"company_size": 800}));
    c.track("k", "demo_requested", json!({}));
    for _ in 0..3 {
        c.ingest(
            "/v1/page",
            &json!({"userId": "k", "name": "Pricing"}).to_string(),
        );
    }
    let s = eventually("scored", || {
        let s = score(&c, "k");
        (s["score"] == json!(65.0)).then_some(s)
    });
    // 40 for the demo, 10 + 10 for pricing (capped at 20 a day), 5 for the attribute.
    assert_eq!(s["stage"], "mql");
    assert_eq!(
        s["attributes"],
        json!([{"rule": "big company", "points": 5.0, "value": 5.0}])
    );
    let rules: Vec<&str> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        ["viewed pricing", "viewed pricing", "requested a demo"]
    );

    c.advance(14 * DAY);
    let s = score(&c, "k");
    // Two half-lives: 60 event points become 15; the attribute keeps its 5.
    assert_eq!(s["score"], json!(20.0));
    assert_eq!(s["stage"], "lead");
    assert_eq!(s["events"][2]["value"], json!(10.0));
}

#[test]
fn a_stage_change_triggers_the_sales_handoff_and_decay_moves_the_stage_back() {
    let p = TestProject::new("[channels.crm]\ntype = \"outbox\"\npath = \"out/crm.jsonl\"\n");
    std::fs::write(p.path().join("scoring.rhai"), SCORING).unwrap();
    p.workflow("handoff.rhai", "workflow(\"handoff\").on_stage_changed(\"mql\");\nfn run(contact, trigger) {\n    action(\"crm\", \"create_task\", #{ owner: \"sales\", score: contact.score });\n}\n");
    let d = p.start();
    let c = Client::new(d.url());
    c.track("m", "demo_requested", json!({}));
    assert!(
        p.outbox("crm").is_empty(),
        "40 points is a lead, not an MQL"
    );
    c.ingest(
        "/v1/page",
        &json!({"userId": "m", "name": "Pricing"}).to_string(),
    );
    let tasks = eventually("handoff", || {
        let o = p.outbox("crm");
        (!o.is_empty()).then_some(o)
    });
    assert_eq!(tasks[0]["payload"]["owner"], "sales");
    assert_eq!(tasks[0]["payload"]["score"], json!(50.0));
    let (_, contact) = c.admin_get("/v1/contacts/m");
    assert_eq!(contact["attributes"]["stage"], "mql");

    // Without new activity the score decays below 50 and a timer moves the stage back.
    c.advance(DAY);
    eventually("stage back to lead", || {
        let (_, contact) = c.admin_get("/v1/contacts/m");
        (contact["attributes"]["stage"] == "lead").then_some(())
    });
    assert_eq!(p.outbox("crm").len(), 1);
}

#[test]
fn a_segment_added_while_running_is_backfilled_over_existing_contacts() {
    let p = TestProject::new("");
    let d = p.start_with(true);
    let c = Client::new(d.url());
    for u in ["a", "b", "c"] {
        c.identify(u, json!({"plan": if u == "b" { "free" } else { "pro" }}));
    }
    p.segment(
        "pro.rhai",
        "segment(\"pro\");\nfn matches(contact) { contact.plan == \"pro\" }\n",
    );
    let status = eventually("backfill finished", || {
        let (_, s) = c.admin_get("/v1/status");
        (s["backfill"]["segments"] == json!(["pro"])
            && s["backfill"]["running"] == false
            && s["backfill"]["done"] == 3)
            .then_some(s)
    });
    assert_eq!(status["backfill"]["total"], 3);
    let mut m = members(&c, "pro");
    m.sort();
    let mut want = vec![contact_id(&c, "a"), contact_id(&c, "c")];
    want.sort();
    assert_eq!(m, want);
    let (_, list) = c.admin_get("/v1/segments");
    assert_eq!(list["segments"][0]["size"], 2);
}

#[test]
fn check_reports_unknown_segments_and_stages_in_triggers() {
    let p = TestProject::new("");
    std::fs::write(p.path().join("scoring.rhai"), SCORING).unwrap();
    p.segment("active.rhai", ACTIVE);
    p.workflow("w.rhai", "workflow(\"w\").on_segment_entered(\"actve\").on_stage_changed(\"sql\");\nfn run(contact, trigger) {}\n");
    let engine = herald_dsl::build_engine(&herald_dsl::Limits::default());
    let (project, report) = herald_runtime::project::Project::load(p.path(), &engine);
    assert!(project.is_none());
    let text = report.render(false);
    assert!(
        text.contains("[H013] Error: unknown segment \"actve\" in a trigger"),
        "{text}"
    );
    assert!(text.contains("did you mean \"active\"?"), "{text}");
    assert!(
        text.contains("[H016] Error: unknown stage \"sql\" in a trigger"),
        "{text}"
    );
}

#[test]
fn behaviour_counts_follow_merged_histories_and_property_filters() {
    let p = TestProject::new("");
    p.segment(
        "buyer.rhai",
        "segment(\"buyer\");\nfn matches(contact) {\n    count(\"order\", days(30)) >= 3\n}\n",
    );
    p.segment("pro_buyer.rhai",
        "segment(\"pro_buyer\");\nfn matches(contact) {\n    count(\"order\", #{ plan: \"pro\" }, days(30)) >= 2 && last_seen(\"order\") != ()\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    // Two orders while anonymous, one as a known user: three once the histories merge.
    for plan in ["pro", "free"] {
        let body = json!({"anonymousId": "anon-1", "event": "order", "properties": {"plan": plan}});
        assert_eq!(c.ingest("/v1/track", &body.to_string()).0, 200);
    }
    c.track("buyer", "order", json!({"plan": "pro"}));
    assert!(
        members(&c, "buyer").is_empty(),
        "two histories of 2 and 1 orders"
    );
    assert!(members(&c, "pro_buyer").is_empty());
    let body = json!({"anonymousId": "anon-1", "userId": "buyer", "traits": {}});
    assert_eq!(c.ingest("/v1/identify", &body.to_string()).0, 200);
    // The merge itself is an identify; the next order re-evaluates over the merged history.
    c.track("buyer", "order", json!({"plan": "free"}));
    let id = contact_id(&c, "buyer");
    eventually("buyer over the merged history", || {
        (members(&c, "buyer") == [id.clone()]).then_some(())
    });
    assert_eq!(
        members(&c, "pro_buyer"),
        std::slice::from_ref(&id),
        "two pro orders of four"
    );

    // Thirty days later every order has left the window.
    c.advance(30 * DAY + 1);
    eventually("left by itself", || {
        (members(&c, "buyer").is_empty() && members(&c, "pro_buyer").is_empty()).then_some(())
    });
}

#[test]
fn an_update_step_moves_the_contact_into_segments_that_read_the_attribute() {
    let p = TestProject::new("");
    p.segment(
        "pro.rhai",
        "segment(\"pro\");\nfn matches(contact) { contact.plan == \"pro\" }\n",
    );
    p.workflow(
        "upgrade.rhai",
        "workflow(\"upgrade\").on_event(\"paid\");\nfn run(contact, trigger) {\n    update(#{ plan: \"pro\" });\n}\n",
    );
    let d = p.start();
    let c = Client::new(d.url());
    c.identify("u", json!({"plan": "free"}));
    let id = contact_id(&c, "u");
    assert!(members(&c, "pro").is_empty());
    c.track("u", "paid", json!({}));
    eventually("pro after the update step", || {
        (members(&c, "pro") == [id.clone()]).then_some(())
    });
    let (_, contact) = c.admin_get("/v1/contacts/u");
    assert_eq!(contact["attributes"]["plan"], "pro");
    assert_eq!(contact["segments"], json!(["pro"]));
}
