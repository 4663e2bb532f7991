//! Label and field selectors with Kubernetes' syntax, validation and error texts.
//!
//! Labels: a port of apimachinery's `labels.Parse` (v0.33, what metrics-server v0.8 and
//! kube-apiserver 1.33+ run): comma-separated requirements `key`, `!key`, `key=v`, `key==v`,
//! `key!=v`, `key in (a,b)`, `key notin (a,b)`, `key>1`, `key<1`, each key a qualified name and
//! each value a label value, with the same error texts word for word (the 400 Status message).
//! Requirements are kept sorted by key and set values sorted and deduplicated, as upstream.
//!
//! Fields: a port of `fields.ParseSelector`: `key=v`, `key==v`, `key!=v` terms with `\`
//! escapes. The raw terms are sorted before they are parsed, so that with several bad terms the
//! one reported is upstream's; field names are checked only once the whole selector parsed.

use std::collections::BTreeMap;
use std::fmt;

/// Why a selector was refused; the text is the 400 Status message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

/// Go's `%q` of a string (`strconv.Quote`): what upstream error texts quote values with.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if c == ' ' || (!c.is_control() && !c.is_whitespace()) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// A label requirement's operator. `=`, `==` and `in` are one operator (a set of accepted
/// values), as are `!=` and `notin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key=v`, `key==v`, `key in (..)`.
    In,
    /// `key!=v`, `key notin (..)`.
    NotIn,
    /// `key>n`.
    GreaterThan(i64),
    /// `key<n`.
    LessThan(i64),
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    op: Operator,
    /// Sorted and deduplicated (`In`/`NotIn`), the one value (`>`/`<`), none (`Exists`).
    values: Vec<String>,
}

impl Requirement {
    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.op
    }

    /// The values, sorted and deduplicated (the integer's text for `>`/`<`).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether `value` (the object's value of the key, `None` when absent) satisfies it.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        match self.op {
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => value.is_none_or(|v| self.values.iter().all(|x| x != v)),
            Operator::GreaterThan(n) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > n),
            Operator::LessThan(n) => value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < n),
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

/// Tokens of the label selector lexer (apimachinery's), with their literal text.
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

/// apimachinery's whitespace: space, tab, CR and LF only.
fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// The single- and two-byte operator tokens.
fn symbol(s: &[u8]) -> Option<Token> {
    Some(match s {
        b")" => Token::Close,
        b"," => Token::Comma,
        b"!" => Token::Not,
        b"==" => Token::DoubleEq,
        b"=" => Token::Eq,
        b">" => Token::Gt,
        b"<" => Token::Lt,
        b"!=" => Token::NotEq,
        b"(" => Token::Open,
        _ => return None,
    })
}

/// The lexer: bytes, as upstream's (identifiers run to the next special byte or whitespace;
/// symbols are the longest run of special bytes that is a token).
fn lex(input: &str) -> Vec<Token> {
    let b = input.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    loop {
        while i < b.len() && is_whitespace(b[i]) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        if is_special(b[i]) {
            // Every special byte is a token on its own, so the longest match is at least one.
            let mut len = 1;
            let mut tok = symbol(&b[i..i + 1]).unwrap_or(Token::End);
            while i + len < b.len() && is_special(b[i + len]) {
                match symbol(&b[i..i + len + 1]) {
                    Some(t) => {
                        tok = t;
                        len += 1;
                    }
                    None => break,
                }
            }
            tokens.push(tok);
            i += len;
            continue;
        }
        let start = i;
        while i < b.len() && !is_special(b[i]) && !is_whitespace(b[i]) {
            i += 1;
        }
        // Split at ASCII bytes, so both ends are character boundaries.
        let word = &input[start..i];
        tokens.push(match word {
            "in" => Token::In,
            "notin" => Token::NotIn,
            _ => Token::Ident(word.to_owned()),
        });
    }
    tokens.push(Token::End);
    tokens
}

/// A recursive-descent parser over the tokens (upstream's `Parser`).
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

/// An error inside one requirement (upstream wraps these in "unable to parse requirement: ").
fn found(tok: &Token, expected: &str) -> String {
    format!("found '{tok}', expected: {expected}")
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
                other => return Err(SelectorError(found(&other, "!, identifier, or 'end of string'"))),
            }
            let r = parse_requirement(&mut p).map_err(|e| SelectorError(format!("unable to parse requirement: {e}")))?;
            requirements.push(r);
            match p.next(true) {
                Token::End => break,
                Token::Comma => match p.peek(true) {
                    Token::Ident(_) | Token::Not => {}
                    other => return Err(SelectorError(found(&other, "identifier after ','"))),
                },
                other => return Err(SelectorError(found(&other, "',' or 'end of string'"))),
            }
        }
        requirements.sort_by(|a: &Requirement, b: &Requirement| a.key.cmp(&b.key));
        Ok(Self { requirements })
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The requirements, sorted by key (for authorization attributes and indexes).
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches_value(labels.get(&r.key).map(String::as_str)))
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
                (Operator::Exists, _) => write!(f, "{}", r.key)?,
                (Operator::DoesNotExist, _) => write!(f, "!{}", r.key)?,
                (Operator::In, 1) => write!(f, "{}={first}", r.key)?,
                (Operator::NotIn, 1) => write!(f, "{}!={first}", r.key)?,
                (Operator::In, _) => write!(f, "{} in ({})", r.key, r.values.join(","))?,
                (Operator::NotIn, _) => write!(f, "{} notin ({})", r.key, r.values.join(","))?,
                (Operator::GreaterThan(_), _) => write!(f, "{}>{first}", r.key)?,
                (Operator::LessThan(_), _) => write!(f, "{}<{first}", r.key)?,
            }
        }
        Ok(())
    }
}

/// `parseRequirement` + `NewRequirement`: the error is the text after "unable to parse
/// requirement: ".
fn parse_requirement(p: &mut Parser) -> Result<Requirement, String> {
    let mut tok = p.next(true);
    let negated = tok == Token::Not;
    if negated {
        tok = p.next(true);
    }
    let Token::Ident(key) = tok else { return Err(found(&tok, "identifier")) };
    let key_errors = qualified_name_errors(&key);
    if !key_errors.is_empty() {
        return Err(format!("<nil>: Invalid value: {}: {}", go_quote(&key), key_errors.join("; ")));
    }
    // `!key` is complete whatever follows (the caller then expects ',' or the end).
    if negated {
        return Ok(Requirement { key, op: Operator::DoesNotExist, values: Vec::new() });
    }
    if matches!(p.peek(true), Token::End | Token::Comma) {
        return Ok(Requirement { key, op: Operator::Exists, values: Vec::new() });
    }
    let op_tok = p.next(false);
    let values: Vec<String> = match op_tok {
        Token::In | Token::NotIn => parse_values(p)?,
        Token::Eq | Token::DoubleEq | Token::NotEq | Token::Gt | Token::Lt => match p.peek(true) {
            Token::End | Token::Comma => vec![String::new()],
            _ => match p.next(true) {
                Token::Ident(v) => vec![v],
                other => return Err(found(&other, "identifier")),
            },
        },
        other => return Err(found(&other, "in, notin, =, ==, !=, gt, lt")),
    };
    // NewRequirement: every error, deduplicated, bracketed when more than one.
    let mut errors: Vec<String> = Vec::new();
    let mut integer = None;
    if matches!(op_tok, Token::Gt | Token::Lt) {
        match values[0].parse::<i64>() {
            Ok(n) => integer = Some(n),
            _ => errors.push(format!(
                "values[0]: Invalid value: {}: for 'Gt', 'Lt' operators, the value must be an integer",
                go_quote(&values[0])
            )),
        }
    }
    for (i, v) in values.iter().enumerate() {
        let msgs = label_value_errors(v);
        if !msgs.is_empty() {
            errors.push(format!("values[{i}][{key}]: Invalid value: {}: {}", go_quote(v), msgs.join("; ")));
        }
    }
    errors.dedup();
    match errors.len() {
        0 => {}
        1 => return Err(errors.remove(0)),
        _ => return Err(format!("[{}]", errors.join(", "))),
    }
    let op = match (op_tok, integer) {
        (Token::In | Token::Eq | Token::DoubleEq, _) => Operator::In,
        (Token::Gt, Some(n)) => Operator::GreaterThan(n),
        (Token::Lt, Some(n)) => Operator::LessThan(n),
        _ => Operator::NotIn,
    };
    Ok(Requirement { key, op, values })
}

/// `parseValues` + `parseIdentifiersList`: `(a, b, )`, sorted and deduplicated; an empty slot
/// is the empty value.
fn parse_values(p: &mut Parser) -> Result<Vec<String>, String> {
    let open = p.next(true);
    if open != Token::Open {
        return Err(format!("found '{open}' expected: '('"));
    }
    let mut set = std::collections::BTreeSet::new();
    match p.peek(true) {
        Token::Close => {
            p.next(true);
            set.insert(String::new());
        }
        first @ (Token::Ident(_) | Token::Comma) => {
            loop {
                match p.next(true) {
                    Token::Ident(v) => {
                        set.insert(v);
                        match p.peek(true) {
                            Token::Comma => continue,
                            Token::Close => break,
                            other => return Err(found(&other, "',' or ')'")),
                        }
                    }
                    Token::Comma => {
                        if set.is_empty() {
                            set.insert(String::new());
                        }
                        match p.peek(true) {
                            Token::Close => {
                                set.insert(String::new());
                                break;
                            }
                            Token::Comma => {
                                p.next(true);
                                set.insert(String::new());
                            }
                            _ => {}
                        }
                    }
                    other => return Err(found(&other, "',', or identifier")),
                }
            }
            if p.next(true) != Token::Close {
                return Err(found(&first, "')'"));
            }
        }
        other => return Err(found(&other, "',', ')' or identifier")),
    }
    Ok(set.into_iter().collect())
}

const QUALIFIED_NAME_REGEX: &str = "'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]'";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`: a non-empty qualified-name token.
fn is_qualified_token(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain (`IsDNS1123Subdomain`): at most 253 bytes of dot-separated labels of
/// lowercase alphanumerics and '-', each starting and ending alphanumeric. Node names are these.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && is_dns_subdomain_syntax(s)
}

/// The subdomain regex alone, `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
/// (upstream checks the length apart).
fn is_dns_subdomain_syntax(s: &str) -> bool {
    s.split('.').all(|part| {
        let p = part.as_bytes();
        !p.is_empty()
            && p[0].is_ascii_alphanumeric()
            && p[p.len() - 1].is_ascii_alphanumeric()
            && p.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    })
}

/// `validation.IsQualifiedName`'s messages for `key` (empty when valid).
fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_owned());
            } else {
                if prefix.len() > 253 {
                    errs.push("prefix part must be no more than 253 characters".to_owned());
                }
                if !is_dns_subdomain_syntax(prefix) {
                    errs.push("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_owned());
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {QUALIFIED_NAME_MSG} (e.g. {QUALIFIED_NAME_REGEX}) with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
            return errs;
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errs.push("name part must be no more than 63 characters".to_owned());
    }
    if !is_qualified_token(name) {
        errs.push(format!("name part {QUALIFIED_NAME_MSG} (e.g. {QUALIFIED_NAME_REGEX})"));
    }
    errs
}

/// `validation.IsValidLabelValue`'s messages for `value` (empty when valid).
fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push("must be no more than 63 characters".to_owned());
    }
    if !value.is_empty() && !is_qualified_token(value) {
        errs.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_owned());
    }
    errs
}

/// The fields of object metadata every resource supports in a field selector.
pub const METADATA_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// One `field=value` / `field!=value` term.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
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
    /// In a canonical order (by field, operator, value): the order of the input is not kept.
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parses `input` and checks every field against `supported`, with kube-apiserver's text
    /// for its own resources' field labels (`field label not supported: spec.foo`).
    pub fn parse(input: &str, supported: &[&str]) -> Result<Self, SelectorError> {
        Self::parse_checked(input, |field| {
            (!supported.contains(&field)).then(|| format!("field label not supported: {field}"))
        })
    }

    /// Parses the syntax of `input` only, any field name accepted (what kube-apiserver's
    /// request info decodes before the resource's field labels are checked).
    pub fn parse_syntax(input: &str) -> Result<Self, SelectorError> {
        Self::parse_checked(input, |_| None)
    }

    /// Parses `input` for a resource that supports [`METADATA_FIELDS`] only, with upstream's
    /// text for any other field (`DefaultMetaV1FieldSelectorConversion`, what metrics-server
    /// answers): `"spec.nodeName" is not a known field selector: only "metadata.name",
    /// "metadata.namespace"`.
    pub fn parse_metadata(input: &str) -> Result<Self, SelectorError> {
        Self::parse_checked(input, |field| {
            (!METADATA_FIELDS.contains(&field)).then(|| {
                format!("{} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"", go_quote(field))
            })
        })
    }

    /// Parses the syntax of every term (raw terms sorted first, as upstream), then checks the
    /// field names in that order; `refuse` gives the error for a field, if any.
    fn parse_checked(input: &str, refuse: impl Fn(&str) -> Option<String>) -> Result<Self, SelectorError> {
        let mut raw = split_terms(input);
        raw.sort_unstable();
        let mut terms = Vec::with_capacity(raw.len());
        for term in raw.iter().filter(|t| !t.is_empty()) {
            let (field, op, value) = split_term(term)
                .ok_or_else(|| SelectorError(format!("invalid selector: '{input}'; can't understand '{term}'")))?;
            let value = unescape(value).map_err(SelectorError)?;
            terms.push(FieldTerm { field: field.to_owned(), equals: op != "!=", value });
        }
        if let Some(e) = terms.iter().find_map(|t| refuse(&t.field)) {
            return Err(SelectorError(e));
        }
        terms.sort();
        terms.dedup();
        Ok(Self { terms })
    }

    /// Whether it selects everything.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The terms as (field, `true` for `=`/`==` or `false` for `!=`, unescaped value), for
    /// authorization attributes.
    pub fn terms(&self) -> impl Iterator<Item = (&str, bool, &str)> {
        self.terms.iter().map(|t| (t.field.as_str(), t.equals, t.value.as_str()))
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

/// `splitTerms`: splits on commas not escaped by a backslash; escapes are kept.
fn split_terms(s: &str) -> Vec<&str> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            out.push(&s[start..i]);
            start = i + 1;
        }
    }
    out.push(&s[start..]);
    out
}

/// `splitTerm`: the first `!=`, `==` or `=` from the left (escapes are not special in the
/// field name): (field, operator, raw value).
fn split_term(term: &str) -> Option<(&str, &'static str, &str)> {
    for (i, _) in term.char_indices() {
        for op in ["!=", "==", "="] {
            if term[i..].starts_with(op) {
                return Some((&term[..i], op, &term[i + op.len()..]));
            }
        }
    }
    None
}

/// `UnescapeValue`: resolves `\\`, `\,` and `\=`; another escape, a trailing `\`, or a bare
/// `,` or `=` is an error (upstream's text, the rune as a number).
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => return Err(format!("invalid field selector: invalid escape sequence: \\{c}")),
            }
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            ',' | '=' => return Err(format!("invalid field selector: unescaped character in value: {}", c as u32)),
            _ => out.push(c),
        }
    }
    if escaped {
        return Err("invalid field selector: invalid escape sequence: \\".to_owned());
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

    const NAME_RULE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
    const VALUE_RULE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

    /// Upstream's texts word for word (apimachinery v0.33 `labels.Parse`, as kube-apiserver and
    /// metrics-server answer them).
    #[test]
    fn bad_label_selectors_are_refused_with_upstreams_exact_text() {
        let long_value = "v".repeat(64);
        for (s, want) in [
            ("app in", "unable to parse requirement: found '' expected: '('".to_owned()),
            ("app in web", "unable to parse requirement: found 'web' expected: '('".to_owned()),
            ("!!", "unable to parse requirement: found '!', expected: identifier".to_owned()),
            ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt".to_owned()),
            ("a!", "unable to parse requirement: found '!', expected: in, notin, =, ==, !=, gt, lt".to_owned()),
            ("app=web tier", "found 'tier', expected: ',' or 'end of string'".to_owned()),
            ("app=web,", "found '', expected: identifier after ','".to_owned()),
            ("=web", "found '=', expected: !, identifier, or 'end of string'".to_owned()),
            ("!app=1", "found '=', expected: ',' or 'end of string'".to_owned()),
            ("app in (a b)", "unable to parse requirement: found 'b', expected: ',' or ')'".to_owned()),
            ("app in (b,", "unable to parse requirement: found '', expected: ',', or identifier".to_owned()),
            ("app in (b,=)", "unable to parse requirement: found '=', expected: ',', or identifier".to_owned()),
            ("app in =", "unable to parse requirement: found '=' expected: '('".to_owned()),
            ("app in (=", "unable to parse requirement: found '=', expected: ',', ')' or identifier".to_owned()),
            ("app==(", "unable to parse requirement: found '(', expected: identifier".to_owned()),
            ("-a=1", format!("unable to parse requirement: <nil>: Invalid value: \"-a\": name part {NAME_RULE}")),
            (
                "a/b/c=1",
                "unable to parse requirement: <nil>: Invalid value: \"a/b/c\": a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')".to_owned(),
            ),
            (
                "Ex.com/a=1",
                "unable to parse requirement: <nil>: Invalid value: \"Ex.com/a\": prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_owned(),
            ),
            ("/a=1", "unable to parse requirement: <nil>: Invalid value: \"/a\": prefix part must be non-empty".to_owned()),
            ("p/=1", format!("unable to parse requirement: <nil>: Invalid value: \"p/\": name part must be non-empty; name part {NAME_RULE}")),
            (&format!("{}=1", "k".repeat(64)), format!("unable to parse requirement: <nil>: Invalid value: \"{}\": name part must be no more than 63 characters", "k".repeat(64))),
            ("a=-x", format!("unable to parse requirement: values[0][a]: Invalid value: \"-x\": {VALUE_RULE}")),
            ("a in (z,-x)", format!("unable to parse requirement: values[0][a]: Invalid value: \"-x\": {VALUE_RULE}")),
            (&format!("a={long_value}"), format!("unable to parse requirement: values[0][a]: Invalid value: \"{long_value}\": must be no more than 63 characters")),
            ("n>x", "unable to parse requirement: values[0]: Invalid value: \"x\": for 'Gt', 'Lt' operators, the value must be an integer".to_owned()),
            ("n<-1", format!("unable to parse requirement: values[0][n]: Invalid value: \"-1\": {VALUE_RULE}")),
            (
                "n>-x",
                format!("unable to parse requirement: [values[0]: Invalid value: \"-x\": for 'Gt', 'Lt' operators, the value must be an integer, values[0][n]: Invalid value: \"-x\": {VALUE_RULE}]"),
            ),
            ("a\u{b}=1", format!("unable to parse requirement: <nil>: Invalid value: \"a\\v\": name part {NAME_RULE}")),
        ] {
            assert_eq!(LabelSelector::parse(s).expect_err(s).0, want, "{s:?}");
        }
    }

    #[test]
    fn label_requirements_are_sorted_by_key_with_sorted_unique_values() {
        let s = sel("z in (b,a,b,), a, !m");
        let got: Vec<(&str, Operator, Vec<&str>)> =
            s.requirements().iter().map(|r| (r.key(), r.operator(), r.values().iter().map(String::as_str).collect())).collect();
        assert_eq!(
            got,
            vec![("a", Operator::Exists, vec![]), ("m", Operator::DoesNotExist, vec![]), ("z", Operator::In, vec!["", "a", "b"])]
        );
        assert_eq!(sel("a==").requirements()[0].values(), [String::new()], "`a==` selects the empty value");
        assert!(LabelSelector::parse("a\u{a0}=1").is_err(), "only space, tab, CR and LF are whitespace");
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
    fn unsupported_or_malformed_field_selectors_are_refused_with_upstreams_text() {
        let meta = |s: &str| FieldSelector::parse_metadata(s).unwrap_err().0;
        assert_eq!(meta("spec.nodeName=n1"), r#""spec.nodeName" is not a known field selector: only "metadata.name", "metadata.namespace""#);
        assert_eq!(meta(" metadata.name=x"), r#"" metadata.name" is not a known field selector: only "metadata.name", "metadata.namespace""#);
        assert_eq!(meta("z=1,b=2"), r#""b" is not a known field selector: only "metadata.name", "metadata.namespace""#, "sorted terms");
        assert_eq!(meta("x=1,metadata.name"), "invalid selector: 'x=1,metadata.name'; can't understand 'metadata.name'", "syntax first");
        assert_eq!(meta(r"metadata.name=a\x"), r"invalid field selector: invalid escape sequence: \x");
        assert_eq!(meta(r"metadata.name=a\"), r"invalid field selector: invalid escape sequence: \");
        assert_eq!(meta("metadata.name=a=b"), "invalid field selector: unescaped character in value: 61");
        assert_eq!(FieldSelector::parse("spec.nodeName=n1", METADATA_FIELDS).unwrap_err().0, "field label not supported: spec.nodeName");
        assert_eq!(FieldSelector::parse("spec.nodeName=n1", &["spec.nodeName"]).unwrap().required("spec.nodeName"), Some("n1"));
    }

    #[test]
    fn selectors_print_as_text_that_parses_back_to_the_same_selector() {
        for (input, printed) in [
            ("", ""),
            ("app", "app"),
            ("!app", "!app"),
            ("app==web, tier != db", "app=web,tier!=db"),
            ("app in (a, b,), x notin (in)", "app in (,a,b),x!=in"),
            ("app in ()", "app="),
            ("n<5, example.com/n>007", "example.com/n>007,n<5"),
            ("b in (y,x), a", "a,b in (x,y)"),
            ("in=notin", "in=notin"),
        ] {
            let s = sel(input);
            assert_eq!(s.to_string(), printed, "{input:?}");
            assert_eq!(sel(&s.to_string()), s, "{input:?}");
        }
        for (input, printed) in [
            ("", ""),
            (r"metadata.name==a\,b\=c\\", r"metadata.name=a\,b\=c\\"),
            ("metadata.namespace!=!x,metadata.name=", "metadata.name=,metadata.namespace!=!x"),
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
