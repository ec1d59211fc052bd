//! The collector's /metrics (`metrics_listen`): its own health, from the counters the
//! server keeps (the same ones `vigil hosts --json` shows under `collector`). Names,
//! types and labels are in the README's "Prometheus and Grafana" table.
use std::sync::{atomic::Ordering, Arc};

use vigil_openmetrics::{Family, Kind};

use crate::limits::Counters;
use crate::server::ServerTls;

pub async fn serve(
    addr: &str,
    counters: Arc<Counters>,
    tls: Option<Arc<vigil_tls::Reloading<ServerTls>>>,
    remote: Vec<Arc<crate::remote_write::EndpointStats>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let render: vigil_openmetrics::Render = Arc::new(move || {
        let mut f = families(&counters, tls.as_deref());
        f.extend(crate::remote_write::families(&remote));
        f
    });
    let (_, task) = vigil_openmetrics::serve(addr, "collector", render).await?;
    Ok(task)
}

fn families(c: &Counters, tls: Option<&vigil_tls::Reloading<ServerTls>>) -> Vec<Family> {
    let mut out = Vec::new();
    let mut refused = Family::new(
        "vigil_collector_refused_total",
        "Connections, requests and batches the collector refused or closed, by reason.",
        Kind::Counter,
    );
    for (reason, n) in c.refused() {
        refused.with(&[("reason", reason)], n as f64);
    }
    out.push(refused);
    out.push(Family::single(
        "vigil_collector_connections_open",
        "Client connections open now.",
        Kind::Gauge,
        c.connections_open.load(Ordering::Relaxed) as f64,
    ));
    out.push(Family::single(
        "vigil_collector_conflicting_batches_total",
        "Batches whose (agent, epoch, sequence) was already stored with other contents: set aside, counted.",
        Kind::Counter,
        c.conflicts.load(Ordering::Relaxed) as f64,
    ));
    out.push(Family::single(
        "vigil_collector_strings_truncated_total",
        "Strings cut to the configured limit in accepted batches.",
        Kind::Counter,
        c.strings_truncated.load(Ordering::Relaxed) as f64,
    ));
    let mut denied = Family::new(
        "vigil_collector_permission_denied_total",
        "Requests refused with PERMISSION_DENIED, by client certificate (at most 1024 certificates, the rest under one label).",
        Kind::Counter,
    );
    for (cert, n) in c.denied_by_certificate() {
        denied.with(&[("certificate", &cert)], n as f64);
    }
    out.push(denied);
    out.push(Family::single(
        "vigil_collector_tls_enabled",
        "1 when agents must present a certificate (mTLS), 0 when TLS is off.",
        Kind::Gauge,
        f64::from(u8::from(tls.is_some())),
    ));
    if let Some(t) = tls {
        out.push(Family::single(
            "vigil_collector_tls_reloads_total",
            "TLS material reloaded from its files.",
            Kind::Counter,
            t.reloads.load(Ordering::Relaxed) as f64,
        ));
        out.push(Family::single(
            "vigil_collector_tls_reload_failures_total",
            "TLS material refused on reload (the old material kept).",
            Kind::Counter,
            t.failures.load(Ordering::Relaxed) as f64,
        ));
    }
    vigil_openmetrics::process_families(&mut out);
    out
}
