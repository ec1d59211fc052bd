//! Builds the eBPF object (agent-ebpf) with aya-build so it can be embedded in the
//! agent binary. Needs the nightly toolchain's rust-src and bpf-linker: run
//! `cargo xtask setup` if this fails.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../agent-common/src");
    aya_build::build_ebpf(
        [aya_build::Package { name: "vigil-ebpf", root_dir: "../agent-ebpf", ..Default::default() }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF programs (agent-ebpf) failed; `cargo xtask setup` installs what they need")?;
    // agent-ebpf has two binaries: `vigil` (shipped, embedded in this crate) and
    // `vigil-bench` (the same plus the benchmark's syscall variants), which only the
    // `vigil-bench` crate embeds. Hand it the path (Cargo's `links` metadata).
    let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
    println!("cargo:bench_object={out}/vigil-bench");
    Ok(())
}
