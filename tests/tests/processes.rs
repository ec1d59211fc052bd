//! The process lifecycle probe against the real kernel: forks, execs and exits of
//! children this test controls (their pids, uid, path and exit status are known here),
//! and an exec storm whose every exec is either delivered or counted lost.
use std::{os::unix::process::CommandExt as _, process::Command, time::Duration};

use serde_json::Value;
use vigil_tests::{require_root, Vigil, Workload};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_vigil-workload");

fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn fork_exec_and_exit_of_a_child_with_its_ids_path_and_status() {
    if !require_root("fork_exec_and_exit_of_a_child_with_its_ids_path_and_status") {
        return;
    }
    let me = std::process::id();
    let vigil = Vigil::start(&["trace", "processes", "--json"]);
    // A child as uid/gid 65534 that exits with 7, one killed by SIGKILL, and a thread
    // (which is not a process and must not show as a fork).
    let status = Command::new("/bin/sh")
        .args(["-c", "exit 7"])
        .uid(65534)
        .gid(65534)
        .status()
        .expect("sh");
    assert_eq!(status.code(), Some(7));
    let mut victim = Command::new("/bin/sleep").arg("30").spawn().expect("sleep");
    let victim_pid = victim.id();
    // Killed only once it sleeps in /bin/sleep: `spawn` returns at the exec's point of
    // no return, and a SIGKILL then can still end the exec before it completes (no exec
    // event, rightly).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(format!("/proc/{victim_pid}/stat"))
        .is_ok_and(|s| s.starts_with(&format!("{victim_pid} (sleep) S ")))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "/bin/sleep never went to sleep"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    victim.kill().expect("kill");
    victim.wait().expect("wait");
    std::thread::spawn(|| std::thread::sleep(Duration::from_millis(10)))
        .join()
        .unwrap();
    // Every event is in the ring buffer once the children are reaped; `vigil trace`
    // drains it on SIGINT.
    let lines = json_lines(&vigil.interrupt());
    let (summary, events) = lines.split_last().expect("summary");
    let mine: Vec<&Value> = events.iter().filter(|e| e["ppid"] == me).collect();
    let forks: Vec<_> = mine.iter().filter(|e| e["event"] == "fork").collect();
    assert_eq!(
        forks.len(),
        2,
        "two children, and the thread is not a process: {mine:?}"
    );
    let sh_pid = forks
        .iter()
        .map(|f| f["pid"].as_u64().unwrap())
        .find(|p| *p != u64::from(victim_pid))
        .expect("the sh child");
    let of = |pid: u64, what: &str| -> Value {
        events
            .iter()
            .find(|e| e["pid"] == pid && e["event"] == what)
            .cloned()
            .unwrap_or_else(|| panic!("no {what} of {pid} in {events:?}"))
    };
    let exec = of(sh_pid, "exec");
    assert_eq!(exec["filename"], "/bin/sh", "{exec}");
    assert_eq!(exec["ppid"], me, "{exec}");
    assert_eq!(
        (exec["uid"].as_u64(), exec["gid"].as_u64()),
        (Some(65534), Some(65534)),
        "{exec}"
    );
    assert_eq!(exec["comm"], "sh", "{exec}");
    let exit = of(sh_pid, "exit");
    assert_eq!(exit["exit_code"], 7, "{exit}");
    assert!(exit.get("signal").is_none(), "{exit}");
    let killed = of(u64::from(victim_pid), "exit");
    assert_eq!(killed["signal"], 9, "{killed}");
    assert_eq!(of(u64::from(victim_pid), "exec")["filename"], "/bin/sleep");
    assert_eq!(summary["lost_events"], 0, "{summary}");
}

#[test]
fn an_exec_storm_is_delivered_or_counted_lost_exec_by_exec() {
    if !require_root("an_exec_storm_is_delivered_or_counted_lost_exec_by_exec") {
        return;
    }
    const EXECS: u64 = 20_000;
    let mut storm = Workload::spawn(WORKLOAD, &["exec", &EXECS.to_string(), "/bin/true"]);
    let storm_pid = storm.pid();
    let vigil = Vigil::start(&["trace", "processes", "--exec", "--json"]);
    storm.go();
    storm.wait();
    // Drained on SIGINT, as above.
    let lines = json_lines(&vigil.interrupt());
    let (summary, events) = lines.split_last().expect("summary");
    let delivered = events
        .iter()
        .filter(|e| e["event"] == "exec" && e["ppid"] == storm_pid && e["filename"] == "/bin/true")
        .count() as u64;
    let lost = summary["lost_events"].as_u64().unwrap();
    eprintln!("exec storm: {EXECS} execs, {delivered} delivered, {lost} lost (all processes)");
    assert!(delivered <= EXECS);
    // Losses are counted for every process, so they bound the storm's share from above.
    assert!(
        delivered + lost >= EXECS,
        "{EXECS} execs: {delivered} delivered, {lost} counted lost: {summary}"
    );
}
