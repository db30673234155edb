//! Builds the guest workspace (`plugins/guest`: SDK, first-party connectors,
//! hostile test plugins) for `wasm32-wasip2` with a nested cargo on its own
//! target directory, packages every plugin as `<id>/plugin.toml` +
//! `<id>/plugin.wasm` with the manifest's `sha256` and `config_schema` filled
//! in, and writes `bundled.rs`, which embeds the first-party connectors in
//! this crate (so an installed `herald` carries them).
//!
//! When the toolchain lacks the `wasm32-wasip2` target, the script adds it
//! with `rustup target add` (printing a warning that says so). Where that is
//! impossible (no rustup, a custom toolchain, no network) it says why in one
//! warning line and builds the crate without connectors: the daemon then
//! runs outbox and native channels, and a plugin channel reports the reason.
//! `HERALD_SKIP_GUEST_BUILD=1` takes that path on purpose.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::Digest;

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let plugins = manifest_dir.parent().unwrap().to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let bundled = out.join("plugins");
    let testdata = out.join("testplugins");
    for d in [&bundled, &testdata] {
        let _ = std::fs::remove_dir_all(d);
        std::fs::create_dir_all(d).unwrap();
    }
    println!(
        "cargo:rustc-env=HERALD_BUNDLED_PLUGINS_DIR={}",
        bundled.display()
    );
    println!(
        "cargo:rustc-env=HERALD_TEST_PLUGINS_DIR={}",
        testdata.display()
    );
    for p in [
        "wit",
        "sdk",
        "connectors",
        "testdata",
        "guest/Cargo.toml",
        "guest/Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", plugins.join(p).display());
    }
    for var in [
        "HERALD_SKIP_GUEST_BUILD",
        "HERALD_GUEST_TARGET_DIR",
        "RUSTUP_TOOLCHAIN",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let generated = out.join("bundled.rs");
    if std::env::var_os("HERALD_SKIP_GUEST_BUILD").is_some_and(|v| v == "1") {
        unavailable(
            &generated,
            "this herald was built with HERALD_SKIP_GUEST_BUILD=1",
        );
        return;
    }
    if let Err(reason) = ensure_target() {
        unavailable(&generated, &reason);
        return;
    }

    // A separate target dir: a nested cargo on the outer one would deadlock. It is shared by
    // the outer build's profiles (the guest is always built in release).
    let guest_target = std::env::var_os("HERALD_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // OUT_DIR = <target>/[<triple>/]<profile>/build/<pkg>-<hash>/out
            let profile_dir = out
                .ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "build"))
                .and_then(Path::parent)
                .expect("OUT_DIR inside a target dir");
            profile_dir
                .parent()
                .unwrap_or(profile_dir)
                .join("herald-guest-target")
        });
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let jobs = std::env::var("NUM_JOBS").unwrap_or_else(|_| "1".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--workspace")
        .arg("--target")
        .arg(WASM_TARGET)
        .arg("--manifest-path")
        .arg(plugins.join("guest/Cargo.toml"))
        .arg("-j")
        .arg(&jobs)
        .env("CARGO_TARGET_DIR", &guest_target)
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::inherit());
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        // The outer build's build directory is locked by the outer cargo: the nested one
        // would wait for it forever.
        "CARGO_BUILD_BUILD_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the guest workspace");
    if !status.success() {
        panic!(
            "building the Herald guest plugins for {WASM_TARGET} failed (see output above). \
             Set HERALD_SKIP_GUEST_BUILD=1 to build Herald without its connectors."
        );
    }
    let wasm_dir = guest_target.join(WASM_TARGET).join("release");
    let ids = package_all(&plugins.join("connectors"), &wasm_dir, &bundled);
    package_all(&plugins.join("testdata"), &wasm_dir, &testdata);
    // Test crates without a manifest are copied as bare `<dir-name>.wasm`.
    for entry in std::fs::read_dir(plugins.join("testdata")).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("Cargo.toml").exists() && !dir.join("plugin.toml").exists() {
            let name = crate_name(&dir);
            let wasm = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
            let file = format!("{}.wasm", dir.file_name().unwrap().to_string_lossy());
            std::fs::copy(&wasm, testdata.join(file))
                .unwrap_or_else(|e| panic!("{}: {e}", wasm.display()));
        }
    }
    let mut code = String::from(
        "/// The connectors this build embeds.\npub(crate) static BUILT: &[Bundled] = &[\n",
    );
    for id in &ids {
        let dir = bundled.join(id);
        code.push_str(&format!(
            "    Bundled {{ id: {id:?}, manifest: include_str!({:?}), wasm: include_bytes!({:?}) }},\n",
            dir.join("plugin.toml").display().to_string(),
            dir.join("plugin.wasm").display().to_string(),
        ));
    }
    code.push_str("];\n/// Why no connectors are embedded, when none are.\npub(crate) const UNAVAILABLE: Option<&str> = None;\n");
    std::fs::write(&generated, code).unwrap();
}

/// Make sure the toolchain has the wasm target, adding it with rustup when it is missing.
fn ensure_target() -> Result<(), String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .ok_or_else(|| format!("`{rustc} --print sysroot` failed"))?;
    let rustlib = sysroot.join("lib").join("rustlib");
    let target_dir = rustlib.join(WASM_TARGET);
    if target_dir.is_dir() {
        return Ok(());
    }
    // Build again once the target appears (`rustup target add` by hand, later).
    println!("cargo:rerun-if-changed={}", rustlib.display());
    let mut cmd = Command::new(std::env::var("RUSTUP").unwrap_or_else(|_| "rustup".into()));
    cmd.args(["target", "add", WASM_TARGET]);
    if let Ok(toolchain) = std::env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &toolchain]);
    }
    println!(
        "cargo:warning=the {WASM_TARGET} target is missing; adding it with `rustup target add {WASM_TARGET}` to build the bundled connectors"
    );
    let missing = format!(
        "the toolchain at {} has no {WASM_TARGET} target",
        sysroot.display()
    );
    match cmd.output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("{missing} and rustup is not available to add it"))
        }
        Err(e) => Err(format!("{missing} and rustup could not be run: {e}")),
        Ok(o) if o.status.success() && target_dir.is_dir() => Ok(()),
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            let why = stderr
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no output");
            Err(format!(
                "{missing} and `rustup target add {WASM_TARGET}` failed: {why}"
            ))
        }
    }
}

/// Build the crate without connectors, saying why in one line.
fn unavailable(generated: &Path, reason: &str) {
    println!(
        "cargo:warning=building herald without its bundled connectors: {reason}; outbox and webhook channels work, `bundled:` plugin channels report this reason"
    );
    let code = format!(
        "/// The connectors this build embeds.\npub(crate) static BUILT: &[Bundled] = &[];\n/// Why no connectors are embedded, when none are.\npub(crate) const UNAVAILABLE: Option<&str> = Some({reason:?});\n"
    );
    std::fs::write(generated, code).unwrap();
}

fn crate_name(crate_dir: &Path) -> String {
    let cargo_toml = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    cargo_toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("name = \"")?.strip_suffix('"'))
        .expect("package name")
        .to_string()
}

/// Package every plugin crate under `src_root`; returns their ids.
fn package_all(src_root: &Path, wasm_dir: &Path, dest_root: &Path) -> Vec<String> {
    let mut entries: Vec<_> = std::fs::read_dir(src_root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("plugin.toml").exists() && p.join("Cargo.toml").exists())
        .collect();
    entries.sort();
    entries
        .iter()
        .map(|crate_dir| package(crate_dir, wasm_dir, dest_root))
        .collect()
}

fn package(crate_dir: &Path, wasm_dir: &Path, dest_root: &Path) -> String {
    let name = crate_name(crate_dir);
    let wasm_file = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
    let wasm = std::fs::read(&wasm_file).unwrap_or_else(|e| panic!("{}: {e}", wasm_file.display()));
    let template = std::fs::read_to_string(crate_dir.join("plugin.toml")).unwrap();
    let id = template
        .lines()
        .find_map(|l| l.trim().strip_prefix("id = \"")?.strip_suffix('"'))
        .expect("plugin.toml id");
    assert!(
        !template
            .lines()
            .any(|l| l.trim_start().starts_with("sha256")),
        "{}: the template must not contain sha256",
        crate_dir.display()
    );
    let mut manifest = template.clone();
    manifest.push_str(&format!(
        "sha256 = \"{}\"\n",
        hex::encode(sha2::Sha256::digest(&wasm))
    ));
    let schema_file = crate_dir.join("config.schema.json");
    if schema_file.exists() {
        let schema = std::fs::read_to_string(&schema_file).unwrap();
        assert!(
            !schema.contains("'''"),
            "config.schema.json must not contain '''"
        );
        manifest.push_str(&format!("config_schema = '''{}'''\n", schema.trim()));
    }
    let dest = dest_root.join(id);
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("plugin.wasm"), &wasm).unwrap();
    std::fs::write(dest.join("plugin.toml"), manifest).unwrap();
    id.to_string()
}
