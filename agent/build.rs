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
    .context("building the eBPF programs (agent-ebpf) failed; `cargo xtask setup` installs what they need")
}
