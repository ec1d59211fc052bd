//! TCP retransmits from the `tcp:tcp_retransmit_skb` tracepoint, one event each.
//!
//! The record layout varies across kernels and Rust eBPF has no CO-RE, so userspace
//! reads the field offsets from tracefs and hands them over in `RETRANSMIT_LAYOUT`.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use vigil_common::{Counter, EventKind, RetransmitLayout, TcpRetransmit};

use crate::maps::{count, setting, submit_flags, EVENTS};

const AF_INET6: u16 = 10;

#[no_mangle]
pub static RETRANSMIT_LAYOUT: RetransmitLayout = RetransmitLayout::UNSET;

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = try_tcp_retransmit_skb(&ctx);
    0
}

#[inline(always)]
fn field<T: Default>(ctx: &TracePointContext, offset: u32) -> T {
    if offset == RetransmitLayout::ABSENT {
        return T::default();
    }
    // SAFETY: the offset comes from the tracepoint's own format file; the read is
    // bounds-checked by the kernel (bpf_probe_read_kernel).
    unsafe { ctx.read_at::<T>(offset as usize) }.unwrap_or_default()
}

fn try_tcp_retransmit_skb(ctx: &TracePointContext) -> Result<(), ()> {
    let layout = setting(&RETRANSMIT_LAYOUT);
    if layout.family == RetransmitLayout::ABSENT {
        // A bad configuration (userspace attaches only with the offsets it read from
        // the tracepoint's format), reported through aya-log; never per event otherwise.
        aya_log_ebpf::error!(
            ctx,
            "retransmit probe attached without its record layout (RETRANSMIT_LAYOUT unset): event dropped"
        );
        return Err(());
    }
    let Some(mut entry) = EVENTS.reserve::<TcpRetransmit>(0) else {
        count(Counter::RetransmitRingbufFull);
        return Err(());
    };
    let family: u16 = field(ctx, layout.family);
    let (saddr, daddr) = if family == AF_INET6 {
        (
            field::<[u8; 16]>(ctx, layout.saddr_v6),
            field::<[u8; 16]>(ctx, layout.daddr_v6),
        )
    } else {
        let (s, d): ([u8; 4], [u8; 4]) = (field(ctx, layout.saddr), field(ctx, layout.daddr));
        let mut saddr = [0u8; 16];
        let mut daddr = [0u8; 16];
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
        (saddr, daddr)
    };
    entry.write(TcpRetransmit {
        kind: EventKind::TcpRetransmit as u8,
        _pad: 0,
        family,
        state: field(ctx, layout.state),
        sport: field(ctx, layout.sport),
        dport: field(ctx, layout.dport),
        err: field(ctx, layout.err),
        // SAFETY: helper without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        saddr,
        daddr,
    });
    entry.submit(submit_flags(false));
    count(Counter::RetransmitSent);
    Ok(())
}
