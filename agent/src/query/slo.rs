//! `vigil slo`: each SLO at the collector: its SLI over the window, the error budget
//! left, the burn rate over the workbook's windows, and whether its page or ticket
//! alert fires.
use serde_json::json;
use vigil_proto::v1::SlosRequest;

use super::display::clean;

fn window(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s => format!("{}m", s / 60),
    }
}

pub async fn run(target: &super::fleet::CollectorTarget, json: bool) -> anyhow::Result<()> {
    let mut client = super::fleet::connect(target).await?;
    let r = client.slos(SlosRequest {}).await?.into_inner();
    for p in &r.problems {
        eprintln!("vigil: SLO file refused at the collector: {}", clean(p));
    }
    if json {
        for s in &r.slos {
            println!(
                "{}",
                json!({
                    "name": s.name, "display_name": s.display_name, "service": s.service,
                    "indicator": s.indicator, "hosts": s.hosts, "hosts_counted": s.hosts_counted,
                    "target": s.target, "window_secs": s.window_secs,
                    "good": s.good, "total": s.total,
                    "sli": (s.total > 0).then_some(s.sli),
                    "budget_left": s.budget_left,
                    "burn": s.burn.iter().map(|b| (window(b.window_secs), b.burn_rate)).collect::<std::collections::BTreeMap<_, _>>(),
                    "burn_windows_secs": s.burn.iter().map(|b| b.window_secs).collect::<Vec<_>>(),
                    "page": s.page, "ticket": s.ticket,
                })
            );
        }
        return Ok(());
    }
    if r.slos.is_empty() {
        println!("no SLOs at the collector (files in its slo_dir, default /etc/vigil/slo.d)");
        return Ok(());
    }
    for s in &r.slos {
        let sli = if s.total > 0 {
            format!("{:.4} %", 100.0 * s.sli)
        } else {
            "no events".into()
        };
        let alert = match (s.page, s.ticket) {
            (true, _) => "PAGE",
            (false, true) => "TICKET",
            _ => "ok",
        };
        println!(
            "{} ({}) {} on {} [{} hosts]: objective {} % over {}; SLI {sli} ({} of {} events); budget left {:.1} %; {alert}",
            clean(&s.name),
            clean(&s.service),
            clean(&s.indicator),
            clean(&s.hosts),
            s.hosts_counted,
            100.0 * s.target,
            window(s.window_secs),
            s.good,
            s.total,
            100.0 * s.budget_left,
        );
        let burns: Vec<String> = s
            .burn
            .iter()
            .map(|b| format!("{} {:.2}x", window(b.window_secs), b.burn_rate))
            .collect();
        println!("    burn rate: {}", burns.join(", "));
    }
    Ok(())
}
