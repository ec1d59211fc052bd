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
    slos: crate::slo::Latest,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let render: vigil_openmetrics::Render = Arc::new(move || {
        let mut f = families(&counters, tls.as_deref());
        f.extend(crate::remote_write::families(&remote));
        if let Ok(l) = slos.lock() {
            f.extend(slo_families(&l));
        }
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

/// The SLOs as the evaluator last answered them.
fn slo_families(l: &crate::slo::Evaluated) -> Vec<Family> {
    let mut sli = Family::new(
        "vigil_slo_sli",
        "Good share of the SLO's events over its time window (absent without events).",
        Kind::Gauge,
    );
    let mut objective = Family::new("vigil_slo_objective", "The SLO's target.", Kind::Gauge);
    let mut budget = Family::new(
        "vigil_slo_error_budget_remaining",
        "Error budget left over the SLO's window: 1 untouched, 0 spent, below 0 overspent.",
        Kind::Gauge,
    );
    let mut burn = Family::new(
        "vigil_slo_burn_rate",
        "Bad share over the share the objective allows, per workbook window.",
        Kind::Gauge,
    );
    let mut firing = Family::new(
        "vigil_slo_alert_firing",
        "1 while the SLO's page or ticket burn-rate alert fires.",
        Kind::Gauge,
    );
    for s in l.answer.iter().flat_map(|a| &a.slos) {
        let name = s.name.as_str();
        if s.total > 0 {
            sli.with(&[("slo", name)], s.sli);
        }
        objective.with(&[("slo", name)], s.target);
        budget.with(&[("slo", name)], s.budget_left);
        for b in &s.burn {
            let w = crate::slo::short(std::time::Duration::from_secs(b.window_secs));
            burn.with(&[("slo", name), ("window", &w)], b.burn_rate);
        }
        for kind in ["page", "ticket"] {
            let on = l.firing.iter().any(|a| {
                a.labels.get("slo").is_some_and(|n| n == name)
                    && a.labels.get("slo_severity").is_some_and(|k| k == kind)
            });
            firing.with(
                &[("slo", name), ("slo_severity", kind)],
                f64::from(u8::from(on)),
            );
        }
    }
    let refused = l.answer.as_ref().map_or(0, |a| a.problems.len());
    vec![
        sli,
        objective,
        budget,
        burn,
        firing,
        Family::single(
            "vigil_slo_files_refused",
            "SLO files (or SLOs in them) refused at the last evaluation; the collector's log says why.",
            Kind::Gauge,
            refused as f64,
        ),
        Family::single(
            "vigil_slo_evaluation_failures_total",
            "SLO evaluations that could not read the store.",
            Kind::Counter,
            l.failures as f64,
        ),
    ]
}
