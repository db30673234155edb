//! `inspect`: what a component exports/imports and its describe(), or the
//! precise reason it is not a Herald plugin.
mod common;

use common::*;
use herald_plugin_host::{inspect, PluginError};

/// Drop the lines that change with every rebuild (size, digest).
fn stable(report: &str) -> String {
    report
        .lines()
        .filter(|l| {
            !l.starts_with("size: ")
                && !l.starts_with("sha256: ")
                && !l.starts_with("file: ")
                && !l.starts_with("compiled: ")
        })
        // WASI import versions follow the Rust toolchain's wasm32-wasip2 std.
        .filter(|l| !l.starts_with("  wasi:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn valid_plugin_report() {
    let report = inspect(&connector_dir("twilio-sms").join("plugin.wasm")).expect("inspect");
    assert!(report.is_valid(), "{report}");
    assert_eq!(report.api_version.as_deref(), Some("0.2.0"));
    assert_eq!(report.description.as_ref().unwrap().id, "twilio-sms");
    let text = report.to_string();
    assert!(text.contains(&format!("sha256: {}", report.sha256)));
    insta::assert_snapshot!("inspect_twilio_sms", stable(&text));
}

#[test]
fn every_bundled_connector_is_valid_and_consistent() {
    let mut summary = Vec::new();
    for id in herald_bundled::CONNECTORS {
        let report = inspect(&connector_dir(id).join("plugin.wasm")).expect("inspect");
        assert!(report.is_valid(), "{id}: {report}");
        let d = report.description.unwrap();
        let ops: Vec<_> = d.operations.iter().map(|o| o.name.as_str()).collect();
        summary.push(format!(
            "{id} {}: delivers_messages={} supports_idempotency={} operations=[{}]",
            d.version,
            d.delivers_messages,
            d.supports_idempotency,
            ops.join(", ")
        ));
    }
    insta::assert_snapshot!("bundled_connectors", summary.join("\n"));
}

#[test]
fn component_without_connector_export_is_explained() {
    let report = inspect(
        &test_plugin_dir("..")
            .join("testplugins")
            .join("not-a-plugin.wasm"),
    )
    .or_else(|_| inspect(&herald_bundled::testdata_dir().join("not-a-plugin.wasm")))
    .expect("inspect");
    assert!(!report.is_valid());
    assert!(report.exports.iter().all(|e| !e.starts_with("herald:")));
    assert!(report.imports.iter().any(|i| i.starts_with("wasi:")));
    let text = report.to_string();
    assert!(
        text.contains("verdict: NOT a valid Herald plugin"),
        "{text}"
    );
    assert!(
        text.contains(
            "does not export `herald:channel/connector@0.2.0` or `herald:channel/connector@0.1.0`"
        ),
        "{text}"
    );
    assert!(report.ensure_valid().is_err());
}

#[test]
fn core_modules_and_garbage_are_refused_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    match inspect(&core) {
        Err(PluginError::InvalidPlugin(m)) => assert!(
            m.contains("core WebAssembly module, not a component"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"MZ not wasm at all").unwrap();
    match inspect(&junk) {
        Err(PluginError::InvalidPlugin(m)) => {
            assert!(m.contains("not a WebAssembly binary"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        inspect(&dir.path().join("missing.wasm")),
        Err(PluginError::Io { .. })
    ));
}

#[test]
fn a_plugin_folder_is_inspected_through_its_manifest() {
    let report = inspect(&connector_dir("twilio-sms")).expect("inspect");
    assert!(report.is_valid(), "{report}");
    assert!(
        report.path.ends_with("plugin.wasm"),
        "{}",
        report.path.display()
    );
    assert_eq!(report.manifest.as_ref().unwrap().id, "twilio-sms");
}

#[test]
fn a_component_without_its_manifest_is_not_a_plugin_the_daemon_would_load() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("plugin.wasm");
    std::fs::copy(connector_dir("twilio-sms").join("plugin.wasm"), &wasm).unwrap();
    for path in [wasm.clone(), dir.path().to_path_buf()] {
        let report = inspect(&path).expect("inspect");
        assert!(!report.is_valid(), "{report}");
        assert!(
            report.problems[0].starts_with("no plugin.toml beside the component"),
            "{report}"
        );
        // The component itself is still described.
        assert_eq!(report.description.as_ref().unwrap().id, "twilio-sms");
        // And the daemon refuses it the same way: no manifest, no plugin.
        let err = host().load(dir.path(), Default::default()).unwrap_err();
        assert!(err.to_string().contains("plugin.toml"), "{err}");
    }
}

#[test]
fn a_second_inspect_of_the_same_component_compiles_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let wasm = connector_dir("webhook").join("plugin.wasm");
    let first = herald_plugin_host::inspect_with_cache(&wasm, Some(cache.path().into())).unwrap();
    assert_eq!(
        first.compiled,
        herald_plugin_host::Compiled::NowCached(cache.path().into())
    );
    let second = herald_plugin_host::inspect_with_cache(&wasm, Some(cache.path().into())).unwrap();
    assert_eq!(
        second.compiled,
        herald_plugin_host::Compiled::FromCache(cache.path().into())
    );
    assert!(second.is_valid(), "{second}");
    assert!(second.to_string().contains("compiled: reused from"));
}
