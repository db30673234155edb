//! Message templates: Liquid files under `templates/`, with front matter for the subject and
//! other per-message fields.
//!
//! ```text
//! ---
//! subject: Welcome, {{ contact.first_name }}!
//! ---
//! Hi {{ contact.first_name }}, thanks for subscribing.
//! ```
//!
//! `send("email", "welcome")` uses `templates/welcome.email.liquid` when it exists, else
//! `templates/welcome.liquid`.
//!
//! An email written in Liquid gets an HTML part from `templates/NAME.html` (or
//! `NAME.CHANNEL.html`, beside `NAME.CHANNEL.liquid`): Liquid, every value HTML-escaped, no
//! front matter; `NAME.liquid` keeps the front matter and is the text part. The `.html`
//! extension never collides with the `NAME.CHANNEL.liquid` override rule.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::sources::Sources;

/// A template that failed to load.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    /// File, relative to the project.
    pub file: String,
    /// What is wrong.
    pub message: String,
}

struct Template {
    fields: Vec<(String, liquid::Template)>,
    body: liquid::Template,
    /// The body is MJML: rendered to HTML after Liquid, with a generated plain-text part.
    mjml: bool,
    /// The front matter's `topic`, as written (a topic is a name, never computed).
    topic: Option<String>,
    /// The HTML part from `NAME.html`, for a Liquid template.
    html_part: Option<liquid::Template>,
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The `subject` field, if the template has one.
    pub subject: Option<String>,
    /// The body (for MJML templates: the plain-text part generated from the HTML).
    pub body: String,
    /// HTML, for MJML templates.
    pub html: Option<String>,
    /// Every front-matter field, rendered (subject included).
    pub fields: Map<String, Value>,
}

/// Every template of a project.
#[derive(Default)]
pub struct Templates {
    by_name: BTreeMap<String, Template>,
}

fn parser() -> liquid::Parser {
    liquid::ParserBuilder::with_stdlib()
        .filter(local_date::LocalDate)
        .filter(html::Raw)
        // Replaces the stdlib's `escape`: in HTML every value is escaped already, so
        // `escape` must not escape it twice.
        .filter(html::EscapeOnce)
        .build()
        .expect("the liquid stdlib parser builds")
}

/// Every string in `v`, HTML-escaped: the data an HTML template sees.
fn html_escaped(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(html_escape::encode_safe(s).into_owned()),
        Value::Array(a) => Value::Array(a.iter().map(html_escaped).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), html_escaped(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Attributes whose value is a URL the recipient's client follows or loads.
const URL_ATTRIBUTES: [&str; 4] = ["href", "src", "action", "background"];

/// Replace URLs with a scheme that runs code or smuggles content (`javascript:`, `vbscript:`,
/// `data:` other than images) by `#` in every URL attribute of `html`.
fn neutralise_url_attributes(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let bytes = html.as_bytes();
    let mut out = String::with_capacity(html.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let lower_bytes = lower.as_bytes();
        let attribute = if i == 0 || bytes[i - 1].is_ascii_whitespace() {
            URL_ATTRIBUTES.iter().find(|a| {
                lower_bytes[i..].starts_with(a.as_bytes())
                    && lower_bytes[i + a.len()..]
                        .iter()
                        .find(|b| !b.is_ascii_whitespace())
                        == Some(&b'=')
            })
        } else {
            None
        };
        let Some(attr) = attribute else {
            i += 1;
            continue;
        };
        let eq = i
            + attr.len()
            + lower_bytes[i + attr.len()..]
                .iter()
                .position(|b| *b == b'=')
                .unwrap_or(0);
        let mut start = eq + 1;
        while start < bytes.len() && bytes[start].is_ascii_whitespace() {
            start += 1;
        }
        let (value_start, value_end) = match bytes.get(start) {
            Some(q @ (b'"' | b'\'')) => {
                let end = html[start + 1..]
                    .find(*q as char)
                    .map_or(bytes.len(), |e| start + 1 + e);
                (start + 1, end)
            }
            _ => {
                let end = html[start..]
                    .find(|c: char| c.is_ascii_whitespace() || c == '>')
                    .map_or(bytes.len(), |e| start + e);
                (start, end)
            }
        };
        let value = html_escape::decode_html_entities(&html[value_start..value_end]);
        let scheme: String = value
            .chars()
            .filter(|c| !c.is_whitespace() && !c.is_control())
            .take_while(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        let has_scheme = value.contains(':') && !scheme.contains(['/', '?', '#']);
        let dangerous = has_scheme
            && matches!(scheme.as_str(), "javascript" | "vbscript" | "data")
            && !(scheme == "data"
                && value
                    .trim_start()
                    .to_ascii_lowercase()
                    .starts_with("data:image/"));
        if dangerous {
            out.push_str(&html[copied..value_start]);
            out.push('#');
            copied = value_end;
        }
        i = value_end.max(i + 1);
    }
    out.push_str(&html[copied..]);
    out
}

impl Templates {
    /// Load every `templates/*.liquid` and `templates/*.mjml` file of a project (no folder: no
    /// templates). Templates that do not compile are left out and reported.
    pub fn load(sources: &dyn Sources) -> (Templates, Vec<TemplateError>) {
        let (templates, errors, _) = Self::load_files(sources);
        (templates, errors)
    }

    /// [`Templates::load`], also handing back every template file it read (path relative to
    /// the project, text), so a checker reads each file once.
    pub fn load_files(
        sources: &dyn Sources,
    ) -> (Templates, Vec<TemplateError>, Vec<(String, String)>) {
        let mut out = Templates::default();
        let mut errors = Vec::new();
        let mut files = Vec::new();
        let parser = parser();
        let mut html_parts: Vec<(String, String, liquid::Template)> = Vec::new();
        for file_name in sources.list("templates") {
            if let Some(name) = html_part_name(&file_name) {
                let display = format!("templates/{file_name}");
                match sources.read(&display) {
                    Ok(text) => {
                        match parser.parse(&text) {
                            Ok(t) => html_parts.push((name.to_string(), display.clone(), t)),
                            Err(e) => errors.push(TemplateError {
                                file: display.clone(),
                                message: e.to_string(),
                            }),
                        }
                        files.push((display, text));
                    }
                    Err(e) => errors.push(TemplateError {
                        file: display,
                        message: e.to_string(),
                    }),
                }
                continue;
            }
            let Some((name, mjml)) = template_name(&file_name) else {
                continue;
            };
            let display = format!("templates/{file_name}");
            let text = match sources.read(&display) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(TemplateError {
                        file: display,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let compiled = Self::compile(&parser, &text, mjml);
            files.push((display.clone(), text));
            match compiled {
                Ok(t) => {
                    if out.by_name.insert(name.to_string(), t).is_some() {
                        errors.push(TemplateError {
                            file: display,
                            message: format!("templates/{name}.liquid and templates/{name}.mjml both exist; keep one"),
                        });
                    }
                }
                Err(message) => errors.push(TemplateError {
                    file: display,
                    message,
                }),
            }
        }
        for (name, file, part) in html_parts {
            match out.by_name.get_mut(&name) {
                Some(t) if !t.mjml => t.html_part = Some(part),
                Some(_) => errors.push(TemplateError {
                    file,
                    message: format!(
                        "templates/{name}.mjml already makes the HTML part; keep one of the two"
                    ),
                }),
                None => errors.push(TemplateError {
                    file,
                    message: format!(
                        "an HTML part needs templates/{name}.liquid beside it (its front matter and text part)"
                    ),
                }),
            }
        }
        (out, errors, files)
    }

    fn compile(parser: &liquid::Parser, text: &str, mjml: bool) -> Result<Template, String> {
        let (fields, body) = herald_dsl::template::split_front_matter(text)?;
        if mjml {
            mrml::parse(body).map_err(|e| format!("MJML: {e}"))?;
        }
        let topic = fields
            .iter()
            .find(|(k, _)| k == "topic")
            .map(|(_, v)| v.trim().to_string())
            .filter(|t| !t.is_empty());
        let mut compiled = Vec::new();
        for (k, v) in fields {
            let t = parser
                .parse(&v)
                .map_err(|e| format!("front matter `{k}`: {e}"))?;
            compiled.push((k, t));
        }
        let body = parser.parse(body).map_err(|e| e.to_string())?;
        Ok(Template {
            fields: compiled,
            body,
            mjml,
            topic,
            html_part: None,
        })
    }

    /// Names as `send` refers to them (`welcome`, `welcome.sms`).
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.by_name.keys()
    }

    /// Does `send(channel, name)` find a template?
    pub fn resolves(&self, name: &str, channel: &str) -> bool {
        self.by_name.contains_key(&format!("{name}.{channel}")) || self.by_name.contains_key(name)
    }

    /// The `topic` the template `send(channel, name)` finds names in its front matter.
    pub fn topic(&self, name: &str, channel: &str) -> Option<&str> {
        self.by_name
            .get(&format!("{name}.{channel}"))
            .or_else(|| self.by_name.get(name))
            .and_then(|t| t.topic.as_deref())
    }

    /// Render `name` for `channel` with `globals` (an object: `contact`, `trigger`, `vars`, …).
    pub fn render(&self, name: &str, channel: &str, globals: &Value) -> Result<Rendered, String> {
        let t = self
            .by_name
            .get(&format!("{name}.{channel}"))
            .or_else(|| self.by_name.get(name))
            .ok_or_else(|| {
                format!("no template templates/{name}.liquid or templates/{name}.{channel}.liquid")
            })?;
        let globals_json = globals;
        let globals = lenient::Obj::from_json(globals);
        let mut fields = Map::new();
        let mut subject = None;
        for (k, tpl) in &t.fields {
            let v = tpl
                .render(&globals)
                .map_err(|e| format!("template {name}, field `{k}`: {}", flatten(&e)))?;
            if k == "subject" {
                subject = Some(v.clone());
            }
            fields.insert(k.clone(), Value::String(v));
        }
        // HTML sees every value escaped (`raw` opts out); plain text sees it as it is.
        let html_globals;
        let body_globals = if t.mjml {
            html_globals = lenient::Obj::from_json(&html_escaped(globals_json));
            &html_globals
        } else {
            &globals
        };
        let body = t
            .body
            .render(body_globals)
            .map_err(|e| format!("template {name}: {}", flatten(&e)))?;
        // Files end with a newline; the message does not.
        let body = body
            .strip_suffix('\n')
            .map(|b| b.strip_suffix('\r').unwrap_or(b))
            .unwrap_or(&body)
            .to_string();
        if t.mjml {
            let body = neutralise_url_attributes(&body);
            let parsed = mrml::parse(&body)
                .map_err(|e| format!("template {name}: MJML after Liquid: {e}"))?;
            let options = mrml::prelude::render::RenderOptions {
                disable_comments: true,
                social_icon_origin: None,
                fonts: Default::default(),
            };
            let html = parsed
                .element
                .render(&options)
                .map_err(|e| format!("template {name}: MJML: {e}"))?;
            return Ok(Rendered {
                subject,
                body: html_to_text(&html),
                html: Some(html),
                fields,
            });
        }
        let html = match &t.html_part {
            Some(part) => {
                let escaped = lenient::Obj::from_json(&html_escaped(globals_json));
                let html = part
                    .render(&escaped)
                    .map_err(|e| format!("template {name}, HTML part: {}", flatten(&e)))?;
                Some(html)
            }
            None => None,
        };
        Ok(Rendered {
            subject,
            body,
            html,
            fields,
        })
    }
}

/// Top-level names a template can read.
pub const TEMPLATE_ROOTS: [&str; 7] = [
    "contact", "trigger", "event", "vars", "workflow", "variants", "message",
];

/// Variables a template reads that nothing can ever set: a misspelt `contcat.first_name`
/// renders as nothing for every contact. Returns `(line, name)` pairs.
pub fn unknown_variables(text: &str) -> Vec<(usize, String)> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut defined: Vec<String> = Vec::new();
    let mut used: Vec<(usize, String)> = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let (is_output, inner_start) = match after.chars().next() {
            Some('{') => (true, open + 2),
            Some('%') => (false, open + 2),
            _ => {
                offset += open + 1;
                rest = &rest[open + 1..];
                continue;
            }
        };
        let close = if is_output { "}}" } else { "%}" };
        let Some(end) = rest[inner_start..].find(close) else {
            break;
        };
        let inner = rest[inner_start..inner_start + end]
            .trim_matches(|c: char| c == '-' || c.is_whitespace());
        let line = text[..offset + open].matches('\n').count() + 1;
        if is_output {
            used.push((line, ident(inner)));
        } else {
            let mut words = inner.split_whitespace();
            match words.next() {
                Some("if" | "unless" | "elsif" | "case") => {
                    if let Some(w) = words.next() {
                        used.push((line, ident(w)));
                    }
                }
                Some("for") => {
                    if let (Some(var), Some("in"), Some(src)) =
                        (words.next(), words.next(), words.next())
                    {
                        defined.push(var.to_string());
                        used.push((line, ident(src)));
                    }
                }
                Some("assign" | "capture" | "increment" | "decrement") => {
                    if let Some(var) = words.next() {
                        defined.push(ident(var));
                    }
                }
                _ => {}
            }
        }
        offset += inner_start + end + 2;
        rest = &rest[inner_start + end + 2..];
    }
    used.into_iter()
        .filter(|(_, n)| {
            !n.is_empty()
                && !n.chars().next().is_some_and(|c| c.is_ascii_digit())
                && !matches!(
                    n.as_str(),
                    "true" | "false" | "nil" | "empty" | "blank" | "forloop"
                )
                && !TEMPLATE_ROOTS.contains(&n.as_str())
                && !defined.contains(n)
        })
        .collect()
}

/// The template name and whether it is MJML, for a file of `templates/` (`None`: not a
/// template).
pub fn template_name(file_name: &str) -> Option<(&str, bool)> {
    match (
        file_name.strip_suffix(".liquid"),
        file_name.strip_suffix(".mjml"),
    ) {
        (Some(n), _) => Some((n, false)),
        (None, Some(n)) => Some((n, true)),
        _ => None,
    }
}

/// The template an HTML part (`NAME.html`, `NAME.CHANNEL.html`) belongs to.
pub fn html_part_name(file_name: &str) -> Option<&str> {
    file_name.strip_suffix(".html").filter(|n| !n.is_empty())
}

/// A template variable that can never be set: the file, the 1-based line, the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariable {
    /// File, relative to the project.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// The variable's root name.
    pub name: String,
}

impl std::fmt::Display for UnknownVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` can never be set; templates read {}",
            self.name,
            TEMPLATE_ROOTS.join(", ")
        )
    }
}

/// Lint one template (`file`, relative to the project) for variables that can never be set.
pub fn lint(file: &str, text: &str) -> Vec<UnknownVariable> {
    unknown_variables(text)
        .into_iter()
        .map(|(line, name)| UnknownVariable {
            file: file.to_string(),
            line,
            name,
        })
        .collect()
}

/// The plain-text part of an HTML email: block elements become line breaks, links keep their
/// address, tags and styles go, entities are decoded, blank runs collapse.
pub fn html_to_text(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::new();
    let mut i = 0;
    let bytes = html.as_bytes();
    while i < html.len() {
        if bytes[i] == b'<' {
            let end = html[i..].find('>').map(|e| i + e + 1).unwrap_or(html.len());
            let tag = &lower[i..end];
            let name: String = tag
                .trim_start_matches(['<', '/'])
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if !tag.starts_with("</")
                && matches!(name.as_str(), "style" | "head" | "script" | "title")
            {
                let close = format!("</{name}");
                i = lower[end..]
                    .find(&close)
                    .map(|c| end + c)
                    .unwrap_or(html.len());
                continue;
            }
            if name == "a" && !tag.starts_with("</") {
                if let Some(h) = tag.find("href=\"") {
                    let start = i + h + 6;
                    if let Some(q) = html[start..].find('"') {
                        out.push_str(&format!("[{}] ", &html[start..start + q]));
                    }
                }
            }
            if matches!(
                name.as_str(),
                "br" | "p" | "div" | "tr" | "h1" | "h2" | "h3" | "h4" | "li" | "table"
            ) {
                out.push('\n');
            }
            i = end;
        } else {
            let next = html[i..].find('<').map(|n| i + n).unwrap_or(html.len());
            out.push_str(&html[i..next]);
            i = next;
        }
    }
    let decoded = html_escape::decode_html_entities(&out.replace("&nbsp;", " ")).into_owned();
    let mut lines: Vec<String> = Vec::new();
    for line in decoded.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines.join("\n")
}

/// Template data where a missing key reads as `nil` instead of failing the render, so that
/// `{{ contact.first_name | default: "there" }}` works for contacts without a first name.
mod lenient {
    use std::collections::BTreeMap;
    use std::fmt;

    use liquid::model::{DisplayCow, KStringCow, ObjectView, State, Value, ValueView};

    static NIL: Value = Value::Nil;

    #[derive(Debug)]
    pub enum Node {
        Plain(Value),
        Obj(Obj),
    }

    #[derive(Debug)]
    pub struct Obj {
        children: BTreeMap<String, Node>,
        value: Value,
    }

    impl Obj {
        pub fn from_json(v: &serde_json::Value) -> Obj {
            let mut children = BTreeMap::new();
            if let Some(map) = v.as_object() {
                for (k, v) in map {
                    let node = if v.is_object() {
                        Node::Obj(Obj::from_json(v))
                    } else {
                        Node::Plain(liquid::model::to_value(v).unwrap_or(Value::Nil))
                    };
                    children.insert(k.clone(), node);
                }
            }
            Obj {
                children,
                value: liquid::model::to_value(v).unwrap_or(Value::Nil),
            }
        }
    }

    impl Node {
        fn view(&self) -> &dyn ValueView {
            match self {
                Node::Plain(v) => v,
                Node::Obj(o) => o,
            }
        }
    }

    impl ValueView for Obj {
        fn as_debug(&self) -> &dyn fmt::Debug {
            self
        }
        fn render(&self) -> DisplayCow<'_> {
            self.value.render()
        }
        fn source(&self) -> DisplayCow<'_> {
            self.value.source()
        }
        fn type_name(&self) -> &'static str {
            "object"
        }
        fn query_state(&self, state: State) -> bool {
            self.value.query_state(state)
        }
        fn to_kstr(&self) -> KStringCow<'_> {
            self.value.to_kstr()
        }
        fn to_value(&self) -> Value {
            self.value.clone()
        }
        fn as_object(&self) -> Option<&dyn ObjectView> {
            Some(self)
        }
    }

    impl ObjectView for Obj {
        fn as_value(&self) -> &dyn ValueView {
            self
        }
        fn size(&self) -> i64 {
            self.children.len() as i64
        }
        fn keys<'k>(&'k self) -> Box<dyn Iterator<Item = KStringCow<'k>> + 'k> {
            Box::new(
                self.children
                    .keys()
                    .map(|k| KStringCow::from_ref(k.as_str())),
            )
        }
        fn values<'k>(&'k self) -> Box<dyn Iterator<Item = &'k dyn ValueView> + 'k> {
            Box::new(self.children.values().map(Node::view))
        }
        fn iter<'k>(
            &'k self,
        ) -> Box<dyn Iterator<Item = (KStringCow<'k>, &'k dyn ValueView)> + 'k> {
            Box::new(
                self.children
                    .iter()
                    .map(|(k, v)| (KStringCow::from_ref(k.as_str()), v.view())),
            )
        }
        fn contains_key(&self, _index: &str) -> bool {
            true
        }
        fn get<'s>(&'s self, index: &str) -> Option<&'s dyn ValueView> {
            Some(self.children.get(index).map(Node::view).unwrap_or(&NIL))
        }
    }
}

fn flatten(e: &liquid::Error) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::DiskSources;

    #[test]
    fn values_in_an_mjml_template_are_escaped_and_unsafe_urls_neutralised() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(
            dir.path().join("templates/news.mjml"),
            "---\nsubject: \"News for {{ contact.first_name }}\"\n---\n<mjml><mj-body><mj-section><mj-column>\
             <mj-text>Hi {{ contact.first_name }}! {{ contact.first_name | escape }} \
             <a href=\"{{ contact.site }}\">your site</a> {{ contact.bio | raw }}</mj-text>\
             <mj-button href=\"{{ contact.site }}\">Go</mj-button>\
             <mj-image src=\"https://img.example/{{ contact.id }}.png\"></mj-image>\
             </mj-column></mj-section></mj-body></mjml>\n",
        )
        .unwrap();
        let (t, errors) = Templates::load(&DiskSources::new(dir.path()));
        assert!(errors.is_empty(), "{errors:?}");
        let globals = serde_json::json!({"contact": {
            "first_name": "<a href=\"https://evil.example\">x</a><img src=\"https://track.example/p.gif\">",
            "site": " JavaScript:alert(1)",
            "bio": "<b>bold</b>",
            "id": "c1",
        }});
        let r = t.render("news", "email", &globals).unwrap();
        let html = r.html.unwrap();
        assert!(!html.contains("<a href=\"https://evil.example\""), "{html}");
        assert!(!html.contains("<img src=\"https://track.example"), "{html}");
        assert!(
            html.contains("&lt;a href="),
            "the value shows as text: {html}"
        );
        assert!(
            !html.contains("&amp;lt;"),
            "escape on an escaped value does not escape it twice: {html}"
        );
        assert!(!html.to_ascii_lowercase().contains("javascript:"), "{html}");
        assert!(html.contains("<b>bold</b>"), "raw opts out: {html}");
        assert!(html.contains("https://img.example/c1.png"), "{html}");
        // The subject is text, not HTML: the value as it is.
        assert_eq!(
            r.subject.as_deref(),
            Some("News for <a href=\"https://evil.example\">x</a><img src=\"https://track.example/p.gif\">")
        );
        // The text part shows the value as the text it is.
        assert!(
            r.body
                .starts_with("Hi <a href=\"https://evil.example\">x</a><img"),
            "{}",
            r.body
        );
    }

    #[test]
    fn url_attributes_keep_safe_schemes_and_lose_dangerous_ones() {
        let html = "<a href=\"https://a.example/?q=1\">a</a> <a href='mailto:x@y'>m</a> \
                    <a href=\"java&#115;cript:x\">j</a> <img src=data:text/html,hi> \
                    <img src=\"data:image/png;base64,AA==\"> <a class=\"href\" href=\"/rel\">r</a> é";
        let out = neutralise_url_attributes(html);
        assert_eq!(
            out,
            "<a href=\"https://a.example/?q=1\">a</a> <a href='mailto:x@y'>m</a> \
             <a href=\"#\">j</a> <img src=#> \
             <img src=\"data:image/png;base64,AA==\"> <a class=\"href\" href=\"/rel\">r</a> é"
        );
    }

    #[test]
    fn front_matter_and_body_render_with_contact_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(
            dir.path().join("templates/welcome.liquid"),
            "---\nsubject: \"Welcome, {{ contact.first_name }}!\"\nfrom: news@example.test\n---\nHi {{ contact.first_name }}, plan {{ vars.plan }}.\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("templates/welcome.sms.liquid"),
            "Hi {{ contact.first_name }}",
        )
        .unwrap();
        let (t, errors) = Templates::load(&DiskSources::new(dir.path()));
        assert!(errors.is_empty(), "{errors:?}");
        let globals =
            serde_json::json!({"contact": {"first_name": "Ada"}, "vars": {"plan": "pro"}});
        let r = t.render("welcome", "email", &globals).unwrap();
        assert_eq!(r.subject.as_deref(), Some("Welcome, Ada!"));
        assert_eq!(r.body, "Hi Ada, plan pro.");
        assert_eq!(r.fields["from"], "news@example.test");
        assert_eq!(t.render("welcome", "sms", &globals).unwrap().body, "Hi Ada");
        assert!(t
            .render("missing", "sms", &globals)
            .unwrap_err()
            .contains("no template"));
        std::fs::write(
            dir.path().join("templates/hello.liquid"),
            "Hi {{ contact.first_name | default: \"there\" }}{{ trigger.x }}",
        )
        .unwrap();
        let (t, _) = Templates::load(&DiskSources::new(dir.path()));
        let r = t
            .render(
                "hello",
                "email",
                &serde_json::json!({"contact": {}, "trigger": {}}),
            )
            .unwrap();
        assert_eq!(r.body, "Hi there");
    }

    #[test]
    fn variables_that_can_never_be_set_are_found() {
        let t = "Hi {{ contcat.first_name }}\n{% for item in vars.items %}{{ item }}{% endfor %}\n{% if cart %}x{% endif %}{% assign n = 1 %}{{ n }}{{ contact.x | default: 'y' }}";
        assert_eq!(
            unknown_variables(t),
            vec![(1, "contcat".to_string()), (3, "cart".to_string())]
        );
    }

    #[test]
    fn broken_templates_are_reported_with_their_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/bad.liquid"), "{% if %}").unwrap();
        let (_, errors) = Templates::load(&DiskSources::new(dir.path()));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, "templates/bad.liquid");
    }
}

/// `local_date`: format a timestamp (milliseconds or RFC 3339) in a timezone and locale.
///
/// `{{ trigger.timestamp | local_date: "%A %e %B, %H:%M", contact.timezone, contact.locale }}`
/// renders `Tuesday 1 December, 09:30` for `Europe/London` and `mardi 1 décembre, 10:30` for
/// `Europe/Paris` with locale `fr_FR`. Unknown or missing timezones fall back to UTC, unknown
/// locales to English.
/// Filters for HTML templates.
mod html {
    use liquid_core::{
        Display_filter, Filter, FilterReflection, ParseFilter, Result, Runtime, Value, ValueView,
    };

    /// `raw`: a value as it is, not escaped, in an HTML template (for HTML a trusted attribute
    /// holds).
    #[derive(Clone, ParseFilter, FilterReflection)]
    #[filter(
        name = "raw",
        description = "Inserts the value unescaped into an HTML template. Only for trusted HTML.",
        parsed(RawFilter)
    )]
    pub struct Raw;

    #[derive(Debug, Default, Display_filter)]
    #[name = "raw"]
    struct RawFilter;

    impl Filter for RawFilter {
        fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> Result<Value> {
            if input.is_nil() {
                return Ok(Value::Nil);
            }
            let text = input.to_kstr();
            Ok(Value::scalar(
                html_escape::decode_html_entities(text.as_str()).into_owned(),
            ))
        }
    }

    /// `escape`, idempotent: escapes what is not escaped yet.
    #[derive(Clone, ParseFilter, FilterReflection)]
    #[filter(
        name = "escape",
        description = "Escapes HTML special characters; a value already escaped stays as it is.",
        parsed(EscapeOnceFilter)
    )]
    pub struct EscapeOnce;

    #[derive(Debug, Default, Display_filter)]
    #[name = "escape"]
    struct EscapeOnceFilter;

    impl Filter for EscapeOnceFilter {
        fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> Result<Value> {
            if input.is_nil() {
                return Ok(Value::Nil);
            }
            let text = input.to_kstr();
            let plain = html_escape::decode_html_entities(text.as_str());
            Ok(Value::scalar(html_escape::encode_safe(&plain).into_owned()))
        }
    }
}

mod local_date {
    use chrono::{TimeZone, Utc};
    use liquid_core::{
        Display_filter, Expression, Filter, FilterParameters, FilterReflection,
        FromFilterParameters, ParseFilter, Result, Runtime, Value, ValueView,
    };

    #[derive(Debug, FilterParameters)]
    struct LocalDateArgs {
        #[parameter(description = "strftime-style format.", arg_type = "str")]
        format: Expression,
        #[parameter(description = "IANA timezone such as Europe/Paris.", arg_type = "any")]
        timezone: Option<Expression>,
        #[parameter(description = "Locale such as fr_FR.", arg_type = "any")]
        locale: Option<Expression>,
    }

    #[derive(Clone, ParseFilter, FilterReflection)]
    #[filter(
        name = "local_date",
        description = "Formats a timestamp in the contact's timezone and locale.",
        parameters(LocalDateArgs),
        parsed(LocalDateFilter)
    )]
    pub struct LocalDate;

    #[derive(Debug, FromFilterParameters, Display_filter)]
    #[name = "local_date"]
    struct LocalDateFilter {
        #[parameters]
        args: LocalDateArgs,
    }

    fn text(v: Option<liquid_core::model::ValueCow<'_>>) -> Option<String> {
        v.filter(|v| !v.as_view().is_nil())
            .map(|v| v.as_view().to_kstr().to_string())
    }

    impl Filter for LocalDateFilter {
        fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> Result<Value> {
            let args = self.args.evaluate(runtime)?;
            let ms = input.as_scalar().and_then(|s| {
                s.to_integer()
                    .or_else(|| herald_dsl::engine::parse_rfc3339_ms(s.to_kstr().as_str()))
            });
            let Some(ms) = ms else {
                return Ok(Value::Nil);
            };
            let tz: chrono_tz::Tz = text(args.timezone)
                .and_then(|t| t.parse().ok())
                .unwrap_or(chrono_tz::UTC);
            let locale = text(args.locale)
                .and_then(|l| chrono::Locale::try_from(l.replace('-', "_").as_str()).ok())
                .unwrap_or(chrono::Locale::en_US);
            let Some(dt) = Utc.timestamp_millis_opt(ms).single() else {
                return Ok(Value::Nil);
            };
            let local = dt.with_timezone(&tz);
            Ok(Value::scalar(
                local
                    .format_localized(args.format.as_str(), locale)
                    .to_string(),
            ))
        }
    }
}
