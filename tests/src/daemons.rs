//! The daemons as the tests run them: a collector on a loopback port and a real agent
//! streaming to it, each in its own directory.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{agent_command, collector_address, vigil_json, KillOnDrop};

/// Waits until `cond` holds (checked every 100 ms), panicking with `what` after `max`.
pub fn wait_until(what: &str, max: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + max;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `vigil collector` on 127.0.0.1 (address from its output), its own data dir,
/// its log lines kept.
pub struct Collector {
    pub child: KillOnDrop,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Flags `vigil hosts` needs to read it (TLS: an operator's certificate).
    pub cli_args: Vec<String>,
}

impl Collector {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, |_| {})
    }

    pub fn start_with(extra: &[&str], setup: impl FnOnce(&mut Command)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = crate::collector_command();
        cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env("VIGIL_LOG", "warn")
            .stderr(Stdio::piped())
            .stdout(Stdio::null());
        setup(&mut cmd);
        let (child, addr, lines) = collector_address(&mut cmd);
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Self {
            child: KillOnDrop(child),
            addr,
            dir,
            log,
            cli_args: Vec::new(),
        }
    }

    /// Its log lines so far, joined.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.0.try_wait(), Ok(None))
    }

    pub fn hosts(&self) -> serde_json::Value {
        let mut args = vec!["hosts", "--collector", &self.addr, "--json"];
        args.extend(self.cli_args.iter().map(String::as_str));
        vigil_json(&args)
    }

    pub fn host(&self, agent_id: &str) -> Option<serde_json::Value> {
        self.hosts()["hosts"]
            .as_array()
            .expect("hosts")
            .iter()
            .find(|h| h["agent_id"] == agent_id)
            .cloned()
    }

    pub fn refused(&self, reason: &str) -> u64 {
        self.hosts()["collector"]["refused"][reason]
            .as_u64()
            .unwrap_or(0)
    }

    pub fn batches_of(&self, agent_id: &str) -> u64 {
        self.host(agent_id)
            .map_or(0, |h| h["batches"].as_u64().unwrap_or(0))
    }
}

/// A real `vigil agent` streaming to the collector once a second: host metrics only
/// (probes and detection off), its own data dir and API socket.
pub struct RealAgent {
    pub child: Child,
    pub id: String,
    pub dir: tempfile::TempDir,
}

impl RealAgent {
    pub fn start(collector: &Collector, id: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(collector, id, dir)
    }

    pub fn start_in(collector: &Collector, id: &str, dir: tempfile::TempDir) -> Self {
        Self::start_in_with(collector, id, dir, &[])
    }

    /// With more flags (TLS material, say); stderr kept in DIR/agent.log.
    pub fn start_in_with(
        collector: &Collector,
        id: &str,
        dir: tempfile::TempDir,
        extra: &[String],
    ) -> Self {
        let config = dir.path().join("agent.toml");
        std::fs::write(
            &config,
            "[probes]\nsyscalls = false\nretransmits = false\n[detect]\nenabled = false\n",
        )
        .expect("config");
        let child = agent_command()
            .args(["--interval", "1s", "--collector", &collector.addr])
            .args(["--agent-id", id, "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(dir.path().join("agent.sock"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("agent.log"))
                    .map_or_else(|_| Stdio::null(), Stdio::from),
            )
            .spawn()
            .expect("starting vigil agent");
        Self {
            child,
            id: id.to_string(),
            dir,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("data/spool")
    }

    pub fn stats(&self) -> serde_json::Value {
        vigil_json(&[
            "stats",
            "--json",
            "--socket",
            self.socket().to_str().expect("utf-8 path"),
        ])
    }

    /// Its spool's epoch, as its state file says.
    pub fn epoch(&self) -> vigil_proto::Epoch {
        let state = std::fs::read_to_string(self.spool().join("state")).expect("spool state");
        let line = state
            .lines()
            .find_map(|l| l.strip_prefix("epoch "))
            .expect("epoch line");
        vigil_proto::Epoch::parse(line).expect("an epoch")
    }

    /// Waits until the collector has stored `more` further batches of this agent:
    /// the collector is still serving it.
    pub fn keeps_being_acked(&self, collector: &Collector, more: u64) {
        let start = collector.batches_of(&self.id);
        wait_until(
            &format!("{more} more batches of {} stored", self.id),
            Duration::from_secs(30),
            || collector.batches_of(&self.id) >= start + more,
        );
    }

    /// SIGKILLs the agent and hands back its directory (spool, config) for a restart.
    pub fn kill_keeping_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"))
    }

    pub fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "agent exited with {status}");
    }
}

impl Drop for RealAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
