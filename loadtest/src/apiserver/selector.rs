//! Label and field selectors in the Kubernetes query syntax (`?labelSelector=`, `?fieldSelector=`).
//!
//! Label selectors support the full syntax of `k8s.io/apimachinery/pkg/labels`: `key`, `!key`,
//! `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key>N`, `key<N`,
//! comma-separated and ANDed. Field selectors support `=`, `==` and `!=` on the fields a resource
//! declares (see `resources`).

use std::collections::BTreeMap;

/// A selector that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Gt(String, i64),
    Lt(String, i64),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses the query-string syntax.
    pub fn parse(selector: &str) -> Result<LabelSelector, SelectorError> {
        let err = |reason: String| SelectorError { selector: selector.to_owned(), reason };
        let mut reqs = Vec::new();
        for term in split_top_level(selector).map_err(err)? {
            let term = term.trim();
            if term.is_empty() {
                if selector.trim().is_empty() {
                    continue;
                }
                return Err(err("empty requirement".into()));
            }
            reqs.push(parse_requirement(term).map_err(err)?);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether the selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Gt(k, n) => labels.get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => labels.get(k).and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v < *n),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(valid_key(key.trim())?));
    }
    // Set-based: `key in (a, b)` / `key notin (a, b)`.
    if let Some(open) = term.find('(') {
        let head = term[..open].trim_end();
        let close = term.rfind(')').ok_or("missing ')'")?;
        if !term[close + 1..].trim().is_empty() {
            return Err(format!("unexpected text after ')' in {term:?}"));
        }
        let values: Vec<String> = term[open + 1..close]
            .split(',')
            .map(|v| valid_value(v.trim()))
            .collect::<Result<_, _>>()?;
        let (key, op) = head.rsplit_once(char::is_whitespace).ok_or_else(|| format!("expected 'in' or 'notin' in {term:?}"))?;
        let key = valid_key(key.trim())?;
        return match op {
            "in" => Ok(Requirement::In(key, values)),
            "notin" => Ok(Requirement::NotIn(key, values)),
            other => Err(format!("unknown set operator {other:?}")),
        };
    }
    for (op, len) in [("!=", 2), ("==", 2), ("=", 1), (">", 1), ("<", 1)] {
        if let Some(at) = term.find(op) {
            let key = valid_key(term[..at].trim())?;
            let value = term[at + len..].trim();
            return match op {
                "!=" => Ok(Requirement::NotIn(key, vec![valid_value(value)?])),
                "==" | "=" => Ok(Requirement::In(key, vec![valid_value(value)?])),
                ">" => value.parse().map(|n| Requirement::Gt(key, n)).map_err(|_| format!("{value:?} is not an integer")),
                _ => value.parse().map(|n| Requirement::Lt(key, n)).map_err(|_| format!("{value:?} is not an integer")),
            };
        }
    }
    Ok(Requirement::Exists(valid_key(term)?))
}

fn valid_key(key: &str) -> Result<String, String> {
    let ok = !key.is_empty()
        && key.len() <= 317
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && key.matches('/').count() <= 1;
    if ok { Ok(key.to_owned()) } else { Err(format!("invalid label key {key:?}")) }
}

fn valid_value(value: &str) -> Result<String, String> {
    let ok = value.len() <= 63 && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(value.to_owned()) } else { Err(format!("invalid label value {value:?}")) }
}

/// A parsed field selector: `field=value`, `field==value`, `field!=value`, ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses the query-string syntax and checks every field against `supported`.
    pub fn parse(selector: &str, supported: &[&str]) -> Result<FieldSelector, SelectorError> {
        let err = |reason: String| SelectorError { selector: selector.to_owned(), reason };
        let mut terms = Vec::new();
        for term in selector.split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(err(format!("{term:?}: expected field=value or field!=value")));
            };
            let field = field.trim();
            if !supported.contains(&field) {
                return Err(err(format!("field label not supported: {field}")));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(FieldSelector(terms))
    }

    /// Whether the selector matches everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value the selector requires `field` to equal, if any (used to pick an index).
    pub fn required(&self, field: &str) -> Option<&str> {
        self.0.iter().find(|(f, eq, _)| f == field && *eq).map(|(_, _, v)| v.as_str())
    }

    /// Whether the object's fields, read through `value_of`, satisfy every term. A field the
    /// object does not have reads as the empty string, as in Kubernetes.
    pub fn matches<'a>(&self, value_of: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|(field, equal, want)| (value_of(field).unwrap_or("") == want) == *equal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn equality_and_inequality_terms_are_anded() {
        let s = LabelSelector::parse("app=web, tier!=db").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "db")])));
        assert!(!s.matches(&labels(&[("app", "api")])));
        assert!(LabelSelector::parse("app==web").unwrap().matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn set_based_and_existence_terms_work() {
        let s = LabelSelector::parse("env in (prod, staging),!canary,kubernetes.io/os,zone notin (a)").unwrap();
        assert!(s.matches(&labels(&[("env", "prod"), ("kubernetes.io/os", "linux")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("kubernetes.io/os", "linux"), ("canary", "")])));
        assert!(!s.matches(&labels(&[("env", "dev"), ("kubernetes.io/os", "linux")])));
        assert!(!s.matches(&labels(&[("env", "prod"), ("kubernetes.io/os", "linux"), ("zone", "a")])));
        assert!(!s.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn numeric_comparisons_need_integer_labels() {
        let s = LabelSelector::parse("gen>3,gen<10").unwrap();
        assert!(s.matches(&labels(&[("gen", "5")])));
        assert!(!s.matches(&labels(&[("gen", "3")])));
        assert!(!s.matches(&labels(&[("gen", "x")])));
    }

    #[test]
    fn the_empty_selector_matches_everything_and_garbage_is_an_error() {
        assert!(LabelSelector::parse("").unwrap().matches(&labels(&[])));
        for bad in ["a in (b", "a=b)", "=x", "a in b", "a,,b", "a=b c", "a>x"] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn field_selectors_accept_only_supported_fields() {
        let fs = FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", &["spec.nodeName", "status.phase"]).unwrap();
        assert_eq!(fs.required("spec.nodeName"), Some("n1"));
        let fields = |f: &str| match f {
            "spec.nodeName" => Some("n1"),
            "status.phase" => Some("Running"),
            _ => None,
        };
        assert!(fs.matches(fields));
        assert!(!fs.matches(|f| if f == "spec.nodeName" { Some("n2") } else { None }));
        let err = FieldSelector::parse("spec.foo=1", &["metadata.name"]).unwrap_err();
        assert!(err.reason.contains("field label not supported: spec.foo"));
    }
}
