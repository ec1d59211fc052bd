//! Loading Vigil's eBPF programs and attaching each probe on its own, so a probe that
//! can't attach (missing tracepoint, old kernel, no BTF) is reported as off with its
//! reason while the others keep working.
/// The rules' kernel filters, as one value: the detector computes it when something
/// changed, the probes apply it in one call (`Probes::apply_filters`). A part that is
/// `None` is unchanged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelFilters {
    /// Directories whose files' writes are reported (with their DIR_* bits), and the
    /// absolute rename prefixes.
    pub dirs: Option<(Vec<WatchedDir>, Vec<String>)>,
    /// Watched files with their FILE_* bits: writes through another hard link
    /// (`FILE_LINK`), opens for reading (`FILE_READ`).
    pub files: Option<Vec<WatchedFile>>,
    /// Connects to these ports, or by programs of these names, are reported.
    pub connects: Option<(Vec<u16>, Vec<[u8; 16]>)>,
    /// Processes whose connects are reported: added, removed.
    pub add_pids: Vec<u32>,
    pub remove_pids: Vec<u32>,
}

impl KernelFilters {
    pub fn is_empty(&self) -> bool {
        self.dirs.is_none()
            && self.files.is_none()
            && self.connects.is_none()
            && self.add_pids.is_empty()
            && self.remove_pids.is_empty()
    }
}

/// A watched directory and its DIR_* bits.
pub type WatchedDir = (vigil_common::DirKey, u8);

/// A watched file and its FILE_* bits.
pub type WatchedFile = (vigil_common::DirKey, u8);

/// What applying the filters did.
#[derive(Debug, Default)]
pub struct FiltersApplied {
    /// Parts whose maps could not be written.
    pub failed: Vec<(&'static str, ProbeError)>,
    /// Watched directories beyond the kernel's prefix list (renames into them unseen).
    pub prefixes_skipped: usize,
    /// Processes the watched-process map had no room for.
    pub pids_not_added: u64,
}

pub mod btf;
pub mod events;
pub mod preflight;
pub mod process;
pub mod security;
pub mod syscalls;
pub mod tcp;
pub mod tracefs;

use std::{collections::BTreeMap, fmt, time::Duration};

use aya::{maps::PerCpuArray, Ebpf, EbpfLoader};
use vigil_common::{globals, Counter, COUNTERS};

pub use self::{events::EventReader, syscalls::SyscallVariant};
use crate::histogram::LatencyHistogram;

/// The compiled eBPF object, embedded at build time by agent/build.rs: the shipped
/// programs only (the benchmark's variants are in a separate object, `vigil-bench`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vigil"));

const EVENTS_MAP: &str = "EVENTS";
const COUNTERS_MAP: &str = "COUNTERS_MAP";
const LATENCY_SHED_MAP: &str = "LATENCY_SHED";

/// What to load and how. Defaults are what the agent runs with.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    /// Attach the syscall latency probe.
    pub syscalls: bool,
    pub syscall_variant: SyscallVariant,
    /// Only time syscalls of this process (thread group id); `None` = every process.
    pub filter_pid: Option<u32>,
    /// Syscalls at least this slow are sent as events; `None` = no events.
    pub slow_threshold: Option<Duration>,
    /// Slow-syscall events allowed per CPU per second; the rest are counted as rate-limited.
    pub slow_events_per_sec: u64,
    /// Attach the TCP retransmit probe to this tracepoint (category, name).
    pub retransmits: Option<(String, String)>,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_buffer_bytes: u32,
    /// `None`: wake the reader for each event (live commands). `Some(n)`: the kernel
    /// wakes it only once n bytes are waiting, and the reader also drains on its own
    /// clock (`EventReader::drain`); this saves a wake-up per event.
    pub wake_at_bytes: Option<u64>,
    /// With `wake_at_bytes`: also wake the reader for an event when the last wake-up is
    /// at least this old, so a lone event is seen at once.
    pub wake_after: Option<Duration>,
    /// Process exec, fork and exit events.
    pub processes: bool,
    /// Security events (ptrace, setuid family, module loads, writes in watched
    /// directories, watched connects, listens).
    pub security: bool,
    /// For the test of the eBPF log path only (`vigil-bench hold-probes
    /// --unset-task-layout`): attach the process probe without its task_struct offsets,
    /// the bad configuration its programs report through aya-log.
    #[doc(hidden)]
    pub unset_task_layout: bool,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            syscalls: true,
            syscall_variant: SyscallVariant::SHIPPED,
            filter_pid: None,
            slow_threshold: Some(Duration::from_millis(10)),
            slow_events_per_sec: 1000,
            retransmits: Some((tcp::CATEGORY.to_string(), tcp::TRACEPOINT.to_string())),
            ring_buffer_bytes: 256 * 1024,
            wake_at_bytes: None,
            wake_after: None,
            processes: false,
            security: false,
            unset_task_layout: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("loading the eBPF object failed (Vigil needs root, or CAP_BPF + CAP_PERFMON): {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program `{program}`: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the eBPF object has no program `{0}` (build mismatch)")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}` (build mismatch)")]
    MissingMap(&'static str),
    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("kernel BTF (/sys/kernel/btf/vmlinux) is unavailable: {0}")]
    Btf(#[source] aya::BtfError),
    #[error("reading the format of tracepoint {tracepoint}: {source}")]
    Format {
        tracepoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel struct layout: {0}")]
    KernelLayout(#[from] btf::BtfError),
    #[error("tracepoint {tracepoint} has an unexpected layout: {reason}")]
    Layout { tracepoint: String, reason: String },
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("ring buffer size {0} is not a power of two of at least 4096 bytes")]
    RingBufferSize(u32),
}

/// The probes Vigil has, in the user's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Probe {
    SyscallLatency,
    TcpRetransmit,
    ProcessLifecycle,
    Security,
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SyscallLatency => "syscall-latency",
            Self::TcpRetransmit => "tcp-retransmit",
            Self::ProcessLifecycle => "process-lifecycle",
            Self::Security => "security",
        })
    }
}

/// Whether a probe runs, and if not, why.
#[derive(Debug)]
pub enum ProbeState {
    On,
    Off(ProbeError),
    /// Not asked for by the settings.
    Disabled,
}

/// Kernel-side counters summed over CPUs (see `vigil_common::Counter`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub slow_syscall_ringbuf_full: u64,
    pub slow_syscall_rate_limited: u64,
    pub retransmit_ringbuf_full: u64,
    pub syscall_start_store_failed: u64,
    pub syscall_out_of_range: u64,
    pub slow_syscall_sent: u64,
    pub retransmit_sent: u64,
    pub process_ringbuf_full: u64,
    pub process_sent: u64,
    pub security_ringbuf_full: u64,
    pub security_sent: u64,
    pub security_pending_full: u64,
}

impl KernelCounters {
    /// Events the kernel could not record or deliver (rate limiting is a choice,
    /// reported apart).
    pub fn lost_events(&self) -> u64 {
        self.slow_syscall_ringbuf_full
            + self.retransmit_ringbuf_full
            + self.process_ringbuf_full
            + self.security_ringbuf_full
            + self.security_pending_full
            + self.syscall_start_store_failed
            + self.syscall_out_of_range
    }
}

/// Loaded probes. Dropping this detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    states: BTreeMap<Probe, ProbeState>,
}

/// The eBPF programs' own diagnostics (aya-log), on rare paths only: a probe attached
/// with a bad configuration. They arrive as `tracing` events with target `ebpf`.
struct EbpfLogs;

impl log::Log for EbpfLogs {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "ebpf", "ebpf: {message}"),
            log::Level::Warn => tracing::warn!(target: "ebpf", "ebpf: {message}"),
            log::Level::Info => tracing::info!(target: "ebpf", "ebpf: {message}"),
            log::Level::Debug => tracing::debug!(target: "ebpf", "ebpf: {message}"),
            log::Level::Trace => tracing::trace!(target: "ebpf", "ebpf: {message}"),
        }
    }

    fn flush(&self) {}
}

/// Reads the programs' log records as they come, on the runtime `load` runs in (the
/// records wait in the kernel's 128 KiB AYA_LOGS ring buffer until then; beyond that
/// the kernel drops them). Without a runtime (or without the map) there is nothing to
/// read.
fn spawn_log_reader(ebpf: &mut Ebpf) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let logger = match aya_log::EbpfLogger::init_with_logger(ebpf, EbpfLogs) {
        Ok(l) => l,
        Err(e) => {
            tracing::debug!(error = %e, "no eBPF log records to read");
            return;
        }
    };
    let _guard = runtime.enter();
    // SAFETY: the fd is the logger's ring buffer map, which the logger owns and keeps
    // open, unchanged, until the AsyncFd (which owns the logger) is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut logger = match registered {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the eBPF log ring buffer");
            return;
        }
    };
    runtime.spawn(async move {
        loop {
            let Ok(mut guard) = logger.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

impl Probes {
    /// Each loaded program's run time and run count as the kernel keeps them (zero
    /// unless `kernel.bpf_stats_enabled` is 1): by program name.
    pub fn program_stats(&self) -> Vec<(String, std::time::Duration, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                Some((name.to_string(), info.run_time(), info.run_count()))
            })
            .collect()
    }

    /// Loads the eBPF object and attaches each requested probe independently.
    /// Fails only when nothing at all can be loaded.
    pub fn load(settings: &ProbeSettings) -> Result<Self, ProbeError> {
        Self::load_object(EBPF_OBJECT, settings)
    }

    /// As [`Probes::load`], from another build of the programs (the benchmark's object,
    /// which also carries the syscall variants that the shipped one leaves out).
    pub fn load_object(object: &[u8], settings: &ProbeSettings) -> Result<Self, ProbeError> {
        raise_memlock_limit();
        let rb = settings.ring_buffer_bytes;
        if rb < 4096 || !rb.is_power_of_two() {
            return Err(ProbeError::RingBufferSize(rb));
        }
        // The retransmit layout must be known before load: it is a read-only global.
        let mut retransmit_layout = Err(ProbeError::MissingProgram(tcp::PROGRAM));
        if let Some((category, name)) = &settings.retransmits {
            retransmit_layout = tracefs::tracefs_root()
                .map_err(ProbeError::from)
                .and_then(|root| tcp::layout(&root, category, name));
        }
        let filter = settings.filter_pid.unwrap_or(0);
        let threshold = settings
            .slow_threshold
            .map_or(u64::MAX, |d| d.as_nanos().min(u64::MAX as u128) as u64);
        let layout = retransmit_layout
            .as_ref()
            .ok()
            .copied()
            .unwrap_or(vigil_common::RetransmitLayout::UNSET);
        let wake_at: u64 = settings.wake_at_bytes.unwrap_or(0).max(
            u64::from(settings.wake_at_bytes.is_some()), // Some(0) still means "batched"
        );
        // Likewise the task_struct offsets for the process probes, from the kernel's BTF.
        let task_layout = if settings.processes || settings.security {
            btf::KernelBtf::from_sys_fs()
                .and_then(|b| process::layout(&b))
                .map_err(ProbeError::from)
        } else {
            Err(ProbeError::MissingProgram("sched_process_exec"))
        };
        let task = task_layout
            .as_ref()
            .ok()
            .copied()
            .filter(|_| !settings.unset_task_layout)
            .unwrap_or(vigil_common::TaskLayout::UNSET);
        // Security needs the struct offsets too (files, dentries, inodes), and the
        // shipped syscall pair.
        let security_syscalls = if settings.security
            && task_layout.is_ok()
            && settings.syscall_variant == SyscallVariant::SHIPPED
        {
            security::syscalls()
        } else {
            vigil_common::SecuritySyscalls::OFF
        };
        let wake_after: u64 = settings
            .wake_after
            .map_or(0, |d| d.as_nanos().clamp(1, u64::MAX as u128) as u64);
        let latency_on = u32::from(settings.syscalls);
        let mut loader = EbpfLoader::new();
        loader
            .allow_unsupported_maps()
            .override_global(globals::FILTER_TGID, &filter, true)
            .override_global(globals::SYSCALL_LATENCY_ON, &latency_on, true)
            .override_global(globals::SLOW_THRESHOLD_NS, &threshold, true)
            .override_global(
                globals::SLOW_EVENTS_PER_SEC,
                &settings.slow_events_per_sec,
                true,
            )
            .override_global(globals::RETRANSMIT_LAYOUT, &layout, true)
            .override_global(globals::TASK_LAYOUT, &task, true)
            .override_global(globals::SECURITY_SYSCALLS, &security_syscalls, true)
            .override_global(globals::RINGBUF_WAKE_AT_BYTES, &wake_at, true)
            .override_global(globals::RINGBUF_WAKE_AFTER_NS, &wake_after, true)
            .map_max_entries(EVENTS_MAP, rb);
        if !(settings.syscalls && settings.syscall_variant.uses_tid_hash()) {
            // The tid hash preallocates; don't pay for it unless it is used.
            loader.map_max_entries(syscalls::START_HASH_MAP, 1);
        }
        let mut ebpf = loader.load(object).map_err(ProbeError::Load)?;
        spawn_log_reader(&mut ebpf);

        let mut states = BTreeMap::new();
        // The sys_enter/sys_exit pair serves the latency histograms and the security
        // checks; it runs when either is asked for (the shipped variant only).
        let wants_pair = settings.syscalls
            || (settings.security && settings.syscall_variant == SyscallVariant::SHIPPED);
        let pair = if wants_pair {
            syscalls::attach(&mut ebpf, settings.syscall_variant)
        } else {
            Ok(())
        };
        let syscall_pair_on = wants_pair && pair.is_ok();
        let syscalls = match (settings.syscalls, pair) {
            (false, _) => ProbeState::Disabled,
            (true, Ok(())) => ProbeState::On,
            (true, Err(e)) => ProbeState::Off(e),
        };
        states.insert(Probe::SyscallLatency, syscalls);
        let retransmits = match &settings.retransmits {
            None => ProbeState::Disabled,
            Some((category, name)) => {
                match retransmit_layout.and_then(|_| tcp::attach(&mut ebpf, category, name)) {
                    Ok(()) => ProbeState::On,
                    Err(e) => ProbeState::Off(e),
                }
            }
        };
        states.insert(Probe::TcpRetransmit, retransmits);
        let processes = if settings.processes {
            match task_layout
                .as_ref()
                .map_err(|e| ProbeError::Layout {
                    tracepoint: "kernel BTF".into(),
                    reason: error_chain(e),
                })
                .and_then(|_| process::attach(&mut ebpf))
            {
                Ok(()) => ProbeState::On,
                Err(e) => ProbeState::Off(e),
            }
        } else {
            ProbeState::Disabled
        };
        states.insert(Probe::ProcessLifecycle, processes);
        let security = if !settings.security {
            ProbeState::Disabled
        } else if let Err(e) = &task_layout {
            ProbeState::Off(ProbeError::Layout {
                tracepoint: "kernel BTF".into(),
                reason: error_chain(e),
            })
        } else if !syscall_pair_on {
            ProbeState::Off(ProbeError::Layout {
                tracepoint: "raw_syscalls".into(),
                reason: "the sys_enter/sys_exit pair it rides is not attached".into(),
            })
        } else {
            // The syscall checks are on with the pair; listen is extra.
            let root = tracefs::tracefs_root().ok();
            if let Err(e) = security::attach(&mut ebpf, root.as_deref()) {
                tracing::warn!("probe security: listen events OFF: {}", error_chain(&e));
            }
            ProbeState::On
        };
        states.insert(Probe::Security, security);
        for (probe, state) in &states {
            match state {
                ProbeState::On => tracing::info!(%probe, "probe on"),
                ProbeState::Off(e) => tracing::warn!(%probe, reason = %error_chain(e), "probe off"),
                ProbeState::Disabled => tracing::debug!(%probe, "probe not requested"),
            }
        }
        Ok(Self { ebpf, states })
    }

    pub fn state(&self, probe: Probe) -> &ProbeState {
        self.states.get(&probe).unwrap_or(&ProbeState::Disabled)
    }

    pub fn states(&self) -> impl Iterator<Item = (Probe, &ProbeState)> {
        self.states.iter().map(|(p, s)| (*p, s))
    }

    pub fn is_on(&self, probe: Probe) -> bool {
        matches!(self.state(probe), ProbeState::On)
    }

    /// Cumulative syscall latency since load, by syscall number.
    pub fn syscall_latency(&self) -> Result<BTreeMap<u32, LatencyHistogram>, ProbeError> {
        syscalls::read_latency(&self.ebpf)
    }

    /// Cumulative kernel counters since load.
    /// Sheds syscall latency (histograms and slow-syscall events stop; the security
    /// checks on the same programs go on), or takes it back.
    pub fn shed_syscall_latency(&mut self, shed: bool) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(LATENCY_SHED_MAP)
            .ok_or(ProbeError::MissingMap(LATENCY_SHED_MAP))?;
        let mut a: aya::maps::Array<_, u32> =
            aya::maps::Array::try_from(map).map_err(|source| ProbeError::Map {
                map: LATENCY_SHED_MAP,
                source,
            })?;
        a.set(0, u32::from(shed), 0)
            .map_err(|source| ProbeError::Map {
                map: LATENCY_SHED_MAP,
                source,
            })
    }

    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let mut sums = [0u64; COUNTERS as usize];
        for_each_per_cpu(
            &self.ebpf,
            COUNTERS_MAP,
            0..COUNTERS,
            |i, per_cpu: &[u64]| {
                sums[i as usize] = per_cpu.iter().sum();
            },
        )?;
        let at = |c: Counter| sums[c as usize];
        Ok(KernelCounters {
            slow_syscall_ringbuf_full: at(Counter::SlowSyscallRingbufFull),
            slow_syscall_rate_limited: at(Counter::SlowSyscallRateLimited),
            retransmit_ringbuf_full: at(Counter::RetransmitRingbufFull),
            syscall_start_store_failed: at(Counter::SyscallStartStoreFailed),
            syscall_out_of_range: at(Counter::SyscallOutOfRange),
            slow_syscall_sent: at(Counter::SlowSyscallSent),
            retransmit_sent: at(Counter::RetransmitSent),
            process_ringbuf_full: at(Counter::ProcessRingbufFull),
            process_sent: at(Counter::ProcessSent),
            security_ringbuf_full: at(Counter::SecurityRingbufFull),
            security_sent: at(Counter::SecuritySent),
            security_pending_full: at(Counter::SecurityPendingFull),
        })
    }

    /// Writes the rules' kernel filters (one value from the detector) to the probes'
    /// maps in one call; each part that fails is reported and the others still go.
    pub fn apply_filters(&mut self, f: &KernelFilters) -> FiltersApplied {
        let mut out = FiltersApplied::default();
        if let Some((dirs, prefixes)) = &f.dirs {
            let r = security::set_dirs(&mut self.ebpf, dirs)
                .and_then(|()| security::set_prefixes(&mut self.ebpf, prefixes));
            match r {
                Ok(skipped) => out.prefixes_skipped = skipped,
                Err(e) => out.failed.push(("watched directories", e)),
            }
        }
        if let Some(files) = &f.files {
            if let Err(e) = security::set_files(&mut self.ebpf, files) {
                out.failed.push(("watched files", e));
            }
        }
        if let Some((ports, comms)) = &f.connects {
            let r = security::set_ports(&mut self.ebpf, ports)
                .and_then(|()| security::set_comms(&mut self.ebpf, comms));
            if let Err(e) = r {
                out.failed.push(("watched ports and programs", e));
            }
        }
        if !f.add_pids.is_empty() || !f.remove_pids.is_empty() {
            match security::update_pids(&mut self.ebpf, &f.add_pids, &f.remove_pids) {
                Ok(n) => out.pids_not_added = n,
                Err(e) => out.failed.push(("watched processes", e)),
            }
        }
        out
    }

    /// Takes the event ring buffer (once) for an async reader. Must be called within
    /// a tokio runtime.
    pub fn event_reader(&mut self) -> Result<EventReader, ProbeError> {
        let map = self
            .ebpf
            .take_map(EVENTS_MAP)
            .ok_or(ProbeError::MissingMap(EVENTS_MAP))?;
        EventReader::new(map)
    }
}

/// Calls `each(index, values on every CPU)` for each index of per-CPU array `name`.
fn for_each_per_cpu<T: aya::Pod>(
    ebpf: &Ebpf,
    name: &'static str,
    indices: impl IntoIterator<Item = u32>,
    mut each: impl FnMut(u32, &[T]),
) -> Result<(), ProbeError> {
    let map = ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
    let array: PerCpuArray<_, T> =
        PerCpuArray::try_from(map).map_err(|source| ProbeError::Map { map: name, source })?;
    for i in indices {
        let per_cpu = array
            .get(&i, 0)
            .map_err(|source| ProbeError::Map { map: name, source })?;
        each(i, &per_cpu);
    }
    Ok(())
}

/// Finds program `name` in the object and runs `load_attach` on it as program type
/// `P`, naming the program in any error.
fn load_and_attach<P>(
    ebpf: &mut Ebpf,
    name: &'static str,
    load_attach: impl FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
) -> Result<(), ProbeError>
where
    for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?;
    let program: &mut P = program.try_into().map_err(|source| ProbeError::Program {
        program: name,
        source,
    })?;
    load_attach(program).map_err(|source| ProbeError::Program {
        program: name,
        source,
    })
}

/// An error and its causes on one line, for logs and the CLI.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }
}

#[cfg(test)]
mod tests {
    use super::{SyscallVariant, EBPF_OBJECT};

    fn carries(program: &str) -> bool {
        EBPF_OBJECT
            .windows(program.len() + 1)
            .any(|w| &w[..program.len()] == program.as_bytes() && w[program.len()] == 0)
    }

    /// The benchmark's syscall variants are in `vigil-bench`'s object only: the agent
    /// ships the programs it attaches and no other.
    #[test]
    fn the_shipped_object_carries_the_shipped_pair_and_no_benchmark_variant() {
        let (enter, exit) = SyscallVariant::SHIPPED.programs();
        assert!(carries(enter) && carries(exit), "{enter}/{exit} missing");
        for v in SyscallVariant::ALL {
            if v == SyscallVariant::SHIPPED {
                continue;
            }
            let (enter, exit) = v.programs();
            assert!(
                !carries(enter) && !carries(exit),
                "{} ({enter}/{exit}) is in the shipped object",
                v.name()
            );
        }
        assert!(!carries("sched_switch_spill"));
    }
}
