//! Tracked engagement: the open pixel and the click redirect the daemon serves, the link
//! rewriting that puts them into HTML messages at render time, and the timeline events they
//! become.
//!
//! Tokens are signed with the link keys (`consent::LinkKeys`): an open token names the
//! contact, the message (`run:step`) and the channel; a click token also the destination and
//! the link's name. A token cannot be forged, altered or enumerated, so the redirect is never
//! an open redirect. Opens and clicks become `<channel>_opened` and `<channel>_clicked` events
//! (with the run, step, workflow, variant, URL and link), deduplicated per message (and link)
//! against the same facts a provider reports. Opens and clicks by privacy proxies and
//! security scanners (by user agent, or within seconds of the send) are recorded as
//! `<channel>_machine_opened` / `<channel>_machine_clicked` instead, so they satisfy no
//! `wait_for`, segment or scoring rule unless a script asks for them by that name.

use std::cell::Cell;

use serde_json::{json, Map, Value};

use crate::consent::{BadToken, LinkKeys};
use crate::ingest::Message;
use crate::store::{Store, StoreError};

/// The token kind of an open pixel.
const OPEN: u8 = 2;
/// The token kind of a click redirect.
const CLICK: u8 = 3;
/// The token kind of a "view in browser" link.
const VIEW: u8 = 4;
/// Longest click token accepted (destinations can be long URLs).
pub const MAX_CLICK_TOKEN: usize = 8192;
/// Longest open token accepted.
pub const MAX_OPEN_TOKEN: usize = 1024;
/// An open or click this soon after the send is a machine's (link pre-fetching, scanners).
pub const MACHINE_WINDOW_MS: i64 = 10_000;
/// The attribute that keeps one link out of click tracking (`data-herald-track="off"`).
pub const NO_TRACK_ATTRIBUTE: &str = "data-herald-track";
/// The attribute that names a link in click events (`data-herald-link="cta"`).
pub const LINK_NAME_ATTRIBUTE: &str = "data-herald-link";

/// What an open or click token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engagement {
    /// The contact the message went to.
    pub contact: String,
    /// The message (its idempotency key, `run:step`).
    pub message: String,
    /// The channel it went out on.
    pub channel: String,
    /// For a click: the destination.
    pub url: Option<String>,
    /// For a click: the link's name (`data-herald-link`, else its position, `link-3`).
    pub link: Option<String>,
}

/// The open token of a message.
pub fn open_token(keys: &LinkKeys, contact: &str, message: &str, channel: &str) -> String {
    keys.sign_parts(OPEN, &[contact, message, channel])
}

/// The click token of one link of a message.
pub fn click_token(
    keys: &LinkKeys,
    contact: &str,
    message: &str,
    channel: &str,
    url: &str,
    link: &str,
) -> String {
    keys.sign_parts(CLICK, &[contact, message, channel, url, link])
}

/// The "view in browser" token of a message.
pub fn view_token(keys: &LinkKeys, contact: &str, message: &str, channel: &str) -> String {
    keys.sign_parts(VIEW, &[contact, message, channel])
}

/// The claims of a "view in browser" token.
pub fn verify_view(keys: &LinkKeys, token: &str) -> Result<Engagement, BadToken> {
    verify_message(keys, VIEW, token)
}

/// The claims of an open token.
pub fn verify_open(keys: &LinkKeys, token: &str) -> Result<Engagement, BadToken> {
    verify_message(keys, OPEN, token)
}

/// A token of `kind` that names a message (contact, message, channel).
fn verify_message(keys: &LinkKeys, kind: u8, token: &str) -> Result<Engagement, BadToken> {
    let p = keys.verify_parts(kind, token, 3, MAX_OPEN_TOKEN)?;
    let [contact, message, channel]: [String; 3] = p.try_into().map_err(|_| BadToken)?;
    Ok(Engagement {
        contact,
        message,
        channel,
        url: None,
        link: None,
    })
}

/// The claims of a click token; the destination is always an http(s) URL.
pub fn verify_click(keys: &LinkKeys, token: &str) -> Result<Engagement, BadToken> {
    let p = keys.verify_parts(CLICK, token, 5, MAX_CLICK_TOKEN)?;
    let [contact, message, channel, url, link]: [String; 5] = p.try_into().map_err(|_| BadToken)?;
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(BadToken);
    }
    Ok(Engagement {
        contact,
        message,
        channel,
        url: Some(url),
        link: Some(link),
    })
}

/// Rewrite an HTML message for tracking: every `http(s)` link but the unsubscribe link and
/// those marked `data-herald-track="off"` goes through the click redirect, and the open
/// pixel goes at the end of the body. `base` is the daemon's public URL.
pub fn instrument(
    html: &str,
    keys: &LinkKeys,
    base: &str,
    contact: &str,
    message: &str,
    channel: &str,
    keep: &[&str],
) -> String {
    let base = base.trim_end_matches('/');
    let count = Cell::new(0usize);
    let body_seen = Cell::new(false);
    let pixel = format!(
        "<img src=\"{base}/o/{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;width:1px;height:1px;border:0\">",
        open_token(keys, contact, message, channel)
    );
    let rewritten = lol_html::rewrite_str(
        html,
        lol_html::RewriteStrSettings {
            element_content_handlers: vec![
                lol_html::element!("a[href]", |el| {
                    let off = el
                        .get_attribute(NO_TRACK_ATTRIBUTE)
                        .is_some_and(|v| v.eq_ignore_ascii_case("off"));
                    el.remove_attribute(NO_TRACK_ATTRIBUTE);
                    let name = el.get_attribute(LINK_NAME_ATTRIBUTE);
                    el.remove_attribute(LINK_NAME_ATTRIBUTE);
                    let href = el.get_attribute("href").unwrap_or_default();
                    let url = html_escape::decode_html_entities(href.trim()).into_owned();
                    let web = url.starts_with("https://") || url.starts_with("http://");
                    if off || !web || keep.contains(&url.as_str()) {
                        return Ok(());
                    }
                    count.set(count.get() + 1);
                    let link = name.unwrap_or_else(|| format!("link-{}", count.get()));
                    let token = click_token(keys, contact, message, channel, &url, &link);
                    el.set_attribute("href", &format!("{base}/c/{token}"))?;
                    Ok(())
                }),
                lol_html::element!("body", |el| {
                    body_seen.set(true);
                    el.append(&pixel, lol_html::html_content::ContentType::Html);
                    Ok(())
                }),
            ],
            ..lol_html::RewriteStrSettings::new()
        },
    );
    match rewritten {
        Ok(mut out) => {
            if !body_seen.get() {
                out.push_str(&pixel);
            }
            out
        }
        // Not HTML a parser can read: sent as written, untracked.
        Err(e) => {
            tracing::warn!(message, error = %e, "the HTML could not be rewritten for tracking");
            html.to_string()
        }
    }
}

/// Why an open or click looks like a machine's, if it does: a privacy proxy or a security
/// scanner by its user agent, or a fetch within [`MACHINE_WINDOW_MS`] of the send.
pub fn machine_reason(user_agent: Option<&str>, since_send_ms: Option<i64>) -> Option<String> {
    let ua = user_agent.unwrap_or("").trim();
    // Apple Mail Privacy Protection fetches with a bare "Mozilla/5.0"; scanners often send
    // nothing at all.
    if ua.is_empty() || ua == "Mozilla/5.0" {
        return Some("privacy proxy or scanner (no browser user agent)".into());
    }
    let lower = ua.to_ascii_lowercase();
    for marker in [
        "bot",
        "crawler",
        "spider",
        "scanner",
        "barracuda",
        "mimecast",
        "proofpoint",
        "safelinks",
        "python-requests",
        "curl/",
        "wget/",
    ] {
        if lower.contains(marker) {
            return Some(format!("user agent names a proxy or scanner ({marker})"));
        }
    }
    match since_send_ms {
        Some(ms) if ms < MACHINE_WINDOW_MS => {
            Some(format!("{} ms after the send (pre-fetching)", ms.max(0)))
        }
        _ => None,
    }
}

/// The deduplication key of an engagement fact: one per message (and link for clicks), the
/// same whether the pixel, the redirect or the provider reported it.
pub fn dedupe_key(channel: &str, message: &str, kind: &str, url: Option<&str>) -> String {
    match url {
        Some(u) => format!("engagement:{channel}:{message}:{kind}:{u}"),
        None => format!("engagement:{channel}:{message}:{kind}"),
    }
}

/// The timeline event of an open or click, attributed to the message's run, step, workflow
/// and variants; `None` when the message is not one Herald knows (its run is gone).
pub fn timeline_event(
    store: &dyn Store,
    e: &Engagement,
    user_agent: Option<&str>,
    now: i64,
) -> Result<Option<Message>, StoreError> {
    let Some((run_id, step)) = e.message.rsplit_once(':') else {
        return Ok(None);
    };
    let Ok(step) = step.parse::<usize>() else {
        return Ok(None);
    };
    let Some(run) = store.run(run_id)? else {
        return Ok(None);
    };
    let journal = store.journal(run_id)?;
    let sent_at = journal.get(step).and_then(|s| s.finished_at);
    let variants: Map<String, Value> = journal
        .iter()
        .take(step)
        .filter(|s| s.kind == "variant")
        .map(|s| (s.name.clone(), s.result.clone()))
        .collect();
    let kind = if e.url.is_some() { "clicked" } else { "opened" };
    let machine = machine_reason(user_agent, sent_at.map(|t| now - t));
    let name = match machine {
        Some(_) => format!("{}_machine_{kind}", e.channel),
        None => format!("{}_{kind}", e.channel),
    };
    let mut props = Map::new();
    props.insert("message_id".into(), json!(e.message));
    props.insert("run".into(), json!(run.id));
    props.insert("step".into(), json!(step));
    props.insert("workflow".into(), json!(run.workflow));
    props.insert("channel".into(), json!(e.channel));
    props.insert("source".into(), json!("herald"));
    if !variants.is_empty() {
        props.insert("variants".into(), Value::Object(variants));
    }
    if let Some(u) = &e.url {
        props.insert("url".into(), json!(u));
    }
    if let Some(l) = &e.link {
        props.insert("link".into(), json!(l));
    }
    if let Some(reason) = &machine {
        props.insert("machine".into(), json!(true));
        props.insert("machine_reason".into(), json!(reason));
    }
    if let Some(ua) = user_agent {
        props.insert(
            "user_agent".into(),
            json!(ua.chars().take(256).collect::<String>()),
        );
    }
    let dedupe = dedupe_key(
        &e.channel,
        &e.message,
        &format!("{}{kind}", if machine.is_some() { "machine_" } else { "" }),
        e.url.as_deref(),
    );
    Ok(Some(Message::for_contact(
        &run.contact,
        &name,
        Value::Object(props),
        Some(now),
        Some(dedupe),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_go_through_the_redirect_and_the_pixel_closes_the_body() {
        let keys = LinkKeys::fixed(b"k");
        let html = "<html><body><p><a href=\"https://shop.example/spring?a=1&amp;b=2\" data-herald-link=\"cta\">Shop</a> \
            <a href=\"https://example.com/u/x\">leave</a> <a href=\"mailto:x@example.com\">mail</a> \
            <a href=\"https://example.org/\" data-herald-track=\"off\">raw</a> <a href=\"http://example.net/\">second</a></p></body></html>";
        let out = instrument(
            html,
            &keys,
            "https://h.example/",
            "ada",
            "run-1:0",
            "email",
            &["https://example.com/u/x"],
        );
        assert!(!out.contains("shop.example"), "{out}");
        assert!(
            out.contains("href=\"https://example.com/u/x\""),
            "the unsubscribe link stays: {out}"
        );
        assert!(out.contains("href=\"mailto:x@example.com\""), "{out}");
        assert!(out.contains("href=\"https://example.org/\""), "{out}");
        assert!(!out.contains("data-herald"), "{out}");
        let tokens: Vec<&str> = out
            .match_indices("https://h.example/c/")
            .map(|(i, m)| {
                let rest = &out[i + m.len()..];
                &rest[..rest.find('"').unwrap()]
            })
            .collect();
        assert_eq!(tokens.len(), 2, "{out}");
        let first = verify_click(&keys, tokens[0]).unwrap();
        assert_eq!(
            first.url.as_deref(),
            Some("https://shop.example/spring?a=1&b=2")
        );
        assert_eq!(first.link.as_deref(), Some("cta"));
        assert_eq!(first.message, "run-1:0");
        let second = verify_click(&keys, tokens[1]).unwrap();
        assert_eq!(second.link.as_deref(), Some("link-2"));
        let pixel_at = out.find("https://h.example/o/").unwrap();
        assert!(pixel_at < out.find("</body>").unwrap(), "{out}");
        // One kind of token is never taken for another.
        assert_eq!(verify_open(&keys, tokens[0]), Err(BadToken));
    }

    #[test]
    fn machines_are_told_by_user_agent_or_by_speed() {
        let browser = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36";
        assert_eq!(machine_reason(Some(browser), Some(60_000)), None);
        assert!(machine_reason(Some(browser), Some(2_000)).is_some());
        assert!(machine_reason(Some("Mozilla/5.0"), Some(60_000)).is_some());
        assert!(machine_reason(None, None).is_some());
        assert!(machine_reason(Some("Barracuda Sentinel (EE)"), Some(60_000)).is_some());
        // Gmail's image proxy fetches when the person opens the message: a real open.
        assert_eq!(
            machine_reason(Some("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"), Some(60_000)),
            None
        );
    }
}
