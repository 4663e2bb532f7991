//! The label and field selector parsers on arbitrary text (a `?labelSelector=` or
//! `?fieldSelector=` from any client that passed authorization).
//!
//! Invariants: parsing never panics; a selector that parses prints (Display) as text that parses
//! back to the same selector; matching never panics and agrees between a selector and its
//! re-parsed copy; an empty selector matches everything.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use shardmetrics_plumbing::selector::{FieldSelector, LabelSelector, METADATA_FIELDS};

/// Label sets to match against: derived from the input so that values it names can match.
fn label_sets(text: &str) -> Vec<BTreeMap<String, String>> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || "=!(),<>".contains(c))
        .filter(|w| !w.is_empty() && *w != "in" && *w != "notin")
        .take(8)
        .collect();
    let mut sets = vec![BTreeMap::new()];
    let mut all = BTreeMap::new();
    for pair in words.windows(2) {
        all.insert(pair[0].to_owned(), pair[1].to_owned());
        sets.push(BTreeMap::from([(pair[0].to_owned(), pair[1].to_owned())]));
    }
    for w in &words {
        all.entry((*w).to_owned()).or_insert_with(|| "1".to_owned());
    }
    sets.push(all);
    sets
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };

    if let Ok(selector) = LabelSelector::parse(text) {
        let printed = selector.to_string();
        let again = LabelSelector::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
        assert_eq!(again, selector, "{text:?} printed as {printed:?}, which parses differently");
        for labels in label_sets(text) {
            assert_eq!(selector.matches(&labels), again.matches(&labels));
            if selector.is_empty() {
                assert!(selector.matches(&labels));
            }
        }
    }

    if let Ok(selector) = FieldSelector::parse(text, METADATA_FIELDS) {
        let printed = selector.to_string();
        let again = FieldSelector::parse(&printed, METADATA_FIELDS)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
        assert_eq!(again, selector, "{text:?} printed as {printed:?}, which parses differently");
        let name = selector.required("metadata.name").unwrap_or("x").to_owned();
        let namespace = selector.required("metadata.namespace").unwrap_or("").to_owned();
        assert_eq!(selector.matches_metadata(&namespace, &name), again.matches_metadata(&namespace, &name));
        if selector.is_empty() {
            assert!(selector.matches_metadata(&namespace, &name));
        }
    }
});
