//! The LSP protocol side: document sync, scheduling of checks and the request handlers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use herald_dsl::{build_engine, Limits};
use tower_lsp::jsonrpc::Result;
use tower_lsp::lsp_types::*;
use tower_lsp::{Client, LanguageServer};

use crate::analysis::{self, Definition, Doc};
use crate::project::{lexical_facts, role_of, Buffer, ProjectSnapshot, Role, Workspace};
use crate::text::{apply_change, position_to_offset, range_of};

/// One open document.
struct Open {
    text: String,
    version: i32,
    /// Bumped on every change; a check publishes only if its generation is still current.
    generation: u64,
}

/// Shared state of one server.
pub(crate) struct State {
    workspace: Workspace,
    docs: Mutex<HashMap<Url, Open>>,
    generations: AtomicU64,
    /// The client registers file watchers for us dynamically.
    can_watch: AtomicBool,
}

/// The language server: one per client connection.
pub struct Backend {
    client: Client,
    state: Arc<State>,
}

fn path_of(uri: &Url) -> PathBuf {
    uri.to_file_path()
        .unwrap_or_else(|_| PathBuf::from(uri.path()))
}

fn role_for(uri: &Url) -> Role {
    let path = path_of(uri);
    if uri.scheme() != "file" {
        // Unsaved, untitled buffers: judge by the language the editor announced, see did_open.
        return match path.extension().and_then(|e| e.to_str()) {
            Some("liquid") => Role::Template,
            _ => Role::Workflow,
        };
    }
    role_of(&path)
}

impl Backend {
    /// A server talking to `client`, with the engine `herald check` uses.
    pub fn new(client: Client) -> Self {
        let engine = Arc::new(build_engine(&Limits::default()));
        Backend {
            client,
            state: Arc::new(State {
                workspace: Workspace::new(engine),
                docs: Mutex::new(HashMap::new()),
                generations: AtomicU64::new(0),
                can_watch: AtomicBool::new(false),
            }),
        }
    }

    /// Check `uri` off the async runtime and publish the result unless the document changed
    /// in the meantime (a newer check then publishes).
    fn schedule_check(&self, uri: Url) {
        let state = self.state.clone();
        let client = self.client.clone();
        tokio::spawn(async move {
            let job = {
                let state = state.clone();
                let uri = uri.clone();
                tokio::task::spawn_blocking(move || state.check(&uri))
            };
            match job.await {
                Ok(Some((version, generation, diagnostics))) => {
                    if state.current_generation(&uri) == Some(generation) {
                        client
                            .publish_diagnostics(uri, diagnostics, Some(version))
                            .await;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::error!("checking {uri} failed: {e}"),
            }
        });
    }

    fn recheck_all(&self, except: Option<&Url>) {
        let uris: Vec<Url> = self
            .state
            .docs
            .lock()
            .expect("docs lock")
            .keys()
            .filter(|u| Some(*u) != except)
            .cloned()
            .collect();
        for uri in uris {
            self.schedule_check(uri);
        }
    }

    /// Run `f` on the document's text and its project snapshot, off the async runtime.
    async fn with_doc<T: Send + 'static>(
        &self,
        uri: &Url,
        f: impl FnOnce(&str, &ProjectSnapshot, &Path) -> Option<T> + Send + 'static,
    ) -> Option<T> {
        let state = self.state.clone();
        let uri = uri.clone();
        let job = tokio::task::spawn_blocking(move || {
            let text = state.text(&uri)?;
            let path = path_of(&uri);
            let snapshot = state.snapshot_with_self(&uri, &text);
            analysis::guarded(|| f(&text, &snapshot, &path)).flatten()
        });
        job.await.ok().flatten()
    }
}

impl State {
    fn text(&self, uri: &Url) -> Option<String> {
        self.docs
            .lock()
            .expect("docs lock")
            .get(uri)
            .map(|d| d.text.clone())
    }

    fn current_generation(&self, uri: &Url) -> Option<u64> {
        self.docs
            .lock()
            .expect("docs lock")
            .get(uri)
            .map(|d| d.generation)
    }

    /// Every open file buffer but `uri`'s: (path, text).
    fn buffers_except(&self, uri: &Url) -> Vec<(PathBuf, String)> {
        self.docs
            .lock()
            .expect("docs lock")
            .iter()
            .filter(|(u, _)| *u != uri && u.scheme() == "file")
            .map(|(u, d)| (path_of(u), d.text.clone()))
            .collect()
    }

    /// The project around `uri`, with every open buffer except `uri` itself in place of its
    /// file on disk.
    fn snapshot(&self, uri: &Url) -> ProjectSnapshot {
        if uri.scheme() != "file" {
            return ProjectSnapshot::default();
        }
        let path = path_of(uri);
        let buffers = self.buffers_except(uri);
        let views: Vec<Buffer<'_>> = buffers
            .iter()
            .map(|(p, t)| Buffer { path: p, text: t })
            .collect();
        self.workspace.snapshot(&path, &views, &path)
    }

    /// [`State::snapshot`] plus what the document itself declares and mentions, for
    /// completion and navigation.
    fn snapshot_with_self(&self, uri: &Url, text: &str) -> ProjectSnapshot {
        let mut snap = self.snapshot(uri);
        if role_for(uri) == Role::Workflow {
            let facts = lexical_facts(text);
            snap.events.extend(facts.events);
            snap.attributes.extend(facts.attributes);
            if let Some(decl) = crate::outline::outline(text).decl {
                snap.workflows
                    .entry(decl.name)
                    .or_insert_with(|| path_of(uri));
            }
        }
        snap
    }

    /// Diagnostics of `uri` as of now: (version, generation, diagnostics), or `None` when the
    /// document is closed or already changed again.
    fn check(&self, uri: &Url) -> Option<(i32, u64, Vec<Diagnostic>)> {
        let (text, version, generation) = {
            let docs = self.docs.lock().expect("docs lock");
            let d = docs.get(uri)?;
            (d.text.clone(), d.version, d.generation)
        };
        let role = role_for(uri);
        let path = path_of(uri);
        let findings = if uri.scheme() == "file" {
            let buffers = self.buffers_except(uri);
            let views: Vec<Buffer<'_>> = buffers
                .iter()
                .map(|(p, t)| Buffer { path: p, text: t })
                .collect();
            analysis::guarded(|| self.workspace.project_findings(&path, &text, &views)).flatten()
        } else {
            None
        };
        // A file of a project gets the checker's findings; only a document on its own needs
        // the names around it.
        let snapshot = match findings {
            Some(f) => ProjectSnapshot {
                findings: Some(f),
                ..ProjectSnapshot::default()
            },
            None => self.snapshot(uri),
        };
        if self.current_generation(uri) != Some(generation) {
            return None;
        }
        let diagnostics = analysis::guarded(|| {
            analysis::diagnostics(
                self.workspace.engine(),
                &path,
                role,
                &text,
                &snapshot,
                |t| self.workspace.template_error(t),
            )
        });
        match diagnostics {
            Some(d) => Some((version, generation, d)),
            None => {
                tracing::error!("analysis of {uri} panicked; no diagnostics published");
                None
            }
        }
    }
}

fn location(state: &State, path: &Path, bytes: std::ops::Range<usize>) -> Option<Location> {
    let uri = Url::from_file_path(path).ok()?;
    let text = state
        .text(&uri)
        .or_else(|| std::fs::read_to_string(path).ok())
        .unwrap_or_default();
    Some(Location::new(uri, range_of(&text, bytes)))
}

#[tower_lsp::async_trait]
impl LanguageServer for Backend {
    async fn initialize(&self, params: InitializeParams) -> Result<InitializeResult> {
        let can_watch = params
            .capabilities
            .workspace
            .and_then(|w| w.did_change_watched_files)
            .and_then(|d| d.dynamic_registration)
            .unwrap_or(false);
        self.state.can_watch.store(can_watch, Ordering::Relaxed);
        Ok(InitializeResult {
            capabilities: ServerCapabilities {
                text_document_sync: Some(TextDocumentSyncCapability::Options(
                    TextDocumentSyncOptions {
                        open_close: Some(true),
                        change: Some(TextDocumentSyncKind::INCREMENTAL),
                        save: Some(TextDocumentSyncSaveOptions::Supported(true)),
                        ..TextDocumentSyncOptions::default()
                    },
                )),
                completion_provider: Some(CompletionOptions {
                    trigger_characters: Some(
                        [".", "\"", ":", "/"]
                            .iter()
                            .map(|s| s.to_string())
                            .collect(),
                    ),
                    ..CompletionOptions::default()
                }),
                hover_provider: Some(HoverProviderCapability::Simple(true)),
                signature_help_provider: Some(SignatureHelpOptions {
                    trigger_characters: Some(vec!["(".into(), ",".into()]),
                    retrigger_characters: None,
                    work_done_progress_options: WorkDoneProgressOptions::default(),
                }),
                definition_provider: Some(OneOf::Left(true)),
                document_symbol_provider: Some(OneOf::Left(true)),
                ..ServerCapabilities::default()
            },
            server_info: Some(ServerInfo {
                name: "herald-lsp".into(),
                version: Some(env!("CARGO_PKG_VERSION").into()),
            }),
        })
    }

    async fn initialized(&self, _: InitializedParams) {
        // Hear about project files changed outside the editor (templates, herald.toml, other
        // workflows). Without it, saves and reopening still recheck.
        if !self.state.can_watch.load(Ordering::Relaxed) {
            return;
        }
        let watchers = ["**/*.rhai", "**/*.liquid", "**/herald.toml"]
            .iter()
            .map(|g| FileSystemWatcher {
                glob_pattern: GlobPattern::String(g.to_string()),
                kind: None,
            })
            .collect();
        let registration = Registration {
            id: "herald-watch".into(),
            method: "workspace/didChangeWatchedFiles".into(),
            register_options: serde_json::to_value(DidChangeWatchedFilesRegistrationOptions {
                watchers,
            })
            .ok(),
        };
        // Not awaited here: the client answers after this notification is handled.
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.register_capability(vec![registration]).await {
                tracing::debug!("client does not watch files for us: {e}");
            }
        });
    }

    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }

    async fn did_open(&self, params: DidOpenTextDocumentParams) {
        let doc = params.text_document;
        let generation = self.state.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.state.docs.lock().expect("docs lock").insert(
            doc.uri.clone(),
            Open {
                text: doc.text,
                version: doc.version,
                generation,
            },
        );
        self.schedule_check(doc.uri);
    }

    async fn did_change(&self, params: DidChangeTextDocumentParams) {
        let uri = params.text_document.uri;
        let generation = self.state.generations.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut docs = self.state.docs.lock().expect("docs lock");
            let Some(doc) = docs.get_mut(&uri) else {
                tracing::warn!("didChange for {uri}, which is not open");
                return;
            };
            for change in &params.content_changes {
                apply_change(&mut doc.text, change);
            }
            doc.version = params.text_document.version;
            doc.generation = generation;
        }
        self.schedule_check(uri.clone());
        if matches!(role_for(&uri), Role::Template | Role::Other) {
            self.recheck_all(Some(&uri));
        }
    }

    async fn did_save(&self, params: DidSaveTextDocumentParams) {
        self.recheck_all(Some(&params.text_document.uri));
    }

    async fn did_close(&self, params: DidCloseTextDocumentParams) {
        let uri = params.text_document.uri;
        self.state.docs.lock().expect("docs lock").remove(&uri);
        self.client.publish_diagnostics(uri, Vec::new(), None).await;
        self.recheck_all(None);
    }

    async fn did_change_watched_files(&self, _: DidChangeWatchedFilesParams) {
        self.state.workspace.invalidate();
        self.recheck_all(None);
    }

    async fn completion(&self, params: CompletionParams) -> Result<Option<CompletionResponse>> {
        let pos = params.text_document_position;
        let items = self
            .with_doc(&pos.text_document.uri, move |text, snap, _| {
                let doc = Doc::new(text);
                let offset = position_to_offset(text, pos.position);
                Some(analysis::completion(&doc, offset, snap))
            })
            .await
            .unwrap_or_default();
        Ok(Some(CompletionResponse::Array(items)))
    }

    async fn hover(&self, params: HoverParams) -> Result<Option<Hover>> {
        let pos = params.text_document_position_params;
        Ok(self
            .with_doc(&pos.text_document.uri, move |text, snap, _| {
                let doc = Doc::new(text);
                analysis::hover(&doc, position_to_offset(text, pos.position), snap)
            })
            .await)
    }

    async fn signature_help(&self, params: SignatureHelpParams) -> Result<Option<SignatureHelp>> {
        let pos = params.text_document_position_params;
        Ok(self
            .with_doc(&pos.text_document.uri, move |text, _, _| {
                let doc = Doc::new(text);
                analysis::signature_help(&doc, position_to_offset(text, pos.position))
            })
            .await)
    }

    async fn goto_definition(
        &self,
        params: GotoDefinitionParams,
    ) -> Result<Option<GotoDefinitionResponse>> {
        let pos = params.text_document_position_params;
        let uri = pos.text_document.uri.clone();
        let found = self
            .with_doc(&uri, move |text, snap, _| {
                let doc = Doc::new(text);
                analysis::definition(&doc, position_to_offset(text, pos.position), snap)
                    .map(|d| (d, text.to_string()))
            })
            .await;
        let location = match found {
            Some((Definition::Here(range), text)) => {
                Some(Location::new(uri, range_of(&text, range)))
            }
            Some((Definition::File(path, range), _)) => location(&self.state, &path, range),
            None => None,
        };
        Ok(location.map(GotoDefinitionResponse::Scalar))
    }

    async fn document_symbol(
        &self,
        params: DocumentSymbolParams,
    ) -> Result<Option<DocumentSymbolResponse>> {
        let Some(text) = self.state.text(&params.text_document.uri) else {
            return Ok(None);
        };
        let symbols = analysis::guarded(|| analysis::symbols(&Doc::new(&text)));
        Ok(symbols.map(DocumentSymbolResponse::Nested))
    }
}
