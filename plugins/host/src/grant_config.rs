//! Turning the operator's grant configuration (`herald_config::grant`) into a [`Grant`].

use std::collections::HashMap;
use std::time::Duration;

pub use herald_config::grant::{
    resolve_secret, GrantConfig, GrantConfigError, LimitsConfig, SecurityConfig, SmtpConfig,
};

use crate::types::{CallLimits, Grant, SmtpRelay, SmtpSecurity};

/// Build a [`Grant`] from its `herald.toml` form.
pub trait GrantConfigExt {
    /// Resolve secret references and build the [`Grant`].
    fn into_grant(self) -> Result<Grant, GrantConfigError>;
}

impl GrantConfigExt for GrantConfig {
    /// Resolve secret references and build the [`Grant`].
    fn into_grant(self) -> Result<Grant, GrantConfigError> {
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
}
