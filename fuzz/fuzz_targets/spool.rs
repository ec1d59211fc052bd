//! The spool as the agent finds it on disk after a crash or a bad disk: the input is
//! split into a state file and a segment, and the spool opens (setting aside what is
//! damaged) and reads every record it kept, or says why not; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let rest = data.get(1..).unwrap_or_default();
    let split = data.first().map_or(0, |&b| usize::from(b)).min(rest.len());
    let (state, segment) = rest.split_at(split);
    // In memory where there is a tmpfs (the spool's fsyncs cost nothing there): the
    // same code paths, many more executions per second.
    let dir = match std::path::Path::new("/dev/shm").is_dir() {
        true => tempfile::tempdir_in("/dev/shm"),
        false => tempfile::tempdir(),
    };
    let Ok(dir) = dir else { return };
    let _ = std::fs::write(dir.path().join("state"), state);
    let _ = std::fs::write(
        dir.path()
            .join("00000000000000000000000000000001-00000000000000000001.seg"),
        segment,
    );
    let config = vigil_agent::config::SpoolConfig::default();
    if let Ok(spool) = vigil_agent::spool::Spool::open(dir.path(), config) {
        let _ = spool.stats();
        // Every record it kept, in order (bounded: a segment holds few records).
        let mut after = 0;
        for _ in 0..1024 {
            match spool.next_unacked(after) {
                Ok(Some(b)) if b.sequence > after => after = b.sequence,
                _ => break,
            }
        }
    }
});
