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
    /// The same condition for [`fast`], when it is written only with what that takes.
    fast: Option<fast::Fast>,
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
    /// Some condition may read the client certificate's thumbprint, the host or the path
    /// parameters: each is made for [`Input`] only then (by the source's text, so a string
    /// that names one costs its making, never a wrong answer).
    pub reads_thumbprint: bool,
    pub reads_host: bool,
    pub reads_params: bool,
}

impl Policy {
    pub fn new(conditions: Vec<Condition>) -> Policy {
        let reads = |name: &str| conditions.iter().any(|c| c.source.contains(name));
        let whole = |name: &str| {
            conditions
                .iter()
                .any(|c| whole(c.program.expression(), name))
        };
        Policy {
            reads_thumbprint: reads("client_certificate_thumbprint") || whole("connection"),
            reads_host: reads("host") || whole("request"),
            reads_params: reads("params") || whole("request"),
            conditions,
        }
    }
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

    /// The name with its article: `a string`, `an int`.
    fn a(&self) -> String {
        let n = self.name();
        let article = if n.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {n}")
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
                            format!("cannot iterate over {}", other.a()),
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
            other => Err(format!("`.{field}` on {}", other.a())),
        }
    }

    fn call(&self, f: &str, target: Option<Ty>, args: &[Ty]) -> Result<Ty, String> {
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Ty::Dyn);
        let both = || (arg(0), arg(1));
        let mismatch =
            |op: &str, a: &Ty, b: &Ty| Err(format!("`{op}` between {} and {}", a.a(), b.a()));
        let comparable = |a: &Ty, b: &Ty| a.fits(b) || (a.numeric() && b.numeric());
        match f {
            "_&&_" | "_||_" | "!_" | "@not_strictly_false" => {
                for a in args {
                    if !a.fits(&Ty::Bool) {
                        return Err(format!("a logical operator on {}", a.a()));
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
                t => Err(format!("`-` on {}", t.a())),
            },
            "_?_:_" => {
                if !arg(0).fits(&Ty::Bool) {
                    return Err(format!("a condition that is {}", arg(0).a()));
                }
                Ok(if arg(1) == arg(2) { arg(1) } else { Ty::Dyn })
            }
            "_[_]" => match (arg(0), arg(1)) {
                (Ty::List(t), i) if i.fits(&Ty::Int) || i == Ty::Uint => Ok(*t),
                (Ty::List(_), i) => Err(format!("a list indexed by {}", i.a())),
                (Ty::Map(t), _) => Ok(*t),
                (Ty::Object(Object::Params), k) if k.fits(&Ty::Str) => Ok(Ty::Str),
                (Ty::Dyn, _) => Ok(Ty::Dyn),
                (t, _) => Err(format!("`[]` on {}", t.a())),
            },
            "size" => {
                let on = target.clone().unwrap_or_else(|| arg(0));
                match on {
                    Ty::Str | Ty::Bytes | Ty::List(_) | Ty::Map(_) | Ty::Dyn => Ok(Ty::Int),
                    t => Err(format!("size() of {}", t.a())),
                }
            }
            "contains" | "startsWith" | "endsWith" | "matches" => {
                let on = target.clone().unwrap_or_else(|| arg(0));
                if !on.fits(&Ty::Str) {
                    return Err(format!("{f}() on {}", on.a()));
                }
                let with = if target.is_some() { arg(0) } else { arg(1) };
                if !with.fits(&Ty::Str) {
                    return Err(format!("{f}() with {}", with.a()));
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
                Some(t) => Err(format!("{f}() on {}", t.a())),
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
                    format!("gives {}, where a condition must give a bool", t.a()),
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
            fast: fast::compile(root, params),
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

    /// Does it hold? By the fast form where it can say for sure, else by cel-rust on `vars`
    /// (made on the first need).
    fn holds<'a>(&self, input: &'a Input<'a>, vars: &mut Option<Vars<'a>>) -> Result<bool, String> {
        if let Some(b) = self.fast.as_ref().and_then(|f| fast::truth(f, input)) {
            return Ok(b);
        }
        self.holds_in_cel(vars.get_or_insert_with(|| Vars::new(input)))
    }

    fn holds_in_cel(&self, vars: &Vars<'_>) -> Result<bool, String> {
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

/// Does the variable `name` appear other than as the operand of a field selection (`request`
/// whole, which reads every field)?
fn whole(e: &IdedExpr, name: &str) -> bool {
    let mut found = false;
    let mut visit = |e: &IdedExpr| {
        let mut children: Vec<&IdedExpr> = Vec::new();
        match &e.expr {
            Expr::Call(c) => {
                children.extend(c.target.as_deref());
                children.extend(&c.args);
            }
            Expr::List(l) => children.extend(&l.elements),
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        children.push(&me.key);
                        children.push(&me.value);
                    }
                }
            }
            Expr::Comprehension(c) => {
                children.extend([
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ]);
            }
            _ => {}
        }
        children
            .into_iter()
            .any(|x| matches!(&x.expr, Expr::Ident(n) if n == name))
    };
    fn each(e: &IdedExpr, f: &mut dyn FnMut(&IdedExpr) -> bool, found: &mut bool) {
        if f(e) {
            *found = true;
        }
        match &e.expr {
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    each(t, f, found);
                }
                c.args.iter().for_each(|a| each(a, f, found));
            }
            Expr::Select(s) => each(&s.operand, f, found),
            Expr::List(l) => l.elements.iter().for_each(|x| each(x, f, found)),
            Expr::Map(m) => {
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        each(&me.key, f, found);
                        each(&me.value, f, found);
                    }
                }
            }
            Expr::Comprehension(c) => {
                for x in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    each(x, f, found);
                }
            }
            _ => {}
        }
    }
    // The root itself may be the bare name (a type error, but cheap to say).
    if matches!(&e.expr, Expr::Ident(n) if n == name) {
        return true;
    }
    each(e, &mut visit, &mut found);
    found
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
    pub fn evaluate(&self, input: &Input<'_>) -> Verdict {
        let mut vars = None;
        for (index, c) in self.conditions.iter().enumerate() {
            match c.holds(input, &mut vars) {
                Ok(true) => {}
                Ok(false) => return Verdict::Deny { index },
                Err(message) => return Verdict::Error { index, message },
            }
        }
        Verdict::Allow
    }
}

/// The token's values as policies read them, made once per verified token (on the first
/// policy that reads them) and cached with it: for cel-rust, its claims and scopes as CEL
/// values; for the fast form, its claims in a hash table (a claim looked up in the token's own
/// ordered map costs a string comparison per claim before it, a third of a typical check).
#[derive(Default)]
pub struct TokenValues(OnceLock<Token>, OnceLock<ClaimTable>);

type ClaimTable =
    std::collections::HashMap<Box<str>, serde_json::Value, foldhash::fast::RandomState>;

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
    /// The claim `name`, for the fast form.
    fn claim<'v>(
        &'v self,
        claims: &serde_json::Map<String, serde_json::Value>,
        name: &str,
    ) -> Option<&'v serde_json::Value> {
        let table = self.1.get_or_init(|| {
            claims
                .iter()
                .map(|(k, x)| (k.as_str().into(), x.clone()))
                .collect()
        });
        table.get(name)
    }

    fn get(&self, c: &Caller<'_>) -> &Token {
        self.0.get_or_init(|| Token {
            each: c.claims.iter().map(|(k, v)| (k.clone(), json(v))).collect(),
            claims: OnceLock::new(),
            scopes: Box::new(CelList::from(
                c.scopes
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
    /// The verified token, if the request carried one.
    pub caller: Option<Caller<'a>>,
    pub method: &'a str,
    /// Canonical.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
    pub host: Option<&'a str>,
    /// `names[i]` is `values.get(i)`.
    pub names: &'a [String],
    pub values: Values<'a>,
    pub client_ip: Option<std::net::IpAddr>,
    pub tls: bool,
    pub thumbprint: Option<&'a str>,
    pub route: &'a str,
}

/// A verified token as a policy reads it (its claims, scopes, subject and client, and the
/// values policies made of it, kept with it in the token cache).
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub claims: &'a serde_json::Map<String, serde_json::Value>,
    pub scopes: &'a [String],
    pub subject: Option<&'a str>,
    pub client: Option<&'a str>,
    pub memo: &'a TokenValues,
}

/// The path parameters' values, in the route's order; the first four without an allocation.
/// Written out rather than a `SmallVec` (in the tree): that one is invariant over its lifetime,
/// which would make [`Input`] invariant and every borrow of it a fight.
#[derive(Default)]
pub struct Values<'a> {
    first: [std::borrow::Cow<'a, str>; 4],
    rest: Vec<std::borrow::Cow<'a, str>>,
    len: usize,
}

impl<'a> Values<'a> {
    pub fn push(&mut self, v: std::borrow::Cow<'a, str>) {
        match self.first.get_mut(self.len) {
            Some(slot) => *slot = v,
            None => self.rest.push(v),
        }
        self.len += 1;
    }

    pub fn get(&self, n: usize) -> Option<&str> {
        if n >= self.len {
            return None;
        }
        Some(match self.first.get(n) {
            Some(v) => v,
            None => &self.rest[n - self.first.len()],
        })
    }
}

impl<'a> From<Vec<std::borrow::Cow<'a, str>>> for Values<'a> {
    fn from(list: Vec<std::borrow::Cow<'a, str>>) -> Values<'a> {
        let mut out = Values::default();
        for v in list {
            out.push(v);
        }
        out
    }
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
            token: input.caller.as_ref().map(|c| c.memo.get(c)),
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
                .enumerate()
                .filter_map(|(k, n)| Some((n.as_str(), self.text(i.values.get(k)?))))
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
                let c = self.input.caller.as_ref();
                let v = match name {
                    "subject" => c.and_then(|c| c.subject),
                    _ => c.and_then(|c| c.client),
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
                    return owned(self.text(self.input.values.get(i)?));
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

/// The fast form of the conditions most policies are made of: equality and membership of
/// strings, integers and booleans read from the claims, the path parameters, the request line,
/// a header, the subject and the client, joined with `&&`, `||` and `!`. It reads the token's
/// JSON claims and the request directly, where cel-rust's interpreter would take about 4,000
/// instructions a request (qualified names joined into strings, values boxed) for the typical
/// `claims.tenant == request.params.tenant && 'admin' in claims.roles`.
///
/// It only says what it is sure of: a missing claim or header, a value of another type (a
/// float, an object, a number beside a string), anything that could be an error or follow
/// CEL's cross-type rules, leaves the answer to cel-rust, which gives the error or the value.
/// Under `&&` a sure `false` decides (as CEL's commutative `&&` says, whatever the errors
/// beside it), under `||` a sure `true`. The test `fast_agrees_with_cel` holds it to cel-rust
/// on generated expressions and inputs.
mod fast {
    use super::Input;
    use cel::common::ast::{Expr, IdedExpr, LiteralValue};

    #[derive(Debug)]
    pub(super) enum Fast {
        Str(String),
        Int(i64),
        Bool(bool),
        List(Vec<Fast>),
        Claim(String),
        Param(usize),
        Method,
        Path,
        Query,
        Host,
        Subject,
        Client,
        Route,
        Tls,
        Scopes,
        /// A lower-case header name.
        Header(String),
        Eq(Box<Fast>, Box<Fast>),
        Ne(Box<Fast>, Box<Fast>),
        And(Vec<Fast>),
        Or(Vec<Fast>),
        Not(Box<Fast>),
        In(Box<Fast>, Box<Fast>),
    }

    enum V<'a> {
        Str(&'a str),
        Int(i64),
        Bool(bool),
        Null,
        Json(&'a [serde_json::Value]),
        Scopes(&'a [String]),
        Lits(&'a [Fast]),
    }

    pub(super) fn compile(e: &IdedExpr, params: &[String]) -> Option<Fast> {
        let boxed = |e: &IdedExpr| compile(e, params).map(Box::new);
        Some(match &e.expr {
            Expr::Literal(LiteralValue::String(s)) => Fast::Str(s.inner().to_owned()),
            Expr::Literal(LiteralValue::Int(i)) => Fast::Int(*i.inner()),
            Expr::Literal(LiteralValue::Boolean(b)) => Fast::Bool(*b.inner()),
            Expr::Ident(n) if n == "subject" => Fast::Subject,
            Expr::Ident(n) if n == "client" => Fast::Client,
            Expr::Ident(n) if n == "scopes" => Fast::Scopes,
            Expr::List(l) if l.optional_indices.is_empty() => Fast::List(
                l.elements
                    .iter()
                    .map(|x| compile(x, params))
                    .collect::<Option<_>>()?,
            ),
            Expr::Select(s) if !s.test => match (&s.operand.expr, s.field.as_str()) {
                (Expr::Ident(o), f) if o == "claims" => Fast::Claim(f.to_owned()),
                (Expr::Ident(o), f) if o == "request" => match f {
                    "method" => Fast::Method,
                    "path" => Fast::Path,
                    "query" => Fast::Query,
                    "host" => Fast::Host,
                    _ => return None,
                },
                (Expr::Ident(o), "name") if o == "route" => Fast::Route,
                (Expr::Ident(o), "tls") if o == "connection" => Fast::Tls,
                (Expr::Select(inner), f) if is_request(&inner.operand, "params", &inner.field) => {
                    Fast::Param(params.iter().position(|p| p == f)?)
                }
                _ => return None,
            },
            Expr::Call(c) if c.target.is_none() => match (c.func_name.as_str(), &c.args[..]) {
                ("_==_", [a, b]) => Fast::Eq(boxed(a)?, boxed(b)?),
                ("_!=_", [a, b]) => Fast::Ne(boxed(a)?, boxed(b)?),
                ("!_", [a]) => Fast::Not(boxed(a)?),
                ("@in", [a, b]) => Fast::In(boxed(a)?, boxed(b)?),
                ("_&&_" | "_||_", args) => {
                    let list = args
                        .iter()
                        .map(|x| compile(x, params))
                        .collect::<Option<_>>()?;
                    if c.func_name == "_&&_" {
                        Fast::And(list)
                    } else {
                        Fast::Or(list)
                    }
                }
                ("_[_]", [m, k]) => match (&m.expr, &k.expr) {
                    (Expr::Ident(o), Expr::Literal(LiteralValue::String(key))) if o == "claims" => {
                        Fast::Claim(key.inner().to_owned())
                    }
                    // The map's keys are lower-case: another spelling is a missing key in CEL.
                    (Expr::Select(sel), Expr::Literal(LiteralValue::String(key)))
                        if is_request(&sel.operand, "headers", &sel.field)
                            && !key.inner().bytes().any(|b| b.is_ascii_uppercase())
                            && !sel.test =>
                    {
                        Fast::Header(key.inner().to_owned())
                    }
                    _ => return None,
                },
                _ => return None,
            },
            _ => return None,
        })
    }

    fn is_request(operand: &IdedExpr, want: &str, field: &str) -> bool {
        matches!(&operand.expr, Expr::Ident(o) if o == "request") && field == want
    }

    fn json(v: &serde_json::Value) -> Option<V<'_>> {
        use serde_json::Value as J;
        Some(match v {
            J::String(s) => V::Str(s),
            J::Bool(b) => V::Bool(*b),
            J::Number(n) => V::Int(n.as_i64().filter(|_| !n.is_f64())?),
            J::Null => V::Null,
            J::Array(a) => V::Json(a),
            J::Object(_) => return None,
        })
    }

    fn value<'a>(f: &'a Fast, i: &'a Input<'a>) -> Option<V<'a>> {
        Some(match f {
            Fast::Str(s) => V::Str(s),
            Fast::Int(n) => V::Int(*n),
            Fast::Bool(b) => V::Bool(*b),
            Fast::List(l) => V::Lits(l),
            Fast::Claim(c) => {
                let caller = i.caller.as_ref()?;
                json(caller.memo.claim(caller.claims, c)?)?
            }
            Fast::Param(n) => V::Str(i.values.get(*n)?),
            Fast::Method => V::Str(i.method),
            Fast::Path => V::Str(i.path),
            Fast::Query => V::Str(i.query.unwrap_or("")),
            Fast::Host => V::Str(i.host.unwrap_or("")),
            Fast::Subject => V::Str(i.caller.as_ref().and_then(|c| c.subject).unwrap_or("")),
            Fast::Client => V::Str(i.caller.as_ref().and_then(|c| c.client).unwrap_or("")),
            Fast::Route => V::Str(i.route),
            Fast::Tls => V::Bool(i.tls),
            Fast::Scopes => V::Scopes(i.caller.as_ref().map_or(&[][..], |c| c.scopes)),
            Fast::Header(h) => {
                let mut all = i.headers.get_all(h.as_str()).iter();
                let (Some(one), None) = (all.next(), all.next()) else {
                    return None;
                };
                V::Str(one.to_str().ok()?)
            }
            _ => V::Bool(truth(f, i)?),
        })
    }

    /// Equal, not equal, or not sure (types CEL compares by rules kept to cel-rust).
    fn equal(a: &V<'_>, b: &V<'_>) -> Option<bool> {
        Some(match (a, b) {
            (V::Str(x), V::Str(y)) => x == y,
            (V::Int(x), V::Int(y)) => x == y,
            (V::Bool(x), V::Bool(y)) => x == y,
            (V::Null, V::Null) => true,
            _ => return None,
        })
    }

    /// The condition's value where it is sure of it.
    pub(super) fn truth(f: &Fast, i: &Input<'_>) -> Option<bool> {
        match f {
            Fast::Eq(a, b) => equal(&value(a, i)?, &value(b, i)?),
            Fast::Ne(a, b) => equal(&value(a, i)?, &value(b, i)?).map(|e| !e),
            Fast::Not(a) => truth(a, i).map(|b| !b),
            Fast::And(list) | Fast::Or(list) => {
                let decisive = matches!(f, Fast::Or(_));
                let mut unsure = false;
                for x in list {
                    match truth(x, i) {
                        Some(b) if b == decisive => return Some(decisive),
                        Some(_) => {}
                        None => unsure = true,
                    }
                }
                (!unsure).then_some(!decisive)
            }
            Fast::In(x, list) => {
                let x = value(x, i)?;
                let mut found = false;
                let mut each = |item: V<'_>| -> Option<()> {
                    found |= equal(&x, &item)?;
                    Some(())
                };
                match value(list, i)? {
                    V::Json(items) => items.iter().try_for_each(|v| each(json(v)?))?,
                    V::Scopes(items) => items.iter().try_for_each(|s| each(V::Str(s)))?,
                    V::Lits(items) => items.iter().try_for_each(|v| each(value(v, i)?))?,
                    _ => return None,
                }
                Some(found)
            }
            other => match value(other, i)? {
                V::Bool(b) => Some(b),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A verified token's parts, as the token cache holds them.
    struct Token {
        claims: serde_json::Map<String, serde_json::Value>,
        scopes: Vec<String>,
        memo: TokenValues,
    }

    impl Token {
        fn caller(&self) -> Caller<'_> {
            Caller {
                claims: &self.claims,
                scopes: &self.scopes,
                subject: self.claims.get("sub").and_then(|s| s.as_str()),
                client: self.claims.get("client_id").and_then(|s| s.as_str()),
                memo: &self.memo,
            }
        }
    }

    fn identity(claims: serde_json::Value, scopes: &[&str]) -> Token {
        let serde_json::Value::Object(claims) = claims else {
            panic!("claims are an object")
        };
        Token {
            claims,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            memo: TokenValues::default(),
        }
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
        assert!(e.message.contains("`+` between a string and an int"), "{e}");
        assert_eq!(e.column, 16, "{e}");
        let e = err("request.method == 1", &[]);
        assert!(e.message.contains("between a string and an int"), "{e}");
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
        let policy = Policy::new(vec![Condition::compile(source, &names).unwrap()]);
        policy.evaluate(input)
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
            caller: Some(id.caller()),
            method: "GET",
            path: "/tenants/acme/x",
            query: Some("a=1"),
            headers: &headers,
            host: Some("api.test"),
            names: &names,
            values: vec![tenant.into()].into(),
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

    /// What a policy may read decides what a request's input is made with.
    #[test]
    fn what_a_policy_reads() {
        let p = |src: &str| Policy::new(vec![Condition::compile(src, &["t".into()]).unwrap()]);
        let typical = p("claims.x == request.params.t");
        assert!(typical.reads_params && !typical.reads_host && !typical.reads_thumbprint);
        let whole = p("request != null && connection != null");
        assert!(whole.reads_params && whole.reads_host && whole.reads_thumbprint);
        let host = p("request.host == 'a'");
        assert!(host.reads_host && !host.reads_params);
    }

    /// Every function the loader lets through is one cel-rust's standard library runs.
    #[test]
    fn the_allowed_functions_run() {
        let headers = http::HeaderMap::new();
        let input = Input {
            caller: None,
            method: "GET",
            path: "/",
            query: None,
            headers: &headers,
            host: None,
            names: &[],
            values: Values::default(),
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

    /// Where the fast form answers, cel-rust answers the same (and never with an error): random
    /// expressions over what the fast form takes, on random claims and requests.
    mod fast_agrees_with_cel {
        use super::*;
        use proptest::prelude::*;

        fn leaf() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "claims.tenant",
                "claims.roles",
                "claims.n",
                "claims.flag",
                "claims.missing",
                "claims.obj",
                "claims.f",
                "claims['tenant']",
                "request.params.tenant",
                "request.method",
                "request.path",
                "request.query",
                "request.host",
                "request.headers['x-tenant']",
                "request.headers['x-twice']",
                "subject",
                "client",
                "route.name",
                "connection.tls",
                "scopes",
                "'acme'",
                "'admin'",
                "'GET'",
                "3",
                "true",
                "['admin', 'acme']",
                "[1, 'acme']",
            ])
            .prop_map(str::to_owned)
        }

        fn expr() -> impl Strategy<Value = String> {
            let cmp = (leaf(), prop::sample::select(vec!["==", "!=", "in"]), leaf())
                .prop_map(|(a, op, b)| format!("{a} {op} {b}"));
            let atom = prop_oneof![cmp, leaf()];
            atom.prop_recursive(3, 12, 3, |inner| {
                prop_oneof![
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
                    (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) || ({b})")),
                    inner.prop_map(|a| format!("!({a})")),
                ]
            })
        }

        fn claims() -> impl Strategy<Value = serde_json::Value> {
            let s = prop::sample::select(vec!["acme", "admin", "GET", "other"]);
            let v = prop_oneof![
                s.clone().prop_map(|x| serde_json::json!(x)),
                (0i64..5).prop_map(|n| serde_json::json!(n)),
                any::<bool>().prop_map(|b| serde_json::json!(b)),
                Just(serde_json::json!(null)),
                Just(serde_json::json!(1.5)),
                Just(serde_json::json!({"a": 1})),
                prop::collection::vec(s, 0..3).prop_map(|l| serde_json::json!(l)),
                Just(serde_json::json!(["admin", 3])),
            ];
            (prop::collection::vec(v, 6), any::<bool>()).prop_map(|(v, sub)| {
                let mut m = serde_json::Map::new();
                for (k, x) in ["tenant", "roles", "n", "flag", "obj", "f"].iter().zip(v) {
                    m.insert((*k).to_owned(), x);
                }
                if sub {
                    m.insert("sub".into(), serde_json::json!("alice"));
                }
                serde_json::Value::Object(m)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]
            #[test]
            fn on_generated_cases(
                source in expr(),
                claims in claims(),
                tenant in prop::sample::select(vec!["acme", "other"]),
                header in prop::option::of(prop::sample::select(vec!["acme", "x"])),
                tls in any::<bool>(),
            ) {
                let names = vec!["tenant".to_owned()];
                let Ok(c) = Condition::compile(&source, &names) else {
                    return Ok(());
                };
                let id = identity(claims, &["read", "admin"]);
                let mut headers = http::HeaderMap::new();
                if let Some(h) = header {
                    headers.insert("x-tenant", http::HeaderValue::from_static(h));
                }
                headers.append("x-twice", http::HeaderValue::from_static("a"));
                headers.append("x-twice", http::HeaderValue::from_static("b"));
                let input = Input {
                    caller: Some(id.caller()),
                    method: "GET",
                    path: "/t/acme/x",
                    query: None,
                    headers: &headers,
                    host: Some("api.test"),
                    names: &names,
                    values: vec![tenant.into()].into(),
                    client_ip: None,
                    tls,
                    thumbprint: None,
                    route: "acme",
                };
                let slow = c.holds_in_cel(&Vars::new(&input));
                if let Some(quick) = c.fast.as_ref().and_then(|f| fast::truth(f, &input)) {
                    prop_assert_eq!(slow, Ok(quick), "{}", source);
                }
            }
        }

        #[test]
        fn the_typical_condition_takes_the_fast_form() {
            let names = vec!["tenant".to_owned()];
            let c = Condition::compile(
                "claims.tenant == request.params.tenant && 'admin' in claims.roles",
                &names,
            )
            .unwrap();
            let id = identity(
                serde_json::json!({"tenant": "acme", "roles": ["admin"]}),
                &[],
            );
            let headers = http::HeaderMap::new();
            let input = Input {
                caller: Some(id.caller()),
                method: "GET",
                path: "/",
                query: None,
                headers: &headers,
                host: None,
                names: &names,
                values: vec!["acme".into()].into(),
                client_ip: None,
                tls: false,
                thumbprint: None,
                route: "r",
            };
            assert_eq!(fast::truth(c.fast.as_ref().unwrap(), &input), Some(true));
        }
    }
}
