//! Data directories survive upgrades: a data directory written by an earlier Herald, committed
//! as a fixture, opens with this build and everything in it is there — every contact, run,
//! timer and segment membership. Each record layout keeps its fixture forever; a change to
//! stored records ships its migration and a fixture of the layout before it.
//!
//! `fixtures/data/layout-5/` holds the project and `data.tar.gz`, a clean shutdown's data
//! directory of layout "5", written by `write_the_layout_fixture` below (run by hand, once,
//! by the build that introduced the layout:
//! `HERALD_WRITE_LAYOUT_FIXTURE=1 cargo test -p herald-cli --test data_layouts -- --ignored`).
mod common;

use std::path::{Path, PathBuf};

use common::*;
use herald_runtime::daemon::{Options, RunningDaemon};
use serde_json::{json, Value};

/// The test clock of the fixture's daemon: every time inside the fixture is relative to it.
const CLOCK_START: &str = "1780000000000";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/layout-5")
}

fn start(project: &Path, data: &Path) -> RunningDaemon {
    std::env::set_var("HERALD_TEST_CLOCK_START", CLOCK_START);
    RunningDaemon::start(Options {
        project: project.to_path_buf(),
        listen: Some("127.0.0.1:0".into()),
        data: Some(data.to_path_buf()),
        test_clock: true,
        watch: false,
    })
    .expect("the daemon opens the data directory")
}

fn write_key_client(d: &RunningDaemon) -> Client {
    Client::new(d.url())
}

/// Copy a folder tree.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

const USERS: [&str; 3] = ["ada", "bob", "cy"];

#[test]
fn a_layout_5_data_directory_opens_with_every_contact_run_timer_and_membership() {
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("project");
    copy_tree(&fixture_dir().join("project"), &project);
    let data = work.path().join("data");
    let tarball = std::fs::File::open(fixture_dir().join("data.tar.gz")).unwrap();
    tar::Archive::new(flate2::read::GzDecoder::new(tarball))
        .unpack(&data)
        .unwrap();

    let d = start(&project, &data);
    let c = write_key_client(&d);
    for user in USERS {
        let (code, contact) = c.admin_get(&format!("/v1/contacts/{user}"));
        assert_eq!(code, 200, "{contact}");
        assert_eq!(
            contact["attributes"]["email"],
            json!(format!("{user}@example.com"))
        );
        assert_eq!(contact["attributes"]["plan"], "pro");
        let runs = c.runs_of(user);
        assert_eq!(runs.len(), 1, "{runs:?}");
        assert_eq!(runs[0]["workflow"], "follow_up");
        assert_eq!(runs[0]["status"], "waiting");
    }
    let (_, segment) = c.admin_get("/v1/segments/visitors");
    assert_eq!(segment["size"], 3, "{segment}");
    let mut members: Vec<String> = segment["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m.as_str()
                .map(String::from)
                .unwrap_or_else(|| m["contact"].to_string())
        })
        .collect();
    members.sort();
    assert_eq!(members.len(), 3, "{segment}");
    // One timer per waiting run, one per contact's visit window.
    let (_, status) = c.admin_get("/v1/status");
    assert_eq!(status["pending_timers"], 6, "{status}");

    // And the data is live: the runs' timers fire and the runs go on.
    c.advance(31 * DAY);
    for user in USERS {
        let id = c.runs_of(user)[0]["id"].as_str().unwrap().to_string();
        c.run_reaches(&id, "completed", 2);
    }
    assert_eq!(project_outbox(&project).len(), USERS.len());
    d.shutdown();
}

fn project_outbox(project: &Path) -> Vec<Value> {
    std::fs::read_to_string(project.join("out/email.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes `fixtures/data/layout-5/data.tar.gz` from the fixture project. Run by hand, by the
/// build that introduced the layout (see the module docs); never by a later one.
#[test]
#[ignore]
fn write_the_layout_fixture() {
    if std::env::var_os("HERALD_WRITE_LAYOUT_FIXTURE").is_none() {
        eprintln!("set HERALD_WRITE_LAYOUT_FIXTURE=1 to write the fixture");
        return;
    }
    assert_eq!(
        herald_runtime::store::LAYOUT,
        "5",
        "this writes the layout-5 fixture"
    );
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("project");
    copy_tree(&fixture_dir().join("project"), &project);
    let data = work.path().join("data");
    let d = start(&project, &data);
    let c = write_key_client(&d);
    for user in USERS {
        c.identify(
            user,
            json!({"email": format!("{user}@example.com"), "plan": "pro"}),
        );
        c.track(user, "visit", json!({}));
        c.track(user, "signed_up", json!({}));
    }
    for user in USERS {
        eventually("the run waits", || {
            let runs = c.runs_of(user);
            (runs.len() == 1 && runs[0]["status"] == "waiting").then_some(())
        });
    }
    eventually("every contact is in the segment", || {
        let (_, s) = c.admin_get("/v1/segments/visitors");
        (s["size"] == 3).then_some(())
    });
    d.shutdown();
    let out = std::fs::File::create(fixture_dir().join("data.tar.gz")).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        out,
        flate2::Compression::best(),
    ));
    tar.append_dir_all(".", &data).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}
