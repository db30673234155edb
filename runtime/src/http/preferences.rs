//! What recipients reach: the unsubscribe and preference page behind the signed links in
//! messages (`/u/{token}`), and RFC 8058 one-click unsubscribe.
//!
//! - `GET /u/{token}` shows the page and never changes anything (link scanners and mail
//!   clients fetch every link);
//! - `POST /u/{token}` with `List-Unsubscribe=One-Click` (as mailbox providers send it)
//!   leaves the message's topic at once;
//! - `POST /u/{token}` from the page's forms saves the chosen topics, or leaves them all,
//!   then shows the page again (303).
//!
//! The page is plain HTML that works without JavaScript. Every change is a consent record
//! with time, source and evidence (address, user agent, the message whose link was used),
//! durable before the answer; it counts for every later send, queued ones included.

#[allow(unused_imports)]
use super::*;

use crate::consent::{record, ConsentSettings, Evidence, LinkClaims};
use crate::model::{ConsentRecord, ConsentStatus};
use crate::store::{Write, WriteBatch};

/// A form body larger than this is refused.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// The preference page's answer.
fn page(status: StatusCode, html: String) -> Response {
    html_page(
        status,
        html,
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    )
}

fn esc(s: &str) -> String {
    html_escape::encode_text(s).into_owned()
}

fn layout(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex\">\n<title>{title}</title>\n<style>\n\
         body{{font-family:system-ui,sans-serif;max-width:34rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#1a1a1a;background:#fff}}\n\
         fieldset{{border:1px solid #767676;border-radius:6px;padding:1rem}}\n\
         label{{display:block;margin:.5rem 0}}\n.hint{{display:block;color:#4a4a4a;font-size:.9rem;margin-left:1.6rem}}\n\
         button{{font:inherit;padding:.5rem 1rem;margin:.75rem .5rem 0 0;border-radius:6px;border:1px solid #1a1a1a;background:#fff;color:#1a1a1a;cursor:pointer}}\n\
         button.primary{{background:#1a1a1a;color:#fff}}\n.note{{background:#eef6ee;border:1px solid #2e7d32;padding:.5rem 1rem;border-radius:6px}}\n\
         </style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n",
        title = esc(title)
    )
}

fn invalid_link() -> Response {
    page(
        StatusCode::NOT_FOUND,
        layout(
            "Link not valid",
            "<h1>This link is not valid</h1>\n<p>It may have been changed or cut short. Use the \
             link in the message you received.</p>",
        ),
    )
}

/// The contact a token names, following merges; `None` when it is gone (erased).
fn resolve(shared: &Shared, claims: &LinkClaims) -> ApiResult<Option<String>> {
    Ok(shared.engine.live_contact(&claims.contact)?.map(|c| c.id))
}

/// The preference page for `contact`, the message's topic first.
fn preferences_html(
    settings: &ConsentSettings,
    records: &[ConsentRecord],
    claims: &LinkClaims,
    saved: Option<&str>,
) -> String {
    let mut topics: Vec<&String> = settings.topics.keys().collect();
    topics.sort_by_key(|t| *t != &claims.topic);
    if !settings.topics.contains_key(&claims.topic) {
        // A topic removed from the project since the message was sent: still leavable.
        topics.insert(0, &claims.topic);
    }
    let mut items = String::new();
    for topic in topics {
        let cfg = settings.topics.get(topic);
        let label = cfg
            .and_then(|c| c.label.clone())
            .unwrap_or_else(|| topic.clone());
        let checked = settings.status(records, topic) == ConsentStatus::Subscribed;
        let hint_id = format!("hint-{}", esc(topic));
        let hint = cfg.and_then(|c| c.description.as_deref());
        items.push_str(&format!(
            "<label><input type=\"checkbox\" name=\"topic\" value=\"{v}\"{checked}{described}> {label}{hint}</label>\n",
            v = esc(topic),
            checked = if checked { " checked" } else { "" },
            described = if hint.is_some() {
                format!(" aria-describedby=\"{hint_id}\"")
            } else {
                String::new()
            },
            label = esc(&label),
            hint = hint
                .map(|h| format!("<span class=\"hint\" id=\"{hint_id}\">{}</span>", esc(h)))
                .unwrap_or_default(),
        ));
    }
    let note = match saved {
        Some("all") => {
            "<p class=\"note\" role=\"status\">You are unsubscribed from every topic.</p>\n"
        }
        Some(_) => "<p class=\"note\" role=\"status\">Your preferences are saved.</p>\n",
        None => "",
    };
    layout(
        "Email preferences",
        &format!(
            "<h1>Your subscriptions</h1>\n{note}<form method=\"post\">\n<fieldset>\n\
             <legend>Choose what you want to receive</legend>\n{items}</fieldset>\n\
             <button type=\"submit\" name=\"action\" value=\"save\" class=\"primary\">Save preferences</button>\n\
             <button type=\"submit\" name=\"action\" value=\"unsubscribe_all\">Unsubscribe from everything</button>\n\
             </form>\n<p>Messages you need for your account, such as receipts, still reach you.</p>"
        ),
    )
}

#[derive(Deserialize)]
pub(super) struct PageQuery {
    saved: Option<String>,
}

/// `GET /u/{token}`: the preference page. Changes nothing.
pub(super) async fn preference_page(
    State(shared): State<Arc<Shared>>,
    Path(token): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let Ok(claims) = shared.engine.link_keys().verify(&token) else {
        return invalid_link();
    };
    let result = blocking(move || -> ApiResult<Option<String>> {
        let Some(contact) = resolve(&shared, &claims)? else {
            return Ok(None);
        };
        let records = shared.engine.store.consent(&contact)?;
        let state = shared.engine.state();
        Ok(Some(preferences_html(
            &state.consent,
            &records,
            &claims,
            q.saved.as_deref(),
        )))
    })
    .await;
    match result {
        Ok(Ok(Some(html))) => page(StatusCode::OK, html),
        Ok(Ok(None)) => gone(),
        Ok(Err(e)) | Err(e) => e.into_response(),
    }
}

fn gone() -> Response {
    page(
        StatusCode::NOT_FOUND,
        layout(
            "Nothing to manage",
            "<h1>Nothing to manage</h1>\n<p>We hold no data about you any more, so you will \
             receive nothing from us.</p>",
        ),
    )
}

/// `POST /u/{token}`: one-click unsubscribe (RFC 8058) or the page's forms.
pub(super) async fn preference_post(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(claims) = shared.engine.link_keys().verify(&token) else {
        return invalid_link();
    };
    if body.len() > MAX_FORM_BYTES {
        return page(
            StatusCode::PAYLOAD_TOO_LARGE,
            layout("Too large", "<h1>That form was too large</h1>"),
        );
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let one_click = pairs
        .iter()
        .any(|(k, v)| k == "List-Unsubscribe" && v == "One-Click");
    let action = pairs
        .iter()
        .find(|(k, _)| k == "action")
        .map(|(_, v)| v.as_str());
    let chosen: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "topic")
        .map(|(_, v)| v.clone())
        .collect();
    let evidence = Evidence {
        ip: Some(
            shared
                .rate_limits()
                .client_address(peer, &headers)
                .to_string(),
        ),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(512).collect()),
        message: Some(claims.message.clone()),
    };
    enum Change {
        OneClick,
        Save,
        All,
    }
    let change = match (one_click, action) {
        (true, _) => Change::OneClick,
        (false, Some("save")) => Change::Save,
        (false, Some("unsubscribe_all")) => Change::All,
        _ => {
            return page(
                StatusCode::BAD_REQUEST,
                layout(
                    "Nothing changed",
                    "<h1>Nothing changed</h1>\n<p>The request did not say what to change.</p>",
                ),
            )
        }
    };
    let result = blocking(move || -> ApiResult<Option<&'static str>> {
        let Some(contact) = resolve(&shared, &claims)? else {
            return Ok(None);
        };
        let engine = &shared.engine;
        let state = engine.state();
        let now = engine.clock.now_ms();
        let records = engine.store.consent(&contact)?;
        let mut wanted: Vec<(String, ConsentStatus, &str)> = Vec::new();
        let mut all_topics: Vec<String> = state.consent.topics.keys().cloned().collect();
        if !all_topics.contains(&claims.topic) {
            all_topics.push(claims.topic.clone());
        }
        let saved = match change {
            Change::OneClick => {
                wanted.push((
                    claims.topic.clone(),
                    ConsentStatus::Unsubscribed,
                    "one_click",
                ));
                "one_click"
            }
            Change::All => {
                for t in &all_topics {
                    wanted.push((t.clone(), ConsentStatus::Unsubscribed, "preference_page"));
                }
                "all"
            }
            Change::Save => {
                for t in &all_topics {
                    let status = if chosen.contains(t) {
                        ConsentStatus::Subscribed
                    } else {
                        ConsentStatus::Unsubscribed
                    };
                    wanted.push((t.clone(), status, "preference_page"));
                }
                "1"
            }
        };
        let mut batch = WriteBatch::new();
        for (topic, status, source) in wanted {
            // Only what changes is recorded, so the record of an earlier choice stays.
            if state.consent.status(&records, &topic) == status
                && records.iter().any(|r| r.topic == topic)
            {
                continue;
            }
            batch.push(Write::Consent {
                contact: contact.clone(),
                record: record(&topic, status, now, source, &evidence),
            });
        }
        if !batch.is_empty() {
            engine.apply_durably(&batch)?;
            tracing::info!(
                contact,
                topic = claims.topic,
                change = saved,
                "consent changed by the recipient"
            );
        }
        Ok(Some(saved))
    })
    .await;
    match result {
        Ok(Ok(Some("one_click"))) => page(
            StatusCode::OK,
            layout(
                "Unsubscribed",
                "<h1>You are unsubscribed</h1>\n<p>You will receive no more messages on this topic.</p>",
            ),
        ),
        Ok(Ok(Some(saved))) => (
            StatusCode::SEE_OTHER,
            [
                // Relative, so a daemon behind a path prefix sends the browser back to it.
                (header::LOCATION, format!("?saved={saved}")),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ],
        )
            .into_response(),
        Ok(Ok(None)) => gone(),
        Ok(Err(e)) | Err(e) => e.into_response(),
    }
}
