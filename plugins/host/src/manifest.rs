//! `plugin.toml`, the manifest that sits next to `plugin.wasm`.
//!
//! ```toml
//! id = "twilio-sms"                 # [a-z0-9-]+, equals describe().id
//! version = "0.1.0"                 # equals describe().version
//! api_version = "0.2.0"             # herald:channel version built against (0.1.0 still loads)
//! description = "SMS via Twilio"    # optional
//! wasm = "plugin.wasm"              # optional, default plugin.wasm
//! sha256 = "…64 hex digits…"        # digest of the wasm file, checked on load
//! allowed_hosts = ["api.twilio.com"]
//! secrets = ["TWILIO_AUTH_TOKEN"]   # names the plugin may reference
//! smtp = false                      # whether it uses the smtp capability
//! config_schema = '{"type":"object"}'  # JSON Schema (string), equals describe()'s
//! contact_fields = ["phone"]        # contact fields sent in outbound.fields, equals describe()'s
//! ```

use std::path::Path;

pub use herald_config::manifest::{
    check_api_version, check_config_schema, sha256_hex, Manifest, ManifestError, API_VERSION,
    SUPPORTED_API_VERSIONS,
};

use crate::PluginError;

/// Read and validate `dir/plugin.toml`.
pub fn load(dir: &Path) -> Result<Manifest, PluginError> {
    let path = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&path).map_err(|source| PluginError::Io {
        path: path.clone(),
        source,
    })?;
    parse(&text, &path)
}

/// Parse and validate manifest text as the host does: the schema's checks
/// ([`Manifest::parse`]) and the allowed host patterns (`path` is used in messages).
pub fn parse(text: &str, path: &Path) -> Result<Manifest, PluginError> {
    let bad = |message: String| PluginError::Manifest {
        path: path.to_path_buf(),
        message,
    };
    let m = Manifest::parse(text).map_err(|e| match e {
        ManifestError::Invalid(message) => bad(message),
        ManifestError::ApiVersion { found, supported } => {
            PluginError::ApiVersion { found, supported }
        }
    })?;
    for h in &m.allowed_hosts {
        crate::net::HostPattern::parse(h).map_err(|e| bad(format!("allowed_hosts: {e}")))?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"
id = "demo"
version = "1.2.3"
api_version = "0.1.0"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
allowed_hosts = ["api.example.com", "*.example.org", "127.0.0.1:8080"]
secrets = ["TOKEN"]
"#;

    #[test]
    fn parses_valid_manifest() {
        let m = parse(OK, Path::new("plugin.toml")).unwrap();
        assert_eq!(m.id, "demo");
        assert_eq!(m.wasm, "plugin.wasm");
        assert!(!m.smtp);
    }

    #[test]
    fn rejects_bad_fields() {
        let bad_id = OK.replace("id = \"demo\"", "id = \"Demo!\"");
        assert!(parse(&bad_id, Path::new("p")).is_err());
        let bad_api = OK.replace("api_version = \"0.1.0\"", "api_version = \"0.3.0\"");
        assert!(matches!(
            parse(&bad_api, Path::new("p")),
            Err(PluginError::ApiVersion { .. })
        ));
        let fields_on_v1 = format!("{OK}\ncontact_fields = [\"email\"]\n");
        let err = parse(&fields_on_v1, Path::new("p"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs api_version 0.2.0"), "{err}");
        let v2 = OK.replace("0.1.0", "0.2.0");
        let fields = format!("{v2}\ncontact_fields = [\"email\", \"first_name\"]\n");
        assert_eq!(
            parse(&fields, Path::new("p")).unwrap().contact_fields,
            ["email", "first_name"]
        );
        let bad_field = format!("{v2}\ncontact_fields = [\"e mail\"]\n");
        assert!(parse(&bad_field, Path::new("p")).is_err());
        let unknown = format!("{OK}\nfoo = 1\n");
        assert!(parse(&unknown, Path::new("p")).is_err());
        let bad_sha = OK.replace(
            "0000000000000000000000000000000000000000000000000000000000000000",
            "xyz",
        );
        assert!(parse(&bad_sha, Path::new("p")).is_err());
        let bad_host = OK.replace("\"api.example.com\"", "\"http://api.example.com/\"");
        assert!(parse(&bad_host, Path::new("p")).is_err());
    }
}
