//! `allow_if`: route conditions in the Common Expression Language, compiled when the config
//! loads and evaluated on the request path after the token check.
//!
//! The expressions see `claims`, `scopes`, `client`, `subject`, `request` (`method`, `path`,
//! `query`, `headers`, `host`, `params`), `connection` (`client_ip`, `tls`,
//! `client_certificate_thumbprint`), `route` (`name`) and `now`. Loading checks more than CEL's
//! parser does: every name must be one of those (and `request.params.x` one of the route's
//! `{x}` segments), every function a standard one, and operands of a known type must fit their
//! operator (`request.method + 1`, `scopes.startsWith('a')`); the result must be able to be a
//! bool. Claims are typed at run time only (`dyn`), so `claims.n + 1` with a string claim is a
//! runtime error, which refuses (`policy_error`), never allows.
//!
//! Bounds: an expression is at most [`MAX_LEN`] bytes, the parser's nesting depth is capped, and
//! comprehensions (`all`, `exists`, `map`, `filter`) may not nest, so an evaluation is linear in
//! the expression's size times the largest list it iterates, and those lists are the token's
//! (bounded by the token size limit) or the request's headers (bounded by the header limits).
//! CEL has no loops beyond those macros and no recursion.
//!
//! The values a request's evaluation reads are made on demand and borrowed where they can be:
//! the token's claims are converted to CEL once per verified token (and kept with it in the
//! token cache), `request.params.x` and the like are answered without building their map.

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, CelTimestamp,
    CelUInt,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use std::sync::{Arc, LazyLock, OnceLock};

/// The longest expression taken, in bytes.
pub const MAX_LEN: usize = 4096;

static ENV: LazyLock<Arc<cel::Env>> = LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// One `allow_if` expression, compiled.
pub struct Condition {
    /// As written.
    pub source: String,
    program: cel::Program,
    /// The top-level `&&` operands (or the whole), for `explain`: their source text and node.
    parts: Vec<(String, IdedExpr)>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Condition").field(&self.source).finish()
    }
}

/// A route's `allow_if`: every condition must hold.
#[derive(Debug)]
pub struct Policy {
    pub conditions: Vec<Condition>,
}

/// Why an expression was not taken: where in it (1-based line and column) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for CompileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 1 {
            write!(f, "line {} ", self.line)?;
        }
        write!(
            f,
            "column {} of the expression: {}",
            self.column, self.message
        )
    }
}

/// What a policy said of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Condition `index` was false.
    Deny {
        index: usize,
    },
    /// Condition `index` could not be evaluated (a missing claim, a type mismatch): refused.
    Error {
        index: usize,
        message: String,
    },
}

/// The top-level names an expression may use.
const VARIABLES: &[&str] = &[
    "claims",
    "scopes",
    "client",
    "subject",
    "request",
    "connection",
    "route",
    "now",
];

/// The standard functions and methods an expression may call (cel-rust's standard library;
/// operators are checked apart).
const FUNCTIONS: &[&str] = &[
    "size",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "timestamp",
    "duration",
    "type",
    "dyn",
    "getFullYear",
    "getMonth",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

/// The static type of a node, as far as loading can know it.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Bool,
    Int,
    Uint,
    Double,
    Str,
    Bytes,
    Null,
    Timestamp,
    Duration,
    List(Box<Ty>),
    Map(Box<Ty>),
    /// `request`, `connection`, `route`, `request.params`: fields known by name.
    Object(Object),
    /// Only known when it runs (claims and what is read from them).
    Dyn,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Object {
    Request,
    Params,
    Connection,
    Route,
}

impl Ty {
    fn name(&self) -> String {
        match self {
            Ty::Bool => "bool".into(),
            Ty::Int => "int".into(),
            Ty::Uint => "uint".into(),
            Ty::Double => "double".into(),
            Ty::Str => "string".into(),
            Ty::Bytes => "bytes".into(),
            Ty::Null => "null".into(),
            Ty::Timestamp => "timestamp".into(),
            Ty::Duration => "duration".into(),
            Ty::List(t) => format!("list({})", t.name()),
            Ty::Map(t) => format!("map(string, {})", t.name()),
            Ty::Object(Object::Request) => "request".into(),
            Ty::Object(Object::Params) => "request.params".into(),
            Ty::Object(Object::Connection) => "connection".into(),
            Ty::Object(Object::Route) => "route".into(),
            Ty::Dyn => "dyn".into(),
        }
    }

    fn numeric(&self) -> bool {
        matches!(self, Ty::Int | Ty::Uint | Ty::Double)
    }

    /// Could a value of this type be a `t` at run time?
    fn fits(&self, t: &Ty) -> bool {
        self == &Ty::Dyn || t == &Ty::Dyn || self == t
    }
}

fn variable_type(name: &str) -> Option<Ty> {
    Some(match name {
        "claims" => Ty::Map(Box::new(Ty::Dyn)),
        "scopes" => Ty::List(Box::new(Ty::Str)),
        "client" | "subject" => Ty::Str,
        "request" => Ty::Object(Object::Request),
        "connection" => Ty::Object(Object::Connection),
        "route" => Ty::Object(Object::Route),
        "now" => Ty::Timestamp,
        _ => return None,
    })
}

/// A field's name and how to make its type.
type Field = (&'static str, fn() -> Ty);

fn fields(o: Object) -> &'static [Field] {
    match o {
        Object::Request => &[
            ("method", || Ty::Str),
            ("path", || Ty::Str),
            ("query", || Ty::Str),
            ("headers", || Ty::Map(Box::new(Ty::Str))),
            ("host", || Ty::Str),
            ("params", || Ty::Object(Object::Params)),
        ],
        Object::Connection => &[
            ("client_ip", || Ty::Str),
            ("tls", || Ty::Bool),
            ("client_certificate_thumbprint", || Ty::Str),
        ],
        Object::Route => &[("name", || Ty::Str)],
        Object::Params => &[],
    }
}

struct Checker<'a> {
    info: &'a cel::common::ast::SourceInfo,
    params: &'a [String],
    /// Comprehension variables in scope, innermost last.
    locals: Vec<(String, Ty)>,
    comprehensions: usize,
}

type Checked = Result<Ty, (u64, String)>;

impl Checker<'_> {
    fn check(&mut self, e: &IdedExpr) -> Checked {
        let err = |m: String| Err((e.id, m));
        match &e.expr {
            Expr::Literal(l) => Ok(match l {
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::Null => Ty::Null,
                LiteralValue::String(_) => Ty::Str,
                LiteralValue::UInt(_) => Ty::Uint,
            }),
            Expr::Ident(name) => {
                if let Some((_, t)) = self.locals.iter().rev().find(|(n, _)| n == name) {
                    return Ok(t.clone());
                }
                // Type names, for `type(x) == string`.
                const TYPES: &[&str] = &[
                    "int",
                    "uint",
                    "double",
                    "string",
                    "bytes",
                    "bool",
                    "list",
                    "map",
                    "null_type",
                    "type",
                ];
                match variable_type(name) {
                    Some(t) => Ok(t),
                    None if TYPES.contains(&name.as_str()) => Ok(Ty::Dyn),
                    None => err(format!(
                        "unknown variable `{name}` (known: {})",
                        VARIABLES.join(", ")
                    )),
                }
            }
            Expr::Select(s) => {
                let operand = self.check(&s.operand)?;
                let t = self.field(&operand, &s.field).map_err(|m| (e.id, m))?;
                Ok(if s.test { Ty::Bool } else { t })
            }
            Expr::List(l) => {
                let mut elem: Option<Ty> = None;
                for x in &l.elements {
                    let t = self.check(x)?;
                    elem = Some(match elem {
                        Some(prev) if prev == t => prev,
                        Some(_) => Ty::Dyn,
                        None => t,
                    });
                }
                Ok(Ty::List(Box::new(elem.unwrap_or(Ty::Dyn))))
            }
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        self.check(&me.key)?;
                        self.check(&me.value)?;
                    }
                }
                Ok(Ty::Map(Box::new(Ty::Dyn)))
            }
            Expr::Struct(s) => err(format!("no message types here (`{}{{...}}`)", s.type_name)),
            Expr::Unspecified => err("an empty expression".into()),
            Expr::Comprehension(c) => {
                if self.comprehensions > 0 {
                    return err(
                        "comprehensions (all, exists, exists_one, map, filter) may not nest: \
                         their cost would multiply"
                            .into(),
                    );
                }
                let range = self.check(&c.iter_range)?;
                let (first, second) = match &range {
                    Ty::List(t) => (Ty::Int, (**t).clone()),
                    Ty::Map(t) => (Ty::Str, (**t).clone()),
                    Ty::Dyn => (Ty::Dyn, Ty::Dyn),
                    other => {
                        return Err((
                            c.iter_range.id,
                            format!("cannot iterate over a {}", other.name()),
                        ))
                    }
                };
                // One variable: a list's elements or a map's keys; two: index and element, or
                // key and value.
                let one = match (&range, &c.iter_var2) {
                    (Ty::List(_), None) => second.clone(),
                    (Ty::Map(_), None) => first.clone(),
                    _ => first.clone(),
                };
                self.check(&c.accu_init)?;
                self.comprehensions += 1;
                let before = self.locals.len();
                self.locals.push((c.iter_var.clone(), one));
                if let Some(v2) = &c.iter_var2 {
                    self.locals.push((v2.clone(), second));
                }
                self.locals.push((c.accu_var.clone(), Ty::Dyn));
                let out = (|| {
                    self.check(&c.loop_cond)?;
                    self.check(&c.loop_step)?;
                    self.check(&c.result)
                })();
                self.locals.truncate(before);
                self.comprehensions -= 1;
                out.map(|_| Ty::Dyn)
            }
            Expr::Call(call) => {
                let target = match &call.target {
                    Some(t) => Some(self.check(t)?),
                    None => None,
                };
                let mut args = Vec::with_capacity(call.args.len());
                for a in &call.args {
                    args.push(self.check(a)?);
                }
                self.call(&call.func_name, target, &args)
                    .map_err(|m| (e.id, m))
            }
        }
    }

    fn field(&self, operand: &Ty, field: &str) -> Result<Ty, String> {
        match operand {
            Ty::Object(Object::Params) => {
                if self.params.iter().any(|p| p == field) {
                    Ok(Ty::Str)
                } else if self.params.is_empty() {
                    Err(format!(
                        "no path parameter `{field}`: this route's path has none (write one as \
                         a `{{{field}}}` segment)"
                    ))
                } else {
                    Err(format!(
                        "no path parameter `{field}` (this route's: {})",
                        self.params.join(", ")
                    ))
                }
            }
            Ty::Object(o) => match fields(*o).iter().find(|(n, _)| *n == field) {
                Some((_, t)) => Ok(t()),
                None => Err(format!(
                    "{} has no field `{field}` (fields: {})",
                    operand.name(),
                    fields(*o)
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            },
            Ty::Map(t) => Ok((**t).clone()),
            Ty::Dyn => Ok(Ty::Dyn),
            other => Err(format!("`.{field}` on a {}", other.name())),
        }
    }

    fn call(&self, f: &str, target: Option<Ty>, args: &[Ty]) -> Result<Ty, String> {
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Ty::Dyn);
        let both = || (arg(0), arg(1));
        let mismatch = |op: &str, a: &Ty, b: &Ty| {
            Err(format!("`{op}` between a {} and a {}", a.name(), b.name()))
        };
        let comparable = |a: &Ty, b: &Ty| a.fits(b) || (a.numeric() && b.numeric());
        match f {
            "_&&_" | "_||_" | "!_" | "@not_strictly_false" => {
                for a in args {
                    if !a.fits(&Ty::Bool) {
                        return Err(format!("a logical operator on a {}", a.name()));
                    }
                }
                Ok(Ty::Bool)
            }
            "_==_" | "_!=_" => {
                let (a, b) = both();
                let null = a == Ty::Null || b == Ty::Null;
                if comparable(&a, &b) || null {
                    Ok(Ty::Bool)
                } else {
                    mismatch(if f == "_==_" { "==" } else { "!=" }, &a, &b)
                }
            }
            "_<_" | "_<=_" | "_>_" | "_>=_" => {
                let (a, b) = both();
                let ordered = |t: &Ty| {
                    matches!(
                        t,
                        Ty::Int
                            | Ty::Uint
                            | Ty::Double
                            | Ty::Str
                            | Ty::Bytes
                            | Ty::Bool
                            | Ty::Timestamp
                            | Ty::Duration
                            | Ty::Dyn
                    )
                };
                if ordered(&a) && ordered(&b) && comparable(&a, &b) {
                    Ok(Ty::Bool)
                } else {
                    mismatch(f.trim_matches('_'), &a, &b)
                }
            }
            "@in" => match arg(1) {
                Ty::List(t) if !comparable(&arg(0), &t) => mismatch("in", &arg(0), &Ty::List(t)),
                Ty::List(_) | Ty::Map(_) | Ty::Dyn => Ok(Ty::Bool),
                Ty::Object(Object::Params) => Ok(Ty::Bool),
                other => Err(format!(
                    "`in` needs a list or a map, not a {}",
                    other.name()
                )),
            },
            "_+_" => {
                let (a, b) = both();
                match (&a, &b) {
                    (Ty::Dyn, t) | (t, Ty::Dyn) => Ok(match t {
                        Ty::Str | Ty::Bytes | Ty::List(_) => t.clone(),
                        _ => Ty::Dyn,
                    }),
                    (Ty::Timestamp, Ty::Duration) | (Ty::Duration, Ty::Timestamp) => {
                        Ok(Ty::Timestamp)
                    }
                    (Ty::List(_), Ty::List(_)) => Ok(Ty::List(Box::new(Ty::Dyn))),
                    (x, y)
                        if x == y
                            && matches!(
                                x,
                                Ty::Int
                                    | Ty::Uint
                                    | Ty::Double
                                    | Ty::Str
                                    | Ty::Bytes
                                    | Ty::Duration
                            ) =>
                    {
                        Ok(x.clone())
                    }
                    _ => mismatch("+", &a, &b),
                }
            }
            "_-_" => {
                let (a, b) = both();
                match (&a, &b) {
                    (Ty::Dyn, _) | (_, Ty::Dyn) => Ok(Ty::Dyn),
                    (Ty::Timestamp, Ty::Timestamp) => Ok(Ty::Duration),
                    (Ty::Timestamp, Ty::Duration) => Ok(Ty::Timestamp),
                    (x, y) if x == y && (x.numeric() || *x == Ty::Duration) => Ok(x.clone()),
                    _ => mismatch("-", &a, &b),
                }
            }
            "_*_" | "_/_" | "_%_" => {
                let (a, b) = both();
                match (&a, &b) {
                    (Ty::Dyn, _) | (_, Ty::Dyn) => Ok(Ty::Dyn),
                    (x, y) if x == y && x.numeric() => Ok(x.clone()),
                    _ => mismatch(f.trim_matches('_'), &a, &b),
                }
            }
            "-_" => match arg(0) {
                t if t.numeric() || t == Ty::Dyn || t == Ty::Duration => Ok(t),
                t => Err(format!("`-` on a {}", t.name())),
            },
            "_?_:_" => {
                if !arg(0).fits(&Ty::Bool) {
                    return Err(format!("a condition that is a {}", arg(0).name()));
                }
                Ok(if arg(1) == arg(2) { arg(1) } else { Ty::Dyn })
            }
            "_[_]" => match (arg(0), arg(1)) {
                (Ty::List(t), i) if i.fits(&Ty::Int) || i == Ty::Uint => Ok(*t),
                (Ty::List(_), i) => Err(format!("a list indexed by a {}", i.name())),
                (Ty::Map(t), _) => Ok(*t),
                (Ty::Object(Object::Params), k) if k.fits(&Ty::Str) => Ok(Ty::Str),
                (Ty::Dyn, _) => Ok(Ty::Dyn),
                (t, _) => Err(format!("`[]` on a {}", t.name())),
            },
            "size" => {
                let on = target.clone().unwrap_or_else(|| arg(0));
                match on {
                    Ty::Str | Ty::Bytes | Ty::List(_) | Ty::Map(_) | Ty::Dyn => Ok(Ty::Int),
                    t => Err(format!("size() of a {}", t.name())),
                }
            }
            "contains" | "startsWith" | "endsWith" | "matches" => {
                let on = target.clone().unwrap_or_else(|| arg(0));
                if !on.fits(&Ty::Str) {
                    return Err(format!("{f}() on a {}", on.name()));
                }
                let with = if target.is_some() { arg(0) } else { arg(1) };
                if !with.fits(&Ty::Str) {
                    return Err(format!("{f}() with a {}", with.name()));
                }
                Ok(Ty::Bool)
            }
            "int" => Ok(Ty::Int),
            "uint" => Ok(Ty::Uint),
            "double" => Ok(Ty::Double),
            "string" => Ok(Ty::Str),
            "bytes" => Ok(Ty::Bytes),
            "bool" => Ok(Ty::Bool),
            "timestamp" => Ok(Ty::Timestamp),
            "duration" => Ok(Ty::Duration),
            "type" | "dyn" => Ok(Ty::Dyn),
            f if f.starts_with("get") && FUNCTIONS.contains(&f) => match target {
                Some(Ty::Timestamp | Ty::Duration | Ty::Dyn) => Ok(Ty::Int),
                Some(t) => Err(format!("{f}() on a {}", t.name())),
                None => Err(format!("{f}() is a method of a timestamp")),
            },
            f => Err(format!(
                "unknown function `{f}` (standard ones: {})",
                FUNCTIONS.join(", ")
            )),
        }
    }

    /// 1-based line and column of a node in the source.
    fn position(&self, id: u64, source: &str) -> (usize, usize) {
        let offset = self.info.offset_for(id).map_or(0, |(s, _)| s as usize);
        position(source, offset)
    }
}

/// 1-based line and column of a character offset.
fn position(source: &str, offset: usize) -> (usize, usize) {
    let before: String = source.chars().take(offset).collect();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl Condition {
    /// Parses and checks `source`; `params` are the route's path parameters.
    pub fn compile(source: &str, params: &[String]) -> Result<Condition, CompileError> {
        let at = |(line, column): (usize, usize), message: String| CompileError {
            line,
            column,
            message,
        };
        if source.len() > MAX_LEN {
            return Err(at((1, 1), format!("longer than {MAX_LEN} bytes")));
        }
        if source.trim().is_empty() {
            return Err(at((1, 1), "empty".into()));
        }
        let program = ENV.compile(source).map_err(|errors| {
            let first = errors.errors.first();
            let (line, column) = first.map_or((1, 1), |e| {
                (e.pos.0.max(1) as usize, e.pos.1.max(1) as usize)
            });
            let message = first.map_or_else(|| "does not parse".into(), |e| e.msg.clone());
            at((line, column), message)
        })?;
        let info = program.source_info();
        let mut checker = Checker {
            info,
            params,
            locals: Vec::new(),
            comprehensions: 0,
        };
        let root = program.expression();
        match checker.check(root) {
            Err((id, message)) => return Err(at(checker.position(id, source), message)),
            Ok(t) if !t.fits(&Ty::Bool) => {
                return Err(at(
                    (1, 1),
                    format!("gives a {}, where a condition must give a bool", t.name()),
                ))
            }
            Ok(_) => {}
        }
        let mut parts = Vec::new();
        conjuncts(root, &mut |e| {
            let text = info
                .offset_for(e.id)
                .and_then(|_| span_text(source, e, info))
                .unwrap_or_else(|| source.to_owned());
            parts.push((text, e.clone()));
        });
        Ok(Condition {
            source: source.to_owned(),
            program,
            parts,
        })
    }

    /// The top-level `&&` operands with their results, for `explain`.
    pub fn explain(&self, vars: &Vars<'_>) -> Vec<(String, Result<bool, String>)> {
        let mut ctx = cel::Context::with_env(ENV.clone());
        ctx.set_variable_resolver(vars);
        self.parts
            .iter()
            .map(|(text, e)| (text.clone(), outcome(cel::Value::resolve(e, &ctx))))
            .collect()
    }

    fn holds(&self, vars: &Vars<'_>) -> Result<bool, String> {
        let mut ctx = cel::Context::with_env(ENV.clone());
        ctx.set_variable_resolver(vars);
        outcome(self.program.execute(&ctx))
    }
}

fn outcome(r: cel::ResolveResult) -> Result<bool, String> {
    match r {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("gave a {}, not a bool", other.type_of())),
        Err(e) => Err(e.to_string()),
    }
}

/// The operands of a top-level `&&` chain, left to right (the node itself when it is not one).
fn conjuncts<'e>(e: &'e IdedExpr, out: &mut dyn FnMut(&'e IdedExpr)) {
    match &e.expr {
        Expr::Call(c) if c.func_name == "_&&_" && c.target.is_none() => {
            for a in &c.args {
                conjuncts(a, out);
            }
        }
        _ => out(e),
    }
}

/// The source text of a node: from the smallest start to the largest stop among it and its
/// children (a node's own offsets cover its operator only).
fn span_text(source: &str, e: &IdedExpr, info: &cel::common::ast::SourceInfo) -> Option<String> {
    let mut lo = usize::MAX;
    let mut hi = 0usize;
    let mut visit = |id: u64, tail: usize| {
        if let Some((s, t)) = info.offset_for(id) {
            lo = lo.min(s as usize);
            hi = hi.max(t as usize + tail);
        }
    };
    walk(e, &mut visit);
    if lo >= hi {
        return None;
    }
    let text: String = source.chars().skip(lo).take(hi - lo + 1).collect();
    // A node's stop may fall short of a closing quote or bracket: widen to balance them.
    let text = text.trim().to_owned();
    let opens = text.matches('(').count();
    let closes = text.matches(')').count();
    let mut text = text;
    for _ in closes..opens {
        text.push(')');
    }
    Some(text)
}

/// Every node under `e`, with how far its text runs past its recorded stop (a selection's is
/// its `.`, before the field's name).
fn walk(e: &IdedExpr, visit: &mut dyn FnMut(u64, usize)) {
    let tail = match &e.expr {
        Expr::Select(s) => s.field.chars().count(),
        _ => 0,
    };
    visit(e.id, tail);
    match &e.expr {
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                walk(t, visit);
            }
            for a in &c.args {
                walk(a, visit);
            }
        }
        Expr::Select(s) => walk(&s.operand, visit),
        Expr::List(l) => l.elements.iter().for_each(|x| walk(x, visit)),
        Expr::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    walk(&me.key, visit);
                    walk(&me.value, visit);
                }
            }
        }
        Expr::Comprehension(c) => {
            walk(&c.iter_range, visit);
            walk(&c.loop_step, visit);
        }
        _ => {}
    }
}

impl Policy {
    /// Every condition in order; the first that is false or fails decides.
    pub fn evaluate(&self, vars: &Vars<'_>) -> Verdict {
        for (index, c) in self.conditions.iter().enumerate() {
            match c.holds(vars) {
                Ok(true) => {}
                Ok(false) => return Verdict::Deny { index },
                Err(message) => return Verdict::Error { index, message },
            }
        }
        Verdict::Allow
    }
}

/// The token's values as CEL reads them, made once per verified token and cached with it.
#[derive(Default)]
pub struct TokenValues(OnceLock<Token>);

impl std::fmt::Debug for TokenValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenValues")
    }
}

struct Token {
    /// Each claim, for `claims.x`: looked up by name without the map's keys.
    each: std::collections::HashMap<String, Box<dyn Val>>,
    /// `claims` whole (`has(claims.x)`, `claims['x']`, `'x' in claims`), made when first read.
    claims: OnceLock<CelMap<'static>>,
    scopes: Box<dyn Val>,
}

impl Token {
    fn claims(&self) -> &CelMap<'static> {
        self.claims.get_or_init(|| {
            CelMap::from(
                self.each
                    .iter()
                    .map(|(k, v)| (CelMapKey::from(k.clone()), v.clone()))
                    .collect::<std::collections::HashMap<_, _>>(),
            )
        })
    }
}

impl TokenValues {
    fn get(&self, v: &crate::auth::validator::Verified) -> &Token {
        self.0.get_or_init(|| Token {
            each: v.claims.iter().map(|(k, v)| (k.clone(), json(v))).collect(),
            claims: OnceLock::new(),
            scopes: Box::new(CelList::from(
                v.scopes
                    .iter()
                    .map(|s| Box::new(CelString::from(s.clone())) as Box<dyn Val>)
                    .collect::<Vec<_>>(),
            )),
        })
    }
}

fn json_map(m: &serde_json::Map<String, serde_json::Value>) -> CelMap<'static> {
    CelMap::from(
        m.iter()
            .map(|(k, v)| (CelMapKey::from(k.clone()), json(v)))
            .collect::<std::collections::HashMap<_, _>>(),
    )
}

fn json(v: &serde_json::Value) -> Box<dyn Val> {
    use serde_json::Value as J;
    match v {
        J::Null => Box::new(CelNull),
        J::Bool(b) => Box::new(CelBool::from(*b)),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        J::String(s) => Box::new(CelString::from(s.clone())),
        J::Array(a) => Box::new(CelList::from(a.iter().map(json).collect::<Vec<_>>())),
        J::Object(m) => Box::new(json_map(m)),
    }
}

/// What a request shows a policy.
pub struct Input<'a> {
    pub identity: Option<&'a crate::auth::Identity>,
    pub method: &'a str,
    /// Canonical.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub host: Option<&'a str>,
    /// `names[i]` is `values[i]`.
    pub names: &'a [String],
    pub values: Vec<std::borrow::Cow<'a, str>>,
    pub client_ip: Option<std::net::IpAddr>,
    pub tls: bool,
    pub thumbprint: Option<&'a str>,
    pub route: &'a str,
}

/// The variables of one evaluation: each made the first time an expression reads it.
pub struct Vars<'a> {
    input: &'a Input<'a>,
    token: Option<&'a Token>,
    empty_map: CelMap<'static>,
    request: OnceLock<Box<dyn Val + 'a>>,
    params: OnceLock<Box<dyn Val + 'a>>,
    headers: OnceLock<Box<dyn Val + 'a>>,
    connection: OnceLock<Box<dyn Val + 'a>>,
    route: OnceLock<Box<dyn Val + 'a>>,
    now: OnceLock<CelTimestamp>,
}

impl<'a> Vars<'a> {
    pub fn new(input: &'a Input<'a>) -> Vars<'a> {
        Vars {
            input,
            token: input.identity.map(|i| i.0.policy.get(&i.0)),
            empty_map: CelMap::default(),
            request: OnceLock::new(),
            params: OnceLock::new(),
            headers: OnceLock::new(),
            connection: OnceLock::new(),
            route: OnceLock::new(),
            now: OnceLock::new(),
        }
    }

    fn text(&self, s: &'a str) -> Box<dyn Val + 'a> {
        Box::new(CelString::from(s))
    }

    fn map(entries: Vec<(&'a str, Box<dyn Val + 'a>)>) -> Box<dyn Val + 'a> {
        Box::new(CelMap::from(
            entries
                .into_iter()
                .map(|(k, v)| (CelMapKey::from(k), v))
                .collect::<std::collections::HashMap<_, _>>(),
        ))
    }

    fn params(&self) -> Box<dyn Val + 'a> {
        let i = self.input;
        Self::map(
            i.names
                .iter()
                .zip(&i.values)
                .map(|(n, v)| (n.as_str(), self.text(v)))
                .collect(),
        )
    }

    fn headers(&self) -> Box<dyn Val + 'a> {
        let mut out: std::collections::HashMap<CelMapKey<'a>, Box<dyn Val + 'a>> =
            std::collections::HashMap::new();
        for name in self.input.headers.keys() {
            let values: Vec<&str> = self
                .input
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let value: Box<dyn Val + 'a> = match values.as_slice() {
                [one] => self.text(one),
                many => Box::new(CelString::from(many.join(", "))),
            };
            out.insert(CelMapKey::from(name.as_str()), value);
        }
        Box::new(CelMap::from(out))
    }

    fn field(&self, object: &str, field: &str) -> Option<Box<dyn Val + 'a>> {
        let i = self.input;
        Some(match (object, field) {
            ("request", "method") => self.text(i.method),
            ("request", "path") => self.text(i.path),
            ("request", "query") => self.text(i.query.unwrap_or("")),
            ("request", "host") => self.text(i.host.unwrap_or("")),
            ("request", "headers") => self.headers(),
            ("request", "params") => self.params(),
            ("connection", "client_ip") => Box::new(CelString::from(
                i.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            )),
            ("connection", "tls") => Box::new(CelBool::from(i.tls)),
            ("connection", "client_certificate_thumbprint") => {
                self.text(i.thumbprint.unwrap_or(""))
            }
            ("route", "name") => self.text(i.route),
            _ => return None,
        })
    }

    fn object(&self, name: &str) -> Option<Box<dyn Val + 'a>> {
        let names: &[&str] = match name {
            "request" => &["method", "path", "query", "host", "headers", "params"],
            "connection" => &["client_ip", "tls", "client_certificate_thumbprint"],
            "route" => &["name"],
            _ => return None,
        };
        Some(Self::map(
            names
                .iter()
                .filter_map(|f| Some((*f, self.field(name, f)?)))
                .collect(),
        ))
    }
}

impl VariableResolver for Vars<'_> {
    fn resolve<'b>(&'b self, name: &str) -> Option<CowVal<'b, 'b>> {
        fn borrowed<'b>(v: &'b (dyn Val + 'b)) -> Option<CowVal<'b, 'b>> {
            Some(CowVal::Borrowed(v))
        }
        fn owned<'b>(v: Box<dyn Val + 'b>) -> Option<CowVal<'b, 'b>> {
            Some(CowVal::Owned(v))
        }
        match name {
            "claims" => match self.token {
                Some(t) => borrowed(t.claims()),
                None => borrowed(&self.empty_map),
            },
            "scopes" => match self.token {
                Some(t) => borrowed(&*t.scopes),
                None => owned(Box::new(CelList::from(Vec::<Box<dyn Val>>::new()))),
            },
            "subject" | "client" => {
                let p = self.input.identity.map(|i| &i.0.principal);
                let v = match (name, p) {
                    ("subject", Some(p)) => p.subject.as_deref(),
                    (_, Some(p)) => p.client.as_deref(),
                    _ => None,
                };
                owned(self.text(v.unwrap_or("")))
            }
            "now" => borrowed(self.now.get_or_init(|| {
                CelTimestamp::from(chrono::DateTime::<chrono::FixedOffset>::from(
                    chrono::Utc::now(),
                ))
            })),
            "request" => borrowed(&**self.request.get_or_init(|| self.object("request").unwrap())),
            "connection" => borrowed(
                &**self
                    .connection
                    .get_or_init(|| self.object("connection").unwrap()),
            ),
            "route" => borrowed(&**self.route.get_or_init(|| self.object("route").unwrap())),
            "request.params" => borrowed(&**self.params.get_or_init(|| self.params())),
            "request.headers" => borrowed(&**self.headers.get_or_init(|| self.headers())),
            _ => {
                // `claims.x`, `request.params.x`, `request.method`: answered without the map
                // they are part of.
                if let Some(claim) = name.strip_prefix("claims.") {
                    return borrowed(&**self.token?.each.get(claim)?);
                }
                if let Some(p) = name.strip_prefix("request.params.") {
                    let i = self.input.names.iter().position(|n| n == p)?;
                    return owned(self.text(&self.input.values[i]));
                }
                let (object, field) = name.split_once('.')?;
                if field.contains('.') || field == "headers" || field == "params" {
                    return None;
                }
                owned(self.field(object, field)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::validator::{Principal, Verified};
    use crate::auth::Identity;

    fn identity(claims: serde_json::Value, scopes: &[&str]) -> Identity {
        let serde_json::Value::Object(claims) = claims else {
            panic!("claims are an object")
        };
        Identity(Arc::new(Verified {
            principal: Principal::of(&claims),
            claims,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            exp: 0.0,
            issuer: 0,
            key: None,
            ttl: std::time::Duration::from_secs(1),
            token_id: crate::auth::token_id(&crate::auth::sha256("t")),
            token: b"t".as_slice().into(),
            binding: Default::default(),
            policy: Default::default(),
        }))
    }

    fn err(source: &str, params: &[&str]) -> CompileError {
        let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
        Condition::compile(source, &params).expect_err(source)
    }

    #[test]
    fn loading_refuses_what_could_never_run_right() {
        let e = err("claims.tenant == request.params.tenant &&", &["tenant"]);
        assert_eq!((e.line, e.column), (1, 42), "{e}");
        let e = err("claim.tenant == 'a'", &[]);
        assert_eq!((e.line, e.column), (1, 1));
        assert!(e.message.contains("unknown variable `claim`"), "{e}");
        let e = err("claims.t == request.params.tenant", &["org"]);
        assert!(e.message.contains("no path parameter `tenant`"), "{e}");
        assert!(e.message.contains("org"), "{e}");
        let e = err("request.methd == 'GET'", &[]);
        assert!(e.message.contains("request has no field `methd`"), "{e}");
        let e = err("request.method + 1 == 'x'", &[]);
        assert!(e.message.contains("`+` between a string and a int"), "{e}");
        assert_eq!(e.column, 16, "{e}");
        let e = err("request.method == 1", &[]);
        assert!(e.message.contains("between a string and a int"), "{e}");
        let e = err("request.method", &[]);
        assert!(e.message.contains("gives a string"), "{e}");
        let e = err("scopes.startsWith('a')", &[]);
        assert!(e.message.contains("startsWith() on a list(string)"), "{e}");
        let e = err("lower(request.method) == 'get'", &[]);
        assert!(e.message.contains("unknown function `lower`"), "{e}");
        let e = err("claims.groups.all(g, claims.roles.exists(r, r == g))", &[]);
        assert!(e.message.contains("may not nest"), "{e}");
        let e = err("true &&\n  request.nope", &[]);
        assert_eq!((e.line, e.column), (2, 10), "{e}");
        assert!(err(&"a".repeat(MAX_LEN + 1), &[])
            .message
            .contains("longer"));
        // What a typical policy writes loads.
        for ok in [
            "claims.tenant == request.params.tenant && 'admin' in claims.roles",
            "has(claims.email) && claims.email.endsWith('@example.com')",
            "request.headers['x-tenant'] == claims.tenant",
            "now < timestamp('2030-01-01T00:00:00Z') && size(scopes) > 0",
            "claims.roles.exists(r, r.startsWith('adm'))",
            "connection.tls && request.method in ['GET', 'HEAD']",
            "int(claims.level) >= 3 || subject == 'root'",
        ] {
            Condition::compile(ok, &["tenant".into()]).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    fn run(source: &str, input: &Input<'_>) -> Verdict {
        let names: Vec<String> = input.names.to_vec();
        let policy = Policy {
            conditions: vec![Condition::compile(source, &names).unwrap()],
        };
        policy.evaluate(&Vars::new(input))
    }

    #[test]
    fn evaluation_reads_the_token_and_the_request() {
        let id = identity(
            serde_json::json!({"sub": "alice", "tenant": "acme", "roles": ["admin"], "level": 3}),
            &["read"],
        );
        let headers: http::HeaderMap = [(
            http::HeaderName::from_static("x-tenant"),
            http::HeaderValue::from_static("acme"),
        )]
        .into_iter()
        .collect();
        let names = vec!["tenant".to_owned()];
        let input = |tenant: &'static str| Input {
            identity: Some(&id),
            method: "GET",
            path: "/tenants/acme/x",
            query: Some("a=1"),
            headers: &headers,
            host: Some("api.test"),
            names: &names,
            values: vec![tenant.into()],
            client_ip: Some([10, 0, 0, 7].into()),
            tls: false,
            thumbprint: None,
            route: "tenants",
        };
        let typical = "claims.tenant == request.params.tenant && 'admin' in claims.roles";
        assert_eq!(run(typical, &input("acme")), Verdict::Allow);
        assert_eq!(run(typical, &input("other")), Verdict::Deny { index: 0 });
        for (src, want) in [
            ("request.headers['x-tenant'] == claims.tenant", true),
            ("has(claims.roles) && !has(claims.email)", true),
            ("subject == 'alice' && 'read' in scopes", true),
            (
                "connection.client_ip == '10.0.0.7' && !connection.tls",
                true,
            ),
            ("request.query == 'a=1' && request.host == 'api.test'", true),
            ("route.name == 'tenants' && request.method == 'GET'", true),
            (
                "claims.level >= 3 && now > timestamp('2020-01-01T00:00:00Z')",
                true,
            ),
            ("claims.roles.exists(r, r == 'root')", false),
        ] {
            let got = run(src, &input("acme"));
            let expect = if want {
                Verdict::Allow
            } else {
                Verdict::Deny { index: 0 }
            };
            assert_eq!(got, expect, "{src}");
        }
        // A missing claim or a type mismatch at run time refuses.
        for src in [
            "claims.email == 'x'",
            "claims.tenant + 1 == 2",
            "claims.tenant",
        ] {
            match run(src, &input("acme")) {
                Verdict::Error { index: 0, .. } => {}
                other => panic!("{src}: {other:?}"),
            }
        }
        // Explain shows each operand of the top-level `&&`.
        let c = Condition::compile(typical, &names).unwrap();
        let i = input("other");
        let parts = c.explain(&Vars::new(&i));
        assert_eq!(
            parts,
            vec![
                (
                    "claims.tenant == request.params.tenant".to_owned(),
                    Ok(false)
                ),
                ("'admin' in claims.roles".to_owned(), Ok(true)),
            ]
        );
    }

    /// Every function the loader lets through is one cel-rust's standard library runs.
    #[test]
    fn the_allowed_functions_run() {
        let headers = http::HeaderMap::new();
        let input = Input {
            identity: None,
            method: "GET",
            path: "/",
            query: None,
            headers: &headers,
            host: None,
            names: &[],
            values: vec![],
            client_ip: None,
            tls: false,
            thumbprint: None,
            route: "r",
        };
        for src in [
            "size('ab') == 2 && 'abc'.contains('b') && 'abc'.startsWith('a') && 'abc'.endsWith('c')",
            "'abc'.matches('^a') && int('3') == 3 && uint(3) == 3u && double(1) == 1.0",
            "string(1) == '1' && bytes('a') == b'a' && bool('true') && type(1) == int",
            "dyn(1) == 1 && duration('1s') < duration('2s')",
            "timestamp('2024-03-01T10:20:30Z').getFullYear() == 2024",
            "timestamp('2024-03-01T10:20:30Z').getMonth() == 2 && timestamp('2024-03-01T10:20:30Z').getDate() == 1",
            "timestamp('2024-03-01T10:20:30Z').getDayOfMonth() == 0 && timestamp('2024-03-01T10:20:30Z').getDayOfWeek() == 5",
            "timestamp('2024-03-01T10:20:30Z').getDayOfYear() == 60 && timestamp('2024-03-01T10:20:30Z').getHours() == 10",
            "timestamp('2024-03-01T10:20:30Z').getMinutes() == 20 && timestamp('2024-03-01T10:20:30Z').getSeconds() == 30",
            "timestamp('2024-03-01T10:20:30Z').getMilliseconds() == 0",
        ] {
            assert_eq!(run(src, &input), Verdict::Allow, "{src}");
        }
    }
}
