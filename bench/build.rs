//! The benchmark's eBPF object is built with the shipped one by agent/build.rs, which
//! passes its path on as `links` metadata; embed it from there.
fn main() {
    let object = std::env::var("DEP_VIGIL_EBPF_BENCH_OBJECT")
        .expect("vigil-agent's build script names the benchmark's eBPF object");
    println!("cargo:rerun-if-changed={object}");
    println!("cargo:rustc-env=VIGIL_BENCH_OBJECT={object}");
}
