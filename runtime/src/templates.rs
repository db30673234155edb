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
use std::path::Path;

use serde_json::{Map, Value};

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
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The `subject` field, if the template has one.
    pub subject: Option<String>,
    /// The body.
    pub body: String,
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
        .build()
        .expect("the liquid stdlib parser builds")
}

/// Split `---` front matter from the body. Front matter is `key: value` lines.
type FrontMatter = Vec<(String, String)>;

fn split_front_matter(text: &str) -> Result<(FrontMatter, &str), String> {
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return Ok((Vec::new(), text));
    };
    let end = rest
        .find("\n---")
        .ok_or("front matter opened with --- is never closed")?;
    let (head, tail) = rest.split_at(end);
    let body = tail[4..]
        .trim_start_matches(['\r'])
        .strip_prefix('\n')
        .unwrap_or(&tail[4..]);
    let mut fields = Vec::new();
    for (i, line) in head.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("front matter line {} is not `key: value`", i + 2))?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(v);
        fields.push((k.trim().to_string(), v.to_string()));
    }
    Ok((fields, body))
}

impl Templates {
    /// Load every `*.liquid` file of `dir` (missing directory: no templates).
    pub fn load(dir: &Path) -> (Templates, Vec<TemplateError>) {
        let mut out = Templates::default();
        let mut errors = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return (out, errors);
        };
        let parser = parser();
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(name) = file_name.strip_suffix(".liquid") else {
                continue;
            };
            let display = format!("templates/{file_name}");
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(TemplateError {
                        file: display,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            match Self::compile(&parser, &text) {
                Ok(t) => {
                    out.by_name.insert(name.to_string(), t);
                }
                Err(message) => errors.push(TemplateError {
                    file: display,
                    message,
                }),
            }
        }
        (out, errors)
    }

    fn compile(parser: &liquid::Parser, text: &str) -> Result<Template, String> {
        let (fields, body) = split_front_matter(text)?;
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
        Ok(Rendered {
            subject,
            body,
            fields,
        })
    }
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

    #[test]
    fn front_matter_and_body_render_with_contact_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("welcome.liquid"),
            "---\nsubject: \"Welcome, {{ contact.first_name }}!\"\nfrom: news@example.test\n---\nHi {{ contact.first_name }}, plan {{ vars.plan }}.\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("welcome.sms.liquid"),
            "Hi {{ contact.first_name }}",
        )
        .unwrap();
        let (t, errors) = Templates::load(dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        let globals =
            serde_json::json!({"contact": {"first_name": "Ada"}, "vars": {"plan": "pro"}});
        let r = t.render("welcome", "email", &globals).unwrap();
        assert_eq!(r.subject.as_deref(), Some("Welcome, Ada!"));
        assert_eq!(r.body, "Hi Ada, plan pro.\n");
        assert_eq!(r.fields["from"], "news@example.test");
        assert_eq!(t.render("welcome", "sms", &globals).unwrap().body, "Hi Ada");
        assert!(t
            .render("missing", "sms", &globals)
            .unwrap_err()
            .contains("no template"));
        std::fs::write(
            dir.path().join("hello.liquid"),
            "Hi {{ contact.first_name | default: \"there\" }}{{ trigger.x }}",
        )
        .unwrap();
        let (t, _) = Templates::load(dir.path());
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
    fn broken_templates_are_reported_with_their_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.liquid"), "{% if %}").unwrap();
        let (_, errors) = Templates::load(dir.path());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, "templates/bad.liquid");
    }
}
