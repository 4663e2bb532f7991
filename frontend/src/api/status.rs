//! Every error answer is a `metav1.Status`, as kube-apiserver and metrics-server write it.

use std::io::Write as _;

use bytes::Bytes;
use http::StatusCode;
use shardmetrics_plumbing::selector::go_quote;

/// The group every resource here belongs to.
pub const GROUP: &str = "metrics.k8s.io";

/// `Status.details`: what the error is about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Details {
    /// The object's name, if one.
    pub name: Option<String>,
    /// The API group of the resource (empty for core).
    pub group: Option<String>,
    /// The resource (`nodemetrics`, `podmetrics`, or `node`/`pod` for missing objects).
    pub kind: Option<String>,
    /// Seconds the client should wait before retrying (429).
    pub retry_after_seconds: Option<u32>,
}

/// A failed request as a Kubernetes `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// HTTP status code (also `Status.code`).
    pub code: StatusCode,
    /// Machine-readable `Status.reason` (`NotFound`, `BadRequest`, ...).
    pub reason: &'static str,
    /// Human-readable `Status.message`.
    pub message: String,
    /// `Status.details`; `None` writes no details.
    pub details: Option<Box<Details>>,
}

impl Status {
    /// A 404 for an object that exists but has no metrics (yet), or whose resource is
    /// `nodemetrics`/`podmetrics`: `nodemetrics.metrics.k8s.io "x" not found`.
    pub fn metrics_not_found(resource: &str, name: &str) -> Self {
        Self {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("{resource}.{GROUP} {} not found", go_quote(name)),
            details: Some(Box::new(Details {
                name: Some(name.to_owned()),
                group: Some(GROUP.to_owned()),
                kind: Some(resource.to_owned()),
                retry_after_seconds: None,
            })),
        }
    }

    /// A 404 for a Node or Pod that does not exist (metrics-server forwards its lister's
    /// error, whose resource is `node` for the typed node lister and `pods` for the metadata
    /// pod lister): `pods "x" not found`, core group.
    pub fn object_not_found(kind: &str, name: &str) -> Self {
        Self {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: format!("{kind} {} not found", go_quote(name)),
            details: Some(Box::new(Details {
                name: Some(name.to_owned()),
                group: Some(String::new()),
                kind: Some(kind.to_owned()),
                retry_after_seconds: None,
            })),
        }
    }

    /// A 404 for a path this server does not serve.
    pub fn path_not_found() -> Self {
        Self {
            code: StatusCode::NOT_FOUND,
            reason: "NotFound",
            message: "the server could not find the requested resource".to_owned(),
            details: Some(Box::default()),
        }
    }

    /// A 405 for a method other than GET/HEAD.
    pub fn method_not_allowed() -> Self {
        Self {
            code: StatusCode::METHOD_NOT_ALLOWED,
            reason: "MethodNotAllowed",
            message: "the server does not allow this method on the requested resource".to_owned(),
            details: Some(Box::default()),
        }
    }

    /// A 400 with `message` (bad selector, bad parameter).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { code: StatusCode::BAD_REQUEST, reason: "BadRequest", message: message.into(), details: None }
    }

    /// A 406 when no offered media type is one this server writes.
    pub fn not_acceptable(accept: &str) -> Self {
        Self {
            code: StatusCode::NOT_ACCEPTABLE,
            reason: "NotAcceptable",
            message: format!(
                "only the following media types are accepted: application/json, \
                 application/vnd.kubernetes.protobuf, application/json;as=Table;v=v1;g=meta.k8s.io (got {accept:?})"
            ),
            details: None,
        }
    }

    /// A 429 when `--max-requests-inflight` is reached.
    pub fn too_many_requests(retry_after_seconds: u32) -> Self {
        Self {
            code: StatusCode::TOO_MANY_REQUESTS,
            reason: "TooManyRequests",
            message: "Too many requests, please try again later.".to_owned(),
            details: Some(Box::new(Details { retry_after_seconds: Some(retry_after_seconds), ..Details::default() })),
        }
    }

    /// A status from an authentication/authorization failure (401, 403).
    pub fn from_auth(code: StatusCode, reason: &'static str, message: String) -> Self {
        Self { code, reason, message, details: None }
    }

    /// A 500 for a failure of this server.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "InternalError",
            message: message.into(),
            details: None,
        }
    }

    /// The JSON body.
    pub fn to_json(&self) -> Bytes {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(br#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"#);
        json_str(&mut out, &self.message);
        out.extend_from_slice(br#","reason":"#);
        json_str(&mut out, self.reason);
        if let Some(d) = &self.details {
            out.extend_from_slice(br#","details":{"#);
            let mut first = true;
            let mut field = |out: &mut Vec<u8>, key: &str| {
                if !first {
                    out.push(b',');
                }
                first = false;
                json_str(out, key);
                out.push(b':');
            };
            if let Some(v) = &d.name {
                field(&mut out, "name");
                json_str(&mut out, v);
            }
            if let Some(v) = d.group.as_ref().filter(|g| !g.is_empty()) {
                field(&mut out, "group");
                json_str(&mut out, v);
            }
            if let Some(v) = &d.kind {
                field(&mut out, "kind");
                json_str(&mut out, v);
            }
            if let Some(v) = d.retry_after_seconds {
                field(&mut out, "retryAfterSeconds");
                let _ = write!(out, "{v}");
            }
            out.push(b'}');
        }
        // A trailing newline, as Go's json.Encoder (and so kube-apiserver) writes.
        let _ = writeln!(out, r#","code":{}}}"#, self.code.as_u16());
        Bytes::from(out)
    }
}

/// Bytes [`json_str`] must look at: those it escapes, and 0xE2 (the first byte of U+2028 and
/// U+2029).
const NEEDS_LOOK: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t[b'<' as usize] = true;
    t[b'>' as usize] = true;
    t[b'&' as usize] = true;
    t[0xE2] = true;
    t
};

/// Whether any of the eight bytes of `w` is one [`NEEDS_LOOK`] marks, or any byte of 0x80 and
/// above (a superset of its 0xE2: such a word is then read a byte at a time). Exact presence
/// tests, no false negatives: "has a zero byte" is `(v - 0x01..) & !v & 0x80..`, "has a byte
/// below n" (n <= 128) is `(v - n..) & !v & 0x80..`.
#[inline]
fn word_needs_look(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
    let special = [b'"', b'\\', b'<', b'>', b'&'].iter().fold(0, |acc, c| acc | zero(w ^ (ONES * u64::from(*c))));
    (w & HIGH) | below_space | special != 0
}

/// Appends `s` as a JSON string, escaped as Go's `encoding/json` escapes it (what every
/// kube-apiserver and metrics-server body holds): `"` `\\` `\n` `\r` `\t` short, other
/// control characters and the HTML-sensitive `<` `>` `&` as `\u00XX`, U+2028 and U+2029 as
/// `\u2028` `\u2029`.
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let b = s.as_bytes();
    out.reserve(b.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        // Most names and labels need nothing: eight bytes at a time while none needs a look.
        if let Some(word) = b.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok())
            && !word_needs_look(u64::from_le_bytes(word))
        {
            i += 8;
            continue;
        }
        let c = b[i];
        // Then one table look-up a byte.
        if !NEEDS_LOOK[usize::from(c)] {
            i += 1;
            continue;
        }
        let escape: Option<&[u8]> = match c {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f | b'<' | b'>' | b'&' => Some(&[]),
            // U+2028 / U+2029 are E2 80 A8 / E2 80 A9 in UTF-8.
            0xE2 if b.get(i + 1) == Some(&0x80) && matches!(b.get(i + 2), Some(0xA8 | 0xA9)) => Some(&[]),
            _ => None,
        };
        let Some(short) = escape else {
            i += 1;
            continue;
        };
        out.extend_from_slice(&b[start..i]);
        if !short.is_empty() {
            out.extend_from_slice(short);
            i += 1;
        } else if c == 0xE2 {
            out.extend_from_slice(if b[i + 2] == 0xA8 { b"\\u2028" } else { b"\\u2029" });
            i += 3;
        } else {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]]);
            i += 1;
        }
        start = i;
    }
    // Usually the whole string: short, so without a `memcpy` call.
    super::out::put_short(out, &b[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &Status) -> serde_json::Value {
        serde_json::from_slice(&s.to_json()).expect("valid json")
    }

    #[test]
    fn a_missing_node_metric_is_a_not_found_status_like_metrics_server() {
        let v = parse(&Status::metrics_not_found("nodemetrics", "node-\"7\""));
        assert_eq!(
            v,
            serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "nodemetrics.metrics.k8s.io \"node-\\\"7\\\"\" not found",
                "reason": "NotFound",
                "details": {"name": "node-\"7\"", "group": "metrics.k8s.io", "kind": "nodemetrics"},
                "code": 404
            })
        );
    }

    #[test]
    fn a_missing_pod_object_names_the_core_kind_without_a_group() {
        let v = parse(&Status::object_not_found("pods", "web"));
        assert_eq!(v["message"], "pods \"web\" not found");
        assert_eq!(v["details"], serde_json::json!({"name": "web", "kind": "pods"}));
        assert!(Status::object_not_found("pods", "web").to_json().ends_with(b"}\n"), "a trailing newline, as Go's encoder");
    }

    #[test]
    fn strings_are_escaped_as_go_encoding_json_escapes_them() {
        let mut out = Vec::new();
        json_str(&mut out, "<nil> & \"q\" \\ \n\r\t\u{1}\u{8}\u{c}\u{7f} \u{2028}\u{2029} é ✓");
        let want = "\"\\u003cnil\\u003e \\u0026 \\\"q\\\" \\\\ \\n\\r\\t\\u0001\\u0008\\u000c\u{7f} \\u2028\\u2029 é ✓\"";
        assert_eq!(String::from_utf8(out).expect("utf-8"), want);
        let mut plain = Vec::new();
        json_str(&mut plain, "app-0-6fb4666986-twcnl");
        assert_eq!(plain, b"\"app-0-6fb4666986-twcnl\"");
    }

    /// The byte-at-a-time escaping [`json_str`] did before it skipped plain words.
    fn json_str_bytewise(s: &str) -> Vec<u8> {
        let mut out = vec![b'"'];
        for (i, c) in s.char_indices() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                '\u{2028}' => out.extend_from_slice(b"\\u2028"),
                '\u{2029}' => out.extend_from_slice(b"\\u2029"),
                '\0'..='\u{1f}' | '<' | '>' | '&' => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
                _ => out.extend_from_slice(&s.as_bytes()[i..i + c.len_utf8()]),
            }
        }
        out.push(b'"');
        out
    }

    #[test]
    fn word_skipping_escapes_exactly_as_byte_at_a_time() {
        // Every special character at every position of strings of 0 to 20 bytes, between
        // plain ASCII and beside other multi-byte characters.
        let specials = ["\"", "\\", "\n", "\r", "\t", "\u{1}", "\u{1f}", "<", ">", "&", "\u{7f}", "\u{2028}", "\u{2029}", "é", "✓", "\u{2027}", " ", "~"];
        for len in 0..20 {
            for pos in 0..=len {
                for sp in specials {
                    let s = format!("{}{sp}{}", "a".repeat(pos), "Z9-._".chars().cycle().take(len - pos).collect::<String>());
                    let mut out = Vec::new();
                    json_str(&mut out, &s);
                    assert_eq!(out, json_str_bytewise(&s), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn every_constructor_writes_its_code_and_reason() {
        for (s, code, reason) in [
            (Status::method_not_allowed(), 405, "MethodNotAllowed"),
            (Status::bad_request("x"), 400, "BadRequest"),
            (Status::not_acceptable("text/html"), 406, "NotAcceptable"),
            (Status::too_many_requests(1), 429, "TooManyRequests"),
            (Status::internal("x"), 500, "InternalError"),
            (Status::path_not_found(), 404, "NotFound"),
        ] {
            let v = parse(&s);
            assert_eq!((v["code"].as_u64(), v["reason"].as_str()), (Some(code), Some(reason)));
            assert_eq!(s.code.as_u16() as u64, code);
        }
        assert_eq!(parse(&Status::too_many_requests(3))["details"]["retryAfterSeconds"], 3);
        assert!(parse(&Status::bad_request("x")).get("details").is_none());
    }
}
