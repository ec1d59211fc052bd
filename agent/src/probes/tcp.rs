//! The TCP retransmit probe: reads the tracepoint's layout and attaches.
use std::path::Path;

use aya::{programs::TracePoint, Ebpf};
use vigil_common::RetransmitLayout;

use super::{load_and_attach, tracefs::TracepointFormat, ProbeError};

pub const PROGRAM: &str = "tcp_retransmit_skb";
pub const CATEGORY: &str = "tcp";
pub const TRACEPOINT: &str = "tcp_retransmit_skb";

/// The field offsets the eBPF program needs, from the tracepoint's format file.
pub fn layout(tracefs: &Path, category: &str, name: &str) -> Result<RetransmitLayout, ProbeError> {
    let format =
        TracepointFormat::read(tracefs, category, name).map_err(|source| ProbeError::Format {
            tracepoint: format!("{category}:{name}"),
            source,
        })?;
    let offset = |field: &str, size: u32| match format.field(field) {
        Some((off, sz)) if sz == size => Ok(off),
        Some((_, sz)) => Err(ProbeError::Layout {
            tracepoint: format!("{category}:{name}"),
            reason: format!("field `{field}` is {sz} bytes, expected {size}"),
        }),
        None => Err(ProbeError::Layout {
            tracepoint: format!("{category}:{name}"),
            reason: format!("field `{field}` is missing"),
        }),
    };
    let optional = |field: &str, size: u32| offset(field, size).unwrap_or(RetransmitLayout::ABSENT);
    Ok(RetransmitLayout {
        sport: offset("sport", 2)?,
        dport: offset("dport", 2)?,
        family: offset("family", 2)?,
        state: offset("state", 4)?,
        saddr: offset("saddr", 4)?,
        daddr: offset("daddr", 4)?,
        saddr_v6: optional("saddr_v6", 16),
        daddr_v6: optional("daddr_v6", 16),
        // `err` appeared in Linux 6.13; older kernels report 0.
        err: optional("err", 4),
        state_size: 4,
    })
}

pub fn attach(ebpf: &mut Ebpf, category: &str, name: &str) -> Result<(), ProbeError> {
    load_and_attach(ebpf, PROGRAM, |p: &mut TracePoint| {
        p.load()?;
        p.attach(category, name).map(drop)
    })
}
