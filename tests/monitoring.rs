//! deploy/monitoring: the alert rules, their promtool unit tests and the Grafana dashboard name
//! only metrics, labels and label values that a running ethgate exports.
//!
//! No YAML parser is a dependency: the rules file is read line by line (block scalars `|`/`>`
//! included). When `promtool` is on PATH the rules, their unit tests and the dashboard's PromQL
//! are also checked by it; nothing is ever installed here.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ethgate::upstream::metrics::AttemptResult;
use serde_json::{json, Value};
use support::gateway::{error_of, result_of, Gateway, GatewayConfig};
use support::mock::MockUpstream;
use support::process::TempDir;
use support::prometheus::Scrape;
use support::promql::{grouping_clauses, is_ident, literal_values, selectors};
use support::rules_yaml::{parse_rules, rule_test_series, value_at};
use support::ws_client::WsClient;

const RULES: &str = "deploy/monitoring/ethgate.rules.yml";
const RULE_TESTS: &str = "deploy/monitoring/ethgate.rules.test.yml";
const DASHBOARD: &str = "deploy/monitoring/ethgate-dashboard.json";
const WATCHED: &str = "0x00000000000000000000000000000000000000aa";

/// Labels with a fixed set of values: a value an expression names must be one ethgate exports.
/// (`method`, `upstream` and `address` values depend on traffic and configuration.)
const FIXED_LABELS: [&str; 4] = ["transport", "result", "kind", "reason"];

/// Labels Prometheus adds to every scraped series (target labels), never exported by ethgate.
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Metrics the issue and interface.md ask the dashboard to show.
const DASHBOARD_MUST_SHOW: [&str; 14] = [
    "ethgate_requests_total",
    "ethgate_request_duration_seconds_bucket",
    "ethgate_upstream_up",
    "ethgate_upstream_head",
    "ethgate_upstream_lag_blocks",
    "ethgate_upstream_requests_total",
    "ethgate_failovers_total",
    "ethgate_ws_connections",
    "ethgate_subscriptions",
    "ethgate_gap_filled_blocks_total",
    "ethgate_duplicates_dropped_total",
    "ethgate_denied_connections_total",
    "ethgate_tls_handshake_failures_total",
    "ethgate_account_balance_ether",
];

/// Alerts the issue asks for, by the metric each must watch.
const ALERTS_MUST_WATCH: [&str; 8] = [
    "ethgate_upstream_up",
    "ethgate_upstream_lag_blocks",
    "ethgate_failovers_total",
    "ethgate_account_balance_ether",
    "ethgate_denied_connections_total",
    "ethgate_tls_handshake_failures_total",
    "ethgate_requests_total",
    "up",
];

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo_file(relative)).unwrap_or_else(|e| panic!("read {relative}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// What ethgate exports
// ---------------------------------------------------------------------------------------------

/// Sample names of a scrape, with the values seen for each label.
#[derive(Default, Debug)]
struct Exported {
    metrics: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Family names declared by `# TYPE`.
    families: BTreeSet<String>,
}

impl Exported {
    /// Adds the names, labels and label values of a parsed scrape.
    fn add_scrape(&mut self, scrape: &Scrape) {
        self.families.extend(scrape.types.keys().cloned());
        for (name, labels) in scrape.samples.keys() {
            let seen = self.metrics.entry(name.clone()).or_default();
            for (label, value) in labels {
                seen.entry(label.clone()).or_default().insert(value.clone());
            }
        }
    }

    /// Adds `values` of `label` to `metric`, which the scrape must have exported with that
    /// label: values ethgate renders once they occur, from its own label table.
    fn add_values(&mut self, metric: &str, label: &str, values: &[&str]) {
        let seen = self
            .metrics
            .get_mut(metric)
            .and_then(|labels| labels.get_mut(label))
            .unwrap_or_else(|| panic!("{metric}{{{label}}} not in the scrape"));
        seen.extend(values.iter().map(|v| v.to_string()));
    }

    fn has(&self, metric: &str) -> bool {
        metric == "up" || self.metrics.contains_key(metric)
    }

    fn labels(&self, metric: &str) -> Option<&BTreeMap<String, BTreeSet<String>>> {
        self.metrics.get(metric)
    }
}

/// Checks one expression against the export; returns the problems found.
fn check_expr(where_: &str, expr: &str, exported: &Exported) -> Vec<String> {
    let mut problems = Vec::new();
    let found = selectors(expr);
    if found.is_empty() {
        problems.push(format!("{where_}: names no ethgate metric: {expr}"));
    }
    let mut label_names: HashSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    label_names.insert("le".to_string());
    for selector in &found {
        let metric = &selector.metric;
        if !exported.has(metric) {
            problems.push(format!("{where_}: {metric} is not exported by ethgate"));
            continue;
        }
        let Some(labels) = exported.labels(metric) else {
            continue; // `up`
        };
        label_names.extend(labels.keys().cloned());
        for (label, op, value) in &selector.matchers {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            let Some(values) = labels.get(label) else {
                problems.push(format!("{where_}: {metric} has no label {label:?}"));
                continue;
            };
            if !FIXED_LABELS.contains(&label.as_str()) {
                continue;
            }
            for literal in literal_values(op, value).unwrap_or_default() {
                if !values.contains(&literal) {
                    problems.push(format!(
                        "{where_}: {metric}{{{label}{op}\"{value}\"}}: ethgate never exports {label}=\"{literal}\" (seen: {values:?})"
                    ));
                }
            }
        }
    }
    for clause in grouping_clauses(expr) {
        for label in clause {
            if !label_names.contains(&label) {
                problems.push(format!(
                    "{where_}: groups by {label:?}, a label none of its metrics has"
                ));
            }
        }
    }
    problems
}

/// Runs ethgate in front of a mock with traffic of every outcome, a watched address and an open
/// WebSocket subscription, and returns what two scrapes exported (upstream up, then down).
async fn exported_by_a_running_ethgate() -> (Exported, String) {
    let mock = MockUpstream::start().await;
    mock.set_result("eth_getBalance", json!("0x22b1c8c1227a0000"));
    mock.fail_method("eth_call", 3, "execution reverted");
    let mut toml = GatewayConfig::new()
        .server("subscription_grace", "\"30s\"")
        .upstream("a", &mock, 0)
        .to_toml();
    toml += &format!(
        "\n[[watch]]\naddress = \"{WATCHED}\"\nmin_balance = \"1\"\ninterval = \"200ms\"\n"
    );
    let gw = Gateway::start_toml(&toml).await;
    gw.wait_all_healthy().await;
    result_of(&gw.call("eth_blockNumber", json!([])).await);
    error_of(&gw.call("eth_call", json!([{}, "latest"])).await);
    error_of(&gw.call("admin_peers", json!([])).await);
    gw.post("not json").await;
    mock.wait_for_calls("eth_subscribe", 1).await;
    let mut client = WsClient::connect(&gw.ws_url()).await;
    client.subscribe(json!(["newHeads"])).await;
    // A delivered head, so the feed's head age is exported.
    mock.set_head(mock.head() + 1);
    mock.emit_new_head(mock.head());

    let first = gw
        .wait_metrics(
            "balance, session, subscription and head age exported",
            |m| {
                m.contains("ethgate_account_balance_ether{")
                    && m.contains("ethgate_ws_connections 1")
                    && m.contains("ethgate_subscriptions{kind=\"newHeads\"} 1")
                    && m.contains("ethgate_subscription_head_age_seconds ")
            },
        )
        .await;
    let mut exported = Exported::default();
    exported.add_scrape(&Scrape::parse(&first));

    mock.refuse().await;
    gw.wait_readyz(503).await;
    error_of(&gw.call("eth_blockNumber", json!([])).await);
    let second = gw.metrics().await;
    exported.add_scrape(&Scrape::parse(&second));
    // Attempt outcomes this traffic does not cause (an answer over max_response_bytes, a
    // hedge's loser, a timeout): a series appears once it is non-zero, with a value from the
    // same table as these.
    let outcomes: Vec<&str> = AttemptResult::ALL.iter().map(|r| r.as_str()).collect();
    exported.add_values("ethgate_upstream_requests_total", "result", &outcomes);
    client.close().await;
    (exported, first)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_alert_rule_is_complete() {
    let rules = parse_rules(RULES, &read(RULES));
    let alert_lines = read(RULES)
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(rules.len(), alert_lines, "every `- alert:` was parsed");
    assert!(rules.len() >= 9, "only {} rules", rules.len());
    let mut names = HashSet::new();
    for rule in &rules {
        let at = format!("{RULES}:{} {}", rule.line, rule.alert);
        assert!(
            names.insert(rule.alert.clone()),
            "{at}: duplicate alert name"
        );
        assert!(
            rule.alert.starts_with("Ethgate")
                && rule.alert.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{at}: alert names are EthgateCamelCase"
        );
        assert!(!rule.get("expr").is_empty(), "{at}: no expr");
        let for_ = rule.get("for");
        let digits = for_.trim_end_matches(['s', 'm', 'h', 'd']);
        assert!(
            !digits.is_empty() && digits.len() + 1 == for_.len() && digits.parse::<u32>().is_ok(),
            "{at}: `for:` must be a duration like 5m, got {for_:?}"
        );
        assert!(
            ["critical", "warning", "info"].contains(&rule.get("severity")),
            "{at}: severity label {:?}",
            rule.get("severity")
        );
        for annotation in ["summary", "description"] {
            assert!(!rule.get(annotation).is_empty(), "{at}: no {annotation}");
        }
        let opens = rule.get("expr").matches('(').count();
        assert_eq!(
            opens,
            rule.get("expr").matches(')').count(),
            "{at}: unbalanced parentheses"
        );
    }
    for metric in ALERTS_MUST_WATCH {
        assert!(
            rules
                .iter()
                .any(|r| selectors(r.get("expr")).iter().any(|s| s.metric == metric)),
            "no alert watches {metric}"
        );
    }
}

/// The alert table of deploy/monitoring/README.md: alert name and severity of each row.
fn readme_alert_table() -> BTreeMap<String, String> {
    let readme = read("deploy/monitoring/README.md");
    let mut rows = BTreeMap::new();
    for line in readme.lines().filter(|l| l.starts_with("| `Ethgate")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let name = cells[0].trim_matches('`').to_string();
        let severity = cells.last().expect("a severity cell").to_string();
        assert!(
            rows.insert(name.clone(), severity).is_none(),
            "{name}: two rows in the README's alert table"
        );
    }
    rows
}

#[test]
fn every_alert_rule_has_a_row_in_the_readme_table() {
    let table = readme_alert_table();
    let rules = parse_rules(RULES, &read(RULES));
    for rule in &rules {
        let row = table.get(&rule.alert).unwrap_or_else(|| {
            panic!(
                "{} is in {RULES} but not in deploy/monitoring/README.md's alert table",
                rule.alert
            )
        });
        assert_eq!(row, rule.get("severity"), "{}: severity", rule.alert);
    }
    let names: HashSet<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    for name in table.keys() {
        assert!(
            names.contains(name.as_str()),
            "{name} is in the README's alert table but not in {RULES}"
        );
    }
}

#[test]
fn annotations_use_only_labels_the_alert_keeps() {
    for rule in parse_rules(RULES, &read(RULES)) {
        let expr = rule.get("expr");
        let clauses = grouping_clauses(expr);
        let text = format!("{} {}", rule.get("summary"), rule.get("description"));
        for (n, _) in text.match_indices("$labels.") {
            let label: String = text[n + 8..]
                .bytes()
                .take_while(|b| is_ident(*b))
                .map(char::from)
                .collect();
            // After an aggregation only the `by (…)` labels survive (every clause must keep it).
            let kept = clauses.is_empty() || clauses.iter().all(|c| c.contains(&label));
            assert!(
                kept,
                "{}: annotation uses $labels.{label}, which `{expr}` drops",
                rule.alert
            );
        }
    }
}

/// Every PromQL expression of the dashboard: panel targets and template variable queries.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_default();
                let ref_id = target["refId"].as_str().unwrap_or("?");
                out.push((format!("panel {title:?} {ref_id}"), expr.to_string()));
            }
            walk(&panel["panels"], out);
        }
    }
    walk(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"]
            .as_str()
            .or(var["query"].as_str())
            .unwrap_or_default();
        out.push((format!("variable {}", var["name"]), query.to_string()));
    }
    out
}

/// Panels of the dashboard, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        out.push(panel);
    }
    out
}

#[test]
fn dashboard_is_an_importable_grafana_dashboard() {
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is valid JSON");
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|u| !u.is_empty()));
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "DS_PROMETHEUS input: {inputs:?}"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "DS_PROMETHEUS data source variable (for file provisioning)"
    );
    let datasource = json!({"type": "prometheus", "uid": "${DS_PROMETHEUS}"});
    let panels = all_panels(&dashboard);
    let mut ids = HashSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panel_fail(title, "no id"));
        assert!(ids.insert(id), "panel {title:?}: duplicate id {id}");
        let grid = &panel["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
            grid[k]
                .as_u64()
                .unwrap_or_else(|| panel_fail(title, "gridPos"))
        });
        assert!(
            w >= 1 && x + w <= 24 && h >= 1,
            "panel {title:?}: gridPos {grid}"
        );
        for (other, [ox, oy, ow, oh]) in &boxes {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "panels {title:?} and {other:?} overlap");
        }
        boxes.push((title.to_string(), [x, y, w, h]));
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"], datasource,
            "panel {title:?} data source"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        let mut refs = HashSet::new();
        for target in targets {
            assert_eq!(
                target["datasource"], datasource,
                "panel {title:?} target data source"
            );
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| !e.trim().is_empty()),
                "panel {title:?}: empty expr"
            );
            assert!(
                refs.insert(target["refId"].as_str().expect("refId")),
                "panel {title:?}: duplicate refId"
            );
        }
    }
    let shown: HashSet<String> = dashboard_exprs(&dashboard)
        .iter()
        .flat_map(|(_, e)| selectors(e))
        .map(|s| s.metric)
        .collect();
    for metric in DASHBOARD_MUST_SHOW {
        assert!(shown.contains(metric), "no panel shows {metric}");
    }
}

fn panel_fail(title: &str, what: &str) -> ! {
    panic!("panel {title:?}: {what}")
}

#[tokio::test]
async fn rules_and_dashboard_name_only_exported_metrics_and_labels() {
    let (exported, scrape_text) = exported_by_a_running_ethgate().await;
    let mut problems = Vec::new();
    let mut checked = 0;
    for rule in parse_rules(RULES, &read(RULES)) {
        problems.extend(check_expr(
            &format!("alert {}", rule.alert),
            rule.get("expr"),
            &exported,
        ));
        checked += 1;
    }
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    for (where_, expr) in dashboard_exprs(&dashboard) {
        problems.extend(check_expr(&where_, &expr, &exported));
        checked += 1;
    }
    for series in rule_test_series(&read(RULE_TESTS)) {
        problems.extend(check_expr(
            &format!("{RULE_TESTS} series"),
            &series,
            &exported,
        ));
        checked += 1;
    }
    assert!(checked > 30, "only {checked} expressions found");
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}\n\nexported: {:#?}\n\nscrape:\n{scrape_text}",
        problems.len(),
        problems.join("\n"),
        exported.metrics.keys().collect::<Vec<_>>()
    );
    if let Some(promtool) = promtool() {
        check_metrics_with_promtool(&promtool, &scrape_text);
    }
}

/// The extraction itself: names, matchers and grouping labels come out as written.
#[test]
fn expression_scanner_finds_metrics_matchers_and_groupings() {
    let expr = r#"sum by (job, instance) (rate(ethgate_requests_total{result=~"unavailable|x",job="ethgate_x"}[5m])) / on (job) up == 0"#;
    let found = selectors(expr);
    let names: Vec<&str> = found.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["ethgate_requests_total", "up"]);
    assert_eq!(
        found[0].matchers,
        [
            ("result".into(), "=~".into(), "unavailable|x".into()),
            ("job".into(), "=".into(), "ethgate_x".into())
        ]
    );
    assert_eq!(grouping_clauses(expr), [vec!["job", "instance"]]);
    let block = "x:\n  expr: |\n    a\n      b\n  for: 1m\n";
    let lines: Vec<&str> = block.lines().collect();
    assert_eq!(value_at(&lines, 1, "|"), ("a\nb".to_string(), 4));
    let rules = parse_rules(
        "inline",
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: >-\n          ethgate_upstream_up\n          == 0\n        for: 1m\n      - alert: B\n        expr: \"up == 0\"\n",
    );
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].get("expr"), "ethgate_upstream_up\n== 0");
    assert_eq!(rules[0].get("for"), "1m");
    assert_eq!(rules[1].get("expr"), "up == 0");
}

// ---------------------------------------------------------------------------------------------
// promtool: installed by scripts/install-test-deps.sh (Debian's prometheus package); without
// it these checks are skipped on a developer's machine and fail under CI.
// ---------------------------------------------------------------------------------------------

fn promtool() -> Option<PathBuf> {
    support::tools::require_tool("promtool checks", "promtool")
}

fn run_promtool(promtool: &Path, args: &[&str], dir: &Path, stdin: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn promtool: {e}"));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write to promtool");
    }
    let output = child.wait_with_output().expect("promtool output");
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Grafana's variables replaced by values PromQL accepts.
fn as_promql(expr: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "6h")
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$upstream", ".*");
    match expr
        .strip_prefix("label_values(")
        .and_then(|rest| rest.rsplit_once(','))
    {
        Some((selector, _label)) => selector.trim().to_string(),
        None => expr,
    }
}

#[test]
fn promtool_accepts_rules_rule_tests_and_dashboard_queries() {
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = repo_file("deploy/monitoring");
    run_promtool(
        &promtool,
        &["check", "rules", "ethgate.rules.yml"],
        &dir,
        None,
    );
    run_promtool(
        &promtool,
        &["test", "rules", "ethgate.rules.test.yml"],
        &dir,
        None,
    );
    // Every dashboard query as a recording rule, so promtool parses its PromQL.
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard JSON");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, (_, expr)) in dashboard_exprs(&dashboard).iter().enumerate() {
        let quoted = serde_json::to_string(&as_promql(expr)).expect("JSON string");
        rules += &format!("      - record: dashboard:query_{n}\n        expr: {quoted}\n");
    }
    let temp = TempDir::new("ethgate-dashboard-promql").expect("temp dir");
    std::fs::write(temp.path().join("dashboard.rules.yml"), rules).expect("write");
    run_promtool(
        &promtool,
        &["check", "rules", "dashboard.rules.yml"],
        temp.path(),
        None,
    );
}

fn check_metrics_with_promtool(promtool: &Path, scrape_text: &str) {
    run_promtool(
        promtool,
        &["check", "metrics"],
        Path::new(env!("CARGO_MANIFEST_DIR")),
        Some(scrape_text),
    );
}
