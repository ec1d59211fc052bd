//! Detection rules: the YAML format, its checks, and evaluation against an event.
//!
//! ```yaml
//! rules:
//!   - id: exec-from-temp-dir
//!     description: A program ran from a world-writable temporary directory
//!     severity: high                # info, low, medium, high, critical
//!     mitre: [T1204, T1059]
//!     events: [exec]                # exec ptrace setuid setgid module_load file_write connect listen
//!     condition:                    # a map of field: {operator: value} (all must hold),
//!       process.exe: {prefix: [/tmp/, /dev/shm/, /var/tmp/]}   # or all: [..] / any: [..] / not: ..
//!     exceptions:                   # any exception that matches suppresses the finding
//!       - process.exe: {glob: "/tmp/allowed-*"}
//!     dedup: 5m                     # repeats within the window are one finding with a count
//! ```
//!
//! Operators: `equals`, `prefix`, `contains`, `glob` (`*` any run of characters,
//! `?` one), `regex` (Rust syntax, unanchored unless you anchor it), each taking one
//! value or a list (any of them), and `in` (a list, exact). A bare value means `equals`.
//! Numbers and booleans compare as their text (`process.uid: 0`).
use std::{collections::BTreeSet, fmt, path::Path, time::Duration};

use regex::Regex;
use yaml_serde::Value;

/// The kinds of event a rule can ask about, as rule files name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    Exec,
    Ptrace,
    SetUid,
    SetGid,
    ModuleLoad,
    FileWrite,
    FileRead,
    Chmod,
    SetCap,
    MemoryAccess,
    Mount,
    Truncate,
    ExecEnv,
    Connect,
    Listen,
    PortScan,
    RawSocket,
}

impl EventType {
    pub const ALL: [EventType; 17] = [
        Self::Exec,
        Self::Ptrace,
        Self::SetUid,
        Self::SetGid,
        Self::ModuleLoad,
        Self::FileWrite,
        Self::FileRead,
        Self::Chmod,
        Self::SetCap,
        Self::MemoryAccess,
        Self::Mount,
        Self::Truncate,
        Self::ExecEnv,
        Self::Connect,
        Self::Listen,
        Self::PortScan,
        Self::RawSocket,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Ptrace => "ptrace",
            Self::SetUid => "setuid",
            Self::SetGid => "setgid",
            Self::ModuleLoad => "module_load",
            Self::FileWrite => "file_write",
            Self::FileRead => "file_read",
            Self::Chmod => "chmod",
            Self::SetCap => "setcap",
            Self::MemoryAccess => "memory_access",
            Self::Mount => "mount",
            Self::Truncate => "truncate",
            Self::ExecEnv => "exec_env",
            Self::Connect => "connect",
            Self::Listen => "listen",
            Self::PortScan => "port_scan",
            Self::RawSocket => "raw_socket",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.name() == name)
    }
}

impl serde::Serialize for EventType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// Declares `Field`, one variant per field a rule may test, with its name in rule
/// files and what it holds: a rule's field names are turned into these at load, and
/// the detector's match over them is exhaustive, so a field no code handles does not
/// compile.
macro_rules! fields {
    ($($variant:ident = $name:literal : $doc:literal),* $(,)?) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Field { $($variant),* }

        impl Field {
            /// Every field: (field, its name in rule files, what it holds).
            pub const ALL: &'static [(Field, &'static str, &'static str)] =
                &[$((Field::$variant, $name, $doc)),*];

            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Field::$variant),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(Field::$variant => $name),*
                }
            }
        }
    };
}

fields! {
    Event = "event": "the event type (see EventType)",
    ProcessExe = "process.exe": "path of the program",
    ProcessName = "process.name": "the kernel's short name (comm)",
    ProcessCmdline = "process.cmdline": "arguments joined by spaces",
    ProcessUid = "process.uid": "real uid",
    ProcessEuid = "process.euid": "effective uid",
    ProcessPid = "process.pid": "process id",
    ProcessContainer = "process.container": "container id, empty on the host",
    ProcessStdin = "process.stdin": "what fd 0 is: socket, pipe, chardev (a terminal, /dev/null), file, none, other",
    ProcessStdout = "process.stdout": "what fd 1 is",
    ProcessNewPty = "process.new_pty": "true when stdin is a pseudo-terminal its parent does not have (the parent made it: pty.spawn, script, expect, sshd)",
    ProcessFileless = "process.fileless": "true when the program runs from a memfd or a deleted file",
    StdinFromName = "process.stdin_from.name": "the process writing into this one's stdin pipe",
    StdinFromExe = "process.stdin_from.exe": "its program",
    ParentExe = "parent.exe": "the parent's program",
    ParentName = "parent.name": "the parent's short name",
    ParentCmdline = "parent.cmdline": "the parent's arguments",
    ParentUid = "parent.uid": "the parent's real uid",
    AncestorExe = "ancestor.exe": "matches when any ancestor (parent and up) matches",
    AncestorName = "ancestor.name": "likewise, by short name",
    Path = "path": "file_write: the file written or renamed into place; file_read: the file read; chmod, setcap: the file changed; mount: the mount point; truncate: the file truncated",
    SizeAfter = "size_after": "truncate: the file's size in bytes when the agent looked, moments later (0: still empty, not rewritten)",
    EnvName = "env.name": "exec_env: the variable (LD_PRELOAD, LD_AUDIT, HISTFILE, HISTFILESIZE, HISTSIZE, HISTIGNORE, HISTCONTROL, http_proxy, https_proxy, all_proxy, ftp_proxy, either case for the proxies)",
    EnvValue = "env.value": "exec_env: its value (the first 128 bytes of the entry)",
    Access = "access": "memory_access: read or write",
    Method = "method": "memory_access: proc_mem (/proc/PID/mem) or process_vm (process_vm_readv/writev)",
    Mode = "mode": "chmod: the mode asked for, in octal (4755); only set-user-ID or set-group-ID modes are reported",
    FileType = "file_type": "chmod, setcap: file, directory, other, or unknown (gone before it was looked at)",
    Port = "port": "connect: remote port; listen: local port",
    RemoteAddr = "remote_addr": "connect: remote address",
    TargetPid = "target.pid": "ptrace: the traced process; memory_access: the process whose memory",
    TargetExe = "target.exe": "ptrace, memory_access: its program",
    OldUid = "old_uid": "setuid/setgid: the real id before",
    NewUid = "new_uid": "setuid/setgid: the id after",
    SocketFamily = "socket.family": "raw_socket: packet (AF_PACKET), inet or inet6 (raw IP)",
    SocketType = "socket.type": "raw_socket: raw, dgram or packet (SOCK_PACKET)",
    SocketProtocol = "socket.protocol": "raw_socket: the protocol asked for, in decimal: an EtherType for packet sockets (3: every protocol, 2048: IPv4), an IP protocol number for raw IP (1: ICMP, 6: TCP, 17: UDP, 58: ICMPv6, 255: raw)",
    Container = "container": "same as process.container",
}

/// Fields only a connect event has (absent when deciding which processes to watch).
pub const CONNECT_FIELDS: [Field; 2] = [Field::Port, Field::RemoteAddr];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "info" => Self::Info,
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            "critical" => Self::Critical,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

#[derive(Debug)]
pub enum Op {
    Equals(Vec<String>),
    Prefix(Vec<String>),
    Contains(Vec<String>),
    Glob(Vec<String>),
    Regex(Vec<Regex>),
}

impl Op {
    fn matches(&self, v: &str) -> bool {
        match self {
            Self::Equals(xs) => xs.iter().any(|x| x == v),
            Self::Prefix(xs) => xs.iter().any(|x| v.starts_with(x.as_str())),
            Self::Contains(xs) => xs.iter().any(|x| v.contains(x.as_str())),
            Self::Glob(xs) => xs.iter().any(|x| glob_match(x.as_bytes(), v.as_bytes())),
            Self::Regex(xs) => xs.iter().any(|r| r.is_match(v)),
        }
    }
}

#[derive(Debug)]
pub enum Cond {
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Leaf { field: Field, op: Op },
}

/// What a condition is evaluated against: each field's values (a field can have
/// several, e.g. `ancestor.exe`; the leaf holds when any value matches). A field the
/// event doesn't have makes its leaf false. `any` hands each value to `pred` as it
/// is (numbers written into a stack buffer): matching allocates nothing.
pub trait Fields {
    fn any(&self, field: Field, pred: &mut dyn FnMut(&str) -> bool) -> bool;
}

/// `n` in decimal, written into `buf` (for matching numbers as text without an
/// allocation).
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("")
}

impl Cond {
    pub fn eval(&self, s: &dyn Fields) -> bool {
        match self {
            Self::All(cs) => cs.iter().all(|c| c.eval(s)),
            Self::Any(cs) => cs.iter().any(|c| c.eval(s)),
            Self::Not(c) => !c.eval(s),
            Self::Leaf { field, op } => s.any(*field, &mut |v| op.matches(v)),
        }
    }

    /// Literal values tested against `field` with equals/in/prefix (for kernel filters).
    pub fn literals(&self, field: Field, out: &mut Vec<(bool, String)>) {
        match self {
            Self::All(cs) | Self::Any(cs) => cs.iter().for_each(|c| c.literals(field, out)),
            Self::Not(_) => {}
            Self::Leaf { field: f, op } if *f == field => match op {
                Op::Equals(xs) => out.extend(xs.iter().map(|x| (false, x.clone()))),
                Op::Prefix(xs) | Op::Glob(xs) => out.extend(xs.iter().map(|x| (true, x.clone()))),
                _ => {}
            },
            Self::Leaf { .. } => {}
        }
    }
}

pub struct Rule {
    pub id: String,
    pub description: String,
    pub severity: Severity,
    pub mitre: Vec<String>,
    pub events: BTreeSet<EventType>,
    pub condition: Cond,
    pub exceptions: Vec<Cond>,
    pub dedup: Duration,
    /// What to do about a finding: the rule file's `runbook` (a URL or a path), or for
    /// the built-in rules their entry in the packaged runbooks (`BUILTIN_RUNBOOKS`).
    pub runbook: String,
    /// Where it came from: `builtin` or a file path.
    pub source: String,
}

/// Where the built-in rules' runbooks are installed (docs/runbooks/detection.md in the
/// source tree): each rule's entry is the heading named by its id.
pub const BUILTIN_RUNBOOKS: &str = "/usr/share/doc/vigil-agent/runbooks/detection.md";

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rule({} from {})", self.id, self.source)
    }
}

impl Rule {
    pub fn matches(&self, s: &dyn Fields) -> bool {
        self.condition.eval(s) && !self.exceptions.iter().any(|e| e.eval(s))
    }
}

/// A rule file that could not be used: where (line and, for YAML syntax, the column
/// the parser stopped at; 0 when unknown), and why.
#[derive(Debug, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub reason: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            0 => write!(f, "{}:{}: {}", self.file, self.line, self.reason),
            c => write!(f, "{}:{}:{c}: {}", self.file, self.line, self.reason),
        }
    }
}

impl std::error::Error for RuleError {}

pub const DEFAULT_DEDUP: Duration = Duration::from_secs(60);

/// A rule file as serde reads it: unknown keys are refused, and a value of the wrong
/// shape is reported with the parser's line and column. The condition grammar
/// (`field: {operator: value}`, `all`, `any`, `not`) stays a YAML value here and is
/// compiled, typed, by `cond`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rules: Option<Vec<RawRule>>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Scalar,
    description: Scalar,
    severity: Scalar,
    mitre: Option<OneOrMany>,
    events: Option<OneOrMany>,
    condition: Option<Value>,
    #[serde(default)]
    exceptions: Option<Vec<Value>>,
    #[serde(default)]
    dedup: Option<Scalar>,
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    runbook: Option<Scalar>,
}

/// A value written as text, a number or a boolean (`process.uid: 0`, `dedup: 300`).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            Self::Int(n) => n.to_string(),
            Self::Float(f) => f.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Scalar),
    Many(Vec<Scalar>),
}

impl OneOrMany {
    fn texts(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.text()],
            Self::Many(v) => v.iter().map(Scalar::text).collect(),
        }
    }
}

/// Parses one YAML rule file. `name` is how errors name the file.
pub fn parse(name: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    Ok(parse_with_switches(name, text)
        .map_err(|mut problems| problems.remove(0))?
        .into_iter()
        .map(|(rule, _)| rule)
        .collect())
}

/// The rules of a file, each with its `enabled` switch; or every problem in it (each
/// rule checked, each problem at the line of the field that is wrong).
fn parse_with_switches(name: &str, text: &str) -> Result<Vec<(Rule, bool)>, Vec<RuleError>> {
    let err = |line: usize, reason: String| RuleError {
        file: name.to_string(),
        line,
        column: 0,
        reason,
    };
    let doc: Option<RuleFile> = yaml_serde::from_str(text).map_err(|e| {
        vec![RuleError {
            file: name.to_string(),
            line: e.location().map_or(0, |l| l.line()),
            column: e.location().map_or(0, |l| l.column()),
            reason: format!("not a valid rule file: {e}"),
        }]
    })?;
    let list = doc.and_then(|d| d.rules).unwrap_or_default();
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for r in &list {
        let id = r.id.text();
        let line = line_of(text, &id).unwrap_or(0);
        let rule = match compile(r, name) {
            Ok(rule) => rule,
            Err(reason) => {
                problems.push(err(
                    field_line(text, line, &reason),
                    format!("rule `{id}`: {reason}"),
                ));
                continue;
            }
        };
        if !ids.insert(rule.id.clone()) {
            problems.push(err(line, format!("rule `{}` is defined twice", rule.id)));
            continue;
        }
        rules.push((rule, r.enabled.unwrap_or(true)));
    }
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems)
    }
}

/// The line of the field a problem names (its first word: "dedup `9d`: ...", "`mitre`
/// is missing"), searched within the rule that starts at `start` (1-based); the rule's
/// line when the field is not written in it.
fn field_line(text: &str, start: usize, reason: &str) -> usize {
    let Some(field) = reason
        .split_whitespace()
        .next()
        .map(|w| w.trim_matches(|c: char| c == '`' || c == ':'))
        .filter(|w| !w.is_empty())
    else {
        return start;
    };
    let key = format!("{field}:");
    text.lines()
        .enumerate()
        .skip(start)
        // Up to the next rule of the list.
        .take_while(|(_, l)| !l.trim_start().starts_with("- id:"))
        .find(|(_, l)| l.trim_start().starts_with(&key))
        .map_or(start, |(i, _)| i + 1)
}

/// The line where rule `id` starts (the line with `id: <id>`), for messages.
fn line_of(text: &str, id: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ").trim();
            t.strip_prefix("id:")
                .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'') == id)
                .unwrap_or(false)
        })
        .map(|i| i + 1)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Sequence(s) => s
            .iter()
            .map(|x| scalar(x).ok_or_else(|| format!("{what}: list items must be text or numbers")))
            .collect(),
        other => scalar(other)
            .map(|s| vec![s])
            .ok_or_else(|| format!("{what}: expected a value or a list of values")),
    }
}

fn compile(r: &RawRule, source: &str) -> Result<Rule, String> {
    let nonempty = |k: &str, v: &Scalar| -> Result<String, String> {
        Some(v.text())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("`{k}` is empty"))
    };
    let text = |k: &str| -> Result<String, String> {
        match k {
            "id" => nonempty(k, &r.id),
            "description" => nonempty(k, &r.description),
            _ => nonempty(k, &r.severity),
        }
    };
    let id = text("id")?;
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err("`id` may only hold letters, digits, `-`, `_` and `.`".into());
    }
    let description = text("description")?;
    let sev = text("severity")?;
    let severity = Severity::parse(&sev).ok_or_else(|| {
        format!("severity `{sev}` is not one of info, low, medium, high, critical")
    })?;
    let mitre = match &r.mitre {
        Some(v) => v.texts(),
        None => return Err("`mitre` is missing (a list of ATT&CK technique ids)".into()),
    };
    for t in &mitre {
        let ok = t.starts_with('T')
            && t[1..]
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if !ok {
            return Err(format!(
                "`{t}` is not an ATT&CK technique id (like T1059 or T1059.004)"
            ));
        }
    }
    let names = match &r.events {
        Some(v) => v.texts(),
        None => return Err("`events` is missing".into()),
    };
    let mut events = BTreeSet::new();
    for e in &names {
        let Some(t) = EventType::parse(e) else {
            return Err(format!(
                "unknown event `{e}` (known: {})",
                EventType::ALL.map(EventType::name).join(", ")
            ));
        };
        events.insert(t);
    }
    let condition = cond(r.condition.as_ref().ok_or("`condition` is missing")?)?;
    let exceptions = match &r.exceptions {
        None => Vec::new(),
        Some(list) => list.iter().map(cond).collect::<Result<_, _>>()?,
    };
    let dedup = match r.dedup.as_ref().map(Scalar::text) {
        None => DEFAULT_DEDUP,
        Some(s) => crate::units::parse_duration(&s).map_err(|e| format!("dedup `{s}`: {e}"))?,
    };
    let runbook = match r.runbook.as_ref().map(Scalar::text) {
        Some(link) if !link.trim().is_empty() => link.trim().to_string(),
        Some(_) => return Err("`runbook` is empty".into()),
        None if source == "builtin" => format!("{BUILTIN_RUNBOOKS}#{id}"),
        None => String::new(),
    };
    Ok(Rule {
        id,
        description,
        severity,
        mitre,
        events,
        condition,
        exceptions,
        dedup,
        runbook,
        source: source.to_string(),
    })
}

fn cond(v: &Value) -> Result<Cond, String> {
    let m = v
        .as_mapping()
        .ok_or("a condition must be a map (field: {operator: value}, all, any or not)")?;
    let mut parts = Vec::new();
    for (k, v) in m {
        let k = k.as_str().ok_or("condition keys must be text")?;
        parts.push(match k {
            "all" | "any" => {
                let list = v
                    .as_sequence()
                    .ok_or_else(|| format!("`{k}` takes a list of conditions"))?;
                let cs = list.iter().map(cond).collect::<Result<Vec<_>, _>>()?;
                if k == "all" {
                    Cond::All(cs)
                } else {
                    Cond::Any(cs)
                }
            }
            "not" => Cond::Not(Box::new(cond(v)?)),
            field => leaf(field, v)?,
        });
    }
    Ok(match parts.len() {
        0 => return Err("empty condition".into()),
        1 => parts.pop().expect("one"),
        _ => Cond::All(parts),
    })
}

fn leaf(field: &str, v: &Value) -> Result<Cond, String> {
    let Some(typed) = Field::parse(field) else {
        return Err(format!(
            "unknown field `{field}` (known: {})",
            Field::ALL
                .iter()
                .map(|(_, f, _)| *f)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let what = |op: &str| format!("{field}.{op}");
    let op = match v {
        Value::Mapping(m) => {
            if m.len() != 1 {
                return Err(format!("`{field}` takes exactly one operator"));
            }
            let (op, arg) = m.iter().next().expect("one");
            let op = op.as_str().unwrap_or("?");
            match op {
                "equals" => Op::Equals(strings(arg, &what(op))?),
                "in" => match arg {
                    Value::Sequence(_) => Op::Equals(strings(arg, &what(op))?),
                    _ => return Err(format!("`{field}`: `in` takes a list")),
                },
                "prefix" => Op::Prefix(strings(arg, &what(op))?),
                "contains" => Op::Contains(strings(arg, &what(op))?),
                "glob" => Op::Glob(strings(arg, &what(op))?),
                "regex" => Op::Regex(
                    strings(arg, &what(op))?
                        .iter()
                        .map(|r| Regex::new(r).map_err(|e| format!("`{field}`: bad regex `{r}`: {e}")))
                        .collect::<Result<_, _>>()?,
                ),
                other => {
                    return Err(format!(
                        "`{field}`: unknown operator `{other}` (known: equals, in, prefix, contains, glob, regex)"
                    ))
                }
            }
        }
        other => Op::Equals(strings(other, field)?),
    };
    Ok(Cond::Leaf { field: typed, op })
}

/// `*` matches any run of characters (slashes included), `?` one character.
pub fn glob_match(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// The built-in ruleset.
pub const BUILTIN: &str = include_str!("default_rules.yaml");

/// Rules from the built-in set and every `*.yaml`/`*.yml` file in `dir` (sorted by
/// name). A rule in a file replaces the built-in rule with the same id; a file rule
/// with `enabled: false` switches the built-in one off. Any bad file fails the load.
pub fn load(dir: Option<&Path>) -> Result<Vec<Rule>, RuleError> {
    load_all(dir).map_err(|mut problems| problems.remove(0))
}

/// [`load`], checking every file: all the problems (a missing directory, each file
/// that does not parse, a rule id defined in two files), or the rules. A file rule
/// with a built-in rule's id replaces it on purpose; two files with one id is a
/// mistake (which one wins would depend on their names).
pub fn load_all(dir: Option<&Path>) -> Result<Vec<Rule>, Vec<RuleError>> {
    let mut rules = parse("builtin", BUILTIN).map_err(|e| vec![e])?;
    let Some(dir) = dir else {
        return Ok(rules);
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rules),
        Err(e) => {
            return Err(vec![RuleError {
                file: dir.display().to_string(),
                line: 0,
                column: 0,
                reason: format!("cannot read the rules directory: {e}"),
            }])
        }
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut problems = Vec::new();
    // Rule id -> the file that defined it first.
    let mut defined: std::collections::HashMap<String, String> = Default::default();
    for f in files {
        let name = f.display().to_string();
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                problems.push(RuleError {
                    file: name.clone(),
                    line: 0,
                    column: 0,
                    reason: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let parsed = match parse_with_switches(&name, &text) {
            Ok(p) => p,
            Err(e) => {
                problems.extend(e);
                continue;
            }
        };
        for (mut r, enabled) in parsed {
            if let Some(first) = defined.get(&r.id) {
                let line = text
                    .lines()
                    .position(|l| {
                        l.trim_start().trim_start_matches("- ").trim() == format!("id: {}", r.id)
                    })
                    .map_or(0, |i| i + 1);
                problems.push(RuleError {
                    file: name.clone(),
                    line,
                    column: 0,
                    reason: format!("rule `{}` is also defined in {first}", r.id),
                });
                continue;
            }
            defined.insert(r.id.clone(), name.clone());
            // A file rule replacing a built-in one keeps its runbook unless it names one.
            if let Some(old) = rules.iter().find(|x| x.id == r.id) {
                if r.runbook.is_empty() {
                    r.runbook = old.runbook.clone();
                }
            }
            rules.retain(|x| x.id != r.id);
            if enabled {
                rules.push(r);
            }
        }
    }
    if problems.is_empty() {
        Ok(rules)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Map(HashMap<&'static str, Vec<&'static str>>);
    impl Fields for Map {
        fn any(&self, f: Field, pred: &mut dyn FnMut(&str) -> bool) -> bool {
            self.0
                .get(f.name())
                .is_some_and(|v| v.iter().any(|s| pred(s)))
        }
    }

    #[test]
    fn every_field_has_a_name_that_parses_back_and_numbers_print_without_allocating() {
        for (f, name, _) in Field::ALL {
            assert_eq!(Field::parse(name), Some(*f));
            assert_eq!(f.name(), *name);
        }
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), "0");
        assert_eq!(decimal(u64::MAX, &mut buf), "18446744073709551615");
        assert_eq!(decimal(1000, &mut buf), "1000");
    }

    fn one(yaml: &str) -> Rule {
        parse("t.yaml", yaml).unwrap().pop().unwrap()
    }

    #[test]
    fn builtin_rules_parse_and_have_attack_ids() {
        let rules = parse("builtin", BUILTIN).unwrap();
        assert!(rules.len() >= 15, "{}", rules.len());
        for r in &rules {
            assert!(!r.mitre.is_empty(), "{}", r.id);
        }
    }

    /// Every built-in rule has its runbook entry: a heading named by its id in the
    /// runbooks the packages install.
    #[test]
    fn every_builtin_rule_has_a_runbook_entry() {
        let doc = include_str!("../../../docs/runbooks/detection.md");
        let headings: BTreeSet<&str> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("## "))
            .map(str::trim)
            .collect();
        let rules = parse("builtin", BUILTIN).unwrap();
        for r in &rules {
            assert!(
                headings.contains(r.id.as_str()),
                "{}: no runbook entry",
                r.id
            );
            assert_eq!(r.runbook, format!("{BUILTIN_RUNBOOKS}#{}", r.id));
        }
        // And no entry for a rule that does not exist.
        for h in headings {
            assert!(
                rules.iter().any(|r| r.id == h),
                "runbook entry {h} has no rule"
            );
        }
    }

    /// The built-in account-file rule on the host's real files (the privileged test
    /// drives the kernel path with a scratch file a test rule names instead).
    #[test]
    fn the_account_file_rule_names_the_real_account_files() {
        let rules = parse("builtin", BUILTIN).unwrap();
        let r = rules
            .iter()
            .find(|r| r.id == "account-or-sudoers-write")
            .expect("the rule");
        let event = |path: &'static str, exe: &'static str| {
            let mut m: HashMap<&'static str, Vec<&'static str>> = HashMap::new();
            m.insert("event", vec!["file_write"]);
            m.insert("path", vec![path]);
            m.insert("process.exe", vec![exe]);
            Map(m)
        };
        for path in [
            "/etc/shadow",
            "/etc/passwd",
            "/etc/sudoers.d/x",
            "/root/.ssh/authorized_keys",
        ] {
            assert!(r.matches(&event(path, "/usr/bin/sh")), "{path}");
        }
        assert!(!r.matches(&event("/etc/hostname", "/usr/bin/sh")));
        assert!(
            !r.matches(&event("/etc/shadow", "/usr/sbin/useradd")),
            "useradd is the exception"
        );
    }

    /// The command-line rules for security tools, the firewall and logs: what they take and
    /// the nearest commands they must leave alone.
    #[test]
    fn security_tool_firewall_and_log_rules_read_the_command_line() {
        let rules = parse("builtin", BUILTIN).unwrap();
        let rule = |id: &str| rules.iter().find(|r| r.id == id).expect(id);
        let exec_under =
            |name: &'static str, cmdline: &'static str, ancestors: Vec<&'static str>| {
                let mut m: HashMap<&'static str, Vec<&'static str>> = HashMap::new();
                m.insert("event", vec!["exec"]);
                m.insert("process.name", vec![name]);
                m.insert("process.cmdline", vec![cmdline]);
                m.insert("ancestor.name", ancestors);
                Map(m)
            };
        let exec = |name, cmdline| exec_under(name, cmdline, vec!["sshd", "bash"]);
        let tools = rule("security-tool-disabled");
        for (name, cmdline) in [
            ("systemctl", "systemctl stop falco"),
            ("systemctl", "systemctl disable --now osqueryd.service"),
            ("systemctl", "systemctl mask apparmor"),
            ("systemctl", "systemctl stop vigil-agent"),
            ("service", "service auditbeat stop"),
            ("pkill", "pkill -f falco"),
            ("setenforce", "setenforce 0"),
            ("aa-teardown", "aa-teardown"),
            (
                "apparmor_parser",
                "apparmor_parser -R /etc/apparmor.d/usr.sbin.cupsd",
            ),
        ] {
            assert!(tools.matches(&exec(name, cmdline)), "{cmdline}");
        }
        for (name, cmdline) in [
            ("systemctl", "systemctl status falco"),
            ("systemctl", "systemctl restart osqueryd"),
            (
                "systemctl",
                "systemctl stop systemd-journald-vigil-bench.service",
            ),
            ("systemctl", "systemctl stop nginx"),
            ("setenforce", "setenforce 1"),
            (
                "apparmor_parser",
                "apparmor_parser -r /etc/apparmor.d/usr.sbin.cupsd",
            ),
        ] {
            assert!(!tools.matches(&exec(name, cmdline)), "{cmdline}");
        }
        let firewall = rule("firewall-disabled");
        for (name, cmdline) in [
            ("iptables", "iptables -F"),
            ("iptables", "iptables -t nat -F"),
            ("iptables", "iptables --flush INPUT"),
            ("ip6tables", "ip6tables -F -t filter"),
            ("iptables", "iptables -D INPUT 3"),
            ("iptables", "iptables -P FORWARD ACCEPT"),
            ("nft", "nft flush ruleset"),
            ("nft", "nft delete table inet filter"),
            ("ufw", "ufw disable"),
            ("ufw", "ufw --force reset"),
            ("systemctl", "systemctl stop firewalld"),
            ("systemctl", "systemctl disable nftables.service"),
        ] {
            assert!(firewall.matches(&exec(name, cmdline)), "{cmdline}");
        }
        for (name, cmdline) in [
            ("iptables", "iptables -L -n"),
            ("iptables", "iptables -F DOCKER-USER"),
            ("iptables", "iptables -A INPUT -p tcp --dport 22 -j ACCEPT"),
            ("iptables", "iptables -P INPUT DROP"),
            ("iptables", "iptables -D DOCKER 1"),
            ("nft", "nft list ruleset"),
            ("ufw", "ufw enable"),
            ("systemctl", "systemctl stop docker-iptables-helper"),
            ("systemctl", "systemctl status ufw"),
        ] {
            assert!(!firewall.matches(&exec(name, cmdline)), "{cmdline}");
        }
        let logs = rule("log-files-deleted");
        for (name, cmdline) in [
            ("rm", "rm -f /var/log/auth.log"),
            ("unlink", "unlink /var/log/syslog"),
            ("journalctl", "journalctl --vacuum-time=1s"),
        ] {
            assert!(logs.matches(&exec(name, cmdline)), "{cmdline}");
        }
        for (name, cmdline) in [
            ("rm", "rm -f /tmp/app.log"),
            ("journalctl", "journalctl -u ssh --since today"),
        ] {
            assert!(!logs.matches(&exec(name, cmdline)), "{cmdline}");
        }
        // A cron job's clean-up, and a container runtime flushing what it owns, are
        // left alone.
        let cron = exec_under(
            "rm",
            "rm /var/log/app/old.log.9.gz",
            vec!["find", "sh", "cron"],
        );
        assert!(!logs.matches(&cron));
        let dockerd = exec_under(
            "iptables",
            "iptables -t filter -F",
            vec!["dockerd", "systemd"],
        );
        assert!(!firewall.matches(&dockerd));
    }

    #[test]
    fn operators_and_logic() {
        let r = one(r#"
rules:
  - id: x
    description: d
    severity: low
    mitre: [T1059]
    events: [exec]
    condition:
      any:
        - all:
            - process.name: {in: [bash, sh]}
            - parent.name: {glob: "ng*x"}
        - process.exe: {regex: "^/tmp/[a-z]+$"}
      not: {process.uid: 1000}
    exceptions:
      - process.cmdline: {contains: allowed}
"#);
        let s = |pairs: &[(&'static str, &'static str)]| {
            let mut m: HashMap<&'static str, Vec<&'static str>> = HashMap::new();
            for (k, v) in pairs {
                m.entry(*k).or_default().push(*v);
            }
            Map(m)
        };
        assert!(r.matches(&s(&[
            ("process.name", "sh"),
            ("parent.name", "nginx"),
            ("process.uid", "0")
        ]),));
        assert!(!r.matches(&s(&[
            ("process.name", "sh"),
            ("parent.name", "nginx"),
            ("process.uid", "1000")
        ]),));
        assert!(!r.matches(&s(&[("process.name", "zsh"), ("parent.name", "nginx")]),));
        assert!(r.matches(&s(&[("process.exe", "/tmp/abc")])));
        assert!(!r.matches(&s(&[("process.exe", "/tmp/abc/d")])));
        assert!(!r.matches(&s(&[
            ("process.exe", "/tmp/abc"),
            ("process.cmdline", "x allowed")
        ]),));
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let e = parse("bad.yaml", "rules:\n  - id: a\n    description: d\n    severity: loud\n    mitre: [T1]\n    events: [exec]\n    condition: {process.exe: x}\n").unwrap_err();
        // The line of the bad field, not of the rule.
        assert_eq!((e.file.as_str(), e.line), ("bad.yaml", 4));
        assert!(e.reason.contains("severity `loud`"), "{e}");
        // Every bad rule of a file, each at its field's line.
        let all = parse_with_switches(
            "bad.yaml",
            "rules:\n  - id: a\n    description: d\n    severity: loud\n    mitre: [T1]\n    events: [exec]\n    condition: {process.exe: x}\n  - id: b\n    description: d\n    severity: low\n    mitre: [T1]\n    events: [exec]\n    condition: {process.exe: x}\n    dedup: 99999999999999999999d\n",
        )
        .unwrap_err();
        assert_eq!(
            all.iter().map(|e| e.line).collect::<Vec<_>>(),
            [4, 14],
            "{all:?}"
        );
        let e = parse("bad.yaml", "rules:\n  - id: a\n    description: d\n    severity: low\n    mitre: [T1]\n    events: [exec]\n    condition: {proc.exe: x}\n").unwrap_err();
        assert!(e.reason.contains("unknown field `proc.exe`"), "{e}");
        let e = parse("bad.yaml", "rules:\n  - id: a\n    description: d\n    severity: low\n    mitre: [T1]\n    events: [exec]\n    condition: {process.exe: {regex: '('}}\n").unwrap_err();
        assert!(e.reason.contains("bad regex"), "{e}");
        let e = parse("bad.yaml", "rules:\n  - id: a\n   bad indent: [\n").unwrap_err();
        assert!(
            e.line >= 2 && e.reason.contains("not a valid rule file"),
            "{e}"
        );
        assert!(e.column > 0, "the parser's column: {e}");
        assert!(
            e.to_string()
                .starts_with(&format!("bad.yaml:{}:{}: ", e.line, e.column)),
            "{e}"
        );
        let e = parse("bad.yaml", "rules:\n  - id: a\n    description: d\n    severity: low\n    mitre: [X1]\n    events: [exec]\n    condition: {process.exe: x}\n").unwrap_err();
        assert!(e.reason.contains("ATT&CK"), "{e}");
        // Unknown keys, at either level, with the parser's line and column.
        let e = parse("bad.yaml", "rules:\n  - id: a\n    description: d\n    severity: low\n    mitre: [T1]\n    events: [exec]\n    condition: {process.exe: x}\n    dedupe: 5m\n").unwrap_err();
        assert!(e.reason.contains("unknown field `dedupe`"), "{e}");
        assert_eq!(e.line, 8, "{e}");
        assert!(e.column > 0, "{e}");
        let e = parse("bad.yaml", "rule:\n  - id: a\n").unwrap_err();
        assert!(e.reason.contains("unknown field `rule`"), "{e}");
        // Nothing, comments only, or an empty list: no rules, no error.
        for empty in ["", "# nothing yet\n", "rules:\n", "rules: []\n"] {
            assert!(parse("empty.yaml", empty).unwrap().is_empty(), "{empty:?}");
        }
    }

    #[test]
    fn glob() {
        assert!(glob_match(b"/tmp/*", b"/tmp/a/b"));
        assert!(glob_match(b"*.sh", b"x.sh"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"a?c", b"ac"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"/etc/*", b"/tmp/x"));
    }

    // Error or rules, never a panic: arbitrary text, and a rule whose every value is
    // arbitrary (durations, operators, regexes, nesting).
    proptest::proptest! {
        #[test]
        fn any_text_is_rules_or_an_error(text in "\\PC*") {
            let _ = parse("t.yaml", &text);
        }

        #[test]
        fn a_rule_with_any_values_is_rules_or_an_error(
            dedup in "[0-9]{0,30}(\\.[0-9]{0,4})?(ns|us|ms|s|m|h|d|y)?",
            severity in "(info|low|medium|high|critical|\\PC{0,8})",
            event in "(exec|ptrace|setuid|module_load|file_write|connect|listen|\\PC{0,8})",
            field in "(process\\.exe|process\\.uid|port|path|ancestor\\.name|\\PC{0,12})",
            op in "(equals|prefix|contains|glob|regex|in|not|any|all|\\PC{0,6})",
            value in "(\"\\PC{0,16}\"|\\[\\]|\\{\\}|[0-9]{0,25}|~|\\[a, \\[b\\]\\])",
        ) {
            let text = format!(
                "rules:\n- id: r\n  description: d\n  severity: {severity}\n  mitre: [T1059]\n  events: [{event}]\n  dedup: {dedup}\n  condition:\n    {field}: {{{op}: {value}}}\n"
            );
            if let Ok(rules) = parse("t.yaml", &text) {
                for r in &rules {
                    proptest::prop_assert!(r.dedup <= crate::units::MAX_DURATION);
                }
            }
        }
    }
}
