//! Field offsets of kernel structs, read from the kernel's own BTF
//! (/sys/kernel/btf/vmlinux). Rust eBPF has no CO-RE relocations, so the agent looks
//! the offsets up at load time and hands them to the programs as load-time constants,
//! the same way it reads tracepoint layouts from tracefs.
use std::{borrow::Cow, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {0} has no field {1}")]
    NoField(String, String),
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

#[derive(Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
}

struct Type {
    name_off: u32,
    kind: u32,
    members: Vec<Member>,
}

/// The parsed type section: enough to find struct members by name.
pub struct KernelBtf {
    data: Vec<u8>,
    strings: (usize, usize),
    types: Vec<Type>,
}

fn u32_at(d: &[u8], at: usize) -> Result<u32, BtfError> {
    d.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(BtfError::Malformed("truncated"))
}

impl KernelBtf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed("bad magic (or not little-endian)"));
        }
        let hdr_len = u32_at(&data, 4)? as usize;
        let (type_off, type_len) = (u32_at(&data, 8)? as usize, u32_at(&data, 12)? as usize);
        let (str_off, str_len) = (u32_at(&data, 16)? as usize, u32_at(&data, 20)? as usize);
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = (hdr_len + str_off, hdr_len + str_off + str_len);
        if types_end > data.len() || strings.1 > data.len() {
            return Err(BtfError::Malformed("sections past the end"));
        }
        // Type ids start at 1; index 0 is `void`.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            members: Vec::new(),
        }];
        let mut at = types_start;
        while at < types_end {
            let name_off = u32_at(&data, at)?;
            let info = u32_at(&data, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let mut members = Vec::new();
            let extra = match kind {
                1 | 14 | 17 => 4, // int, var, decl_tag
                3 => 12,          // array
                4 | 5 => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let raw = u32_at(&data, m + 8)?;
                        members.push(Member {
                            name_off: u32_at(&data, m)?,
                            type_id: u32_at(&data, m + 4)?,
                            bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                        });
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,        // enum, func_proto
                15 | 19 => vlen * 12,      // datasec, enum64
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, qualifiers, func, float, type_tag
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            at += extra;
            types.push(Type {
                name_off,
                kind,
                members,
            });
        }
        Ok(Self {
            data,
            strings,
            types,
        })
    }

    fn name(&self, off: u32) -> Cow<'_, str> {
        let start = self.strings.0 + off as usize;
        let bytes = self.data.get(start..self.strings.1).unwrap_or_default();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end])
    }

    /// Byte offset of `field` in `struct name`, looking into anonymous struct and
    /// union members as C does.
    pub fn field_offset(&self, name: &str, field: &str) -> Result<u32, BtfError> {
        let id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && t.name_off != 0 && self.name(t.name_off) == name)
            .ok_or_else(|| BtfError::NoStruct(name.to_string()))?;
        self.find(id, field, 0)
            .map(|bits| bits / 8)
            .ok_or_else(|| BtfError::NoField(name.to_string(), field.to_string()))
    }

    fn find(&self, id: usize, field: &str, base_bits: u32) -> Option<u32> {
        let t = self.types.get(id)?;
        for m in &t.members {
            if m.name_off != 0 && self.name(m.name_off) == field {
                return Some(base_bits + m.bit_offset);
            }
        }
        for m in t.members.iter().filter(|m| m.name_off == 0) {
            let inner = self.types.get(m.type_id as usize)?;
            if inner.kind == KIND_STRUCT || inner.kind == KIND_UNION {
                if let Some(b) = self.find(m.type_id as usize, field, base_bits + m.bit_offset) {
                    return Some(b);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_task_struct_fields_in_this_kernel() {
        let btf = match KernelBtf::from_sys_fs() {
            Ok(b) => b,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("SKIPPED: {e}");
                return;
            }
            Err(e) => panic!("CI machines have kernel BTF: {e}"),
        };
        let tgid = btf.field_offset("task_struct", "tgid").unwrap();
        let pid = btf.field_offset("task_struct", "pid").unwrap();
        // pid and tgid are adjacent pid_t fields in every kernel since 2.6.
        assert_eq!(tgid, pid + 4);
        assert!(btf.field_offset("task_struct", "real_parent").unwrap() > 0);
        assert!(matches!(
            btf.field_offset("task_struct", "no_such_field"),
            Err(BtfError::NoField(..))
        ));
        assert!(matches!(
            btf.field_offset("no_such_struct", "x"),
            Err(BtfError::NoStruct(..))
        ));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(KernelBtf::parse(vec![1, 2, 3]).is_err());
        let mut d = vec![0x9f, 0xeb, 1, 0];
        d.extend_from_slice(&24u32.to_le_bytes());
        d.extend_from_slice(&[0xff; 20]);
        assert!(KernelBtf::parse(d).is_err());
    }
}
