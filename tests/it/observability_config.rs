//! The observability stack's files agree with each other and with agentry's metric catalogue.
//!
//! - `config/grafana/dashboards/agentry-overview.json` is a valid dashboard model (JSON schema of
//!   `grafana/grafana-foundation-sdk`, `jsonschema/dashboard.jsonschema.json` at f178d5a4, copied
//!   unchanged to `tests/schemas/grafana-dashboard.schema.json`),
//! - its PromQL parses (`promtool check rules`) and asks only for metrics and labels agentry
//!   exports (read from `promql-parser`'s syntax tree), as the collector's `prometheus` exporter
//!   names them, derived from
//!   [`agentry::telemetry::names::INSTRUMENTS`]: renaming an instrument breaks this test rather
//!   than a dashboard panel in production,
//! - its trace links open Jaeger (by the datasource uid the provisioning fixes),
//! - `otel-collector.yaml` has the receivers, processors, exporters and pipelines the stack relies
//!   on, and `config/prometheus.yml` scrapes the collector (`promtool check config`).
//!
//! `promtool` comes from the Debian package `prometheus` (`tests/peers/install.sh`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use agentry::telemetry::names::{self, Instrument, InstrumentKind, attr};
use promql_parser::label::MatchOp;
use promql_parser::parser::{BinaryExpr, Expr, LabelModifier, MatrixSelector, VectorSelector};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::Value;

use crate::peers::repo_root;

const DASHBOARD: &str = "config/grafana/dashboards/agentry-overview.json";
const DASHBOARD_SCHEMA: &str = "tests/schemas/grafana-dashboard.schema.json";
const DATASOURCES: &str = "config/grafana/provisioning/datasources/datasources.yaml";
const DASHBOARD_PROVIDERS: &str = "config/grafana/provisioning/dashboards/dashboards.yaml";
const COLLECTOR: &str = "otel-collector.yaml";
const PROMETHEUS: &str = "config/prometheus.yml";

/// A key agentry must never let through; the collector's value patterns must catch it.
const CREDENTIAL_SHAPED: &str = "sk-[A-Za-z0-9_-]{8,}";

// ---------------------------------------------------------------------------------------------
// The dashboard
// ---------------------------------------------------------------------------------------------

#[test]
fn dashboard_matches_the_grafana_dashboard_schema() {
    let schema = read_json(DASHBOARD_SCHEMA);
    let dashboard = read_json(DASHBOARD);
    let validator = jsonschema::draft7::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("tests/schemas/grafana-dashboard.schema.json is a valid draft-07 schema");
    // A panel that matches neither Panel nor RowPanel is reported whole: keep messages short.
    let errors: Vec<String> = validator
        .iter_errors(&dashboard)
        .map(|e| {
            format!("  at {:?}: {}", e.instance_path().as_str(), e.to_string().chars().take(400).collect::<String>())
        })
        .collect();
    assert!(errors.is_empty(), "{DASHBOARD} does not match {DASHBOARD_SCHEMA}:\n{}", errors.join("\n"));

    assert_eq!(dashboard["uid"], "agentry-overview", "the dashboard uid others link to");
    assert_eq!(dashboard["title"], "agentry overview");
}

#[test]
fn dashboard_promql_parses() {
    let queries = dashboard_queries();
    let promtool = promtool();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rules = dir.path().join("dashboard-rules.yml");
    // One recording rule per query: `promtool check rules` parses every expression. JSON strings
    // are valid YAML double-quoted scalars, so no YAML writer is needed.
    let mut text = String::from("groups:\n  - name: agentry-overview\n    rules:\n");
    for (i, query) in queries.iter().enumerate() {
        text.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&query.promql).expect("a string")
        ));
    }
    std::fs::write(&rules, &text).expect("write the rules file");
    let output = Command::new(&promtool).arg("check").arg("rules").arg(&rules).output().expect("run promtool");
    let listing: Vec<String> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| format!("  dashboard:query_{i} = {}: {}", q.origin, q.promql))
        .collect();
    assert!(
        output.status.success(),
        "promtool check rules rejected the dashboard's PromQL:\n{}{}\nqueries:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        listing.join("\n")
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("{} rules found", queries.len())),
        "promtool did not see every query: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn dashboard_queries_only_metrics_and_labels_agentry_exports() {
    let exported = exported_metric_names();
    let labels = known_labels();
    let queries = dashboard_queries();
    let mut unknown = Vec::new();
    let mut used = BTreeSet::new();
    for query in &queries {
        let found = Names::of(&query.promql).unwrap_or_else(|e| panic!("{}: {e}\n  in {}", query.origin, query.promql));
        if found.metrics.is_empty() {
            unknown.push(format!("{}: selects no metric: {}", query.origin, query.promql));
        }
        for metric in &found.metrics {
            if !exported.contains(metric) {
                unknown.push(format!("{}: metric `{metric}` is not one agentry exports", query.origin));
            }
            used.insert(metric.clone());
        }
        for label in found.labels.iter().chain(&query.labels) {
            if !labels.contains(label) {
                unknown.push(format!("{}: label `{label}` is not an attribute agentry records", query.origin));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "{DASHBOARD}:\n{}\nexported metrics (from INSTRUMENTS): {exported:?}\nknown labels: {labels:?}",
        unknown.join("\n")
    );
    // Every instrument has a panel: a new instrument gets a panel, a removed one loses its panel.
    for instrument in names::INSTRUMENTS {
        let names = prometheus_names(instrument);
        assert!(
            names.iter().any(|n| used.contains(n)),
            "no panel of {DASHBOARD} shows `{}` (Prometheus: {names:?})",
            instrument.name
        );
    }
}

#[test]
fn dashboard_links_to_the_traces_in_jaeger() {
    let dashboard = read_json(DASHBOARD);
    let links = all_links(&dashboard);
    let explore: Vec<&Link> = links.iter().filter(|l| l.url.contains("/explore")).collect();
    assert!(!explore.is_empty(), "{DASHBOARD} has no link to Explore; links: {links:?}");
    let jaeger_uid = datasource_uid("jaeger");
    for link in &explore {
        let panes = explore_panes(&link.url).unwrap_or_else(|e| panic!("{}: {e}: {}", link.origin, link.url));
        for (_, pane) in panes.as_object().into_iter().flatten() {
            assert_eq!(pane["datasource"].as_str(), Some(jaeger_uid.as_str()), "{}: {pane}", link.origin);
            let query = &pane["queries"][0];
            assert_eq!(query["datasource"]["uid"].as_str(), Some(jaeger_uid.as_str()), "{}: {query}", link.origin);
            assert_eq!(query["queryType"], "search", "{}: {query}", link.origin);
            assert_eq!(query["service"], "${service}", "{}: the traces of the service shown: {query}", link.origin);
            // logfmt `key=value ...`: every key a span attribute agentry records
            for pair in query["tags"].as_str().unwrap_or("").split_whitespace() {
                let key = pair.split('=').next().unwrap_or(pair);
                assert!(ATTRIBUTES.contains(&key), "{}: tag {key:?} is not an attribute agentry records", link.origin);
            }
        }
    }
    assert!(
        explore.iter().any(|l| l.origin.starts_with("panel") && l.url.contains("${__field.labels.")),
        "a series links to its own traces (a data link using ${{__field.labels.…}}): {explore:?}"
    );
}

#[test]
fn grafana_provisioning_matches_the_dashboard() {
    let providers = read_yaml(DASHBOARD_PROVIDERS);
    let file_provider = providers["providers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["type"] == "file")
        .unwrap_or_else(|| panic!("{DASHBOARD_PROVIDERS} has a file provider: {providers}"));
    assert_eq!(file_provider["options"]["path"], "/var/lib/grafana/dashboards", "{file_provider}");

    assert_eq!(datasource_url("prometheus"), "http://prometheus:9090");
    assert_eq!(datasource_url("jaeger"), "http://jaeger:16686");
    let provisioned: BTreeSet<String> = datasources().into_iter().map(|d| d.uid).collect();
    let dashboard = read_json(DASHBOARD);
    let mut referenced = BTreeSet::new();
    collect_datasource_uids(&dashboard, &mut referenced);
    referenced.remove("-- Grafana --"); // Grafana's built-in annotations
    let missing: Vec<&String> = referenced.difference(&provisioned).collect();
    assert!(missing.is_empty(), "{DASHBOARD} uses datasource uids {missing:?} that {DATASOURCES} does not provision");
}

// ---------------------------------------------------------------------------------------------
// The collector and Prometheus
// ---------------------------------------------------------------------------------------------

#[test]
fn collector_config_has_the_pipelines_agentry_needs() {
    let config = read_yaml(COLLECTOR);
    let otlp = component(&config, "receivers", "otlp");
    assert_eq!(otlp["protocols"]["grpc"]["endpoint"], "0.0.0.0:4317", "{otlp}");
    assert_eq!(otlp["protocols"]["http"]["endpoint"], "0.0.0.0:4318", "{otlp}");
    assert_eq!(component(&config, "extensions", "health_check")["endpoint"], "0.0.0.0:13133");
    assert!(strings(&config["service"]["extensions"]).contains(&"health_check".to_owned()), "health_check is enabled");

    let jaeger = exporters_of_type(&config, &["otlp", "otlp_grpc"]);
    assert_eq!(jaeger.len(), 1, "one OTLP/gRPC exporter, to Jaeger: {jaeger:?}");
    let jaeger = &jaeger[0];
    let settings = component(&config, "exporters", jaeger);
    assert_eq!(settings["endpoint"], "jaeger:4317", "{jaeger}: {settings}");
    assert_eq!(settings["tls"]["insecure"], true, "{jaeger}: {settings}");
    let prometheus = exporters_of_type(&config, &["prometheus"]);
    assert_eq!(prometheus.len(), 1, "one prometheus exporter: {prometheus:?}");
    let prometheus = &prometheus[0];
    let settings = component(&config, "exporters", prometheus);
    assert_eq!(settings["endpoint"], "0.0.0.0:8889", "{prometheus}: {settings}");
    assert_eq!(settings["resource_to_telemetry_conversion"]["enabled"], true, "service_name as a label: {settings}");

    let pipelines = config["service"]["pipelines"].as_object().expect("service.pipelines is a map");
    for (signal, exporter) in [("traces", jaeger), ("metrics", prometheus)] {
        let pipeline = pipelines.get(signal).unwrap_or_else(|| panic!("a {signal} pipeline: {pipelines:?}"));
        assert_eq!(strings(&pipeline["receivers"]), ["otlp"], "{signal} pipeline receivers");
        assert_eq!(strings(&pipeline["exporters"]), [exporter.as_str()], "{signal} pipeline exporters");
        let processors = strings(&pipeline["processors"]);
        assert_eq!(processors.first().map(String::as_str), Some("memory_limiter"), "{signal}: memory_limiter first");
        assert_eq!(processors.last().map(String::as_str), Some("batch"), "{signal}: batch last");
        for kind in ["receivers", "processors", "exporters"] {
            for id in strings(&pipeline[kind]) {
                // The collector refuses to start on a pipeline naming an undefined component.
                assert!(
                    config[kind].get(&id).is_some(),
                    "the {signal} pipeline uses {kind}.{id}, which is not defined"
                );
            }
        }
        // The credential scrubbers of this pipeline, as text: the checks look for the rules, not
        // for one processor's syntax.
        let scrubbers: Vec<&String> = processors
            .iter()
            .filter(|p| ["attributes", "transform", "redaction"].contains(&component_type(p)))
            .collect();
        assert!(!scrubbers.is_empty(), "{signal}: a processor strips credentials: {processors:?}");
        let rules: String = scrubbers.iter().map(|p| component(&config, "processors", p).to_string()).collect();
        assert!(rules.contains(CREDENTIAL_SHAPED), "{signal}: values like {CREDENTIAL_SHAPED} are masked: {rules}");
        for key in ["http.request.header.authorization", "authorization"] {
            assert!(rules.contains(&format!("\"{key}\"")), "{signal}: the attribute {key} is deleted: {rules}");
        }
    }
}

#[test]
fn prometheus_scrapes_the_collector() {
    let output = Command::new(promtool()).arg("check").arg("config").arg(repo_root().join(PROMETHEUS)).output();
    let output = output.expect("run promtool");
    assert!(
        output.status.success(),
        "promtool check config {PROMETHEUS}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let config = read_yaml(PROMETHEUS);
    let jobs = config["scrape_configs"].as_array().expect("scrape_configs");
    let collector = jobs
        .iter()
        .find(|job| job["static_configs"].to_string().contains("otel-collector:8889"))
        .unwrap_or_else(|| panic!("a job scrapes otel-collector:8889: {jobs:?}"));
    // Without honor_labels, job="agentry" from the resource becomes exported_job.
    assert_eq!(collector["honor_labels"], true, "{collector}");
    assert!(config.to_string().contains("localhost:9090"), "Prometheus scrapes itself");
    assert_eq!(config["global"]["scrape_interval"], "15s");
}

// ---------------------------------------------------------------------------------------------
// The Prometheus names agentry's instruments get
// ---------------------------------------------------------------------------------------------

/// The collector's `prometheus` exporter (translation `UnderscoreEscapingWithSuffixes`, the
/// default): dots to underscores, a unit suffix for units outside braces, `_total` for counters.
fn prometheus_base(instrument: &Instrument) -> String {
    let mut base: String = instrument
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == ':' { c } else { '_' })
        .collect();
    let unit = instrument.unit;
    let suffix = match unit {
        "" | "1" => None,
        u if u.starts_with('{') && u.ends_with('}') => None,
        "s" => Some("seconds"),
        "ms" => Some("milliseconds"),
        "us" => Some("microseconds"),
        "By" => Some("bytes"),
        other => panic!("teach this test the Prometheus suffix of unit {other:?} ({})", instrument.name),
    };
    if let Some(suffix) = suffix
        && !base.split('_').any(|word| word == suffix)
    {
        base.push('_');
        base.push_str(suffix);
    }
    base
}

fn prometheus_names(instrument: &Instrument) -> Vec<String> {
    let base = prometheus_base(instrument);
    match instrument.kind {
        InstrumentKind::Histogram => vec![format!("{base}_bucket"), format!("{base}_sum"), format!("{base}_count")],
        InstrumentKind::Counter if base.ends_with("_total") => vec![base],
        InstrumentKind::Counter => vec![format!("{base}_total")],
        InstrumentKind::Gauge => vec![base],
    }
}

fn exported_metric_names() -> BTreeSet<String> {
    names::INSTRUMENTS.iter().flat_map(prometheus_names).collect()
}

fn label_name(key: &str) -> String {
    key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// The attribute keys of [`attr`].
const ATTRIBUTES: &[&str] = &[
    attr::OPERATION_NAME,
    attr::PROVIDER_NAME,
    attr::REQUEST_MODEL,
    attr::RESPONSE_MODEL,
    attr::TOKEN_TYPE,
    attr::TOOL_NAME,
    attr::ERROR_TYPE,
    attr::SERVER_ADDRESS,
    attr::MCP_METHOD,
    attr::NETWORK_TRANSPORT,
    attr::ROUTE,
    attr::QUESTION_STATUS,
    attr::TOOL_OUTCOME,
    attr::MCP_SERVER,
    attr::SECRET_NAME,
];

/// Attribute keys as labels, plus what the exporter and Prometheus add.
fn known_labels() -> BTreeSet<String> {
    // `le` (histogram buckets), job/instance (from service.name / service.instance.id), the
    // resource attributes that resource_to_telemetry_conversion copies, the scope labels.
    let added = [
        "le",
        "job",
        "instance",
        "service_name",
        "service_namespace",
        "service_version",
        "service_instance_id",
        "otel_scope_name",
        "otel_scope_version",
    ];
    ATTRIBUTES.iter().map(|k| label_name(k)).chain(added.iter().map(|l| (*l).to_owned())).collect()
}

// ---------------------------------------------------------------------------------------------
// The dashboard's queries
// ---------------------------------------------------------------------------------------------

/// A PromQL expression of the dashboard, with Grafana's variables substituted.
#[derive(Debug)]
struct Query {
    origin: String,
    promql: String,
    /// Labels named outside the PromQL (legends, `label_values`).
    labels: Vec<String>,
}

fn dashboard_queries() -> Vec<Query> {
    let dashboard = read_json(DASHBOARD);
    let variables: BTreeSet<String> = dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    let prometheus_uid = datasource_uid("prometheus");
    let mut queries = Vec::new();

    let mut panels = Vec::new();
    collect_panels(&dashboard["panels"], &mut panels);
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let datasource =
                if target["datasource"].is_object() { &target["datasource"] } else { &panel["datasource"] };
            let is_prometheus = datasource["type"] == "prometheus" || datasource["uid"] == prometheus_uid.as_str();
            let Some(expr) = target["expr"].as_str().filter(|_| is_prometheus) else { continue };
            let origin = format!("panel {title:?} query {}", target["refId"].as_str().unwrap_or("?"));
            let promql = substitute(expr, &variables).unwrap_or_else(|e| panic!("{origin}: {e}"));
            let labels = legend_labels(target["legendFormat"].as_str().unwrap_or(""));
            queries.push(Query { origin, promql, labels });
        }
    }
    for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or("?");
        let origin = format!("variable ${name}");
        let query = variable["query"].as_str().unwrap_or_else(|| panic!("{origin}: a string query"));
        let (expr, labels) = variable_promql(query).unwrap_or_else(|e| panic!("{origin}: {e}"));
        let Some(expr) = expr else { continue };
        let promql = substitute(&expr, &variables).unwrap_or_else(|e| panic!("{origin}: {e}"));
        queries.push(Query { origin, promql, labels });
    }
    assert!(queries.len() >= 10, "expected the dashboard's queries, found {}: {queries:?}", queries.len());
    queries
}

fn collect_panels<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
    for panel in panels.as_array().into_iter().flatten() {
        out.push(panel);
        collect_panels(&panel["panels"], out);
    }
}

/// `label_values(selector, label)` → the selector; `query_result(expr)` → expr.
fn variable_promql(query: &str) -> Result<(Option<String>, Vec<String>), String> {
    let query = query.trim();
    let inner = |prefix: &str| query.strip_prefix(prefix).and_then(|rest| rest.trim_start().strip_prefix('('));
    if let Some(rest) = inner("label_values") {
        let args = rest.strip_suffix(')').ok_or("label_values(…) without its closing parenthesis")?;
        return Ok(match args.rsplit_once(',') {
            Some((selector, label)) => (Some(selector.trim().to_owned()), vec![label.trim().to_owned()]),
            None => (None, vec![args.trim().to_owned()]),
        });
    }
    if let Some(rest) = inner("query_result") {
        let expr = rest.strip_suffix(')').ok_or("query_result(…) without its closing parenthesis")?;
        return Ok((Some(expr.to_owned()), Vec::new()));
    }
    if query.starts_with("label_names") || query.starts_with("metrics") {
        return Ok((None, Vec::new()));
    }
    Ok((Some(query.to_owned()), Vec::new()))
}

/// `{{label}}` in a legend.
fn legend_labels(legend: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut rest = legend;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else { break };
        labels.push(rest[start + 2..start + end].trim().to_owned());
        rest = &rest[start + end + 2..];
    }
    labels
}

/// Replaces Grafana's variables (`$x`, `${x}`, `${x:format}`, `[[x]]`) as Prometheus would see
/// them: intervals become durations, template variables the regex `.+`. An undefined variable
/// is an error (a typo would leave the panel empty).
fn substitute(expr: &str, variables: &BTreeSet<String>) -> Result<String, String> {
    let value = |name: &str| -> Result<&'static str, String> {
        Ok(match name {
            "__rate_interval" => "5m",
            "__interval" => "1m",
            "__range" => "1h",
            "__interval_ms" => "60000",
            "__range_s" => "3600",
            "__range_ms" => "3600000",
            "__from" | "__to" => "0",
            _ if variables.contains(name) => ".+",
            _ => return Err(format!("undefined variable ${name} in {expr}")),
        })
    };
    let mut out = String::new();
    let mut rest = expr;
    while let Some(i) = rest.find(['$', '[']) {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if let Some(braced) = rest.strip_prefix("${") {
            let end = braced.find('}').ok_or_else(|| format!("unclosed ${{ in {expr}"))?;
            let name = braced[..end].split(':').next().unwrap_or("");
            out.push_str(value(name)?);
            rest = &braced[end + 1..];
        } else if let Some(bracketed) = rest.strip_prefix("[[")
            && let Some(end) = bracketed.find("]]")
            && bracketed[..end].chars().all(is_name)
        {
            out.push_str(value(&bracketed[..end])?);
            rest = &bracketed[end + 2..];
        } else if let Some(named) = rest.strip_prefix('$')
            && named.starts_with(is_name)
        {
            let end = named.find(|c: char| !is_name(c)).unwrap_or(named.len());
            out.push_str(value(&named[..end])?);
            rest = &named[end..];
        } else {
            out.push_str(&rest[..1]);
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Metric and label names of a PromQL expression, read from promql-parser's syntax tree:
/// selectors name metrics (`__name__="…"` too) and labels; `by`/`without`, `on`/`ignoring` and
/// `group_left`/`group_right` name labels.
#[derive(Debug, Default)]
struct Names {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

impl Names {
    fn of(promql: &str) -> Result<Self, String> {
        let expr = promql_parser::parser::parse(promql)?;
        let mut names = Self::default();
        walk_expr(&mut names, &expr)?;
        Ok(names)
    }

    fn selector(&mut self, selector: &VectorSelector) -> Result<(), String> {
        self.metrics.extend(selector.name.clone());
        for matcher in selector.matchers.matchers.iter().chain(selector.matchers.or_matchers.iter().flatten()) {
            match (matcher.name.as_str(), &matcher.op) {
                ("__name__", MatchOp::Equal) => self.metrics.insert(matcher.value.clone()),
                ("__name__", _) => return Err(format!("{matcher} cannot be checked: name the metric")),
                (label, _) => self.labels.insert(label.to_owned()),
            };
        }
        Ok(())
    }

    fn modifier(&mut self, modifier: Option<&LabelModifier>) {
        self.labels.extend(modifier.into_iter().flat_map(|m| m.labels().labels.iter().cloned()));
    }
}

impl ExprVisitor for Names {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        match expr {
            Expr::VectorSelector(selector) | Expr::MatrixSelector(MatrixSelector { vs: selector, .. }) => {
                self.selector(selector)?;
            }
            Expr::Aggregate(aggregate) => self.modifier(aggregate.modifier.as_ref()),
            Expr::Binary(BinaryExpr { modifier: Some(modifier), .. }) => {
                self.modifier(modifier.matching.as_ref());
                self.labels.extend(modifier.card.labels().into_iter().flat_map(|l| l.labels.iter().cloned()));
            }
            _ => {}
        }
        Ok(true)
    }
}

// ---------------------------------------------------------------------------------------------
// Links
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Link {
    origin: String,
    url: String,
}

/// Dashboard links, panel links and data links.
fn all_links(dashboard: &Value) -> Vec<Link> {
    let mut links = Vec::new();
    let mut push = |origin: String, list: &Value| {
        for link in list.as_array().into_iter().flatten() {
            if let Some(url) = link["url"].as_str() {
                links.push(Link { origin: origin.clone(), url: url.to_owned() });
            }
        }
    };
    push("dashboard links".to_owned(), &dashboard["links"]);
    let mut panels = Vec::new();
    collect_panels(&dashboard["panels"], &mut panels);
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        push(format!("panel {title:?} links"), &panel["links"]);
        push(format!("panel {title:?} data links"), &panel["fieldConfig"]["defaults"]["links"]);
        for (i, o) in panel["fieldConfig"]["overrides"].as_array().into_iter().flatten().enumerate() {
            for property in o["properties"].as_array().into_iter().flatten().filter(|p| p["id"] == "links") {
                push(format!("panel {title:?} override {i} data links"), &property["value"]);
            }
        }
    }
    links
}

/// The `panes` parameter of an Explore URL, percent-decoded and parsed, with Grafana's
/// `${…}` variables left as they are.
fn explore_panes(url: &str) -> Result<Value, String> {
    let query = url.split_once('?').ok_or("no query string")?.1;
    let panes = query.split('&').find_map(|p| p.strip_prefix("panes=")).ok_or("no panes= parameter")?;
    let decoded = percent_decode(panes)?;
    serde_json::from_str(&decoded).map_err(|e| format!("panes is not JSON ({e}): {decoded}"))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|e| format!("bad %-escape {hex}: {e}"))?);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Datasources
// ---------------------------------------------------------------------------------------------

struct Datasource {
    kind: String,
    uid: String,
    url: String,
}

fn datasources() -> Vec<Datasource> {
    let config = read_yaml(DATASOURCES);
    config["datasources"]
        .as_array()
        .unwrap_or_else(|| panic!("{DATASOURCES}: a datasources list"))
        .iter()
        .map(|d| Datasource {
            kind: d["type"].as_str().unwrap_or_default().to_owned(),
            uid: d["uid"]
                .as_str()
                .unwrap_or_else(|| panic!("{DATASOURCES}: every datasource has a fixed uid: {d}"))
                .to_owned(),
            url: d["url"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

fn datasource(kind: &str) -> Datasource {
    datasources().into_iter().find(|d| d.kind == kind).unwrap_or_else(|| panic!("{DATASOURCES} provisions {kind}"))
}

fn datasource_uid(kind: &str) -> String {
    datasource(kind).uid
}

fn datasource_url(kind: &str) -> String {
    datasource(kind).url
}

fn collect_datasource_uids(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            if let Some(uid) = map.get("datasource").and_then(|d| d["uid"].as_str()) {
                out.insert(uid.to_owned());
            }
            map.values().for_each(|v| collect_datasource_uids(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_datasource_uids(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Files and tools
// ---------------------------------------------------------------------------------------------

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn read_json(relative: &str) -> Value {
    serde_json::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} is not JSON: {e}"))
}

/// YAML through the `config` crate (already a dependency), as JSON.
fn read_yaml(relative: &str) -> Value {
    config::Config::builder()
        .add_source(config::File::from_str(&read(relative), config::FileFormat::Yaml))
        .build()
        .and_then(|c| c.try_deserialize::<Value>())
        .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"))
}

/// A collector component's settings by kind (`exporters`) and id (`otlp/jaeger`).
fn component<'a>(config: &'a Value, kind: &str, id: &str) -> &'a Value {
    &config[kind][id]
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

/// `otlp/jaeger` → `otlp`.
fn component_type(id: &str) -> &str {
    id.split('/').next().unwrap_or(id)
}

fn exporters_of_type(config: &Value, types: &[&str]) -> Vec<String> {
    config["exporters"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(id, _)| id.clone())
        .filter(|id| types.contains(&component_type(id)))
        .collect()
}

/// `promtool` on PATH, or a failure that says how to get it.
fn promtool() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| {
            panic!(
                "promtool is not on PATH: it checks the dashboard's PromQL and config/prometheus.yml. \
                 Install it with `bash tests/peers/install.sh` (Debian package `prometheus`: \
                 apt-get install -y --no-install-recommends prometheus)"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
