//! A batch as the collector receives it: protobuf decoding, then the checks and bounds
//! applied before anything is stored.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut batch) = vigil_proto::v1::Batch::decode(data) {
        let _ = vigil_collector::validate::check(&mut batch, 1_800_000_000_000);
    }
});
