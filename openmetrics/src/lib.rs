//! `/metrics` for the agent and the collector.
//!
//! Each scrape asks its owner for the metric families as they are now ([`Family`]: a
//! name, help, type and samples), encodes them with `prometheus-client` in the
//! OpenMetrics text format, and answers in that format when the client accepts it (as
//! Prometheus does). A client that does not (curl, `promtool check metrics`, older
//! scrapers) gets the same families in the Prometheus text format 0.0.4, rewritten
//! line by line from the OpenMetrics text (the two differ only in how counter and
//! info families are named, the `unknown` type's name, and the `# UNIT` and `# EOF`
//! lines), so there is one encoder and one set of names.
use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; its name ends in `_total`.
    Counter,
    Gauge,
    /// Neither (node_exporter's netstat and snmp fields are exposed untyped).
    Untyped,
    /// Labels carry the facts, the value is 1; its name ends in `_info`.
    Info,
    Histogram,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    /// Per-bucket (not cumulative) counts by upper bound, ascending; the last bound
    /// is `f64::INFINITY`.
    Histogram {
        sum: f64,
        count: u64,
        buckets: Vec<(f64, u64)>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Vec<(String, String)>,
    pub value: Value,
}

/// One metric family as it is exposed: `name` is the full name (`node_cpu_seconds_total`,
/// `node_uname_info`), the way dashboards and rules write it.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    pub fn new(name: impl Into<String>, help: impl Into<String>, kind: Kind) -> Self {
        Self {
            name: name.into(),
            help: help.into(),
            kind,
            samples: Vec::new(),
        }
    }

    /// A family with one unlabelled sample.
    pub fn single(name: impl Into<String>, help: impl Into<String>, kind: Kind, v: f64) -> Self {
        let mut f = Self::new(name, help, kind);
        f.push(Vec::new(), v);
        f
    }

    pub fn push(&mut self, labels: Vec<(String, String)>, v: f64) {
        self.samples.push(Sample {
            labels,
            value: Value::Number(v),
        });
    }

    /// `push` with labels written as `[("cpu", "0"), ("mode", "idle")]`.
    pub fn with(&mut self, labels: &[(&str, &str)], v: f64) {
        self.push(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            v,
        );
    }
}

/// The families of one scrape, as a prometheus-client collector.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            if f.samples.is_empty() {
                continue;
            }
            // prometheus-client adds the `_total` and `_info` suffixes itself.
            let (name, ty) = match f.kind {
                Kind::Counter => (
                    f.name.strip_suffix("_total").unwrap_or(&f.name),
                    MetricType::Counter,
                ),
                Kind::Info => (
                    f.name.strip_suffix("_info").unwrap_or(&f.name),
                    MetricType::Info,
                ),
                Kind::Gauge => (f.name.as_str(), MetricType::Gauge),
                Kind::Untyped => (f.name.as_str(), MetricType::Unknown),
                Kind::Histogram => (f.name.as_str(), MetricType::Histogram),
            };
            let mut family = encoder.encode_descriptor(name, &f.help, None, ty)?;
            for s in &f.samples {
                if f.kind == Kind::Info {
                    family.encode_info(&s.labels)?;
                    continue;
                }
                let mut m = family.encode_family(&s.labels)?;
                match (&s.value, f.kind) {
                    (Value::Number(v), Kind::Counter) => {
                        m.encode_counter::<NoLabelSet, f64, f64>(v, None)?
                    }
                    (Value::Number(v), _) => m.encode_gauge(v)?,
                    (
                        Value::Histogram {
                            sum,
                            count,
                            buckets,
                        },
                        _,
                    ) => {
                        let b: Vec<(f64, u64)> = buckets
                            .iter()
                            .map(|&(le, n)| (if le.is_infinite() { f64::MAX } else { le }, n))
                            .collect();
                        m.encode_histogram::<NoLabelSet>(*sum, *count, &b, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// The families in the OpenMetrics text format (ends with `# EOF`).
pub fn openmetrics_text(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families)));
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a
    // family (reported in the text rather than as a panic).
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "encoding /metrics");
    }
    out
}

/// The OpenMetrics text rewritten in the Prometheus text format 0.0.4: counter and
/// info families take their samples' names (`_total`, `_info`; info becomes a gauge),
/// `unknown` is `untyped`, and the `# UNIT` and `# EOF` lines go.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE: held until the type says what the name becomes.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, ""));
            let (name, ty) = match ty {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {ty}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// What a scrape asks of the metrics' owner: the families as they are now. Called on
/// the blocking pool (it may read /proc).
pub type Render = Arc<dyn Fn() -> Vec<Family> + Send + Sync>;

/// Serves `GET /metrics` on `addr` until the task is aborted. Returns the bound address
/// (for `:0`) and the task.
pub async fn serve(
    addr: &str,
    what: &str,
    render: Render,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics_listen: binding {addr}"))?;
    let local = listener.local_addr().context("metrics_listen address")?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let render = render.clone();
            async move { scrape(render, headers).await }
        }),
    );
    tracing::info!(listen = %local, "{what} /metrics on http://{local}/metrics");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "/metrics server stopped");
        }
    });
    Ok((local, task))
}

async fn scrape(
    render: Render,
    headers: axum::http::HeaderMap,
) -> axum::response::Response<axum::body::Body> {
    use axum::http::{header, StatusCode};
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = match tokio::task::spawn_blocking(move || openmetrics_text(render())).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics");
            return axum::response::Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(axum::body::Body::from("rendering the metrics failed\n"))
                .unwrap_or_default();
        }
    };
    let (ty, body) = if wants_openmetrics(accept.as_deref()) {
        (OPENMETRICS, text)
    } else {
        (PROMETHEUS_TEXT, prometheus_text(&text))
    };
    axum::response::Response::builder()
        .header(header::CONTENT_TYPE, ty)
        .body(axum::body::Body::from(body))
        .unwrap_or_default()
}

/// This process's user + system CPU seconds (/proc/self/stat: utime and stime are
/// fields 14 and 15, counted after the ")" that ends the command name, which may hold
/// spaces).
pub fn process_cpu_seconds() -> Option<f64> {
    // SAFETY: sysconf reads constants.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(t as f64 / ticks)
}

/// This process's resident memory in bytes (/proc/self/statm).
pub fn process_resident_bytes() -> Option<u64> {
    // SAFETY: sysconf reads constants.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages = s.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    Some(pages * page.max(1) as u64)
}

/// The standard process metrics of the serving process itself (the names the
/// Prometheus client libraries use): CPU seconds, resident memory, open descriptors.
pub fn process_families(out: &mut Vec<Family>) {
    if let Some(cpu) = process_cpu_seconds() {
        out.push(Family::single(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            Kind::Counter,
            cpu,
        ));
    }
    if let Some(rss) = process_resident_bytes() {
        out.push(Family::single(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Kind::Gauge,
            rss as f64,
        ));
    }
    if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
        out.push(Family::single(
            "process_open_fds",
            "Number of open file descriptors.",
            Kind::Gauge,
            d.count() as f64,
        ));
    }
}

/// Label pairs from `[("k", "v")]`.
pub fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_families() -> Vec<Family> {
        let mut cpu = Family::new(
            "node_cpu_seconds_total",
            "Seconds the CPUs spent in each mode.",
            Kind::Counter,
        );
        cpu.with(&[("cpu", "0"), ("mode", "idle")], 12.5);
        let mut uname = Family::new("node_uname_info", "Labeled system information.", Kind::Info);
        uname.with(&[("sysname", "Linux")], 1.0);
        let retrans = Family::single(
            "node_netstat_Tcp_RetransSegs",
            "Statistic TcpRetransSegs.",
            Kind::Untyped,
            7.0,
        );
        let mut h = Family::new("vigil_syscall_latency_seconds", "Latency.", Kind::Histogram);
        h.samples.push(Sample {
            labels: labels(&[("syscall", "read")]),
            value: Value::Histogram {
                sum: 0.5,
                count: 3,
                buckets: vec![(1e-6, 1), (2e-6, 2), (f64::INFINITY, 0)],
            },
        });
        vec![cpu, uname, retrans, h]
    }

    #[test]
    fn both_formats_name_the_samples_as_dashboards_do() {
        let om = openmetrics_text(sample_families());
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE node_cpu_seconds counter\n"), "{om}");
        assert!(
            om.contains("node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 12.5\n"),
            "{om}"
        );
        assert!(
            om.contains("node_uname_info{sysname=\"Linux\"} 1\n"),
            "{om}"
        );
        assert!(
            om.contains("# TYPE node_netstat_Tcp_RetransSegs unknown\n"),
            "{om}"
        );
        // Cumulative buckets.
        assert!(
            om.contains(
                "vigil_syscall_latency_seconds_bucket{le=\"0.000002\",syscall=\"read\"} 3\n"
            ),
            "{om}"
        );
        assert!(om.contains("le=\"+Inf\",syscall=\"read\"} 3\n"), "{om}");
        let text = prometheus_text(&om);
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(text.contains("# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n# TYPE node_cpu_seconds_total counter\n"), "{text}");
        assert!(text.contains("# TYPE node_uname_info gauge\n"), "{text}");
        assert!(
            text.contains("# TYPE node_netstat_Tcp_RetransSegs untyped\n"),
            "{text}"
        );
    }

    #[test]
    fn accept_headers() {
        assert!(wants_openmetrics(Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }
}
