//! Seccomp policies in the minijail syntax (the subset we support), parsed into rules that keep
//! their comment and `file:line` so that audits can say who needs each one.
//!
//! # Syntax
//!
//! ```text
//! # A comment. The comment lines directly above a rule (no blank line between) are its comment.
//! @include common_device.policy         # another file, relative to the policy directory
//! read: 1                               # always allowed
//! fcntl: arg1 == F_GETFD || arg1 == F_DUPFD_CLOEXEC
//! mmap: arg2 in ~PROT_EXEC              # no bit outside the mask: PROT_EXEC is never set
//! statx: arg2 & AT_EMPTY_PATH           # some bit of the mask is set
//! openat: return ENOENT                 # fails with this errno (a name or a number)
//! ```
//!
//! An argument expression is comparisons `argN OP VALUE` (N from 0 to 5) joined by `&&`, which
//! binds tighter, and `||`; there are no parentheses. `OP` is one of:
//!
//! | op | matches when |
//! |---|---|
//! | `==` `!=` `<` `<=` `>` `>=` | the unsigned 64-bit comparison holds |
//! | `&` | `(arg & VALUE) != 0`: at least one bit of `VALUE` is set (minijail's meaning) |
//! | `in` | `(arg & ~VALUE) == 0`: no bit outside `VALUE` is set |
//!
//! `VALUE` is one or more terms joined by `|`, each a decimal or `0x` hexadecimal number or a
//! named constant from [`CONSTANTS`], optionally negated bitwise with `~` (`~PROT_EXEC`).
//! Arguments are compared as 64-bit values, as minijail does on 64-bit architectures.
//!
//! Every syscall may have one rule in the whole policy, across all included files: a second
//! rule for the same syscall is an error naming both places. Unknown syscall names are errors.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

pub use super::policy_names::{constant, errno, syscall_name, syscall_nr, CONSTANTS};
#[cfg(test)]
use super::syscalls_x86_64::SYSCALLS;

/// How deep `@include` may nest.
pub const MAX_INCLUDE_DEPTH: usize = 8;

/// Why a policy could not be loaded, compiled or installed.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A policy file is malformed; the message names the offending token.
    #[error("{location}: {message}")]
    Parse {
        /// Where.
        location: Location,
        /// What is wrong, naming the offending token.
        message: String,
    },
    /// The top-level policy file could not be read.
    #[error("cannot read policy {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// No policy exists for this device.
    #[error("no seccomp policy for device {0:?}")]
    UnknownDevice(String),
    /// A rule could not be turned into BPF.
    #[error("{location}: cannot compile the rule for {syscall:?}")]
    Compile {
        /// Where the rule is.
        location: Location,
        /// Its syscall.
        syscall: String,
        /// The cause.
        #[source]
        source: seccompiler::BackendError,
    },
    /// A rule expands into more BPF alternatives than we accept.
    #[error(
        "{location}: the rule for {syscall:?} expands into {count} alternatives (at most {max})"
    )]
    TooManyAlternatives {
        /// Where the rule is.
        location: Location,
        /// Its syscall.
        syscall: String,
        /// How many it would have been.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The filter as a whole could not be built (too long, for instance).
    #[error("cannot build the seccomp filter")]
    Filter(#[source] seccompiler::BackendError),
    /// no_new_privs could not be set.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] io::Error),
    /// The kernel refused a filter.
    #[error("cannot install seccomp filter {index} of {count}")]
    Install {
        /// Which filter (from 1).
        index: usize,
        /// How many there were.
        count: usize,
        /// The cause.
        #[source]
        source: seccompiler::Error,
    },
}

/// A place in a policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file, as named relative to the policy directory (`block.policy`).
    pub file: String,
    /// The line, from 1.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A parsed policy: every rule of the top-level file and of the files it includes.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The top-level file (`block_device.policy`).
    pub root: String,
    /// The rules, in the order they were read (depth first through `@include`).
    pub rules: Vec<Rule>,
}

/// One rule: what happens when one syscall is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The syscall name.
    pub syscall: String,
    /// Its x86_64 number.
    pub nr: i64,
    /// What the rule does.
    pub action: Action,
    /// The comment lines directly above the rule, without `#`, joined by newlines (empty if none).
    pub comment: String,
    /// Where the rule is.
    pub location: Location,
}

/// What a rule does with its syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `name: 1`: always allowed.
    Allow,
    /// `name: <expression>`: allowed when the expression holds; otherwise the default action.
    AllowIf(Expr),
    /// `name: return ERRNO`: fails with this errno without being executed.
    Errno(u32),
}

/// An argument expression in disjunctive normal form: it holds when every comparison of at
/// least one clause holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expr {
    /// The `||`-separated clauses, each a list of `&&`-joined comparisons.
    pub clauses: Vec<Vec<Comparison>>,
}

/// `argN OP VALUE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Comparison {
    /// The argument index, 0 to 5.
    pub arg: u8,
    /// The operator.
    pub op: Op,
    /// The value (constants resolved).
    pub value: u64,
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<` (unsigned)
    Lt,
    /// `<=` (unsigned)
    Le,
    /// `>` (unsigned)
    Gt,
    /// `>=` (unsigned)
    Ge,
    /// `&`: at least one bit of the value is set in the argument.
    AnyBitSet,
    /// `in`: the argument has no bit outside the value.
    In,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::AnyBitSet => "&",
            Op::In => "in",
        }
    }

    fn from_token(t: &str) -> Option<Op> {
        Some(match t {
            "==" => Op::Eq,
            "!=" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "&" => Op::AnyBitSet,
            "in" => Op::In,
            _ => return None,
        })
    }
}

impl Comparison {
    /// Whether the comparison holds for the argument value `arg`.
    pub fn holds(&self, arg: u64) -> bool {
        let v = self.value;
        match self.op {
            Op::Eq => arg == v,
            Op::Ne => arg != v,
            Op::Lt => arg < v,
            Op::Le => arg <= v,
            Op::Gt => arg > v,
            Op::Ge => arg >= v,
            Op::AnyBitSet => arg & v != 0,
            Op::In => arg & !v == 0,
        }
    }
}

impl Expr {
    /// Whether the expression holds for the six syscall arguments.
    pub fn holds(&self, args: &[u64; 6]) -> bool {
        self.clauses
            .iter()
            .any(|clause| clause.iter().all(|c| c.holds(args[usize::from(c.arg)])))
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "arg{} {} {:#x}", self.arg, self.op.symbol(), self.value)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, clause) in self.clauses.iter().enumerate() {
            if i > 0 {
                f.write_str(" || ")?;
            }
            for (j, c) in clause.iter().enumerate() {
                if j > 0 {
                    f.write_str(" && ")?;
                }
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Allow => f.write_str("1"),
            Action::AllowIf(e) => write!(f, "{e}"),
            Action::Errno(n) => write!(f, "return {n}"),
        }
    }
}

/// What a policy does with one concrete call (for audits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Allowed by this rule.
    Allow(&'a Rule),
    /// Fails with this errno, by this rule.
    Errno(&'a Rule, u32),
    /// Not allowed: the filter's default action (kill, or log in log mode). The rule is the
    /// syscall's rule when its argument expression did not hold.
    Deny(Option<&'a Rule>),
}

impl Policy {
    /// The rule for a syscall name.
    pub fn rule(&self, syscall: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.syscall == syscall)
    }

    /// The rule for a syscall number.
    pub fn rule_by_nr(&self, nr: i64) -> Option<&Rule> {
        self.rules.iter().find(|r| r.nr == nr)
    }

    /// What the compiled filters do with syscall `nr` called with `args`.
    pub fn verdict(&self, nr: i64, args: &[u64; 6]) -> Verdict<'_> {
        match self.rule_by_nr(nr) {
            None => Verdict::Deny(None),
            Some(r) => match &r.action {
                Action::Allow => Verdict::Allow(r),
                Action::Errno(e) => Verdict::Errno(r, *e),
                Action::AllowIf(expr) if expr.holds(args) => Verdict::Allow(r),
                Action::AllowIf(_) => Verdict::Deny(Some(r)),
            },
        }
    }
}

/// Where policy files come from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// Files embedded in the binary, by name.
    Embedded(&'a [(&'a str, &'a str)]),
    /// A directory on disk.
    Dir(&'a Path),
}

impl Source<'_> {
    fn read(&self, name: &str) -> Result<String, io::Error> {
        match self {
            Source::Embedded(files) => files
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, text)| (*text).to_owned())
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound)),
            Source::Dir(dir) => std::fs::read_to_string(dir.join(name)),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        match self {
            Source::Embedded(_) => PathBuf::from(format!("<embedded>/{name}")),
            Source::Dir(dir) => dir.join(name),
        }
    }
}

/// Parses the policy file `root` from `source`, following `@include`s.
pub fn parse(root: &str, source: Source<'_>) -> Result<Policy, PolicyError> {
    let text = source.read(root).map_err(|e| PolicyError::Read {
        path: source.path(root),
        source: e,
    })?;
    let mut p = Parser {
        source,
        rules: Vec::new(),
        stack: vec![root.to_owned()],
    };
    p.file(root, &text)?;
    Ok(Policy {
        root: root.to_owned(),
        rules: p.rules,
    })
}

struct Parser<'a> {
    source: Source<'a>,
    rules: Vec<Rule>,
    /// The chain of files being read, for cycle detection.
    stack: Vec<String>,
}

fn err(file: &str, line: usize, message: String) -> PolicyError {
    PolicyError::Parse {
        location: Location {
            file: file.to_owned(),
            line,
        },
        message,
    }
}

impl Parser<'_> {
    fn file(&mut self, name: &str, text: &str) -> Result<(), PolicyError> {
        let mut comment: Vec<&str> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                comment.clear();
                continue;
            }
            if let Some(c) = trimmed.strip_prefix('#') {
                comment.push(c.trim());
                continue;
            }
            // A trailing comment is allowed and ignored.
            let content = match trimmed.find('#') {
                Some(at) => trimmed[..at].trim_end(),
                None => trimmed,
            };
            let above = std::mem::take(&mut comment);
            if let Some(rest) = content.strip_prefix('@') {
                self.include(name, line, rest)?;
                continue;
            }
            let rule = parse_rule(name, line, content, above.join("\n"))?;
            if let Some(first) = self.rules.iter().find(|r| r.nr == rule.nr) {
                return Err(err(
                    name,
                    line,
                    format!(
                        "duplicate rule for {:?} (first at {})",
                        rule.syscall, first.location
                    ),
                ));
            }
            self.rules.push(rule);
        }
        Ok(())
    }

    fn include(&mut self, from: &str, line: usize, directive: &str) -> Result<(), PolicyError> {
        let mut words = directive.split_whitespace();
        let keyword = words.next().unwrap_or("");
        if keyword != "include" {
            return Err(err(
                from,
                line,
                format!("unknown directive \"@{keyword}\" (only @include is supported)"),
            ));
        }
        let Some(target) = words.next() else {
            return Err(err(from, line, "@include needs a file name".to_owned()));
        };
        if let Some(extra) = words.next() {
            return Err(err(
                from,
                line,
                format!("unexpected {extra:?} after @include {target:?}"),
            ));
        }
        let ok_path = Path::new(target)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !ok_path {
            return Err(err(
                from,
                line,
                format!("@include path {target:?} must be relative to the policy directory, without \"..\""),
            ));
        }
        if self.stack.iter().any(|f| f == target) {
            let mut chain = self.stack.join(" -> ");
            chain.push_str(" -> ");
            chain.push_str(target);
            return Err(err(
                from,
                line,
                format!("@include {target:?} makes a cycle: {chain}"),
            ));
        }
        if self.stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(err(
                from,
                line,
                format!("@include {target:?} nests deeper than {MAX_INCLUDE_DEPTH} files"),
            ));
        }
        let text = self.source.read(target).map_err(|e| {
            err(
                from,
                line,
                format!("cannot read included policy {target:?}: {e}"),
            )
        })?;
        self.stack.push(target.to_owned());
        let r = self.file(target, &text);
        self.stack.pop();
        r
    }
}

fn parse_rule(
    file: &str,
    line: usize,
    content: &str,
    comment: String,
) -> Result<Rule, PolicyError> {
    let e = |m: String| err(file, line, m);
    let Some((name, body)) = content.split_once(':') else {
        let first = content.split_whitespace().next().unwrap_or(content);
        return Err(e(format!("missing \":\" after syscall name {first:?}")));
    };
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(e(format!("bad syscall name {name:?}")));
    }
    let Some(nr) = syscall_nr(name) else {
        return Err(e(format!("unknown syscall {name:?}")));
    };
    let tokens = tokenize(body).map_err(|t| e(format!("bad operator {t:?}")))?;
    let action = parse_action(&tokens).map_err(e)?;
    Ok(Rule {
        syscall: name.to_owned(),
        nr,
        action,
        comment,
        location: Location {
            file: file.to_owned(),
            line,
        },
    })
}

/// Characters operators are made of.
fn is_op_char(c: char) -> bool {
    matches!(c, '=' | '!' | '<' | '>' | '&' | '|' | '~')
}

const OPERATORS: &[&str] = &["==", "!=", "<=", ">=", "&&", "||", "<", ">", "&", "|", "~"];

/// Splits a rule body into words (names, numbers) and operators. An unknown run of operator
/// characters is returned as the error.
fn tokenize(s: &str) -> Result<Vec<&str>, &str> {
    let mut out = Vec::new();
    let mut rest = s.trim_start();
    while let Some(c) = rest.chars().next() {
        let len = if is_op_char(c) {
            // Longest operator first (OPERATORS lists two-character ones first); a run that
            // starts with no operator at all ("=<", "=") is reported whole.
            match OPERATORS.iter().find(|op| rest.starts_with(*op)) {
                Some(op) => op.len(),
                None => {
                    let run = rest.find(|c| !is_op_char(c)).unwrap_or(rest.len());
                    return Err(&rest[..run]);
                }
            }
        } else {
            rest.find(|c: char| c.is_whitespace() || is_op_char(c))
                .unwrap_or(rest.len())
        };
        out.push(&rest[..len]);
        rest = rest[len..].trim_start();
    }
    Ok(out)
}

fn parse_action(tokens: &[&str]) -> Result<Action, String> {
    match tokens {
        [] => Err("empty rule: expected 1, an argument expression or return ERRNO".to_owned()),
        ["1"] => Ok(Action::Allow),
        ["return", rest @ ..] => match rest {
            [e] => parse_errno(e).map(Action::Errno),
            [] => Err("\"return\" needs an errno".to_owned()),
            [_, extra, ..] => Err(format!("unexpected {extra:?} after return value")),
        },
        _ => parse_expr(tokens).map(Action::AllowIf),
    }
}

fn parse_errno(t: &str) -> Result<u32, String> {
    if t.starts_with(|c: char| c.is_ascii_digit()) {
        return match parse_number(t) {
            Some(n) if (1..4096).contains(&n) => Ok(n as u32),
            _ => Err(format!("bad errno {t:?}")),
        };
    }
    errno(t).ok_or_else(|| format!("unknown errno {t:?}"))
}

fn parse_number(t: &str) -> Option<u64> {
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    // A leading zero would be octal in minijail: refuse it rather than guess.
    if t.len() > 1 && t.starts_with('0') {
        return None;
    }
    t.parse().ok()
}

fn parse_expr(tokens: &[&str]) -> Result<Expr, String> {
    let mut clauses = Vec::new();
    for clause in tokens.split(|t| *t == "||") {
        let mut cmps = Vec::new();
        for cmp in clause.split(|t| *t == "&&") {
            cmps.push(parse_comparison(cmp)?);
        }
        clauses.push(cmps);
    }
    Ok(Expr { clauses })
}

fn parse_comparison(tokens: &[&str]) -> Result<Comparison, String> {
    let Some((&first, rest)) = tokens.split_first() else {
        return Err("empty comparison around \"&&\" or \"||\"".to_owned());
    };
    let Some(index) = first.strip_prefix("arg") else {
        return Err(format!("expected argN, found {first:?}"));
    };
    let arg = match index.parse::<u8>() {
        Ok(n) if n <= 5 && !index.starts_with('+') => n,
        _ => {
            return Err(format!(
                "bad argument {first:?} (arguments are arg0 to arg5)"
            ))
        }
    };
    let Some((&op_tok, value)) = rest.split_first() else {
        return Err(format!("expected an operator after {first:?}"));
    };
    let op = Op::from_token(op_tok).ok_or_else(|| format!("bad operator {op_tok:?}"))?;
    let value = parse_value(value, op_tok)?;
    if op == Op::AnyBitSet && value == 0 {
        return Err(format!("{first} & 0 never holds"));
    }
    Ok(Comparison { arg, op, value })
}

/// `term ('|' term)*`, `term := '~'? (number | CONSTANT)`.
fn parse_value(tokens: &[&str], after: &str) -> Result<u64, String> {
    if tokens.is_empty() {
        return Err(format!("expected a value after {after:?}"));
    }
    let mut value = 0u64;
    for term in tokens.split(|t| *t == "|") {
        let (negate, atom) = match term {
            ["~", atom] => (true, *atom),
            [atom] => (false, *atom),
            [] => return Err("empty term around \"|\"".to_owned()),
            [_, extra, ..] => return Err(format!("unexpected {extra:?} in value")),
        };
        let v = if atom.starts_with(|c: char| c.is_ascii_digit()) {
            parse_number(atom).ok_or_else(|| format!("bad number {atom:?}"))?
        } else if atom.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            constant(atom).ok_or_else(|| format!("unknown constant {atom:?}"))?
        } else {
            return Err(format!("expected a number or constant, found {atom:?}"));
        };
        value |= if negate { !v } else { v };
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Result<Action, String> {
        let tokens = tokenize(body).map_err(|t| format!("bad operator {t:?}"))?;
        parse_action(&tokens)
    }

    #[test]
    fn syscall_table_is_sorted_and_searchable() {
        assert!(SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscall_nr("read"), Some(0));
        assert_eq!(syscall_nr("openat"), Some(257));
        assert_eq!(syscall_nr("_sysctl"), Some(156));
        assert_eq!(syscall_nr("opnat"), None);
        assert_eq!(syscall_name(435), Some("clone3"));
    }

    #[test]
    fn expressions() {
        assert_eq!(one("1"), Ok(Action::Allow));
        assert_eq!(one("return ENOENT"), Ok(Action::Errno(2)));
        assert_eq!(one("return 38"), Ok(Action::Errno(38)));
        let Ok(Action::AllowIf(e)) = one("arg1 == 3 && arg2 != 0x10 || arg0 in ~PROT_EXEC") else {
            panic!("not an expression");
        };
        assert_eq!(e.clauses.len(), 2);
        assert_eq!(e.clauses[0].len(), 2);
        assert_eq!(
            e.clauses[1][0],
            Comparison {
                arg: 0,
                op: Op::In,
                value: !4
            }
        );
        assert!(e.holds(&[0, 3, 0, 0, 0, 0]));
        assert!(!e.holds(&[4, 3, 0x10, 0, 0, 0]));
        assert!(e.holds(&[3, 3, 0x10, 0, 0, 0]));
        let Ok(Action::AllowIf(e)) = one("arg3 & PROT_READ|PROT_WRITE") else {
            panic!("not an expression");
        };
        assert_eq!(e.clauses[0][0].value, 3);
        assert!(e.holds(&[0, 0, 0, 2, 0, 0]));
        assert!(!e.holds(&[0, 0, 0, 4, 0, 0]));
        let Ok(Action::AllowIf(e)) = one("arg0<=5&&arg0>=2") else {
            panic!("not an expression");
        };
        assert!(e.holds(&[5, 0, 0, 0, 0, 0]) && !e.holds(&[6, 0, 0, 0, 0, 0]));
    }

    #[test]
    fn expression_errors_name_the_token() {
        let cases = [
            ("arg1 =< 3", "\"=<\""),
            ("arg1 = 3", "\"=\""),
            ("arg6 == 1", "\"arg6\""),
            ("arg1 == 0xzz", "\"0xzz\""),
            ("arg1 == 012", "\"012\""),
            ("arg1 == PROT_EXECC", "\"PROT_EXECC\""),
            ("arg1 ==", "\"==\""),
            ("arg1 & 0", "& 0"),
            ("foo == 1", "\"foo\""),
            ("return ENOENTT", "\"ENOENTT\""),
            ("return", "errno"),
            ("", "empty"),
            ("arg1 == 1 &&", "empty"),
            ("arg1 == 1 2", "\"2\""),
            ("arg1 like 1", "\"like\""),
        ];
        for (body, token) in cases {
            let e = one(body).expect_err(body);
            assert!(e.contains(token), "{body:?}: {e:?} does not name {token}");
        }
    }
}
