//! # herald-bundled — Herald's first-party connectors, inside the binary
//!
//! The build script compiles the guest workspace (`plugins/guest`) for
//! `wasm32-wasip2` and embeds each first-party connector's component and
//! manifest here, so `plugin = "bundled:<id>"` works from an installed
//! `herald` anywhere, with no build directory around. This crate does not
//! depend on wasmtime: loading a component is the plugin host's job.
//!
//! A toolchain without the wasm target (and no rustup to add it) still
//! builds Herald: then [`unavailable`] says why, and [`get`] reports it for
//! every connector.
#![warn(missing_docs)]

use std::path::PathBuf;

/// One embedded connector: its packaged `plugin.toml` (with `sha256` and
/// `config_schema` filled in) and its `plugin.wasm` component.
#[derive(Debug)]
pub struct Bundled {
    /// The connector's id, as in `bundled:<id>`.
    pub id: &'static str,
    /// The packaged manifest text.
    pub manifest: &'static str,
    /// The WebAssembly component.
    pub wasm: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// Ids of the first-party connectors, whether or not this build embeds them.
pub const CONNECTORS: &[&str] = &[
    "smtp-email",
    "twilio-sms",
    "postmark",
    "mastodon",
    "x-posts",
    "meta-audiences",
    "meta-capi",
    "webhook",
];

/// Why a bundled connector cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundledError {
    /// This build carries no connectors (the wasm target was missing).
    #[error("this herald was built without its bundled connectors: {0}")]
    NotBuilt(&'static str),
    /// No first-party connector has this id.
    #[error("there is no bundled connector \"{id}\" (bundled: {known})")]
    Unknown {
        /// The id asked for.
        id: String,
        /// The ids there are, comma-separated.
        known: String,
    },
}

/// The embedded connector `id`.
pub fn get(id: &str) -> Result<&'static Bundled, BundledError> {
    if let Some(reason) = UNAVAILABLE {
        return Err(BundledError::NotBuilt(reason));
    }
    BUILT
        .iter()
        .find(|b| b.id == id)
        .ok_or_else(|| BundledError::Unknown {
            id: id.to_string(),
            known: CONNECTORS.join(", "),
        })
}

/// Every embedded connector (empty when [`unavailable`] says why).
pub fn all() -> &'static [Bundled] {
    BUILT
}

/// Why this build embeds no connectors, or `None` when it embeds them all.
pub fn unavailable() -> Option<&'static str> {
    UNAVAILABLE
}

/// The packaged connector folders (`<id>/plugin.toml`, `<id>/plugin.wasm`) in
/// the build directory. For Herald's own tests and benchmarks: an installed
/// binary uses [`get`].
#[doc(hidden)]
pub fn packaged_dir() -> PathBuf {
    PathBuf::from(env!("HERALD_BUNDLED_PLUGINS_DIR"))
}

/// The packaged test plugins (hostile, bench, fat, not-a-plugin) in the build
/// directory, for Herald's own tests and benchmarks.
#[doc(hidden)]
pub fn testdata_dir() -> PathBuf {
    PathBuf::from(env!("HERALD_TEST_PLUGINS_DIR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_first_party_connector_is_embedded_or_the_build_says_why() {
        match unavailable() {
            Some(reason) => {
                assert!(all().is_empty());
                assert_eq!(get("webhook").unwrap_err(), BundledError::NotBuilt(reason));
            }
            None => {
                let mut ids: Vec<_> = all().iter().map(|b| b.id).collect();
                ids.sort_unstable();
                let mut expected = CONNECTORS.to_vec();
                expected.sort_unstable();
                assert_eq!(ids, expected);
                for b in all() {
                    assert!(b.wasm.starts_with(b"\0asm"), "{} is wasm", b.id);
                    assert!(b.manifest.contains("sha256 = "), "{} is packaged", b.id);
                }
            }
        }
        assert!(matches!(
            get("no-such-connector"),
            Err(BundledError::Unknown { .. }) | Err(BundledError::NotBuilt(_))
        ));
    }
}
