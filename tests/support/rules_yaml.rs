//! A line scanner for Prometheus rule files and promtool rule tests (YAML without a YAML
//! dependency): `- alert:` entries with their keys, block scalars `|`/`>` included.

use std::collections::HashMap;

/// One `- alert:` entry of the rules file.
#[derive(Debug, Default)]
pub struct Rule {
    /// The alert's name.
    pub alert: String,
    /// Its line number (1-based) in the file.
    pub line: usize,
    /// Every key it sets, nested ones (`labels`, `annotations`) by their own name.
    pub fields: HashMap<String, String>,
}

impl Rule {
    /// The value of `key`, "" when unset.
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// A plain or quoted one-line YAML scalar.
fn scalar(raw: &str) -> String {
    let raw = raw.trim();
    if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        return raw[1..raw.len() - 1].replace("\\\"", "\"");
    }
    if raw.len() >= 2 && raw.starts_with('\'') && raw.ends_with('\'') {
        return raw[1..raw.len() - 1].replace("''", "'");
    }
    raw.to_string()
}

/// `key: value` of a line, if it is one (`- key: value` list items included).
fn key_value(line: &str) -> Option<(&str, &str)> {
    let body = line.trim_start().trim_start_matches("- ").trim_start();
    if body.starts_with('#') {
        return None;
    }
    let (key, value) = body.split_once(':')?;
    let key_ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    key_ok.then_some((key, value.trim()))
}

/// Reads the value of the key on `lines[i]`: a one-line scalar, or a `|`/`>` block scalar made
/// of the following lines indented deeper than the key. Returns the value and the next line.
pub fn value_at(lines: &[&str], i: usize, raw: &str) -> (String, usize) {
    let block = matches!(raw, "|" | "|-" | "|+" | ">" | ">-" | ">+");
    if !block {
        return (scalar(raw), i + 1);
    }
    let key_indent = indent_of(lines[i]);
    let mut parts = Vec::new();
    let mut j = i + 1;
    while j < lines.len() && (lines[j].trim().is_empty() || indent_of(lines[j]) > key_indent) {
        parts.push(lines[j].trim());
        j += 1;
    }
    (parts.join("\n").trim().to_string(), j)
}

/// Every alert rule of `text` (the rules file `file`, named in failures) with the keys it sets (`expr`, `for`, `severity`, `summary`, …).
pub fn parse_rules(file: &str, text: &str) -> Vec<Rule> {
    assert!(
        !text.contains('\t'),
        "{file}: tabs are not valid YAML indentation"
    );
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<Rule> = Vec::new();
    // Whether the lines being read belong to the last rule (a new group ends it).
    let mut in_rule = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let Some((key, raw)) = key_value(line) else {
            i += 1;
            continue;
        };
        let list_item = line.trim_start().starts_with("- ");
        if key == "alert" && list_item {
            rules.push(Rule {
                alert: scalar(raw),
                line: i + 1,
                ..Rule::default()
            });
            in_rule = true;
            i += 1;
            continue;
        }
        if key == "record" {
            panic!("{file}:{}: recording rules are not expected here", i + 1);
        }
        if key == "name" && list_item {
            in_rule = false;
        }
        let (value, next) = value_at(&lines, i, raw);
        if let Some(rule) = rules.last_mut().filter(|_| in_rule) {
            if !value.is_empty() {
                let previous = rule.fields.insert(key.to_string(), value);
                assert!(
                    previous.is_none(),
                    "{file}:{}: {key} set twice in {}",
                    i + 1,
                    rule.alert
                );
            }
        } else {
            assert_ne!(key, "expr", "{file}:{}: expr outside a rule", i + 1);
        }
        i = next;
    }
    rules
}

/// `- series: '…'` selectors of the promtool unit tests.
pub fn rule_test_series(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(key_value)
        .filter(|(key, _)| *key == "series")
        .map(|(_, raw)| scalar(raw))
        .collect()
}
