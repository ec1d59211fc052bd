//! `cargo xtask image`: container images for the agent and the collector, built here
//! without any registry: a root file system staged from the release binaries and the
//! C libraries `ldd` says they link (no base image), then `podman build` on
//! packaging/container/Containerfile.{agent,collector}. Tagged
//! localhost/vigil-{agent,collector}:VERSION and :latest.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::{run, workspace_root};

/// podman's settings here (runc; no default ulimits): see that file.
pub fn containers_conf() -> PathBuf {
    workspace_root().join("packaging/container/containers.conf")
}

/// The shared libraries `binary` links, as absolute paths (the loader included).
fn linked_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Follows symlinks: the library itself under the name the loader asks for.
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// A root file system for `binaries` (from target/release), with `files`
/// (path in the image, contents, mode) and empty `dirs` (path, mode).
fn stage(
    root: &Path,
    binaries: &[&str],
    files: &[(&str, String, u32)],
    dirs: &[(&str, u32)],
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::remove_dir_all(root);
    let release = workspace_root().join("target/release");
    for b in binaries {
        let from = release.join(b);
        copy(&from, &root.join("usr/bin").join(b))?;
        for lib in linked_libraries(&from)? {
            copy(&lib, &root.join(lib.strip_prefix("/")?))?;
        }
    }
    for (path, text, mode) in files {
        write(&root.join(path), text, *mode)?;
    }
    for (dir, mode) in dirs {
        let p = root.join(dir);
        std::fs::create_dir_all(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
    }
    Ok(())
}

fn podman(conf: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.env("CONTAINERS_CONF", conf);
    cmd
}

/// Builds both images; prints each one's size.
pub fn images() -> anyhow::Result<()> {
    let root = workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    let conf = containers_conf();
    let packaging = root.join("packaging");
    let read = |p: &str| {
        std::fs::read_to_string(packaging.join(p)).with_context(|| format!("reading packaging/{p}"))
    };
    let agent_toml = read("agent.toml")?;
    let collector_toml = read("collector.toml")?;
    let rules_readme = read("rules.d/README")?;
    let contexts = root.join("target/images");
    // The agent runs as root inside its container (uid 0 with only the capabilities
    // the run gives it); `vigil` is the group that may use its API socket.
    stage(
        &contexts.join("agent/rootfs"),
        &["vigil-agent", "vigil"],
        &[
            (
                "etc/passwd",
                "root:x:0:0:root:/:/usr/sbin/nologin\n".into(),
                0o644,
            ),
            ("etc/group", "root:x:0:\nvigil:x:997:\n".into(), 0o644),
            ("etc/vigil/agent.toml", agent_toml, 0o644),
            ("etc/vigil/rules.d/README", rules_readme, 0o644),
        ],
        &[
            ("var/lib/vigil/agent", 0o750),
            ("run/vigil", 0o755),
            ("tmp", 0o1777),
            ("host", 0o755),
            ("etc/vigil/tls", 0o755),
        ],
    )?;
    stage(
        &contexts.join("collector/rootfs"),
        &["vigil-collector"],
        &[
            (
                "etc/passwd",
                "root:x:0:0:root:/:/usr/sbin/nologin\nvigil-collector:x:65532:65532:Vigil collector:/nonexistent:/usr/sbin/nologin\n".into(),
                0o644,
            ),
            ("etc/group", "root:x:0:\nvigil-collector:x:65532:\n".into(), 0o644),
            ("etc/vigil/collector.toml", collector_toml, 0o644),
        ],
        &[("var/lib/vigil/collector", 0o700), ("tmp", 0o1777), ("etc/vigil/tls", 0o755)],
    )?;
    // The collector's store belongs to its user (the build runs as root).
    let store = contexts.join("collector/rootfs/var/lib/vigil/collector");
    nix::unistd::chown(
        &store,
        Some(nix::unistd::Uid::from_raw(65532)),
        Some(nix::unistd::Gid::from_raw(65532)),
    )
    .with_context(|| format!("chown {}", store.display()))?;
    for which in ["agent", "collector"] {
        let tag = format!("localhost/vigil-{which}:{version}");
        run(podman(&conf)
            .args(["build", "--quiet", "--file"])
            .arg(packaging.join(format!("container/Containerfile.{which}")))
            .args([
                "--tag",
                &tag,
                "--tag",
                &format!("localhost/vigil-{which}:latest"),
            ])
            .arg(contexts.join(which)))
        .with_context(|| format!("building {tag} (podman and runc: `cargo xtask setup`)"))?;
        let size = podman(&conf)
            .args(["image", "inspect", "--format", "{{.Size}}", &tag])
            .output()
            .context("podman image inspect")?;
        let bytes: f64 = String::from_utf8_lossy(&size.stdout)
            .trim()
            .parse()
            .unwrap_or(f64::NAN);
        println!("{tag}: {:.1} MiB", bytes / (1 << 20) as f64);
    }
    Ok(())
}
