//! Turning the operator's grant configuration (`herald_config::grant`) into a [`Grant`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use herald_config::grant::{
    resolve_secret, DkimAlgorithmConfig, DkimConfig, GrantConfig, GrantConfigError, LimitsConfig,
    SecurityConfig, SmtpConfig,
};

use crate::dkim::{DkimAlgorithm, DkimSigner};
use crate::types::{CallLimits, Grant, SmtpRelay, SmtpSecurity};

/// Build a [`Grant`] from its `herald.toml` form.
pub trait GrantConfigExt {
    /// Resolve secret references, load the DKIM key if any (relative key paths from the
    /// current directory) and build the [`Grant`].
    fn into_grant(self) -> Result<Grant, GrantConfigError>;

    /// Like [`into_grant`](GrantConfigExt::into_grant), with a relative DKIM key path
    /// (`smtp.dkim.private_key`) taken from `dir`, the project directory.
    fn into_grant_relative_to(self, dir: &Path) -> Result<Grant, GrantConfigError>;
}

impl GrantConfigExt for GrantConfig {
    fn into_grant(self) -> Result<Grant, GrantConfigError> {
        self.into_grant_relative_to(Path::new(""))
    }

    fn into_grant_relative_to(self, dir: &Path) -> Result<Grant, GrantConfigError> {
        let mut secrets = HashMap::new();
        for (name, reference) in &self.secrets {
            secrets.insert(name.clone(), resolve_secret(name, reference)?);
        }
        let config = self.plugin_config();
        let smtp = match self.smtp {
            None => None,
            Some(s) => {
                let credentials = match (s.username, s.password) {
                    (Some(u), Some(p)) => Some((u, resolve_secret("smtp.password", &p)?)),
                    _ => None,
                };
                Some(SmtpRelay {
                    host: s.host,
                    port: s.port,
                    security: match s.security {
                        SecurityConfig::None => SmtpSecurity::None,
                        SecurityConfig::Starttls => SmtpSecurity::StartTls,
                        SecurityConfig::Tls => SmtpSecurity::Tls,
                    },
                    credentials,
                    timeout: Duration::from_millis(s.timeout_ms.unwrap_or(30_000)),
                    connections: s.connections,
                    dkim: match s.dkim {
                        Some(d) => Some(Arc::new(dkim_signer(&d, dir)?)),
                        None => None,
                    },
                })
            }
        };
        let d = CallLimits::default();
        let l = self.limits;
        Ok(Grant {
            allowed_hosts: self.allowed_hosts,
            allow_private: self.allow_private,
            secrets,
            config,
            smtp,
            limits: CallLimits {
                timeout: l.timeout_ms.map(Duration::from_millis).unwrap_or(d.timeout),
                max_memory_bytes: l
                    .max_memory_mb
                    .map(|m| m << 20)
                    .unwrap_or(d.max_memory_bytes),
                pool_size: l.pool_size.unwrap_or(d.pool_size),
                rate_per_second: l.rate_per_second.or(d.rate_per_second),
                burst: l.burst.unwrap_or(d.burst),
                max_http_body_bytes: d.max_http_body_bytes,
                max_http_requests_per_call: l
                    .max_http_requests_per_call
                    .unwrap_or(d.max_http_requests_per_call),
                max_concurrent_calls: l.max_concurrent_calls.unwrap_or(d.max_concurrent_calls),
            },
        })
    }
}

/// The signer of a `[smtp.dkim]` table: every problem (unreadable key, a key of the wrong
/// kind, an empty domain) is an error now, at load, rather than at the first send.
fn dkim_signer(c: &DkimConfig, dir: &Path) -> Result<DkimSigner, GrantConfigError> {
    let reference = c.private_key.trim();
    if reference.is_empty() {
        return Err(GrantConfigError::Dkim("`private_key` is empty".into()));
    }
    let pem = if reference.starts_with("env:") || reference.starts_with("file:") {
        resolve_secret("smtp.dkim.private_key", reference)?.into_bytes()
    } else {
        let path = dir.join(reference);
        std::fs::read(&path).map_err(|e| {
            GrantConfigError::Dkim(format!(
                "cannot read the private key `{}`: {e}",
                path.display()
            ))
        })?
    };
    let algorithm = match c.algorithm {
        DkimAlgorithmConfig::RsaSha256 => DkimAlgorithm::RsaSha256,
        DkimAlgorithmConfig::Ed25519Sha256 => DkimAlgorithm::Ed25519Sha256,
    };
    DkimSigner::new(
        &c.domain,
        &c.selector,
        algorithm,
        &pem,
        c.headers.as_deref(),
    )
    .map_err(|e| GrantConfigError::Dkim(e.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_channel_table_and_resolves_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        std::env::set_var("HERALD_TEST_GRANT_PASSWORD", "from-env");
        let text = format!(
            r#"
plugin = "plugins/twilio-sms"
allowed_hosts = ["api.example.com"]
config = {{ account_sid = "AC1", from = "+1555" }}
secrets = {{ TOKEN = "file:{}" }}
limits = {{ timeout_ms = 2500, max_memory_mb = 16, rate_per_second = 5.0 }}
[smtp]
host = "smtp.example.com"
username = "herald"
password = "env:HERALD_TEST_GRANT_PASSWORD"
"#,
            file.display()
        );
        let cfg: GrantConfig = toml::from_str(&text).unwrap();
        let g = cfg.into_grant().unwrap();
        assert_eq!(g.secrets["TOKEN"], "from-file");
        assert_eq!(g.config["account_sid"], "AC1");
        assert_eq!(g.limits.timeout, Duration::from_millis(2500));
        assert_eq!(g.limits.max_memory_bytes, 16 << 20);
        assert_eq!(g.limits.rate_per_second, Some(5.0));
        let smtp = g.smtp.unwrap();
        assert_eq!((smtp.port, smtp.security), (587, SmtpSecurity::StartTls));
        assert_eq!(smtp.credentials, Some(("herald".into(), "from-env".into())));
        assert_eq!(smtp.connections, 4, "default");
    }

    #[test]
    fn smtp_connections_is_configurable() {
        let cfg: GrantConfig = toml::from_str(
            "[smtp]\nhost = \"127.0.0.1\"\nport = 2525\nsecurity = \"none\"\nconnections = 9\n",
        )
        .unwrap();
        let smtp = cfg.into_grant().unwrap().smtp.unwrap();
        assert_eq!(
            (smtp.port, smtp.security, smtp.connections),
            (2525, SmtpSecurity::None, 9)
        );
    }

    #[test]
    fn literal_and_missing_secrets_are_refused() {
        assert!(matches!(
            resolve_secret("T", "hunter2"),
            Err(GrantConfigError::NotAReference { .. })
        ));
        assert!(matches!(
            resolve_secret("T", "env:HERALD_SURELY_UNSET_VARIABLE_123"),
            Err(GrantConfigError::MissingEnv { .. })
        ));
        assert!(matches!(
            resolve_secret("T", "file:/nonexistent/herald/secret"),
            Err(GrantConfigError::File { .. })
        ));
    }

    fn fixtures() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim")
    }

    fn dkim_grant(dkim: &str, dir: &Path) -> Result<Grant, GrantConfigError> {
        let text =
            format!("[smtp]\nhost = \"127.0.0.1\"\nsecurity = \"none\"\n[smtp.dkim]\n{dkim}\n");
        let cfg: GrantConfig =
            toml::from_str(&text).map_err(|e| GrantConfigError::Dkim(e.to_string()))?;
        cfg.into_grant_relative_to(dir)
    }

    fn dkim_error(dkim: &str) -> String {
        match dkim_grant(dkim, &fixtures()) {
            Ok(_) => panic!("accepted: {dkim}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn dkim_key_paths_are_relative_to_the_project_and_secrets_work_too() {
        let g = dkim_grant(
            "domain = \"Shop.Example\"\nselector = \"s1\"\nprivate_key = \"rsa2048.pem\"",
            &fixtures(),
        )
        .unwrap();
        let signer = g.smtp.unwrap().dkim.expect("dkim signer");
        assert_eq!(
            (signer.domain(), signer.selector(), signer.algorithm()),
            ("shop.example", "s1", DkimAlgorithm::RsaSha256)
        );
        assert_eq!(signer.signed_headers().len(), 11, "the default list");

        let pem = std::fs::read_to_string(fixtures().join("ed25519.pem")).unwrap();
        std::env::set_var("HERALD_TEST_DKIM_PEM", pem);
        let g = dkim_grant(
            "domain = \"shop.example\"\nselector = \"s2\"\nprivate_key = \"env:HERALD_TEST_DKIM_PEM\"\nalgorithm = \"ed25519-sha256\"\nheaders = [\"From\", \"Subject\"]",
            Path::new("/nonexistent"),
        )
        .unwrap();
        let signer = g.smtp.unwrap().dkim.unwrap();
        assert_eq!(signer.algorithm(), DkimAlgorithm::Ed25519Sha256);
        assert_eq!(signer.signed_headers(), ["From", "Subject"]);

        let file = format!("file:{}", fixtures().join("rsa2048-pkcs1.pem").display());
        let g = dkim_grant(
            &format!("domain = \"shop.example\"\nselector = \"s3\"\nprivate_key = \"{file}\""),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert!(g.smtp.unwrap().dkim.is_some());

        let cfg: GrantConfig = toml::from_str("[smtp]\nhost = \"h\"\n").unwrap();
        assert!(
            cfg.into_grant().unwrap().smtp.unwrap().dkim.is_none(),
            "off by default"
        );
    }

    #[test]
    fn bad_dkim_configuration_fails_at_load_with_a_clear_message() {
        let key = "private_key = \"rsa2048.pem\"";
        let cases = [
            (
                format!("domain = \"\"\nselector = \"s1\"\n{key}"),
                "smtp.dkim: `domain` is empty",
            ),
            (
                format!("domain = \"shop.example\"\nselector = \" \"\n{key}"),
                "smtp.dkim: `selector` is empty",
            ),
            (
                "domain = \"shop.example\"\nselector = \"s1\"\nprivate_key = \"missing.pem\"".to_string(),
                "smtp.dkim: cannot read the private key `",
            ),
            (
                "domain = \"shop.example\"\nselector = \"s1\"\nprivate_key = \"\"".to_string(),
                "smtp.dkim: `private_key` is empty",
            ),
            (
                "domain = \"shop.example\"\nselector = \"s1\"\nprivate_key = \"README.md\"".to_string(),
                "smtp.dkim: the private key is not a PEM private key",
            ),
            (
                "domain = \"shop.example\"\nselector = \"s1\"\nprivate_key = \"ed25519.pem\"".to_string(),
                "smtp.dkim: the private key is an Ed25519 key, but `algorithm` is rsa-sha256",
            ),
            (
                format!("domain = \"shop.example\"\nselector = \"s1\"\n{key}\nalgorithm = \"ed25519-sha256\""),
                "smtp.dkim: the private key is an RSA key, but `algorithm` is ed25519-sha256",
            ),
            (
                "domain = \"shop.example\"\nselector = \"s1\"\nprivate_key = \"rsa1024.pem\"".to_string(),
                "at least 2048 bits",
            ),
            (
                "domain = \"shop.example\"\nselector = \"s1\"\nprivate_key = \"env:HERALD_SURELY_UNSET_DKIM_VAR\"".to_string(),
                "secret `smtp.dkim.private_key`: environment variable `HERALD_SURELY_UNSET_DKIM_VAR` is not set",
            ),
            (
                format!("domain = \"shop.example\"\nselector = \"s1\"\n{key}\nheaders = [\"To\"]"),
                "must include From",
            ),
            (
                format!("domain = \"shop.example\"\nselector = \"s1\"\n{key}\nalgorithm = \"rsa-sha1\""),
                "unknown variant `rsa-sha1`",
            ),
            (
                format!("domain = \"shop.example\"\nselector = \"s1\"\n{key}\nprivate-key = \"x\""),
                "unknown field `private-key`",
            ),
            (format!("selector = \"s1\"\n{key}"), "missing field `domain`"),
        ];
        for (dkim, want) in cases {
            let e = dkim_error(&dkim);
            assert!(e.contains(want), "{dkim}\n=> {e}\nwanted: {want}");
        }
    }
}
