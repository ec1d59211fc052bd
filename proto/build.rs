//! Generates the vigil.v1 messages and gRPC services (needs `protoc`; `cargo xtask
//! setup` installs Debian's protobuf-compiler).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=vigil/v1/vigil.proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // For gRPC server reflection: tools list and call the API without the .proto.
        .file_descriptor_set_path(out.join("vigil_descriptor.bin"))
        // Maps as BTreeMap: a message always encodes to the same bytes, so the
        // collector can tell a resent batch (same bytes) from a conflicting one.
        .btree_map(".")
        .compile_protos(&["vigil/v1/vigil.proto"], &["."])
        .map_err(|e| format!("compiling vigil/v1/vigil.proto failed (is protoc installed? `cargo xtask setup`): {e}").into())
}
