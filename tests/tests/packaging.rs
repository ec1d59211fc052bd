//! The packages as users install them (issue #13): the .deb installed with dpkg into
//! a Debian 12 root made by mmdebstrap, its units checked there with systemd-analyze,
//! upgraded over an edited conffile, removed and purged; lintian on the .debs; the
//! .rpm's metadata read back with rpm, and rpmlint. The packages are the ones
//! `cargo xtask package` wrote (`cargo xtask test` makes them first).
use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// A package file, which must exist (under CI its absence is a failure, not a skip).
fn package(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("VIGIL_PACKAGES")
        .map_or_else(|| workspace().join("target/packages"), PathBuf::from);
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing and CI is set: run `cargo xtask package` (cargo xtask test does)",
        path.display()
    );
    eprintln!("skipped: {} missing (cargo xtask package)", path.display());
    None
}

fn deb(which: &str) -> Option<PathBuf> {
    package(&format!("vigil-{which}_{}-1_amd64.deb", version()))
}

fn rpm(which: &str) -> Option<PathBuf> {
    package(&format!("vigil-{which}-{}-1.x86_64.rpm", version()))
}

/// Runs `cmd` with no stdin (a prompt would fail it, not hang it); its stdout, or a
/// panic with both outputs.
fn out(cmd: &mut Command) -> String {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{text}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    text
}

/// A Debian 12 root (minbase with systemd and procps), made once per checkout with
/// mmdebstrap from Debian's mirror and kept as a tarball; each test unpacks its own.
fn debian_root() -> tempfile::TempDir {
    let tar = workspace().join("target/debian-root/bookworm.tar");
    if !tar.exists() {
        std::fs::create_dir_all(tar.parent().unwrap()).unwrap();
        let partial = tar.with_extension("partial.tar");
        out(Command::new("mmdebstrap")
            .args([
                "--variant=minbase",
                "--include=systemd,systemd-sysv,procps",
                "bookworm",
            ])
            .arg(&partial));
        std::fs::rename(&partial, &tar).unwrap();
    }
    let root = tempfile::tempdir().expect("tempdir");
    out(Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .arg("-xf")
        .arg(&tar));
    root
}

fn chroot(root: &Path, args: &[&str]) -> String {
    out(Command::new("chroot").arg(root).args(args))
}

/// dpkg inside the root, on package files copied into it.
fn dpkg(root: &Path, args: &[&str], debs: &[&Path]) -> String {
    let mut inside = Vec::new();
    for d in debs {
        let name = d.file_name().unwrap().to_str().unwrap();
        std::fs::copy(d, root.join("tmp").join(name)).unwrap();
        inside.push(format!("/tmp/{name}"));
    }
    let mut all: Vec<&str> = args.to_vec();
    all.extend(inside.iter().map(String::as_str));
    let text = out(Command::new("chroot").arg(root).arg("dpkg").args(&all));
    for f in &inside {
        let _ = std::fs::remove_file(root.join(f.trim_start_matches('/')));
    }
    text
}

/// The same package under a newer Debian revision (what an upgrade delivers).
fn newer_revision(debpkg: &Path, dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    out(Command::new("dpkg-deb").arg("-R").arg(debpkg).arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let old = format!("Version: {}-1", version());
    assert!(text.contains(&old), "{text}");
    std::fs::write(
        &control,
        text.replace(&old, &format!("Version: {}-2", version())),
    )
    .unwrap();
    let name = debpkg
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .replace("-1_amd64", "-2_amd64");
    let built = dir.join(name);
    out(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&tree)
        .arg(&built));
    built
}

/// `systemd-analyze security`'s overall exposure for a unit inside the root.
fn exposure(root: &Path, unit: &str) -> f64 {
    let text = out(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg(unit));
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{text}"));
    line.split(": ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

/// Every path under `root` whose name mentions vigil, outside dpkg's own records.
fn vigil_paths(root: &Path) -> Vec<String> {
    let text = out(Command::new("find").arg(root).args([
        "-path",
        &format!("{}/proc", root.display()),
        "-prune",
        "-o",
        "-name",
        "*vigil*",
        "-print",
    ]));
    text.lines()
        .map(|l| l.trim_start_matches(root.to_str().unwrap()).to_string())
        .collect()
}

fn mode_owner(path: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

fn passwd_entry(root: &Path, user: &str) -> Vec<String> {
    std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .unwrap_or_else(|| panic!("no user {user}"))
        .split(':')
        .map(String::from)
        .collect()
}

#[test]
fn the_deb_installs_as_documented_keeps_an_edited_conffile_and_purge_leaves_nothing() {
    let (Some(agent), Some(collector)) = (deb("agent"), deb("collector")) else {
        return;
    };
    let root = debian_root();
    let r = root.path();
    assert!(
        vigil_paths(r).is_empty(),
        "a fresh root: {:?}",
        vigil_paths(r)
    );

    // Install (the README's command: dpkg -i); no prompt (stdin is closed).
    dpkg(r, &["-i"], &[&agent, &collector]);
    let shown = chroot(r, &["vigil", "--version"]);
    assert_eq!(shown.trim(), format!("vigil {}", version()));
    for daemon in ["vigil-agent", "vigil-collector"] {
        let v = chroot(r, &[daemon, "--version"]);
        assert_eq!(v.trim(), format!("{daemon} {}", version()));
    }
    // The packaged agent config checks as it ships (the unit's ExecStartPre).
    let check = chroot(
        r,
        &[
            "vigil-agent",
            "--config",
            "/etc/vigil/agent.toml",
            "--check-config",
        ],
    );
    assert!(check.contains("/etc/vigil/agent.toml: OK"), "{check}");

    // Files, owners and modes as the README's Install section lists them.
    for (path, mode) in [
        ("usr/bin/vigil", 0o755),
        ("usr/bin/vigil-agent", 0o755),
        ("usr/bin/vigil-collector", 0o755),
        ("etc/vigil/agent.toml", 0o644),
        ("etc/vigil/collector.toml", 0o644),
        ("etc/vigil/rules.d", 0o755),
        ("etc/vigil/tls", 0o755),
        ("usr/lib/systemd/system/vigil-agent.service", 0o644),
        ("usr/lib/systemd/system/vigil-collector.service", 0o644),
        ("usr/lib/sysusers.d/vigil-agent.conf", 0o644),
        ("usr/lib/sysusers.d/vigil-collector.conf", 0o644),
        ("usr/share/man/man1/vigil.1.gz", 0o644),
        ("usr/share/man/man8/vigil-agent.8.gz", 0o644),
        ("usr/share/man/man8/vigil-collector.8.gz", 0o644),
    ] {
        assert_eq!(mode_owner(&r.join(path)), (mode, 0, 0), "{path}");
    }
    for (user, comment) in [
        ("vigil", "Vigil host agent"),
        ("vigil-collector", "Vigil collector"),
    ] {
        let e = passwd_entry(r, user);
        let uid: u32 = e[2].parse().unwrap();
        assert!(uid < 1000, "{user} is a system user: {e:?}");
        assert_eq!(
            (e[4].as_str(), e[6].as_str()),
            (comment, "/usr/sbin/nologin"),
            "{e:?}"
        );
    }
    // Enabled (a symlink for multi-user.target), as Debian does for daemons.
    for unit in ["vigil-agent.service", "vigil-collector.service"] {
        assert!(
            r.join("etc/systemd/system/multi-user.target.wants")
                .join(unit)
                .symlink_metadata()
                .is_ok(),
            "{unit} enabled"
        );
    }
    let conffiles = chroot(r, &["dpkg-query", "-W", "-f=${Conffiles}", "vigil-agent"]);
    for f in ["/etc/vigil/agent.toml", "/etc/vigil/rules.d/README"] {
        assert!(conffiles.contains(f), "{f} is a conffile: {conffiles}");
    }

    // The units, inside that root: systemd-analyze verify, and the exposure targets.
    out(Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .args(["vigil-agent.service", "vigil-collector.service"]));
    let (agent_score, collector_score) = (
        exposure(r, "vigil-agent.service"),
        exposure(r, "vigil-collector.service"),
    );
    println!("exposure: vigil-agent {agent_score}, vigil-collector {collector_score}");
    assert!(
        agent_score <= 3.0,
        "vigil-agent.service exposure {agent_score}"
    );
    assert!(
        collector_score <= 2.0,
        "vigil-collector.service exposure {collector_score}"
    );

    // An edited conffile survives the same version installed again and an upgrade.
    let config = r.join("etc/vigil/agent.toml");
    let edited = format!(
        "{}\n# edited by the admin\n",
        std::fs::read_to_string(&config).unwrap()
    );
    std::fs::write(&config, &edited).unwrap();
    dpkg(r, &["-i"], &[&agent]);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        edited,
        "after reinstall"
    );
    let work = tempfile::tempdir().unwrap();
    let newer = newer_revision(&agent, work.path());
    dpkg(r, &["-i"], &[&newer]);
    let status = chroot(r, &["dpkg-query", "-W", "-f=${Version}", "vigil-agent"]);
    assert_eq!(status, format!("{}-2", version()));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        edited,
        "after upgrade"
    );

    // Remove keeps the data (what the agent and collector wrote there) and the config;
    // purge leaves nothing named vigil behind.
    for dir in ["var/lib/vigil/agent/spool", "var/lib/vigil/collector"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
        std::fs::write(r.join(dir).join("data"), b"kept").unwrap();
    }
    chroot(r, &["dpkg", "-r", "vigil-agent", "vigil-collector"]);
    assert!(!r.join("usr/bin/vigil-agent").exists());
    assert!(
        r.join("var/lib/vigil/agent/spool/data").exists(),
        "remove keeps the spool"
    );
    assert!(
        r.join("var/lib/vigil/collector/data").exists(),
        "remove keeps the store"
    );
    assert!(
        r.join("etc/vigil/agent.toml").exists(),
        "remove keeps conffiles"
    );
    chroot(r, &["dpkg", "-P", "vigil-agent", "vigil-collector"]);
    assert_eq!(vigil_paths(r), Vec::<String>::new(), "left after purge");
    // The users stay (Debian's practice; files elsewhere may carry their ids).
    passwd_entry(r, "vigil");
}

#[test]
fn lintian_reports_no_error_and_no_warning_on_the_debs() {
    let (Some(agent), Some(collector)) = (deb("agent"), deb("collector")) else {
        return;
    };
    let o = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--info"])
        .arg(&agent)
        .arg(&collector)
        .output()
        .expect("lintian (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&o.stdout);
    println!("{text}");
    assert!(
        o.status.success(),
        "lintian: {text}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("W:")),
        "{text}"
    );
}

#[test]
fn the_rpms_carry_their_files_scripts_config_and_dependencies_and_rpmlint_finds_no_error() {
    let (Some(agent), Some(collector)) = (rpm("agent"), rpm("collector")) else {
        return;
    };
    let rpmq = |args: &[&str], p: &Path| out(Command::new("rpm").args(args).arg(p));
    let files = rpmq(&["-qlp"], &agent);
    for f in [
        "/usr/bin/vigil",
        "/usr/bin/vigil-agent",
        "/etc/vigil/agent.toml",
        "/usr/lib/systemd/system/vigil-agent.service",
        "/usr/lib/sysusers.d/vigil-agent.conf",
        "/usr/share/man/man8/vigil-agent.8.gz",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} in {files}");
    }
    let files = rpmq(&["-qlp"], &collector);
    for f in [
        "/usr/bin/vigil-collector",
        "/etc/vigil/collector.toml",
        "/usr/lib/systemd/system/vigil-collector.service",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} in {files}");
    }
    assert_eq!(
        rpmq(&["-qpc"], &agent).trim(),
        "/etc/vigil/agent.toml\n/etc/vigil/rules.d/README"
    );
    assert_eq!(
        rpmq(&["-qpc"], &collector).trim(),
        "/etc/vigil/collector.toml"
    );
    // Config files are %config(noreplace): an edited one is kept on upgrade.
    let flags = rpmq(
        &["-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]"],
        &agent,
    );
    assert!(
        flags.lines().any(|l| l == "/etc/vigil/agent.toml cn"),
        "{flags}"
    );
    for p in [&agent, &collector] {
        let scripts = rpmq(&["-qp", "--scripts"], p);
        for part in [
            "postinstall scriptlet",
            "preuninstall scriptlet",
            "systemd-sysusers",
            "systemctl",
        ] {
            assert!(scripts.contains(part), "{part} in {scripts}");
        }
        let requires = rpmq(&["-qpR"], p);
        for dep in ["systemd", "shadow-utils", "libc.so.6()(64bit)"] {
            assert!(
                requires.lines().any(|l| l.trim() == dep),
                "{dep} in {requires}"
            );
        }
        let version_shown = rpmq(&["-qp", "--qf", "%{VERSION}"], p);
        assert_eq!(version_shown, version());
    }
    let config = workspace().join("packaging/rpm/rpmlint.toml");
    let o = Command::new("rpmlint")
        .arg("-c")
        .arg(&config)
        .arg(&agent)
        .arg(&collector)
        .output()
        .expect("rpmlint (cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&o.stdout);
    println!("{text}");
    assert!(text.contains(" 0 errors,"), "rpmlint: {text}");
    assert!(!text.lines().any(|l| l.contains(": E: ")), "{text}");
}

#[test]
fn every_subcommand_has_a_man_page_and_a_readme_entry() {
    let Some(agent) = deb("agent") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    out(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&agent)
        .arg(dir.path()));
    let help = out(Command::new(dir.path().join("usr/bin/vigil")).arg("--help"));
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .expect("a Commands: section")
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 10, "{commands:?}");
    for c in &commands {
        let page = dir
            .path()
            .join(format!("usr/share/man/man1/vigil-{c}.1.gz"));
        assert!(page.exists(), "no man page for vigil {c}");
        assert!(
            readme.contains(&format!("`vigil {c}")),
            "the README names no `vigil {c}`"
        );
    }
    // The man page carries the same options as --help (one source: clap).
    let page =
        out(Command::new("zcat").arg(dir.path().join("usr/share/man/man8/vigil-agent.8.gz")));
    let help = out(Command::new(dir.path().join("usr/bin/vigil-agent")).arg("--help"));
    for flag in help.split_whitespace().filter(|w| w.starts_with("--")) {
        let flag = flag.trim_end_matches(',');
        let roff = flag.replace('-', "\\-");
        assert!(
            page.contains(&roff) || page.contains(flag),
            "{flag} missing from vigil-agent(8)"
        );
    }
}
