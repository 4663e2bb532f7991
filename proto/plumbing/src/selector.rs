//! Label and field selectors with Kubernetes' syntax, validation and error texts.
//!
//! Labels (`labels.Parse`): comma-separated requirements `key`, `!key`, `key=v`, `key==v`,
//! `key!=v`, `key in (a,b)`, `key notin (a,b)`, `key>1`, `key<1`. Keys must be qualified names
//! and values label values. Fields (`fields.ParseSelector`): `key=v`, `key==v`, `key!=v`
//! with `\` escapes, each field checked against the fields the resource supports.

use std::collections::BTreeMap;
use std::fmt;

/// Why a selector was refused; the text is the 400 Status message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

impl SelectorError {
    /// A field selector named a field the resource does not support; the text is
    /// kube-apiserver's for its own resources (`field label not supported: spec.foo`).
    pub fn unsupported_field(field: &str, _supported: &[&str]) -> SelectorError {
        SelectorError(format!("field label not supported: {field}"))
    }
}

/// A label requirement's operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key=v`, `key==v`, `key in (..)`.
    In,
    /// `key!=v`, `key notin (..)`.
    NotIn,
    /// `key>n`.
    Gt(i64),
    /// `key<n`.
    Lt(i64),
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Tokens of the label selector lexer (apimachinery's).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    End,
    Ident(String),
    In,
    NotIn,
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Token::End => "",
            Token::Ident(s) => s,
            Token::In => "in",
            Token::NotIn => "notin",
            Token::Not => "!",
            Token::Eq => "=",
            Token::DoubleEq => "==",
            Token::NotEq => "!=",
            Token::Gt => ">",
            Token::Lt => "<",
            Token::Open => "(",
            Token::Close => ")",
            Token::Comma => ",",
        })
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn lex(input: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if is_special(c) {
            chars.next();
            let next = chars.peek().map(|&(_, n)| n);
            let tok = match (c, next) {
                ('!', Some('=')) => {
                    chars.next();
                    Token::NotEq
                }
                ('=', Some('=')) => {
                    chars.next();
                    Token::DoubleEq
                }
                ('!', _) => Token::Not,
                ('=', _) => Token::Eq,
                ('(', _) => Token::Open,
                (')', _) => Token::Close,
                (',', _) => Token::Comma,
                ('>', _) => Token::Gt,
                _ => Token::Lt,
            };
            tokens.push(tok);
            continue;
        }
        let mut end = input.len();
        while let Some(&(j, d)) = chars.peek() {
            if d.is_whitespace() || is_special(d) {
                end = j;
                break;
            }
            chars.next();
        }
        let word = &input[i..end];
        tokens.push(match word {
            "in" => Token::In,
            "notin" => Token::NotIn,
            _ => Token::Ident(word.to_owned()),
        });
    }
    tokens.push(Token::End);
    tokens
}

/// A recursive-descent parser over the tokens.
struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    /// The next token; `in`/`notin` read as identifiers where a value is expected.
    fn peek(&self, values: bool) -> Token {
        let t = self.tokens.get(self.pos).cloned().unwrap_or(Token::End);
        if values {
            match t {
                Token::In => return Token::Ident("in".into()),
                Token::NotIn => return Token::Ident("notin".into()),
                _ => {}
            }
        }
        t
    }

    fn next(&mut self, values: bool) -> Token {
        let t = self.peek(values);
        self.pos = (self.pos + 1).min(self.tokens.len());
        t
    }
}

fn err(found: &Token, expected: &str) -> SelectorError {
    SelectorError(format!("unable to parse requirement: found '{found}', expected: {expected}"))
}

impl LabelSelector {
    /// Parses and validates `input`; an empty string selects everything.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut p = Parser { tokens: lex(input), pos: 0 };
        let mut requirements = Vec::new();
        loop {
            match p.peek(true) {
                Token::End => break,
                Token::Ident(_) | Token::Not => {}
                other => return Err(err(&other, "!, identifier, or 'end of string'")),
            }
            requirements.push(parse_requirement(&mut p)?);
            match p.next(true) {
                Token::End => break,
                Token::Comma => match p.peek(true) {
                    Token::Ident(_) | Token::Not => {}
                    other => return Err(err(&other, "identifier after ','")),
                },
                other => return Err(err(&other, "',' or 'end of string'")),
            }
        }
        Ok(Self { requirements })
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.op {
                Op::Exists => value.is_some(),
                Op::DoesNotExist => value.is_none(),
                Op::In => value.is_some_and(|v| r.values.iter().any(|x| x == v)),
                Op::NotIn => value.is_none_or(|v| r.values.iter().all(|x| x != v)),
                Op::Gt(n) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > n),
                Op::Lt(n) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < n),
            }
        })
    }
}

/// Canonical text that [`LabelSelector::parse`] reads back as the same selector (for logs and
/// error messages): `key`, `!key`, `key=v`, `key!=v`, `key in (a,b)`, `key notin (a,b)`,
/// `key>n`, `key<n`, joined by commas.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let first = r.values.first().map_or("", String::as_str);
            match (r.op, r.values.len()) {
                (Op::Exists, _) => write!(f, "{}", r.key)?,
                (Op::DoesNotExist, _) => write!(f, "!{}", r.key)?,
                (Op::In, 1) => write!(f, "{}={first}", r.key)?,
                (Op::NotIn, 1) => write!(f, "{}!={first}", r.key)?,
                (Op::In, _) => write!(f, "{} in ({})", r.key, r.values.join(","))?,
                (Op::NotIn, _) => write!(f, "{} notin ({})", r.key, r.values.join(","))?,
                (Op::Gt(_), _) => write!(f, "{}>{first}", r.key)?,
                (Op::Lt(_), _) => write!(f, "{}<{first}", r.key)?,
            }
        }
        Ok(())
    }
}

fn parse_requirement(p: &mut Parser) -> Result<Requirement, SelectorError> {
    let mut tok = p.next(true);
    let negated = tok == Token::Not;
    if negated {
        tok = p.next(true);
    }
    let Token::Ident(key) = tok else { return Err(err(&tok, "identifier")) };
    validate_key(&key)?;
    if matches!(p.peek(true), Token::End | Token::Comma) {
        let op = if negated { Op::DoesNotExist } else { Op::Exists };
        return Ok(Requirement { key, op, values: Vec::new() });
    }
    if negated {
        // `!key` must stand alone.
        let t = p.peek(true);
        return Err(err(&t, "',' or 'end of string'"));
    }
    let op_tok = p.next(false);
    let (values, op) = match op_tok {
        Token::In | Token::NotIn => {
            let values = parse_values(p)?;
            if values.is_empty() {
                return Err(SelectorError(format!(
                    "unable to parse requirement: values: Invalid value: []: for 'in', 'notin' operators, values set can't be empty (key {key:?})"
                )));
            }
            (values, if op_tok == Token::In { Op::In } else { Op::NotIn })
        }
        Token::Eq | Token::DoubleEq | Token::NotEq | Token::Gt | Token::Lt => {
            let value = match p.peek(true) {
                Token::End | Token::Comma => String::new(),
                _ => match p.next(true) {
                    Token::Ident(v) => v,
                    other => return Err(err(&other, "identifier")),
                },
            };
            let op = match op_tok {
                Token::Eq | Token::DoubleEq => Op::In,
                Token::NotEq => Op::NotIn,
                gt_or_lt => {
                    let n = value.parse::<i64>().map_err(|_| {
                        SelectorError(format!(
                            "unable to parse requirement: values[0]: Invalid value: {value:?}: for 'Gt', 'Lt' operators, the value must be an integer"
                        ))
                    })?;
                    if gt_or_lt == Token::Gt { Op::Gt(n) } else { Op::Lt(n) }
                }
            };
            (vec![value], op)
        }
        other => return Err(err(&other, "=, !=, ==, in, notin, >, <")),
    };
    if !matches!(op, Op::Gt(_) | Op::Lt(_)) {
        for (i, v) in values.iter().enumerate() {
            validate_value(i, v)?;
        }
    }
    Ok(Requirement { key, op, values })
}

/// `(a, b, )`: identifiers separated by commas; an empty slot is the empty value.
fn parse_values(p: &mut Parser) -> Result<Vec<String>, SelectorError> {
    let open = p.next(true);
    if open != Token::Open {
        return Err(err(&open, "'('"));
    }
    let mut values = Vec::new();
    match p.peek(true) {
        Token::Close => {
            p.next(true);
            values.push(String::new());
            return Ok(values);
        }
        Token::Ident(_) | Token::Comma => {}
        other => return Err(err(&other, "',', ')' or identifier")),
    }
    let mut expect_value = true;
    loop {
        match p.next(true) {
            Token::Ident(v) if expect_value => {
                values.push(v);
                expect_value = false;
            }
            Token::Comma => {
                if expect_value {
                    values.push(String::new());
                }
                expect_value = true;
            }
            Token::Close => {
                if expect_value {
                    values.push(String::new());
                }
                return Ok(values);
            }
            other => return Err(err(&other, "',' or ')'")),
        }
    }
}

const NAME_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, possibly empty.
fn is_label_token(s: &str) -> bool {
    let b = s.as_bytes();
    b.is_empty()
        || (b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// Whether `s` is a DNS-1123 subdomain, as Kubernetes' `IsDNS1123Subdomain` checks it: at most
/// 253 characters, dot-separated parts of lowercase alphanumerics and '-', each starting and
/// ending with an alphanumeric. Most object names (a Lease's, a label key's prefix) must be one.
pub fn is_dns_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && s.split('.').all(|part| {
            let p = part.as_bytes();
            !p.is_empty()
                && p[0].is_ascii_alphanumeric()
                && p[p.len() - 1].is_ascii_alphanumeric()
                && p.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// `IsQualifiedName`: `[prefix/]name`.
fn validate_key(key: &str) -> Result<(), SelectorError> {
    let invalid = |why: &str| Err(SelectorError(format!("unable to parse requirement: key: Invalid value: {key:?}: {why}")));
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if name.contains('/') {
        return invalid("a qualified name must consist of alphanumeric characters, '-', '_' or '.', with an optional DNS subdomain prefix and '/'");
    }
    if let Some(p) = prefix
        && !is_dns_subdomain(p)
    {
        return invalid("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character");
    }
    if name.is_empty() {
        return invalid("name part must be non-empty");
    }
    if name.len() > 63 {
        return invalid("name part must be no more than 63 characters");
    }
    if !is_label_token(name) {
        return invalid(NAME_MSG);
    }
    Ok(())
}

/// `IsValidLabelValue`.
fn validate_value(index: usize, value: &str) -> Result<(), SelectorError> {
    if value.len() > 63 || !is_label_token(value) {
        return Err(SelectorError(format!(
            "unable to parse requirement: values[{index}]: Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?') and be no more than 63 characters"
        )));
    }
    Ok(())
}

/// The fields of object metadata every resource supports in a field selector.
pub const METADATA_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// One `field=value` / `field!=value` term.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldTerm {
    field: String,
    equals: bool,
    value: String,
}

/// A parsed field selector (`fields.ParseSelector`): `field=value`, `field==value` and
/// `field!=value` terms, ANDed, with `\` escapes in values. The empty selector matches
/// everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parses `input` and checks every field against `supported` (the fields the resource
    /// indexes, e.g. [`METADATA_FIELDS`] plus `spec.nodeName` for Pods); another field is
    /// [`SelectorError::UnsupportedField`].
    pub fn parse(input: &str, supported: &[&str]) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for term in split_unescaped(input, ',') {
            if term.is_empty() {
                continue;
            }
            let (key, op_len, equals, at) = ["!=", "==", "="]
                .iter()
                .filter_map(|op| find_unescaped(&term, op).map(|i| (i, *op)))
                .min_by_key(|(i, op)| (*i, usize::MAX - op.len()))
                .map(|(i, op)| (&term[..i], op.len(), op != "!=", i))
                .ok_or_else(|| SelectorError(format!("invalid selector: '{input}'; can't understand '{term}'")))?;
            let field = key.trim();
            if !supported.contains(&field) {
                return Err(SelectorError::unsupported_field(field, supported));
            }
            let value = unescape(&term[at + op_len..]).map_err(|e| SelectorError(format!("invalid field selector: {e}")))?;
            terms.push(FieldTerm { field: field.to_owned(), equals, value });
        }
        Ok(Self { terms })
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether an object whose fields read through `value_of` satisfies every term. A field the
    /// object does not have reads as the empty string, as in Kubernetes.
    pub fn matches<'a>(&self, value_of: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.terms.iter().all(|t| (value_of(&t.field).unwrap_or("") == t.value) == t.equals)
    }

    /// Whether an object with this namespace (empty for cluster-scoped objects) and name
    /// matches a selector on [`METADATA_FIELDS`].
    pub fn matches_metadata(&self, namespace: &str, name: &str) -> bool {
        self.matches(|field| match field {
            "metadata.name" => Some(name),
            "metadata.namespace" => Some(namespace),
            _ => None,
        })
    }

    /// The value every match must have in `field` (`metadata.name=x`), to turn a list into a
    /// lookup.
    pub fn required(&self, field: &str) -> Option<&str> {
        self.terms.iter().find(|t| t.field == field && t.equals).map(|t| t.value.as_str())
    }
}

/// Canonical text that [`FieldSelector::parse`] reads back as the same selector:
/// `field=v` / `field!=v` terms joined by commas, with `\\`, `,` and `=` in values escaped.
impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&t.field)?;
            f.write_str(if t.equals { "=" } else { "!=" })?;
            for c in t.value.chars() {
                if matches!(c, '\\' | ',' | '=') {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Splits on `sep` not preceded by a backslash escape; escapes are kept.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(String::new());
            continue;
        }
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

/// Byte index of the first `op` not inside an escape.
fn find_unescaped(s: &str, op: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            continue;
        }
        if s[i..].starts_with(op) {
            return Some(i);
        }
    }
    None
}

/// Resolves `\\`, `\,` and `\=`; any other escape is an error.
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                Some(e) => return Err(format!("invalid escape sequence: \\{e}")),
                None => return Err("invalid escape sequence: trailing \\".to_owned()),
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn every_label_operator_matches_like_kubernetes() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        for (s, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=api", false),
            ("app!=api", true),
            ("app!=web", false),
            ("missing!=x", true),
            ("app in (api, web)", true),
            ("app in (api)", false),
            ("app notin (api,db)", true),
            ("missing notin (x)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("app=web,tier=front", true),
            ("app=web, tier=back", false),
            ("n>4", true),
            ("n<5", false),
            ("app>1", false),
            ("app=", false),
            ("app in (in,notin)", false),
            ("example.com/team", false),
        ] {
            assert_eq!(sel(s).matches(&l), want, "{s:?}");
        }
        assert!(sel("app=").matches(&labels(&[("app", "")])));
        assert!(sel("app in (a,)").matches(&labels(&[("app", "")])));
    }

    #[test]
    fn bad_label_selectors_are_refused_with_a_reason() {
        for (s, needle) in [
            ("app=web tier", "expected: ',' or 'end of string'"),
            ("app in web", "expected: '('"),
            ("app in (a b)", "expected: ',' or ')'"),
            ("=web", "expected: !, identifier, or 'end of string'"),
            ("app=web,", "identifier after ','"),
            ("app foo", "expected: =, !=, ==, in, notin"),
            ("app=a b", "expected: ',' or 'end of string'"),
            ("bad key=1", "expected: =, !=, ==, in, notin"),
            ("-app=1", "name part must consist of alphanumeric"),
            ("Example.com/app=1", "prefix part"),
            ("a/b/c=1", "qualified name"),
            ("app=-x", "a valid label must be"),
            ("n>x", "must be an integer"),
            ("!app=1", "',' or 'end of string'"),
            (&format!("{}=1", "k".repeat(64)), "no more than 63"),
            (&format!("app={}", "v".repeat(64)), "no more than 63"),
        ] {
            let e = LabelSelector::parse(s).expect_err(s);
            assert!(e.0.contains(needle), "{s:?}: {e}");
        }
    }

    #[test]
    fn field_selectors_support_name_and_namespace_with_escapes() {
        let f = FieldSelector::parse("metadata.name=web-1,metadata.namespace!=kube-system", METADATA_FIELDS).expect("valid");
        assert!(f.matches_metadata("default", "web-1"));
        assert!(!f.matches_metadata("kube-system", "web-1"));
        assert!(!f.matches_metadata("default", "web-2"));
        assert_eq!(f.required("metadata.name"), Some("web-1"));
        assert_eq!(f.required("metadata.namespace"), None);
        let f = FieldSelector::parse(r"metadata.name==a\,b", METADATA_FIELDS).expect("valid");
        assert!(f.matches_metadata("", "a,b"));
        assert!(FieldSelector::parse("", METADATA_FIELDS).expect("empty").is_empty());
    }

    #[test]
    fn unsupported_or_malformed_field_selectors_are_refused() {
        assert_eq!(
            FieldSelector::parse("spec.nodeName=n1", METADATA_FIELDS).unwrap_err().0,
            "field label not supported: spec.nodeName"
        );
        assert!(FieldSelector::parse("metadata.name", METADATA_FIELDS).unwrap_err().0.contains("can't understand"));
        assert!(FieldSelector::parse(r"metadata.name=a\x", METADATA_FIELDS).unwrap_err().0.contains("escape"));
    }

    #[test]
    fn selectors_print_as_text_that_parses_back_to_the_same_selector() {
        for (input, printed) in [
            ("", ""),
            ("app", "app"),
            ("!app", "!app"),
            ("app==web, tier != db", "app=web,tier!=db"),
            ("app in (a, b,), x notin (in)", "app in (a,b,),x!=in"),
            ("app in ()", "app="),
            ("example.com/n>007,n<-1", "example.com/n>007,n<-1"),
            ("in=notin", "in=notin"),
        ] {
            let s = sel(input);
            assert_eq!(s.to_string(), printed, "{input:?}");
            assert_eq!(sel(&s.to_string()), s, "{input:?}");
        }
        for (input, printed) in [
            ("", ""),
            (r" metadata.name ==a\,b\=c\\", r"metadata.name=a\,b\=c\\"),
            ("metadata.namespace!=!x,metadata.name=", "metadata.namespace!=!x,metadata.name="),
        ] {
            let f = FieldSelector::parse(input, METADATA_FIELDS).expect(input);
            assert_eq!(f.to_string(), printed, "{input:?}");
            assert_eq!(FieldSelector::parse(&f.to_string(), METADATA_FIELDS).expect("re-parses"), f, "{input:?}");
        }
    }

    #[test]
    fn dns_subdomains_are_lowercase_dot_separated_parts_with_alphanumeric_ends() {
        for ok in ["shardmetrics-scraper-0", "a", "0", "kube-system", "a.b-c.d", &"a".repeat(253)] {
            assert!(is_dns_subdomain(ok), "{ok:?}");
        }
        for bad in ["", "Shard_0", "UPPER", "-a", "a-", "a..b", ".a", "a.", "a_b", "a b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad:?}");
        }
    }
}
