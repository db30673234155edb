//! The dashboard: server-rendered pages of the analytics counters, for people.
//!
//! - `GET /dashboard/login` shows a form; `POST /dashboard/login` exchanges an admin or
//!   read-only token for a session cookie (HttpOnly, SameSite=Strict, `Secure` behind an https
//!   public URL; signed with the link keys, valid 12 hours); `POST /dashboard/logout` ends it.
//! - `GET /dashboard` (overview: workflows, broadcasts, deliverability by recipient domain,
//!   segment sizes), `GET /dashboard/workflows/{name}` (hourly series, the steps of each
//!   version as a funnel, experiments), `GET /dashboard/broadcasts/{name}` (arms with their
//!   intervals, the decision). Without a session every page answers 401 with the login form.
//!
//! Plain HTML and inline SVG: no script, no asset from anywhere else (the CSP says so), under
//! [`PAGE_BUDGET`] bytes, readable from a phone's width up.

#[allow(unused_imports)]
use super::*;

use std::collections::BTreeMap;

use crate::analytics::{self, experiments, Numbers, Period};

/// The session cookie's name.
const COOKIE: &str = "herald_dashboard";
/// The link-key token kind of a session.
const SESSION: u8 = 6;
/// How long a session lasts.
const SESSION_MS: i64 = 12 * 3_600_000;
/// Longest session token accepted.
const MAX_SESSION_TOKEN: usize = 256;
/// A dashboard page stays under this many bytes (tested).
pub const PAGE_BUDGET: usize = 96 * 1024;
/// A login form body larger than this is refused.
const MAX_FORM_BYTES: usize = 4096;

fn esc(s: &str) -> String {
    html_escape::encode_text(s).into_owned()
}

fn attr(s: &str) -> String {
    html_escape::encode_double_quoted_attribute(s).into_owned()
}

fn path_part(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn page(status: StatusCode, html: String, cookie: Option<String>) -> Response {
    if html.len() > PAGE_BUDGET {
        tracing::warn!(
            bytes = html.len(),
            budget = PAGE_BUDGET,
            "a dashboard page is over its weight budget"
        );
    }
    let mut r = html_page(
        status,
        html,
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'",
    );
    if let Some(c) = cookie {
        if let Ok(v) = header::HeaderValue::from_str(&c) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    r
}

const STYLE: &str = "\
*{box-sizing:border-box}\
body{font-family:system-ui,sans-serif;margin:0;color:#1a1a1a;background:#f6f6f4;line-height:1.45}\
header{background:#1a1a1a;color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center}\
header a{color:#fff}header form{margin-left:auto}\
main{max-width:72rem;margin:0 auto;padding:1rem}\
h1{font-size:1.4rem;margin:.5rem 0 1rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}\
section{background:#fff;border:1px solid #d6d6d0;border-radius:8px;padding:.75rem 1rem;margin-bottom:1rem}\
.scroll{overflow-x:auto;max-width:100%}\
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}\
th,td{padding:.3rem .5rem;text-align:right;border-bottom:1px solid #e4e4de;white-space:nowrap}\
th:first-child,td:first-child{text-align:left;white-space:normal;overflow-wrap:anywhere;min-width:9rem}\
figure{margin:0}\
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(8.5rem,1fr));gap:.5rem}\
.card{border:1px solid #e4e4de;border-radius:6px;padding:.4rem .6rem}.card b{display:block;font-size:1.3rem}\
svg{max-width:100%;height:auto;display:block}\
.muted{color:#555}.win{color:#1b5e20;font-weight:600}\
button,input{font:inherit}input{padding:.4rem;border:1px solid #767676;border-radius:4px;width:100%;max-width:24rem}\
button{padding:.4rem .9rem;border-radius:4px;border:1px solid #1a1a1a;background:#1a1a1a;color:#fff;cursor:pointer}\
header button{background:#fff;color:#1a1a1a}\
.error{background:#fdecea;border:1px solid #b71c1c;padding:.5rem 1rem;border-radius:6px}";

fn layout(title: &str, body: &str, signed_in: bool) -> String {
    let nav = if signed_in {
        "<a href=\"/dashboard\">Overview</a><form method=\"post\" action=\"/dashboard/logout\"><button>Sign out</button></form>"
    } else {
        ""
    };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex\">\n<title>{t} · Herald</title>\n<style>{STYLE}</style>\n</head>\n\
         <body>\n<header><strong>Herald</strong>{nav}</header>\n<main>\n<h1>{t}</h1>\n{body}\n</main>\n</body>\n</html>\n",
        t = esc(title)
    )
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let body = format!(
        "<section>{error}<form method=\"post\" action=\"/dashboard/login\">\
         <p><label for=\"token\">Admin or read-only token</label><br>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required></p>\
         <p><button>Sign in</button></p></form></section>"
    );
    page(status, layout("Sign in", &body, false), None)
}

/// A token's fingerprint, kept in its sessions: a session ends when its token is no longer
/// in `[auth]` (rotated or removed).
fn fingerprint(token: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(format!("herald-dashboard\u{1f}{token}").as_bytes())[..12])
}

/// Whether a management token with this fingerprint is still configured.
fn still_valid(shared: &Shared, print: &str) -> bool {
    let c = shared.credentials();
    c.admin_token
        .iter()
        .chain(c.read_tokens.iter())
        .any(|t| fingerprint(t) == print)
}

/// The session of the request's cookie, if it is valid and not expired.
fn session(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")))
    else {
        return false;
    };
    let keys = shared.engine.link_keys();
    match keys.verify_parts(SESSION, token, 2, MAX_SESSION_TOKEN) {
        Ok(parts) => {
            parts[0]
                .parse::<i64>()
                .is_ok_and(|until| until > shared.engine.clock.now_ms())
                && still_valid(shared, &parts[1])
        }
        Err(_) => false,
    }
}

fn secure(shared: &Shared) -> &'static str {
    if shared.engine.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// `GET /dashboard/login`.
pub(super) async fn dashboard_login_form() -> Response {
    login_page(StatusCode::OK, None)
}

/// `POST /dashboard/login` (`token=…`): a session cookie for a valid token.
pub(super) async fn dashboard_login(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    if body.len() > MAX_FORM_BYTES {
        return login_page(StatusCode::PAYLOAD_TOO_LARGE, Some("That is not a token."));
    }
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if shared.credentials().token_scope(token.trim()).is_none() {
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("That token is not valid here."),
        );
    }
    let until = shared.engine.clock.now_ms() + SESSION_MS;
    let session = shared
        .engine
        .link_keys()
        .sign_parts(SESSION, &[&until.to_string(), &fingerprint(token.trim())]);
    let cookie = format!(
        "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age={}{}",
        SESSION_MS / 1000,
        secure(&shared)
    );
    let mut r = page(StatusCode::SEE_OTHER, String::new(), Some(cookie));
    r.headers_mut().insert(
        header::LOCATION,
        header::HeaderValue::from_static("/dashboard"),
    );
    r
}

/// `POST /dashboard/logout`.
pub(super) async fn dashboard_logout(State(shared): State<Arc<Shared>>) -> Response {
    let cookie = format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age=0{}",
        secure(&shared)
    );
    let mut r = page(StatusCode::SEE_OTHER, String::new(), Some(cookie));
    r.headers_mut().insert(
        header::LOCATION,
        header::HeaderValue::from_static("/dashboard/login"),
    );
    r
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn count(n: &Numbers, m: &str) -> u64 {
    n.counts.get(m).copied().unwrap_or(0)
}

fn rate(n: &Numbers, r: &str) -> f64 {
    n.rates.get(r).copied().unwrap_or(0.0)
}

/// Headline numbers as cards.
fn cards(n: &Numbers) -> String {
    let mut out = String::from("<div class=\"cards\">");
    for (label, metric, value) in [
        ("Sent", "sent", count(n, "sent").to_string()),
        ("Opened", "opened", count(n, "opened").to_string()),
        ("Open rate", "open_rate", pct(rate(n, "open_rate"))),
        ("Clicked", "clicked", count(n, "clicked").to_string()),
        ("Click rate", "click_rate", pct(rate(n, "click_rate"))),
        ("Converted", "converted", count(n, "converted").to_string()),
        ("Bounced", "bounced", count(n, "bounced").to_string()),
        (
            "Unsubscribed",
            "unsubscribed",
            count(n, "unsubscribed").to_string(),
        ),
    ] {
        out.push_str(&format!(
            "<div class=\"card\"><span class=\"muted\">{label}</span><b data-metric=\"{metric}\">{value}</b></div>"
        ));
    }
    out.push_str("</div>");
    out
}

/// A table of rows of numbers: (label, link, numbers).
fn table(caption: &str, rows: &[(String, Option<String>, Numbers)]) -> String {
    if rows.is_empty() {
        return format!("<p class=\"muted\">No {} yet.</p>", esc(caption));
    }
    let mut out = format!(
        "<div class=\"scroll\"><table aria-label=\"{}\"><thead><tr><th scope=\"col\">Name</th>\
         <th scope=\"col\">Sent</th><th scope=\"col\">Open rate</th><th scope=\"col\">Click rate</th>\
         <th scope=\"col\">Converted</th><th scope=\"col\">Bounced</th><th scope=\"col\">Complaints</th>\
         <th scope=\"col\">Unsubscribed</th></tr></thead><tbody>",
        attr(caption)
    );
    for (label, link, n) in rows {
        let name = match link {
            Some(l) => format!("<a href=\"{}\">{}</a>", attr(l), esc(label)),
            None => esc(label),
        };
        out.push_str(&format!(
            "<tr data-row=\"{}\"><th scope=\"row\">{name}</th><td data-metric=\"sent\">{}</td><td>{}</td><td>{}</td>\
             <td data-metric=\"converted\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            attr(label),
            count(n, "sent"),
            pct(rate(n, "open_rate")),
            pct(rate(n, "click_rate")),
            count(n, "converted"),
            count(n, "bounced"),
            count(n, "complained"),
            count(n, "unsubscribed"),
        ));
    }
    out.push_str("</tbody></table></div>");
    out
}

/// An hourly series as SVG bars, with the total in words for screen readers.
/// A scope's `metric` over the last 90 days for a chart: per hour while it spans a week or
/// less and none of the window is rolled up into days, else per day in the project's
/// timezone.
fn chart_points(
    shared: &Shared,
    scope: &str,
    metric: &str,
) -> Result<(Vec<(i64, u64)>, Unit), crate::store::StoreError> {
    let store = shared.engine.store.as_ref();
    let days = shared.engine.analytics.days();
    let now = shared.engine.clock.now_ms();
    let recent = Period {
        from: Some(now - 90 * analytics::rollup::DAY_MS),
        to: Some(now + analytics::HOUR_MS),
    };
    // Per hour only where every hour of the window is kept: nothing rolled up within it.
    if analytics::rollup::rolled(store)? <= now - 90 * analytics::rollup::DAY_MS {
        let hourly = analytics::series(store, scope, metric, recent)?;
        let span = match (hourly.first(), hourly.last()) {
            (Some(a), Some(b)) => b.0 - a.0,
            _ => 0,
        };
        if span <= 7 * analytics::rollup::DAY_MS {
            return Ok((hourly, Unit::Hour));
        }
    }
    let daily = analytics::rollup::daily_series(store, scope, metric, recent, days.tz)?;
    Ok((daily, Unit::Day(days.tz)))
}

/// A chart's bars: hours, or days in a timezone.
#[derive(Clone, Copy)]
enum Unit {
    Hour,
    Day(chrono_tz::Tz),
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Hour => "hour",
            Unit::Day(_) => "day",
        }
    }

    /// How many bars from `first` to `at` (days: 23 to 25 hours each, counted by date).
    fn index(self, first: i64, at: i64) -> usize {
        match self {
            Unit::Hour => ((at - first) / analytics::HOUR_MS).max(0) as usize,
            Unit::Day(_) => ((at - first + analytics::rollup::DAY_MS / 2)
                / analytics::rollup::DAY_MS)
                .max(0) as usize,
        }
    }
}

fn series_chart(title: &str, points: &[(i64, u64)], unit: Unit) -> String {
    if points.is_empty() {
        return format!("<p class=\"muted\">No {} yet.</p>", esc(title));
    }
    let first = points.first().map(|p| p.0).unwrap_or(0);
    let last = points.last().map(|p| p.0).unwrap_or(0);
    let n = (unit.index(first, last) + 1).clamp(1, 24 * 90);
    let max = points.iter().map(|p| p.1).max().unwrap_or(1).max(1) as f64;
    let (w, h) = (600.0, 120.0);
    let bar = w / n as f64;
    let mut bars = String::new();
    for (at, count) in points {
        let i = unit.index(first, *at);
        if i >= n {
            continue;
        }
        let bh = (*count as f64 / max * (h - 10.0)).max(1.0);
        bars.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#2f5d8a\"><title>{count}</title></rect>",
            i as f64 * bar,
            h - bh,
            (bar - 1.0).max(0.5),
        ));
    }
    let total: u64 = points.iter().map(|p| p.1).sum();
    let (from, to, zone) = match unit {
        Unit::Hour => (
            crate::clock::iso(first),
            crate::clock::iso(last + analytics::HOUR_MS),
            "UTC".to_string(),
        ),
        Unit::Day(tz) => (
            analytics::rollup::date_of(first, tz),
            analytics::rollup::date_of(last, tz),
            tz.name().to_string(),
        ),
    };
    let per = unit.name();
    format!(
        "<figure><svg viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{} per {per}: {total} in {n} {per}s\">{bars}</svg>\
         <figcaption class=\"muted\">{} per {per}, {from} to {to} ({zone})</figcaption></figure>",
        attr(title),
        esc(title),
    )
}

/// A segment's size per day as a line (inline SVG, no script).
fn sparkline(name: &str, days: &[analytics::rollup::SizePoint]) -> String {
    let max = days.iter().map(|d| d.size).max().unwrap_or(0).max(1) as f64;
    let step = 100.0 / (days.len().max(2) - 1) as f64;
    let points: Vec<String> = days
        .iter()
        .enumerate()
        .map(|(i, d)| {
            format!(
                "{:.1},{:.1}",
                i as f64 * step,
                20.0 - d.size as f64 / max * 18.0
            )
        })
        .collect();
    format!(
        "<svg viewBox=\"0 0 100 21\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{} over {} days\">\
         <polyline points=\"{}\" fill=\"none\" stroke=\"#2f5d8a\" stroke-width=\"1.5\" vector-effect=\"non-scaling-stroke\"/></svg>",
        attr(name),
        days.len(),
        points.join(" ")
    )
}

/// One version's funnel: a row per step in the order runs take them, a bar as long as its
/// arrivals, where runs went next and where they ended.
fn funnel(steps: &[analytics::FunnelStep]) -> String {
    let max = steps.iter().map(|s| s.reached).max().unwrap_or(0).max(1) as f64;
    let pairs = |m: &BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, n)| format!("{} {n}", esc(k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::from(
        "<div class=\"scroll\"><table><thead><tr><th scope=\"col\">Step</th>\
         <th scope=\"col\">Reached</th><th scope=\"col\">Sent</th>\
         <th scope=\"col\">Timed out</th><th scope=\"col\">Still here</th>\
         <th scope=\"col\">Ended here</th><th scope=\"col\">Went on to</th>\
         <th scope=\"col\" style=\"width:25%\">Reach</th></tr></thead><tbody>",
    );
    for s in steps {
        let ended: u64 = s.ended.values().sum();
        out.push_str(&format!(
            "<tr data-step=\"{}\"><th scope=\"row\">{}</th><td data-metric=\"reached\">{}</td>\
             <td data-metric=\"sent\">{}</td><td data-metric=\"timed_out\">{}</td>\
             <td data-metric=\"here\">{}</td><td data-metric=\"ended\" title=\"{}\">{ended}</td>\
             <td>{}</td><td><svg viewBox=\"0 0 100 8\" role=\"img\" aria-label=\"{} reached\">\
             <rect width=\"{:.1}\" height=\"8\" fill=\"#2f5d8a\"/></svg></td></tr>",
            attr(&s.key),
            esc(&s.key),
            s.reached,
            s.sent,
            s.timed_out,
            s.here,
            attr(&pairs(&s.ended)),
            pairs(&s.next),
            s.reached,
            s.reached as f64 / max * 100.0
        ));
    }
    out.push_str("</tbody></table></div>");
    out
}

/// An experiment: each arm's rate with its interval drawn, and the test's pick.
fn experiment(title: &str, a: &experiments::Analysis, metric: &str) -> String {
    let mut out = format!(
        "<h2>{}</h2><div class=\"scroll\"><table><thead><tr><th scope=\"col\">Arm</th><th scope=\"col\">Sent</th>\
         <th scope=\"col\">{}</th><th scope=\"col\">Rate</th><th scope=\"col\" style=\"width:30%\">95% interval</th>\
         <th scope=\"col\">P(beat {})</th><th scope=\"col\">p-value</th></tr></thead><tbody>",
        esc(title),
        esc(metric),
        esc(&a.control)
    );
    for arm in &a.arms {
        let [lo, hi] = arm.interval;
        out.push_str(&format!(
            "<tr data-arm=\"{}\"><th scope=\"row\">{}</th><td data-metric=\"sent\">{}</td><td data-metric=\"reached\">{}</td><td>{}</td>\
             <td><svg viewBox=\"0 0 100 10\" role=\"img\" aria-label=\"{} to {}\"><line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"5\" y2=\"5\" stroke=\"#1a1a1a\" stroke-width=\"2\"/>\
             <circle cx=\"{:.1}\" cy=\"5\" r=\"2.5\" fill=\"#2f5d8a\"/></svg></td><td>{}</td><td>{}</td></tr>",
            attr(&arm.arm),
            esc(&arm.arm),
            arm.sent,
            arm.reached,
            pct(arm.rate),
            pct(lo),
            pct(hi),
            lo * 100.0,
            hi * 100.0,
            arm.rate * 100.0,
            arm.probability_to_beat_control.map_or("–".into(), pct),
            arm.p_value.map_or("–".into(), |p| format!("{p:.3}")),
        ));
    }
    out.push_str("</tbody></table></div>");
    out.push_str(&match &a.winner {
        Some(w) => format!(
            "<p class=\"win\" data-winner=\"{}\">The sequential test picks arm {}.</p>",
            attr(w),
            esc(w)
        ),
        None => {
            "<p class=\"muted\">Undecided: no arm leads every other at this level yet.</p>".into()
        }
    });
    out
}

fn unauthorized() -> Response {
    login_page(
        StatusCode::UNAUTHORIZED,
        Some("Sign in to see the dashboard."),
    )
}

fn failed(e: impl std::fmt::Display) -> Response {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        layout(
            "Something failed",
            &format!("<p class=\"error\">{}</p>", esc(&e.to_string())),
            true,
        ),
        None,
    )
}

/// `GET /dashboard`.
pub(super) async fn dashboard_overview(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Response {
    if !session(&shared, &headers) {
        return unauthorized();
    }
    let out = tokio::task::spawn_blocking(move || -> Result<String, crate::store::StoreError> {
        let store = shared.engine.store.as_ref();
        shared.engine.analytics.fold_all(store)?;
        let all = Period::default();
        let state = shared.engine.state();
        let workflows = analytics::numbers_by_scope(store, "workflow:", all)?;
        let broadcasts = analytics::numbers_by_scope(store, "broadcast:", all)?;
        let domains = analytics::numbers_by_scope(store, "domain:", all)?;
        // Every workflow (or broadcast) the project has or the counters name, linked to its page.
        let rows = |kind: &str, known: Vec<&String>, counted: &'_ BTreeMap<String, Numbers>| {
            let prefix = format!("{kind}:");
            let mut names: Vec<String> = known.into_iter().cloned().collect();
            names.extend(counted.keys().filter_map(|k| k.strip_prefix(&prefix).map(String::from)));
            names.sort();
            names.dedup();
            names
                .into_iter()
                .map(|n| {
                    let link = format!("/dashboard/{kind}s/{}", path_part(&n));
                    let numbers = counted.get(&format!("{prefix}{n}")).cloned().unwrap_or_default();
                    (n, Some(link), numbers)
                })
                .collect::<Vec<_>>()
        };
        let wf_rows = rows("workflow", state.workflows.keys().collect(), &workflows);
        let bc_rows = rows("broadcast", state.broadcasts.keys().collect(), &broadcasts);
        let dom_rows: Vec<_> = domains
            .iter()
            .map(|(k, n)| (k.trim_start_matches("domain:").to_string(), None, n.clone()))
            .collect();
        let total = workflows.values().chain(broadcasts.values()).fold(
            Numbers::default(),
            |mut t, n| {
                for (m, v) in &n.counts {
                    *t.counts.entry(m.clone()).or_default() += v;
                }
                t
            },
        );
        let mut total = total;
        let sent = count(&total, "sent") as f64;
        let r = |m: &str, t: &Numbers| if sent > 0.0 { count(t, m) as f64 / sent } else { 0.0 };
        total.rates.insert("open_rate".into(), r("opened", &total));
        total.rates.insert("click_rate".into(), r("clicked", &total));
        let mut segs = String::from("<div class=\"scroll\"><table><thead><tr><th scope=\"col\">Segment</th><th scope=\"col\">Members</th><th scope=\"col\">30 days ago</th><th scope=\"col\" style=\"width:40%\">Size over 30 days</th></tr></thead><tbody>");
        let now = shared.engine.clock.now_ms();
        let tz = shared.engine.analytics.days().tz;
        let month = Period {
            from: Some(now - 29 * analytics::rollup::DAY_MS),
            to: None,
        };
        for (name, size) in shared.engine.segment_sizes() {
            let days = analytics::rollup::segment_sizes(store, &name, size, month, now, tz)?;
            let then = days.first().map_or(size, |d| d.size);
            segs.push_str(&format!(
                "<tr data-segment=\"{}\"><th scope=\"row\">{}</th><td data-metric=\"members\">{size}</td>\
                 <td data-metric=\"size_30_days_ago\">{then}</td><td>{}</td></tr>",
                attr(&name),
                esc(&name),
                sparkline(&name, &days),
            ));
        }
        segs.push_str("</tbody></table></div>");
        let body = format!(
            "<section aria-labelledby=\"all\"><h2 id=\"all\">All messages</h2>{}</section>\
             <section aria-labelledby=\"wf\"><h2 id=\"wf\">Workflows</h2>{}</section>\
             <section aria-labelledby=\"bc\"><h2 id=\"bc\">Broadcasts</h2>{}</section>\
             <section aria-labelledby=\"dom\"><h2 id=\"dom\">Deliverability by recipient domain</h2>{}</section>\
             <section aria-labelledby=\"seg\"><h2 id=\"seg\">Segments</h2>{segs}</section>",
            cards(&total),
            table("workflows", &wf_rows),
            table("broadcasts", &bc_rows),
            table("domains", &dom_rows),
        );
        Ok(layout("Overview", &body, true))
    })
    .await;
    match out {
        Ok(Ok(html)) => page(StatusCode::OK, html, None),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

/// `GET /dashboard/workflows/{name}`.
pub(super) async fn dashboard_workflow(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if !session(&shared, &headers) {
        return unauthorized();
    }
    let out = tokio::task::spawn_blocking(
        move || -> Result<Option<String>, crate::store::StoreError> {
            let store = shared.engine.store.as_ref();
            shared.engine.analytics.fold_all(store)?;
            let all = Period::default();
            let scope = format!("workflow:{name}");
            let totals = analytics::numbers(store, &scope, all)?;
            let known = shared.engine.state().workflows.contains_key(&name);
            if !known && count(&totals, "sent") == 0 {
                return Ok(None);
            }
            let mut body = format!("<section>{}</section>", cards(&totals));
            for metric in ["sent", "opened", "clicked"] {
                // The last 90 days.
                let (points, unit) = chart_points(&shared, &scope, metric)?;
                body.push_str(&format!(
                    "<section><h2>{} per {}</h2>{}</section>",
                    esc(&metric[..1].to_uppercase()) + &metric[1..],
                    unit.name(),
                    series_chart(metric, &points, unit)
                ));
            }
            // The steps of each version, by their stable keys.
            for (version, steps) in analytics::funnel(store, &name, all)? {
                body.push_str(&format!(
                    "<section><h2>Funnel of version {}</h2>{}</section>",
                    esc(&version),
                    funnel(&steps)
                ));
            }
            // Experiments: the workflow's variant(...) calls.
            let variants = analytics::numbers_by_scope(store, &format!("variant:{name}:"), all)?;
            let mut exps: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
            for k in variants.keys() {
                let rest = k.trim_start_matches(&format!("variant:{name}:"));
                if let Some((exp, arm)) = rest.rsplit_once(':') {
                    exps.entry(exp.to_string())
                        .or_default()
                        .push((arm.to_string(), k.clone()));
                }
            }
            for (exp, arms) in exps {
                for metric in ["clicked", "converted"] {
                    let (looks, _) = analytics::arm_looks(store, &arms, metric)?;
                    let control = arms.first().map(|a| a.0.clone()).unwrap_or_default();
                    let a = experiments::analyse_looks(&looks, &control, experiments::ALPHA);
                    body.push_str(&format!(
                        "<section>{}</section>",
                        experiment(&format!("Experiment {exp}, by {metric}"), &a, metric)
                    ));
                }
            }
            Ok(Some(layout(&format!("Workflow {name}"), &body, true)))
        },
    )
    .await;
    match out {
        Ok(Ok(Some(html))) => page(StatusCode::OK, html, None),
        Ok(Ok(None)) => page(
            StatusCode::NOT_FOUND,
            layout("Not found", "<p>No such workflow.</p>", true),
            None,
        ),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

/// `GET /dashboard/broadcasts/{name}`.
pub(super) async fn dashboard_broadcast(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    if !session(&shared, &headers) {
        return unauthorized();
    }
    let out = tokio::task::spawn_blocking(move || -> Result<Option<String>, crate::engine::EngineError> {
        let store = shared.engine.store.as_ref();
        shared.engine.analytics.fold_all(store)?;
        let all = Period::default();
        let record = shared.engine.broadcast_record(&name)?;
        let spec = shared
            .engine
            .state()
            .broadcasts
            .get(&name)
            .and_then(|w| w.loaded.decl.broadcast.clone());
        if record.is_none() && spec.is_none() {
            return Ok(None);
        }
        let scope = format!("broadcast:{name}");
        let totals = analytics::numbers(store, &scope, all)?;
        let status = record
            .as_ref()
            .map_or("draft", |r| crate::broadcast::status_name(r.status));
        let mut body = format!(
            "<p>Status: <strong data-status=\"{status}\">{status}</strong></p><section>{}</section>",
            cards(&totals)
        );
        let (points, unit) = chart_points(&shared, &scope, "sent")?;
        body.push_str(&format!(
            "<section><h2>Sent per {}</h2>{}</section>",
            unit.name(),
            series_chart("sent", &points, unit)
        ));
        let arms: Vec<String> = match (&record, &spec) {
            (Some(r), _) if r.test.is_some() => r.test.as_ref().map(|t| t.arms.clone()).unwrap_or_default(),
            (_, Some(s)) => s.arms.iter().map(|(a, _)| a.clone()).collect(),
            _ => Vec::new(),
        };
        if arms.len() >= 2 {
            let metric = record
                .as_ref()
                .and_then(|r| r.test.as_ref().map(|t| t.metric.clone()))
                .unwrap_or_else(|| "clicked".into());
            let scoped: Vec<(String, String)> = arms
                .iter()
                .map(|a| (a.clone(), format!("arm:{name}:{a}")))
                .collect();
            let (looks, _) = analytics::arm_looks(store, &scoped, &metric)?;
            let a = experiments::analyse_looks(&looks, &arms[0], experiments::ALPHA);
            body.push_str(&format!(
                "<section>{}</section>",
                experiment(&format!("Arms, by {metric}"), &a, &metric)
            ));
            if let Some(d) = record.as_ref().and_then(|r| r.test.as_ref()).and_then(|t| t.decision.as_ref()) {
                body.push_str(&format!(
                    "<section><p class=\"win\" data-decision=\"{}\">Arm {} went to the rest of the audience (decided by {}).</p></section>",
                    attr(&d.winner),
                    esc(&d.winner),
                    esc(&d.by)
                ));
            }
        }
        Ok(Some(layout(&format!("Broadcast {name}"), &body, true)))
    })
    .await;
    match out {
        Ok(Ok(Some(html))) => page(StatusCode::OK, html, None),
        Ok(Ok(None)) => page(
            StatusCode::NOT_FOUND,
            layout("Not found", "<p>No such broadcast.</p>", true),
            None,
        ),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}
