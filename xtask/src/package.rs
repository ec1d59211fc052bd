//! `cargo xtask package`: the release build as `.deb` (cargo-deb) and `.rpm`
//! (cargo-generate-rpm) for `vigil-agent` and `vigil-collector`, under
//! target/packages/. The version is the workspace's; the eBPF object is inside the
//! agent binary; the man pages are made from the CLI's own definitions.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

use crate::{run, workspace_root};

/// The packages, by crate directory: (crate, package name).
const PACKAGES: [(&str, &str); 2] = [("agent", "vigil-agent"), ("collector", "vigil-collector")];

/// Builds the packages; returns their paths (.deb then .rpm, per package).
pub fn package(vigil: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let root = workspace_root();
    let out = root.join("target/packages");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // Under target/release/, where cargo-deb looks for built files.
    man_pages(vigil, &root.join("target/release/man"))?;
    completions(vigil, &root.join("target/release/completions"))?;
    let mut made = Vec::new();
    for (dir, name) in PACKAGES {
        run(Command::new("cargo")
            .current_dir(&root)
            .args(["deb", "--no-build", "-p", name, "--output"])
            .arg(&out))
        .with_context(|| {
            format!("cargo deb for {name} (is cargo-deb installed? `cargo xtask setup`)")
        })?;
        run(Command::new("cargo")
            .current_dir(&root)
            .args(["generate-rpm", "-p", dir, "-o"])
            .arg(&out))
        .with_context(|| format!("cargo generate-rpm for {name} (`cargo xtask setup`)"))?;
    }
    for e in std::fs::read_dir(&out)? {
        made.push(e?.path());
    }
    made.sort();
    for p in &made {
        let size = std::fs::metadata(p).map_or(0, |m| m.len());
        println!(
            "{} ({:.1} MiB)",
            p.display(),
            size as f64 / (1 << 20) as f64
        );
    }
    Ok(made)
}

/// The shell completion scripts `vigil completions` prints, under the names the
/// packages install them as.
fn completions(vigil: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (shell, name) in [("bash", "vigil"), ("zsh", "_vigil"), ("fish", "vigil.fish")] {
        let out = Command::new(vigil)
            .args(["completions", shell])
            .output()
            .context("running vigil completions")?;
        anyhow::ensure!(out.status.success(), "vigil completions {shell} failed");
        std::fs::write(dir.join(name), out.stdout)?;
    }
    Ok(())
}

/// vigil(1), a page per subcommand and the daemons' section-8 pages, gzipped as
/// Debian wants them (`gzip -9n`: no name or time stamp, so builds are reproducible).
fn man_pages(vigil: &Path, dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    run(Command::new(vigil).arg("man").arg("--dir").arg(dir))?;
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        run(Command::new("gzip").arg("-9nf").arg(&p))?;
    }
    Ok(())
}
