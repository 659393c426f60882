//! The one Prometheus text-format parser of the tests: a scrape parsed into typed families and
//! samples, asserting on the way that the exposition is well-formed (grouped families, one TYPE
//! and HELP each, cumulative histogram buckets, `+Inf` equal to `_count`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use super::gateway::Gateway;
use super::http::WAIT;

/// A series' labels, sorted by name.
pub type Labels = Vec<(String, String)>;

/// One parsed scrape; parsing asserts that it is well-formed.
pub struct Scrape {
    /// The exposition as scraped.
    pub text: String,
    /// Family name -> declared type.
    pub types: HashMap<String, String>,
    /// (sample name, sorted labels) -> value.
    pub samples: BTreeMap<(String, Labels), f64>,
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn valid_label_name(name: &str) -> bool {
    valid_name(name) && !name.contains(':')
}

/// Parses `{k="v",…}`; returns the labels and the rest of the line.
fn parse_labels<'a>(line: &str, mut rest: &'a str) -> (Labels, &'a str) {
    let mut labels = Vec::new();
    rest = &rest[1..];
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label in {line:?}"));
        assert!(
            valid_label_name(name),
            "bad label name {name:?} in {line:?}"
        );
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(
            labels.iter().all(|(n, _)| n != name),
            "label {name} twice in {line:?}"
        );
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The family a sample belongs to: histogram samples carry a suffix.
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    name
}

impl Scrape {
    /// Parses a text exposition, asserting that it is well-formed.
    pub fn parse(text: &str) -> Scrape {
        assert!(
            text.ends_with('\n'),
            "exposition must end with a newline:\n{text}"
        );
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helps: HashSet<String> = HashSet::new();
        let mut samples = BTreeMap::new();
        let mut finished_families: HashSet<String> = HashSet::new();
        let mut current_family = String::new();
        for line in text.lines() {
            assert!(!line.trim().is_empty(), "blank line in exposition:\n{text}");
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or_default();
                assert!(valid_name(name), "bad HELP line {line:?}");
                assert!(helps.insert(name.to_string()), "HELP twice for {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                assert!(parts.next().is_none(), "bad TYPE line {line:?}");
                assert!(valid_name(name), "bad TYPE line {line:?}");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "bad type in {line:?}"
                );
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE twice for {name}"
                );
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let name_len = line
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b':')
                .count();
            let name = &line[..name_len];
            assert!(valid_name(name), "bad sample line {line:?}");
            let (mut labels, rest) = if line[name_len..].starts_with('{') {
                parse_labels(line, &line[name_len..])
            } else {
                (Vec::new(), &line[name_len..])
            };
            let mut fields = rest
                .strip_prefix(' ')
                .unwrap_or_else(|| panic!("sample {line:?}: one space between series and value"));
            fields = fields.trim_end();
            let mut parts = fields.split(' ');
            let value_text = parts.next().unwrap_or_default();
            let value: f64 = value_text.parse().unwrap_or_else(|_| {
                panic!("sample {line:?}: value {value_text:?} is not a number")
            });
            if let Some(timestamp) = parts.next() {
                assert!(
                    timestamp.parse::<i64>().is_ok(),
                    "bad timestamp in {line:?}"
                );
            }
            assert!(parts.next().is_none(), "trailing fields in {line:?}");
            let family = family_of(name, &types).to_string();
            let kind = types
                .get(&family)
                .unwrap_or_else(|| panic!("sample {line:?} has no preceding # TYPE {family}"));
            if family != current_family {
                assert!(
                    !finished_families.contains(&family),
                    "samples of {family} are not grouped together"
                );
                finished_families.insert(std::mem::take(&mut current_family));
                current_family = family.clone();
            }
            if kind == "counter" || kind == "histogram" {
                assert!(
                    value.is_finite() && value >= 0.0,
                    "{kind} sample {line:?} is negative or not finite"
                );
            }
            if kind == "histogram" && name.ends_with("_bucket") {
                assert!(
                    labels.iter().any(|(n, _)| n == "le"),
                    "bucket without le: {line:?}"
                );
            }
            labels.sort();
            let key = (name.to_string(), labels);
            assert!(
                samples.insert(key, value).is_none(),
                "duplicate series {line:?}"
            );
        }
        let scrape = Scrape {
            text: text.to_string(),
            types,
            samples,
        };
        scrape.check_histograms();
        scrape
    }

    /// Buckets are cumulative and `+Inf` equals `_count`, per label set.
    fn check_histograms(&self) {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let bucket_name = format!("{family}_bucket");
            let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
            for ((name, labels), value) in &self.samples {
                if *name != bucket_name {
                    continue;
                }
                let le = labels.iter().find(|(n, _)| n == "le").expect("le");
                let bound: f64 = if le.1 == "+Inf" {
                    f64::INFINITY
                } else {
                    le.1.parse().expect("le is a number")
                };
                let rest: Labels = labels.iter().filter(|(n, _)| n != "le").cloned().collect();
                series.entry(rest).or_default().push((bound, *value));
            }
            assert!(!series.is_empty(), "histogram {family} has no buckets");
            for (labels, mut buckets) in series {
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                assert!(
                    buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                    "{family}{labels:?}: buckets not cumulative: {buckets:?}"
                );
                let inf = buckets.last().expect("a bucket");
                assert!(inf.0.is_infinite(), "{family}{labels:?}: no +Inf bucket");
                let count = self.samples[&(format!("{family}_count"), labels.clone())];
                assert_eq!(inf.1, count, "{family}{labels:?}: +Inf bucket != _count");
                assert!(
                    self.samples
                        .contains_key(&(format!("{family}_sum"), labels.clone())),
                    "{family}{labels:?}: no _sum"
                );
            }
        }
    }

    /// The value of a series with exactly these labels, if exported.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut key: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        self.samples.get(&(name.to_string(), key)).copied()
    }

    /// The value of a series that must be exported.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in /metrics:\n{}", self.text))
    }

    /// Asserts a series' value, showing the exposition when it differs.
    pub fn assert(&self, name: &str, labels: &[(&str, &str)], expected: f64) {
        let got = self.value(name, labels);
        assert_eq!(
            got, expected,
            "{name}{labels:?} is {got}, expected {expected}; /metrics:\n{}",
            self.text
        );
    }

    /// `ethgate_requests_total` series with a non-zero value: (transport, method, result) -> count.
    pub fn requests(&self) -> BTreeMap<(String, String, String), f64> {
        self.samples
            .iter()
            .filter(|((name, _), _)| name == "ethgate_requests_total")
            .map(|((_, labels), v)| {
                let get = |k: &str| {
                    labels
                        .iter()
                        .find(|(n, _)| n == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                ((get("transport"), get("method"), get("result")), *v)
            })
            .filter(|(_, v)| *v != 0.0)
            .collect()
    }

    /// Every `ethgate_upstream_requests_total{upstream}` series: result -> count.
    pub fn upstream_attempts(&self, upstream: &str) -> BTreeMap<String, f64> {
        self.samples
            .iter()
            .filter(|((name, labels), _)| {
                name == "ethgate_upstream_requests_total"
                    && labels.iter().any(|(n, v)| n == "upstream" && v == upstream)
            })
            .map(|((_, labels), v)| {
                let result = labels.iter().find(|(n, _)| n == "result").expect("result");
                (result.1.clone(), *v)
            })
            .collect()
    }
}

/// Scrapes `gw`'s `/metrics` and parses it.
pub async fn scrape(gw: &Gateway) -> Scrape {
    let (code, body) = gw.admin_get("/metrics").await;
    assert_eq!(code, 200, "/metrics answered {code}");
    Scrape::parse(std::str::from_utf8(&body).expect("/metrics is UTF-8"))
}

/// Scrapes until `pred` holds (at most `WAIT`), for gauges that follow an event asynchronously.
pub async fn scrape_until(gw: &Gateway, what: &str, pred: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let scrape = scrape(gw).await;
        if pred(&scrape) {
            return scrape;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}; /metrics:\n{}", scrape.text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one series, written exactly as exported (`name` or `name{label="v"}`), in a
/// text exposition, without judging the rest of it.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
