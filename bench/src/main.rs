//! `vigil-bench`: the programs `cargo xtask bench` runs against the product and that
//! the product does not ship: probes held for a measurement (from the benchmark's eBPF
//! object, which adds the syscall variants to the shipped programs) and the collector's
//! load generator.
use clap::Parser as _;
use vigil_agent::startup::{self, Role, Threads};

/// The benchmark's eBPF object (agent-ebpf's `vigil-bench` binary).
static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("VIGIL_BENCH_OBJECT"));

#[derive(Debug, clap::Parser)]
#[command(name = "vigil-bench")]
enum Cli {
    /// Attach probes and hold them until SIGINT/SIGTERM.
    HoldProbes {
        /// A syscall probe variant (see --list-variants); default: the agent as shipped.
        #[arg(long)]
        variant: Option<String>,
        /// Print `name<TAB>description` for each variant and exit.
        #[arg(long)]
        list_variants: bool,
        /// Attach the process probe without its task_struct offsets: the bad
        /// configuration its programs report through aya-log (for the test of that path).
        #[arg(long)]
        unset_task_layout: bool,
    },
    /// `cargo xtask bench alerts --record`: the agent's spool (every batch of a run
    /// without a collector) written as a recording (length-prefixed batches; what no
    /// alert rule reads is left out: the top process lists, slow-syscall and
    /// retransmit events, findings' processes and details, syscalls with fewer calls
    /// than a p99 needs, empty histogram buckets at the top). SPOOL may also be an
    /// earlier recording, trimmed again.
    AlertsRecord {
        #[arg(long)]
        spool: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// `cargo xtask bench alerts`: a recording through the built-in alert rules, on
    /// the batches' own clock. Prints JSON: the alerts that fired, and the engine's
    /// CPU per 1,000 evaluations over `rounds` replays.
    AlertsReplay {
        #[arg(long)]
        recording: std::path::PathBuf,
        #[arg(long, default_value_t = 200)]
        rounds: u32,
    },
    /// Load generator for `cargo xtask bench collector`.
    Ingest {
        #[arg(long)]
        collector: String,
        #[arg(long, default_value_t = 50)]
        agents: usize,
        #[arg(long, default_value_t = 200)]
        batches: u64,
        /// Mutual TLS: the CA (ca.pem) and each simulated agent's certificate
        /// (agent-bench-NNNN.pem and .key, as `vigil certs issue` names them) in this
        /// directory; plaintext without it.
        #[arg(long)]
        tls_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    startup::init(Role::Daemon, vigil_agent::config::LogFormat::Human);
    match cli {
        Cli::HoldProbes {
            variant,
            list_variants,
            unset_task_layout,
        } => startup::run(
            Threads::One,
            "vigil-bench",
            hold_probes(variant, list_variants, unset_task_layout),
        ),
        Cli::AlertsRecord { spool, out } => exit(alerts_record(&spool, &out)),
        Cli::AlertsReplay { recording, rounds } => exit(alerts_replay(&recording, rounds)),
        Cli::Ingest {
            collector,
            agents,
            batches,
            tls_dir,
        } => startup::run(
            Threads::PerCore,
            "vigil-bench",
            ingest(collector, agents, batches, tls_dir),
        ),
    }
}

use anyhow::Context as _;
use prost::Message as _;

fn exit(r: anyhow::Result<()>) -> std::process::ExitCode {
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn alerts_record(spool: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    let batches = if spool.is_file() {
        read_recording(spool)?
    } else {
        let spool = vigil_agent::spool::Spool::open(spool, Default::default())
            .with_context(|| format!("opening the spool {}", spool.display()))?;
        let mut out = Vec::new();
        let mut after = 0;
        while let Some(b) = spool.next_unacked(after)? {
            after = b.sequence;
            out.push(b);
        }
        out
    };
    let mut bytes = Vec::new();
    let mut n = 0;
    for mut b in batches {
        for m in &mut b.metrics {
            m.top_cpu.clear();
            m.top_memory.clear();
        }
        b.slow_syscalls.clear();
        b.retransmits.clear();
        for f in &mut b.findings {
            f.process = None;
            f.parent = None;
            f.ancestors.clear();
            f.details.clear();
        }
        b.syscalls
            .retain(|s| s.count >= vigil_agent::alerts::metric::MIN_CALLS);
        for s in &mut b.syscalls {
            while s.buckets.last() == Some(&0) {
                s.buckets.pop();
            }
        }
        let encoded = b.encode_to_vec();
        bytes.extend_from_slice(&(encoded.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&encoded);
        n += 1;
    }
    std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    println!("{n} batches, {} bytes, to {}", bytes.len(), out.display());
    Ok(())
}

fn read_recording(path: &std::path::Path) -> anyhow::Result<Vec<vigil_proto::v1::Batch>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading the recording {}", path.display()))?;
    let mut batches = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into()?) as usize;
        let body = rest.get(4..4 + len).context("a truncated recording")?;
        batches.push(vigil_proto::v1::Batch::decode(body)?);
        rest = &rest[4 + len..];
    }
    Ok(batches)
}

fn alerts_replay(recording: &std::path::Path, rounds: u32) -> anyhow::Result<()> {
    use vigil_agent::alerts::{metric::AgentHealth, metric::Inputs, rules, Engine};
    let batches = read_recording(recording)?;
    anyhow::ensure!(!batches.is_empty(), "an empty recording");
    let rules = rules::load(None)?;
    let replay = |fired: &mut Vec<serde_json::Value>| {
        let mut engine = Engine::new(rules.clone(), std::time::Duration::from_secs(3600));
        for b in &batches {
            let Some(m) = b.metrics.first() else { continue };
            let health = AgentHealth {
                events_lost: b
                    .losses
                    .as_ref()
                    .map_or(0, |l| l.stages().iter().map(|(_, n)| n).sum()),
                ..Default::default()
            };
            let inputs = Inputs {
                time_ms: b.end_unix_ms,
                metrics: m,
                syscalls: &b.syscalls,
                findings: &b.findings,
                agent: &health,
            };
            for e in engine.evaluate(&inputs) {
                if e.state == "firing" || e.state == "pending" {
                    fired.push(serde_json::json!({
                        "state": e.state,
                        "alert": e.alert, "severity": e.severity, "labels": e.labels,
                        "value": e.value, "summary": e.summary,
                        "after_secs": (e.time_unix_ms - batches[0].end_unix_ms) / 1000,
                    }));
                }
            }
        }
    };
    let mut fired = Vec::new();
    replay(&mut fired);
    let cpu = || {
        // SAFETY: a zeroed timespec is valid; the call fills it.
        let mut t: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: t is a valid timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    };
    let start = cpu();
    let mut sink = Vec::new();
    for _ in 0..rounds {
        replay(&mut sink);
        sink.clear();
    }
    let spent = cpu() - start;
    let evaluations = batches.len() as f64 * f64::from(rounds);
    let span = (batches.last().map_or(0, |b| b.end_unix_ms) - batches[0].start_unix_ms) / 1000;
    println!(
        "{}",
        serde_json::json!({
            "batches": batches.len(),
            "span_secs": span,
            "interval_secs": batches[0].metrics.first().map_or(0.0, |m| m.interval_secs),
            "rules": rules.len(),
            "fired": fired,
            "evaluations": evaluations,
            "cpu_ms_per_1000_evaluations": spent * 1e3 / evaluations * 1000.0,
        })
    );
    Ok(())
}

async fn hold_probes(
    variant: Option<String>,
    list_variants: bool,
    unset_task_layout: bool,
) -> anyhow::Result<()> {
    use vigil_agent::probes::{error_chain, ProbeSettings, Probes, SyscallVariant};
    if list_variants {
        for v in SyscallVariant::ALL {
            println!("{}\t{}", v.name(), v.describe());
        }
        return Ok(());
    }
    let settings = match variant {
        // As the agent runs by default: every probe, detection's included.
        None => ProbeSettings {
            processes: true,
            security: !unset_task_layout,
            unset_task_layout,
            ..ProbeSettings::default()
        },
        Some(name) => {
            let v = SyscallVariant::from_name(&name)
                .ok_or_else(|| anyhow::anyhow!("unknown variant `{name}` (see --list-variants)"))?;
            ProbeSettings {
                syscall_variant: v,
                retransmits: None,
                ..Default::default()
            }
        }
    };
    let _probes = Probes::load_object(BENCH_OBJECT, &settings)
        .map_err(|e| anyhow::anyhow!(error_chain(&e)))?;
    vigil_agent::trace::announce("nothing: holding probes for a benchmark", None);
    vigil_agent::startup::wait_for_stop(None).await
}

/// Load generator for `cargo xtask bench collector`: `agents` concurrent streams, each
/// sending `batches` batches of one host sample, waiting for every ack. Prints one
/// JSON line: batches, bytes_per_batch, data_points_per_batch (every number the sample
/// carries, as OpenTelemetry counts data points), seconds, batches_per_sec and
/// points_per_sec (the 12 history series per batch).
async fn ingest(
    addr: String,
    agents: usize,
    batches: u64,
    tls_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    use vigil_proto::v1::{collector_client::CollectorClient, Batch, HostIdentity};
    use vigil_tls::{client::Connector, Material, Reloading, TlsFiles};
    // Each agent's connector, made before the clock starts (the handshakes are in it).
    let connectors = (0..agents)
        .map(|a| match &tls_dir {
            None => Ok(Connector::plain(&addr)?),
            Some(dir) => {
                let files = TlsFiles {
                    ca: dir.join("ca.pem"),
                    cert: dir.join(format!("agent-bench-{a:04}.pem")),
                    key: dir.join(format!("agent-bench-{a:04}.key")),
                };
                let m = Material::load(&files)?;
                let config = vigil_tls::material::client_config(&m)?;
                Ok(Connector::tls(
                    &addr,
                    None,
                    Reloading::fixed(config, "agent"),
                )?)
            }
        })
        .collect::<anyhow::Result<Vec<Connector>>>()?;
    let sample =
        vigil_agent::metrics::Sampler::new(vigil_agent::metrics::Roots::default(), 5).sample()?;
    let metrics = vigil_agent::export::convert::host_metrics(&sample);
    let data_points_per_batch = vigil_collector::metrics::data_points(&metrics);
    let bytes_per_batch = prost::Message::encoded_len(&Batch {
        agent_id: "bench-0000".into(),
        epoch: 1,
        sequence: batches,
        host: Some(HostIdentity {
            agent_id: "bench-0000".into(),
            hostname: "bench-0000".into(),
            ..Default::default()
        }),
        metrics: vec![metrics.clone()],
        ..Default::default()
    });
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for (a, connector) in connectors.into_iter().enumerate() {
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(connector.uri())?
                .connect_with_connector(connector)
                .await?;
            let mut client = CollectorClient::new(channel);
            let id = format!("bench-{a:04}");
            let now = vigil_agent::units::unix_ms(std::time::SystemTime::now());
            let stream = tokio_stream::iter((1..=batches).map(move |seq| Batch {
                agent_id: id.clone(),
                epoch: 1,
                sequence: seq,
                host: Some(HostIdentity {
                    agent_id: id.clone(),
                    hostname: id.clone(),
                    ..Default::default()
                }),
                metrics: vec![vigil_proto::v1::HostMetrics {
                    time_unix_ms: now - (batches - seq) as i64,
                    ..metrics.clone()
                }],
                ..Default::default()
            }));
            let mut acks = client.stream(stream).await?.into_inner();
            let mut n = 0u64;
            while acks.message().await?.is_some() {
                n += 1;
            }
            anyhow::ensure!(n == batches, "{n} of {batches} acked");
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let total = agents as u64 * batches;
    let points = total * vigil_collector::metrics::SCALARS.len() as u64;
    println!(
        "{}",
        serde_json::json!({"batches": total, "bytes_per_batch": bytes_per_batch, "data_points_per_batch": data_points_per_batch, "seconds": secs, "batches_per_sec": total as f64 / secs, "points_per_sec": points as f64 / secs})
    );
    Ok(())
}
