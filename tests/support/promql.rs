//! A PromQL scanner: the metric selectors, label matchers and `by (…)`/`without (…)` clauses
//! of an expression, enough to check that rules and dashboards name only what ethgate exports.

/// A metric selector found in an expression.
#[derive(Debug)]
pub struct Selector {
    /// The metric name.
    pub metric: String,
    /// (label, operator, value)
    pub matchers: Vec<(String, String, String)>,
}

/// Whether `b` may stand in a metric or label name.
pub fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// Parses `{label op "value", …}` starting at `bytes[start] == b'{'`.
pub fn matchers_at(expr: &str, start: usize) -> Vec<(String, String, String)> {
    let close = expr[start..]
        .find('}')
        .map(|n| start + n)
        .unwrap_or_else(|| panic!("unclosed selector in {expr}"));
    let mut out = Vec::new();
    let mut rest = &expr[start + 1..close];
    while !rest.trim().is_empty() {
        let trimmed = rest.trim_start().trim_start_matches(',').trim_start();
        let name_len = trimmed.bytes().take_while(|b| is_ident(*b)).count();
        let (name, after) = trimmed.split_at(name_len);
        let after = after.trim_start();
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| after.starts_with(op))
            .unwrap_or_else(|| panic!("bad matcher {trimmed:?} in {expr}"));
        let after = after[op.len()..].trim_start();
        assert!(after.starts_with('"'), "unquoted label value in {expr}");
        let end = after[1..]
            .find('"')
            .unwrap_or_else(|| panic!("unclosed label value in {expr}"));
        out.push((
            name.to_string(),
            op.to_string(),
            after[1..1 + end].to_string(),
        ));
        rest = &after[end + 2..];
        if rest.trim().is_empty() {
            break;
        }
    }
    out
}

/// Every `ethgate_*` selector (and `up`) in a PromQL expression, skipping quoted strings.
pub fn selectors(expr: &str) -> Vec<Selector> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' {
            in_string = !in_string;
            i += 1;
            continue;
        }
        if in_string || !is_ident(b) || (i > 0 && is_ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let len = bytes[i..].iter().take_while(|b| is_ident(**b)).count();
        let word = &expr[i..i + len];
        let end = i + len;
        i = end;
        let followed_by_paren = expr[end..].trim_start().starts_with('(');
        let is_metric = word.starts_with("ethgate_") || (word == "up" && !followed_by_paren);
        if !is_metric {
            continue;
        }
        let matchers = if bytes.get(end) == Some(&b'{') {
            i = end + expr[end..].find('}').unwrap_or(0) + 1;
            matchers_at(expr, end)
        } else {
            Vec::new()
        };
        out.push(Selector {
            metric: word.to_string(),
            matchers,
        });
    }
    out
}

/// Label lists of every `by (…)` / `without (…)` clause.
pub fn grouping_clauses(expr: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for keyword in ["by", "without"] {
        let mut from = 0;
        while let Some(n) = expr[from..].find(keyword) {
            let at = from + n;
            from = at + keyword.len();
            let before_ok = at == 0 || !is_ident(expr.as_bytes()[at - 1]);
            let after = expr[from..].trim_start();
            if !before_ok || !after.starts_with('(') {
                continue;
            }
            let close = after.find(')').expect("closed by clause");
            out.push(
                after[1..close]
                    .split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect(),
            );
        }
    }
    out
}

/// Literal label values a matcher can match, when it is a plain value or alternation of them.
pub fn literal_values(op: &str, value: &str) -> Option<Vec<String>> {
    if value.contains('$') || value.is_empty() {
        return None;
    }
    match op {
        "=" | "!=" => Some(vec![value.to_string()]),
        "=~" | "!~" => {
            let plain = value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'|');
            plain.then(|| value.split('|').map(str::to_string).collect())
        }
        _ => None,
    }
}
