//! Finding (and if need be mounting) tracefs, where tracepoint formats live and
//! where aya looks up tracepoint ids.
use std::{
    fs,
    path::{Path, PathBuf},
};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Why tracefs is unavailable.
#[derive(Debug, thiserror::Error)]
#[error("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {source} (mount it with `mount -t tracefs nodev /sys/kernel/tracing`)")]
pub struct TracefsError {
    #[source]
    source: nix::Error,
}

/// The tracefs root, mounting it at /sys/kernel/tracing when no mount exists.
pub fn tracefs_root() -> Result<PathBuf, TracefsError> {
    for c in CANDIDATES {
        if Path::new(c).join("events").is_dir() {
            return Ok(PathBuf::from(c));
        }
    }
    let target = CANDIDATES[0];
    nix::mount::mount(
        Some("nodev"),
        target,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| TracefsError { source })?;
    tracing::info!(path = target, "mounted tracefs");
    Ok(PathBuf::from(target))
}

/// A tracepoint's `format` file, parsed to field name → (offset, size).
#[derive(Debug, Default)]
pub struct TracepointFormat {
    pub fields: Vec<(String, u32, u32)>,
}

impl TracepointFormat {
    pub fn read(root: &Path, category: &str, name: &str) -> std::io::Result<Self> {
        let text =
            fs::read_to_string(root.join("events").join(category).join(name).join("format"))?;
        Ok(Self::parse(&text))
    }

    /// Parses lines like `field:__u16 sport; offset:28; size:2; signed:0;` (tab-separated).
    pub fn parse(text: &str) -> Self {
        let mut fields = Vec::new();
        for line in text.lines() {
            let mut name = None;
            let mut offset = None;
            let mut size = None;
            for part in line.trim().split(';') {
                let part = part.trim();
                if let Some(decl) = part.strip_prefix("field:") {
                    // The name is the last word of the declaration, minus any [N].
                    name = decl
                        .split_whitespace()
                        .last()
                        .map(|w| w.split('[').next().unwrap_or(w).to_string());
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            if let (Some(n), Some(o), Some(s)) = (name, offset, size) {
                fields.push((n, o, s));
            }
        }
        Self { fields }
    }

    pub fn field(&self, name: &str) -> Option<(u32, u32)> {
        self.fields
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, o, s)| (*o, *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_retransmit_format() {
        let text = "name: tcp_retransmit_skb\nID: 2281\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;\n\
\nprint fmt: \"skbaddr=%p\"\n";
        let f = TracepointFormat::parse(text);
        assert_eq!(f.field("state"), Some((24, 4)));
        assert_eq!(f.field("sport"), Some((28, 2)));
        assert_eq!(f.field("saddr_v6"), Some((42, 16)));
        assert_eq!(f.field("err"), None);
    }
}
