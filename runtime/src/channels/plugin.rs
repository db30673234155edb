//! WebAssembly connectors as channels: one shared wasmtime host loads them (`bundled:<id>`
//! from the binary, or a plugin folder of the project), and each send goes through the sandbox.

#[allow(unused_imports)]
use super::*;

/// Loads WebAssembly connectors with one shared wasmtime host (compiled components are cached
/// on disk, so a restart or a reload does not compile them again).
pub struct PluginLoader {
    cache: Option<PathBuf>,
    host: std::sync::OnceLock<Result<Arc<herald_plugin_host::PluginHost>, String>>,
}

impl PluginLoader {
    /// A loader caching compiled components in `cache` (none: compile in memory each time).
    pub fn new(cache: Option<PathBuf>) -> Self {
        PluginLoader {
            cache,
            host: std::sync::OnceLock::new(),
        }
    }

    fn host(&self) -> Result<Arc<herald_plugin_host::PluginHost>, String> {
        self.host
            .get_or_init(|| {
                herald_plugin_host::PluginHost::new(self.cache.clone())
                    .map(Arc::new)
                    .map_err(|e| format!("cannot start the plugin host: {e}"))
            })
            .clone()
    }

    /// Load the plugin of channel `name`: `spec` is `bundled:<id>` (a first-party connector
    /// embedded in this binary) or a plugin folder relative to the project.
    pub fn load(
        &self,
        project: &std::path::Path,
        name: &str,
        spec: &str,
        grant: &herald_plugin_host::GrantConfig,
    ) -> Result<PluginChannel, String> {
        use herald_plugin_host::GrantConfigExt as _;
        // Relative paths in the grant (the DKIM key) are the project's, like the plugin's.
        let grant = grant
            .clone()
            .into_grant_relative_to(project)
            .map_err(|e| format!("channel \"{name}\": {e}"))?;
        let plugin = match spec.strip_prefix("bundled:") {
            Some(id) => {
                let bundled = herald_bundled::get(id)
                    .map_err(|e| format!("channel \"{name}\": plugin {spec}: {e}"))?;
                self.host()?
                    .load_embedded(spec, bundled.manifest, bundled.wasm, grant)
                    .map_err(|e| format!("channel \"{name}\": plugin {spec}: {e}"))?
            }
            None => {
                let dir = project.join(spec);
                self.host()?
                    .load(&dir, grant)
                    .map_err(|e| format!("channel \"{name}\": plugin {}: {e}", dir.display()))?
            }
        };
        Ok(PluginChannel {
            plugin: Arc::new(plugin),
        })
    }
}

/// A channel served by a WebAssembly connector.
pub struct PluginChannel {
    /// The loaded connector.
    pub plugin: Arc<herald_plugin_host::LoadedPlugin>,
}

impl Channel for PluginChannel {
    fn supports_idempotency(&self) -> bool {
        self.plugin.describe().supports_idempotency
    }

    fn operations(&self) -> Vec<String> {
        self.plugin
            .describe()
            .operations
            .iter()
            .map(|o| o.name.clone())
            .collect()
    }

    fn contact_fields(&self) -> Vec<String> {
        self.plugin.manifest().contact_fields.clone()
    }

    fn send<'a>(&'a self, m: &'a OutboundMessage) -> SendFuture<'a> {
        use herald_plugin_host::SendError as E;
        let req = herald_plugin_host::SendRequest {
            idempotency_key: m.idempotency_key.clone(),
            operation: m.operation.clone(),
            to: m.to.clone().unwrap_or_default(),
            to_name: m.to_name.clone(),
            subject: m.subject.clone(),
            text: m.body.clone(),
            html: m.html.clone(),
            preheader: m.front_matter_str("preheader"),
            from: m.front_matter_str("from"),
            reply_to: m
                .front_matter_str("reply_to")
                .or_else(|| m.front_matter_str("reply-to")),
            // RFC 2369 and, over https, RFC 8058 one-click: every email connector adds them.
            headers: match &m.unsubscribe {
                Some(u) => {
                    let mut h = vec![("List-Unsubscribe".to_string(), format!("<{}>", u.url))];
                    if u.one_click.is_some() {
                        h.push((
                            "List-Unsubscribe-Post".to_string(),
                            "List-Unsubscribe=One-Click".to_string(),
                        ));
                    }
                    h
                }
                None => Vec::new(),
            },
            topic: m.topic.clone().or_else(|| m.front_matter_str("topic")),
            unsubscribe: m
                .unsubscribe
                .as_ref()
                .map(|u| herald_plugin_host::Unsubscribe {
                    url: u.url.clone(),
                    one_click_url: u.one_click.clone(),
                }),
            tracking: herald_plugin_host::Tracking {
                opens: m.tracked,
                clicks: m.tracked,
            },
            metadata: send_metadata(m),
            front_matter: Value::Object(m.front_matter.clone()),
            fields: Value::Object(m.fields.clone()),
            payload: m.payload.clone(),
        };
        let call = self.plugin.send_async(&req);
        Box::pin(async move {
            match call.await {
                Ok(out) => Ok(Delivery {
                    provider_id: out.provider_message_id,
                    detail: out.details,
                }),
                Err(E::InvalidInput(s)) => Err(ChannelError::InvalidInput(s)),
                Err(E::Unauthorized(s)) => Err(ChannelError::Unauthorized(s)),
                Err(E::RateLimited {
                    retry_after_ms,
                    message,
                }) => Err(ChannelError::RateLimited {
                    retry_after_ms,
                    message,
                }),
                Err(E::Transient(s)) => Err(ChannelError::Transient(s)),
                Err(E::Ambiguous(s)) => Err(ChannelError::Ambiguous(s)),
                // A trap, timeout or memory cap before anything left the sandbox: retried with
                // backoff, so a passing hiccup recovers and a broken plugin fails the step.
                Err(E::Sandbox(s)) => Err(ChannelError::Transient(format!("plugin sandbox: {s}"))),
                Err(E::Denied(s)) => Err(ChannelError::Denied(s)),
            }
        })
    }
}

/// What a provider may store with the message: where it comes from, never personal data.
fn send_metadata(m: &OutboundMessage) -> Vec<(String, String)> {
    let mut metadata = vec![("herald_workflow".to_string(), m.workflow.clone())];
    if let Some(t) = &m.template {
        metadata.push(("herald_template".into(), t.clone()));
    }
    metadata.push(("herald_run".into(), m.run.clone()));
    metadata
}
