//! A fast path for simple segments: `fn matches(contact)` bodies that are one expression of
//! literals, contact attributes, behaviour queries, comparisons, `&&`, `||`, `!`, `+`, `-` and
//! `now()` are compiled to a small tree and evaluated without the script engine.
//!
//! The fast path only answers when it is sure to agree with Rhai: any operation whose operand
//! types it does not handle exactly as Rhai does (mixed integer and float, comparisons with
//! `()`, arrays, maps) gives up, and the caller evaluates the script instead. The queries it
//! makes are the ones the script would make, in the same order, so window expiries are the
//! same either way.

use rhai::{Expr, Stmt, AST};
use serde_json::Value;

use crate::host::{Host, Query, StepCall};
use crate::segment::CountSpec;

/// A compiled `matches` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Native {
    /// A literal.
    Lit(Val),
    /// `count(...)` with literal arguments, and its key.
    Count(CountSpec, String),
    /// `last_seen("event")`.
    LastSeen(String),
    /// `first_seen("event")`.
    FirstSeen(String),
    /// `in_segment("name")`.
    InSegment(String),
    /// `contact.name` / `contact["name"]`.
    Attr(String),
    /// `now()`.
    Now,
    /// `!x`.
    Not(Box<Native>),
    /// `a && b && ...`.
    And(Vec<Native>),
    /// `a || b || ...`.
    Or(Vec<Native>),
    /// `a OP b` for `==`, `!=`, `<`, `<=`, `>`, `>=`, `+`, `-`.
    Op(Op, Box<Native>, Box<Native>),
}

/// Binary operators of the fast path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `+`
    Add,
    /// `-`
    Sub,
}

/// A value of the fast path.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    /// `()`
    Unit,
    /// `true` / `false`
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
}

impl Val {
    /// The value Rhai would see for a JSON value; `None` for arrays and maps.
    fn from_json(v: &Value) -> Option<Val> {
        Some(match v {
            Value::Null => Val::Unit,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Val::Int(i),
                None => Val::Float(n.as_f64()?),
            },
            Value::String(s) => Val::Str(s.clone()),
            _ => return None,
        })
    }
}

/// Compile the body of `fn matches` when it is one expression the fast path covers.
pub fn compile(ast: &AST) -> Option<Native> {
    // A script may define functions that shadow the built-ins the fast path stands in for.
    const BUILT_INS: [&str; 10] = [
        "count",
        "last_seen",
        "first_seen",
        "in_segment",
        "now",
        "seconds",
        "minutes",
        "hours",
        "days",
        "weeks",
    ];
    if ast.iter_functions().any(|f| BUILT_INS.contains(&f.name)) {
        return None;
    }
    let param = ast
        .iter_functions()
        .find(|f| f.name == "matches" && f.params.len() == 1)?
        .params[0]
        .to_string();
    let param = param.as_str();
    // The body's statements: walking an AST of `matches` alone visits them at depth one.
    let only =
        ast.clone_functions_only_filtered(|_, _, _, name, params| name == "matches" && params == 1);
    let mut statements: Vec<Stmt> = Vec::new();
    only.walk(&mut |path: &[rhai::ASTNode]| {
        if let [rhai::ASTNode::Stmt(s)] = path {
            statements.push((*s).clone());
        }
        true
    });
    match statements.as_slice() {
        [Stmt::Expr(e)] => expr(e, param),
        [Stmt::FnCall(call, pos)] => expr(&Expr::FnCall(call.clone(), *pos), param),
        [Stmt::Return(Some(e), ..)] => expr(e, param),
        _ => None,
    }
}

fn literal_str(e: &Expr) -> Option<String> {
    match e {
        Expr::StringConstant(s, _) => Some(s.to_string()),
        _ => None,
    }
}

fn expr(e: &Expr, param: &str) -> Option<Native> {
    Some(match e {
        Expr::BoolConstant(b, _) => Native::Lit(Val::Bool(*b)),
        Expr::IntegerConstant(n, _) => Native::Lit(Val::Int(*n)),
        Expr::FloatConstant(f, _) => Native::Lit(Val::Float(**f)),
        Expr::StringConstant(s, _) => Native::Lit(Val::Str(s.to_string())),
        Expr::Unit(_) => Native::Lit(Val::Unit),
        Expr::And(parts, _) => Native::And(
            parts
                .iter()
                .map(|p| expr(p, param))
                .collect::<Option<_>>()?,
        ),
        Expr::Or(parts, _) => Native::Or(
            parts
                .iter()
                .map(|p| expr(p, param))
                .collect::<Option<_>>()?,
        ),
        Expr::Dot(x, ..) => match (&x.lhs, &x.rhs) {
            (Expr::Variable(v, ..), Expr::Property(p, ..)) if v.1.as_str() == param => {
                Native::Attr(p.2.to_string())
            }
            _ => return None,
        },
        Expr::Index(x, ..) => match (&x.lhs, &x.rhs) {
            (Expr::Variable(v, ..), Expr::StringConstant(s, _)) if v.1.as_str() == param => {
                Native::Attr(s.to_string())
            }
            _ => return None,
        },
        Expr::FnCall(call, _) if call.namespace.is_empty() => {
            let args = call.args.as_slice();
            match (call.name.as_str(), args) {
                ("!", [a]) => Native::Not(Box::new(expr(a, param)?)),
                ("seconds" | "minutes" | "hours" | "days" | "weeks", [_]) => {
                    Native::Lit(Val::Int(crate::segment::literal_window(e)?))
                }
                ("now", []) => Native::Now,
                ("last_seen", [a]) => Native::LastSeen(literal_str(a)?),
                ("first_seen", [a]) => Native::FirstSeen(literal_str(a)?),
                ("in_segment", [a]) => Native::InSegment(literal_str(a)?),
                ("count", _) => {
                    let spec = crate::segment::literal_count(args)?;
                    let key = spec.key();
                    Native::Count(spec, key)
                }
                (name, [a, b]) => {
                    let op = match name {
                        "==" => Op::Eq,
                        "!=" => Op::Ne,
                        "<" => Op::Lt,
                        "<=" => Op::Le,
                        ">" => Op::Gt,
                        ">=" => Op::Ge,
                        "+" => Op::Add,
                        "-" => Op::Sub,
                        _ => return None,
                    };
                    Native::Op(op, Box::new(expr(a, param)?), Box::new(expr(b, param)?))
                }
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// Evaluate a compiled segment with `host`; `None` when the script must decide instead.
pub fn evaluate(n: &Native, host: &mut dyn Host) -> Option<bool> {
    match eval(n, host)? {
        Val::Bool(b) => Some(b),
        _ => None,
    }
}

fn query(host: &mut dyn Host, q: Query) -> Option<Val> {
    Val::from_json(&host.query(q).ok()?)
}

/// `&&` (stops at the first false) or `||` (stops at the first true) over booleans, as Rhai
/// evaluates them; any other value gives up.
fn short_circuit(parts: &[Native], host: &mut dyn Host, stop_at: bool) -> Option<Val> {
    for p in parts {
        match eval(p, host)? {
            Val::Bool(b) if b == stop_at => return Some(Val::Bool(stop_at)),
            Val::Bool(_) => {}
            _ => return None,
        }
    }
    Some(Val::Bool(!stop_at))
}

fn eval(n: &Native, host: &mut dyn Host) -> Option<Val> {
    Some(match n {
        Native::Lit(v) => v.clone(),
        Native::Count(spec, key) => Val::from_json(&host.count_literal(spec, key).ok()?)?,
        Native::LastSeen(e) => query(host, Query::LastSeen { event: e.clone() })?,
        Native::FirstSeen(e) => query(host, Query::FirstSeen { event: e.clone() })?,
        Native::InSegment(s) => query(host, Query::InSegment { segment: s.clone() })?,
        Native::Attr(a) => Val::from_json(&host.contact_attr(a))?,
        Native::Now => Val::from_json(&host.step(StepCall::Now, None).ok()?)?,
        Native::Not(x) => match eval(x, host)? {
            Val::Bool(b) => Val::Bool(!b),
            _ => return None,
        },
        Native::And(parts) => short_circuit(parts, host, false)?,
        Native::Or(parts) => short_circuit(parts, host, true)?,
        Native::Op(op, a, b) => {
            let (a, b) = (eval(a, host)?, eval(b, host)?);
            match (op, a, b) {
                (Op::Add, Val::Int(x), Val::Int(y)) => Val::Int(x.checked_add(y)?),
                (Op::Sub, Val::Int(x), Val::Int(y)) => Val::Int(x.checked_sub(y)?),
                (Op::Add | Op::Sub, ..) => return None,
                (op, Val::Int(x), Val::Int(y)) => Val::Bool(compare(*op, x.cmp(&y))),
                (op, Val::Float(x), Val::Float(y)) => Val::Bool(compare(*op, x.partial_cmp(&y)?)),
                (Op::Eq, Val::Str(x), Val::Str(y)) => Val::Bool(x == y),
                (Op::Ne, Val::Str(x), Val::Str(y)) => Val::Bool(x != y),
                (Op::Eq, Val::Bool(x), Val::Bool(y)) => Val::Bool(x == y),
                (Op::Ne, Val::Bool(x), Val::Bool(y)) => Val::Bool(x != y),
                _ => return None,
            }
        }
    })
}

fn compare(op: Op, o: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => o == Equal,
        Op::Ne => o != Equal,
        Op::Lt => o == Less,
        Op::Le => o != Greater,
        Op::Gt => o == Greater,
        Op::Ge => o != Less,
        Op::Add | Op::Sub => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Limits;
    use crate::host::{with_host, Interrupt};
    use serde_json::json;

    /// A contact with fixed attributes and behaviour; records the queries made.
    #[derive(Clone)]
    struct Fixed {
        attrs: Value,
        counts: i64,
        last: Value,
        member: bool,
        log: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
    }

    impl Host for Fixed {
        fn step(&mut self, call: StepCall, _line: Option<usize>) -> Result<Value, Interrupt> {
            match call {
                StepCall::Now => Ok(json!(1_000_000_000)),
                _ => Err(Interrupt::Fail("not here".into())),
            }
        }
        fn contact_attr(&mut self, key: &str) -> Value {
            self.attrs.get(key).cloned().unwrap_or(Value::Null)
        }
        fn log(&mut self, _message: &str) {}
        fn query(&mut self, q: Query) -> Result<Value, Interrupt> {
            self.log.borrow_mut().push(format!("{q:?}"));
            Ok(match q {
                Query::Count { .. } => json!(self.counts),
                Query::LastSeen { .. } | Query::FirstSeen { .. } => self.last.clone(),
                Query::InSegment { .. } => json!(self.member),
            })
        }
    }

    const BODIES: &[&str] = &[
        r#"count("order", days(30)) >= 3"#,
        r#"count("page", #{ name: "Pricing" }, hours(1)) > 2 && c.plan == "pro""#,
        r#"c.plan != "free" || in_segment("vip")"#,
        r#"!(c.age >= 18)"#,
        r#"c.score > 50.5"#,
        r#"now() - last_seen("order") > days(30)"#,
        r#"last_seen("order") == ()"#,
        r#"c["country"] == "NL" && c.trial"#,
        r#"c.plan"#,
        r#"count("order", days(1)) + count("refund", days(1)) < 2"#,
    ];

    fn hosts() -> Vec<Fixed> {
        let log = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut out = Vec::new();
        for attrs in [
            json!({"plan": "pro", "age": 30, "score": 70.0, "country": "NL", "trial": true}),
            json!({"plan": "free", "age": 12, "score": 50, "country": "BE", "trial": false}),
            json!({"age": "unknown", "trial": "yes"}),
            json!({}),
        ] {
            for (counts, last, member) in [
                (0, Value::Null, false),
                (5, json!(1), true),
                (2, json!(999_999_000), false),
            ] {
                out.push(Fixed {
                    attrs: attrs.clone(),
                    counts,
                    last,
                    member,
                    log: log.clone(),
                });
            }
        }
        out
    }

    #[test]
    fn the_fast_path_agrees_with_the_script_whenever_it_answers() {
        let engine = crate::build_engine(&Limits::default());
        let mut answered = 0;
        for body in BODIES {
            let src = format!("segment(\"s\");\nfn matches(c) {{\n    {body}\n}}\n");
            let (loaded, diags) = crate::check_segment(&engine, "s.rhai", &src, None);
            assert!(diags.is_empty(), "{body}: {diags:?}");
            let loaded = loaded.unwrap();
            let native = compile(&loaded.ast).unwrap_or_else(|| panic!("{body} compiles"));
            for h in hosts() {
                h.log.borrow_mut().clear();
                let (script, _) = with_host(Box::new(h.clone()), || {
                    crate::evaluate_segment(&engine, &loaded.ast, &Limits::default())
                });
                let script_queries = h.log.borrow().clone();
                h.log.borrow_mut().clear();
                let fast = evaluate(&native, &mut h.clone());
                if let Some(b) = fast {
                    answered += 1;
                    assert_eq!(script, Ok(b), "{body} with {:?}", h.attrs);
                    assert_eq!(*h.log.borrow(), script_queries, "{body}: same queries");
                }
            }
        }
        assert!(
            answered > BODIES.len() * 6,
            "the fast path answered {answered} times"
        );
    }

    #[test]
    fn bodies_beyond_one_expression_are_left_to_the_script() {
        let engine = crate::build_engine(&Limits::default());
        for body in [
            "let n = count(\"order\", days(30)); n > 2",
            "helper(c)",
            "count(\"order\", days(c.window)) > 0",
            "c.tags.contains(\"x\")",
        ] {
            let src = format!(
                "segment(\"s\");\nfn helper(x) {{ true }}\nfn matches(c) {{\n    {body}\n}}\n"
            );
            let (loaded, diags) = crate::check_segment(&engine, "s.rhai", &src, None);
            assert!(diags.is_empty(), "{body}: {diags:?}");
            assert_eq!(compile(&loaded.unwrap().ast), None, "{body}");
        }
    }

    #[test]
    fn a_script_that_redefines_a_built_in_is_left_to_the_script() {
        let engine = crate::build_engine(&Limits::default());
        let src = "segment(\"s\");\nfn days(n) { n }\nfn matches(c) {\n    count(\"order\", days(30)) > 2\n}\n";
        let (loaded, diags) = crate::check_segment(&engine, "s.rhai", src, None);
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(compile(&loaded.unwrap().ast), None);
    }
}
