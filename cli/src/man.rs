//! Man pages, made from the same clap definitions as `--help` (clap_mangen), so the
//! two cannot disagree: vigil(1) and vigil-SUBCOMMAND(1) for the CLI, and section 8
//! for the daemons the units run.
use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

pub fn write(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let vigil = crate::cli::Cli::command();
    clap_mangen::generate_to(vigil, dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    for (name, cmd) in [
        ("vigil-agent", vigil_agent::daemon::AgentCli::command()),
        (
            "vigil-collector",
            vigil_collector::daemon::CollectorCli::command(),
        ),
    ] {
        let path = dir.join(format!("{name}.8"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd)
            .section("8")
            .render(&mut page)
            .with_context(|| format!("rendering {name}(8)"))?;
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
