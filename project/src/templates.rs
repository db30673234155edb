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
        .build()
        .expect("the liquid stdlib parser builds")
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
        for file_name in sources.list("templates") {
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
        (out, errors, files)
    }

    fn compile(parser: &liquid::Parser, text: &str, mjml: bool) -> Result<Template, String> {
        let (fields, body) = herald_dsl::template::split_front_matter(text)?;
        if mjml {
            mrml::parse(body).map_err(|e| format!("MJML: {e}"))?;
        }
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

    /// Render `name` for `channel` with `globals` (an object: `contact`, `trigger`, `vars`, …).
    pub fn render(&self, name: &str, channel: &str, globals: &Value) -> Result<Rendered, String> {
        let t = self
            .by_name
            .get(&format!("{name}.{channel}"))
            .or_else(|| self.by_name.get(name))
            .ok_or_else(|| {
                format!("no template templates/{name}.liquid or templates/{name}.{channel}.liquid")
            })?;
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
        let body = t
            .body
            .render(&globals)
            .map_err(|e| format!("template {name}: {}", flatten(&e)))?;
        // Files end with a newline; the message does not.
        let body = body
            .strip_suffix('\n')
            .map(|b| b.strip_suffix('\r').unwrap_or(b))
            .unwrap_or(&body)
            .to_string();
        if t.mjml {
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
        Ok(Rendered {
            subject,
            body,
            html: None,
            fields,
        })
    }
}

/// Top-level names a template can read.
pub const TEMPLATE_ROOTS: [&str; 6] = [
    "contact", "trigger", "event", "vars", "workflow", "variants",
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
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
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
