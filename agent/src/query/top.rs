//! `vigil top`: a full-screen view refreshed every second: the host read directly
//! (so it moves each second whatever the agent's interval), and the slowest syscalls
//! and latest retransmits from the local agent.
use std::{path::Path, time::Duration};

use vigil_proto::v1::{RetransmitsRequest, SyscallLatencyRequest};

use super::api::connect;
use crate::{
    export::convert,
    histogram::LatencyHistogram,
    metrics::{Roots, Sampler},
    trace::syscalls::{print_table, rows},
};

/// Clear the screen and home the cursor.
const CLEAR: &str = "\x1b[H\x1b[2J";

pub async fn run(socket: &Path, refresh: Duration, count: Option<u64>) -> anyhow::Result<()> {
    let mut sampler = Sampler::new(Roots::default(), 8);
    sampler.sample()?;
    let mut agent = connect(socket).await.ok();
    let stop = crate::startup::wait_for_stop(None);
    tokio::pin!(stop);
    let mut frames = 0u64;
    loop {
        tokio::select! {
            r = &mut stop => { r?; break; }
            () = tokio::time::sleep(refresh) => {}
        }
        let sample = sampler.sample()?;
        print!("{CLEAR}");
        crate::trace::stats::print_table(&sample);
        if agent.is_none() {
            agent = connect(socket).await.ok();
        }
        match agent.as_mut() {
            Some(a) => {
                let window_secs = 10;
                match a
                    .syscall_latency(SyscallLatencyRequest { window_secs })
                    .await
                {
                    Ok(r) => {
                        let hist: std::collections::BTreeMap<u32, LatencyHistogram> = r
                            .into_inner()
                            .syscalls
                            .iter()
                            .map(|s| (s.nr, convert::histogram(s)))
                            .collect();
                        println!("\nSLOWEST SYSCALLS (by total time, last {window_secs} s, from the agent)");
                        print_table(&rows(&hist), 8);
                    }
                    Err(status) => {
                        println!("\nagent: {}", status.message());
                        agent = None;
                    }
                }
                if let Some(a) = agent.as_mut() {
                    if let Ok(r) = a.retransmits(RetransmitsRequest { limit: 5 }).await {
                        println!("\nLATEST RETRANSMITS");
                        for t in r.into_inner().retransmits {
                            println!(
                                "  {}:{} -> {}:{} {} err={}",
                                t.saddr, t.sport, t.daddr, t.dport, t.state, t.err
                            );
                        }
                    }
                }
            }
            None => println!(
                "\nno agent on {}: syscalls and retransmits need `vigil agent`",
                socket.display()
            ),
        }
        frames += 1;
        if count.is_some_and(|n| frames >= n) {
            break;
        }
    }
    Ok(())
}
