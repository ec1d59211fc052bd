//! The on-disk spool: every batch is written here before it is sent and stays until
//! the collector acks it, so a dead collector, a restart or a SIGKILL loses nothing.
//!
//! Layout (`data_dir/spool/`):
//! - `state`: `epoch <32 hex digits>` and `acked <seq>` (every sequence up to it is
//!   acked). The epoch is 128 random bits, made when the spool is new.
//! - `<epoch>-<first seq, 20 digits>.seg`: append-only segments of records
//!   `magic u32 | len u32 | sequence u64 | crc32 u32 | payload (a prost Batch)`,
//!   little-endian, the CRC over sequence and payload.
//!
//! Each start opens a new segment (a crash may have left the last one torn). A damaged
//! record (bad magic, length or checksum, or a torn tail) is skipped and counted; the
//! reader resynchronises on the next valid record. When the spool would exceed its
//! bound, the oldest segment is deleted, acked or not, and its unacked batches are
//! counted as dropped (with the losses they carried, so those are still reported).
//!
//! The directory is 0700 and its files 0600 (batches carry command lines). A state
//! file that is damaged or disagrees with the segments (an `acked` past anything ever
//! written) is set aside as `state.damaged-<unix ms>` for a postmortem, counted, and
//! rebuilt from the segments: the spool never refuses to open over its own files.
pub mod writer;

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Instant,
};

use prost::Message as _;
use vigil_proto::v1 as pb;

use vigil_proto::Epoch;

use crate::config::{Fsync, SpoolConfig};

const MAGIC: u32 = 0x5647_4c31; // "VGL1"
const HEADER: usize = 20;
/// A record larger than this is taken as damage, not as data.
const MAX_RECORD: u32 = 64 << 20;
/// More records than a segment can hold (each has a 20-byte header; segments are at
/// most a few MiB): how far past a segment's first sequence its last can be.
const MAX_RECORDS_PER_SEGMENT: u64 = 1 << 32;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {path}: record {sequence} does not decode: {source}")]
    Decode {
        path: PathBuf,
        sequence: u64,
        #[source]
        source: prost::DecodeError,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Clone, Copy, Debug)]
struct Record {
    sequence: u64,
    offset: u64,
    len: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
    records: Vec<Record>,
}

/// What the spool counts about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Bytes on disk, all segments.
    pub bytes: u64,
    /// Batches written and not yet acked.
    pub unacked: u64,
    /// Unacked batches deleted to stay under the bound, since the agent started.
    pub dropped_batches: u64,
    /// Damaged records skipped, since the agent started.
    pub corrupt_records: u64,
    /// State files found damaged or inconsistent, set aside and rebuilt.
    pub state_rebuilt: u64,
}

pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    epoch: Epoch,
    next_sequence: u64,
    /// Every sequence up to this one is acked.
    acked: u64,
    /// Acked sequences above `acked` (acks can arrive out of order after a reconnect).
    acked_above: std::collections::BTreeSet<u64>,
    /// Oldest first; the last one is open for appending.
    segments: VecDeque<Segment>,
    active: Option<File>,
    last_fsync: Instant,
    dirty: bool,
    state_written: u64,
    stats: SpoolStats,
    /// Losses not yet reported in a batch (spool drops, and the losses that the
    /// dropped batches carried).
    unreported: pb::Losses,
    /// The highest sequence the current stream has sent (0: none yet).
    sent_upto: u64,
    /// Batches the bound pushed out while they were on the wire (sent, not yet
    /// acked), with the losses they carried: delivered if their ack still comes,
    /// dropped (and counted then) if the stream ends first.
    in_flight_dropped: std::collections::BTreeMap<u64, pb::Losses>,
}

fn parse_segment_name(name: &str) -> Option<(Epoch, u64)> {
    let stem = name.strip_suffix(".seg")?;
    let (epoch, first) = stem.split_once('-')?;
    let first: u64 = first.parse().ok()?;
    // A name no writer could have made is not a segment of ours.
    (1..=MAX_SEQUENCE).contains(&first).then_some(())?;
    Some((Epoch::parse(epoch)?, first))
}

/// Sequences stay below this (the collector takes at most 2^63-1).
const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// A new epoch: 128 bits from the kernel's random source.
fn random_epoch() -> Epoch {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: writes at most the remaining length into the buffer.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n <= 0 {
            // getrandom(2) cannot fail on a buffer this small once the pool is ready;
            // should it, fall back to the clock and the pid rather than refuse to run.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            return Epoch(t ^ (u128::from(std::process::id()) << 96));
        }
        filled += n as usize;
    }
    Epoch(u128::from_be_bytes(bytes))
}

/// What the state file says, if it says it clearly.
fn parse_state(data: &[u8]) -> Option<(Epoch, u64)> {
    let text = std::str::from_utf8(data).ok()?;
    let (mut epoch, mut acked) = (None, None);
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("epoch", v)) => epoch = Some(Epoch::parse(v)?),
            Some(("acked", v)) => acked = Some(v.trim().parse::<u64>().ok()?),
            _ => return None,
        }
    }
    let acked = acked?;
    (acked < MAX_SEQUENCE).then_some((epoch?, acked))
}

/// Reads a segment's records; damaged stretches are skipped. Returns the records, the
/// damaged stretches, and how many bytes of damage end the segment (a torn tail).
fn scan(data: &[u8]) -> (Vec<Record>, u64, usize) {
    let mut records = Vec::new();
    let mut corrupt = 0u64;
    let mut at = 0usize;
    let mut in_damage = false;
    let mut damage_from = 0usize;
    while at < data.len() {
        match record_at(data, at) {
            Some(r) => {
                records.push(r);
                at += HEADER + r.len as usize;
                in_damage = false;
            }
            None => {
                // One damaged stretch counts once, however long it is.
                if !in_damage {
                    corrupt += 1;
                    in_damage = true;
                    damage_from = at;
                }
                at += 1;
            }
        }
    }
    let tail = if in_damage {
        data.len() - damage_from
    } else {
        0
    };
    (records, corrupt, tail)
}

fn record_at(data: &[u8], at: usize) -> Option<Record> {
    let header = data.get(at..at + HEADER)?;
    let word = |i: usize| u32::from_le_bytes(header[i..i + 4].try_into().unwrap_or_default());
    if word(0) != MAGIC {
        return None;
    }
    let len = word(4);
    if len > MAX_RECORD {
        return None;
    }
    let sequence = u64::from_le_bytes(header[8..16].try_into().ok()?);
    let crc = word(16);
    let payload = data.get(at + HEADER..at + HEADER + len as usize)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&header[8..16]);
    h.update(payload);
    (h.finalize() == crc).then_some(Record {
        sequence,
        offset: at as u64,
        len,
    })
}

fn encode_record(sequence: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&sequence.to_le_bytes());
    h.update(payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

impl Spool {
    /// Opens the spool in `dir` (creating it), reading what a previous run left.
    pub fn open(dir: &Path, config: SpoolConfig) -> Result<Self, SpoolError> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let state_path = dir.join("state");
        let state = match fs::read(&state_path) {
            Ok(data) => Some(parse_state(&data).ok_or(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            // Unreadable (a chmod, an I/O error): the same as damaged.
            Err(e) => Some(Err(e.to_string().into_bytes())),
        };
        let mut names: Vec<(Epoch, u64, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let Some((e, first)) = name.to_str().and_then(parse_segment_name) else {
                continue;
            };
            names.push((e, first, entry.path()));
        }
        let mut state_rebuilt = 0;
        let mut set_aside = |why: &str| {
            let kept = dir.join(format!(
                "state.damaged-{}",
                crate::units::unix_ms(std::time::SystemTime::now())
            ));
            match fs::rename(&state_path, &kept) {
                Ok(()) => {
                    tracing::warn!(state = %state_path.display(), kept = %kept.display(), why, "spool state set aside; rebuilt from the segments")
                }
                Err(e) => {
                    tracing::warn!(state = %state_path.display(), error = %e, why, "spool state damaged and could not be set aside; rebuilt from the segments")
                }
            }
            state_rebuilt += 1;
        };
        let (mut epoch, mut acked) = match state {
            Some(Ok((e, a))) => (Some(e), a),
            Some(Err(_)) => {
                set_aside("damaged (not `epoch <hex>` and `acked <n>` lines)");
                (None, 0)
            }
            None => (None, 0),
        };
        // An `acked` past every sequence a segment could hold was never written by us.
        // (Segments are named by their first sequence, so even an empty one bounds it.)
        if let Some(e) = epoch {
            let written = names
                .iter()
                .filter(|n| n.0 == e)
                .map(|n| n.1.saturating_sub(1))
                .max();
            if written.is_some_and(|w| acked > w.saturating_add(MAX_RECORDS_PER_SEGMENT)) {
                set_aside("acked is past every segment");
                (epoch, acked) = (None, 0);
            }
        }
        names.sort_by_key(|n| n.1);
        // Segments of another epoch can only be from a lost state file: adopt the one
        // with the newest segment; with none, the spool is new and so is its epoch.
        let epoch = match epoch.or_else(|| names.last().map(|n| n.0)) {
            Some(e) => e,
            None => random_epoch(),
        };
        let mut stats = SpoolStats {
            state_rebuilt,
            ..SpoolStats::default()
        };
        let mut segments = VecDeque::new();
        let mut max_seq = acked;
        let mut torn_tail = 0usize;
        // The first sequence of each segment after this one (names are sorted).
        let next_firsts: Vec<Option<u64>> = (0..names.len())
            .map(|i| names[i + 1..].iter().find(|n| n.0 == epoch).map(|n| n.1))
            .collect();
        for (i, (e, first, path)) in names.into_iter().enumerate() {
            if e != epoch {
                tracing::warn!(segment = %path.display(), "spool segment of another epoch; ignored");
                continue;
            }
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
            let data = match fs::read(&path) {
                Ok(d) => d,
                Err(e) => {
                    // Unreadable (chmod 000, an I/O error): set aside, counted as one
                    // damaged stretch; its sequences are never reused.
                    let kept = path.with_extension("unreadable");
                    tracing::warn!(segment = %path.display(), error = %e, "spool segment unreadable; set aside");
                    let _ = fs::rename(&path, &kept);
                    stats.corrupt_records += 1;
                    // Its sequences end before the next segment's first; the newest can
                    // hold at most one record per header's worth of bytes. (A guess past
                    // that would leave the collector a jump it refuses as too far ahead.)
                    let last = match next_firsts[i] {
                        Some(next) => next.saturating_sub(1),
                        None => first.saturating_add(config.segment_bytes / HEADER as u64),
                    };
                    max_seq = max_seq.max(last.min(MAX_SEQUENCE - 1));
                    continue;
                }
            };
            let (records, corrupt, tail) = scan(&data);
            torn_tail = tail;
            if corrupt > 0 {
                tracing::warn!(
                    segment = %path.display(),
                    damaged = corrupt,
                    good = records.len(),
                    "damaged spool records skipped"
                );
            }
            stats.corrupt_records += corrupt;
            max_seq = records.iter().map(|r| r.sequence).fold(max_seq, u64::max);
            segments.push_back(Segment {
                path,
                bytes: data.len() as u64,
                records,
            });
        }
        // Records lost in the newest segment's torn tail may have reached the collector
        // (with fsync other than "batch"): never reuse their sequence numbers, or the
        // collector would take new batches for duplicates. At most one record per
        // HEADER bytes of damage was there.
        let skip = if torn_tail > 0 {
            (torn_tail / HEADER) as u64 + 1
        } else {
            0
        };
        let unreported = pb::Losses {
            spool_corrupt_records: stats.corrupt_records,
            ..Default::default()
        };
        let next_sequence = max_seq.saturating_add(1).saturating_add(skip);
        if next_sequence >= MAX_SEQUENCE {
            // Only damage gets here; a new epoch starts at 1 rather than wrap.
            tracing::warn!("spool sequences exhausted; starting a new epoch");
            return Self::fresh(dir, config, stats);
        }
        let mut spool = Self {
            dir: dir.to_path_buf(),
            config,
            epoch,
            next_sequence,
            acked,
            acked_above: Default::default(),
            segments,
            active: None,
            last_fsync: Instant::now(),
            dirty: false,
            state_written: u64::MAX,
            stats,
            unreported,
            sent_upto: 0,
            in_flight_dropped: Default::default(),
        };
        spool.write_state(true)?;
        spool.collect_acked()?;
        spool.stats.unacked = spool.count_unacked();
        Ok(spool)
    }

    /// A spool with a new epoch, its old state and segments already set aside.
    fn fresh(dir: &Path, config: SpoolConfig, stats: SpoolStats) -> Result<Self, SpoolError> {
        let mut spool = Self {
            dir: dir.to_path_buf(),
            config,
            epoch: random_epoch(),
            next_sequence: 1,
            acked: 0,
            acked_above: Default::default(),
            segments: VecDeque::new(),
            active: None,
            last_fsync: Instant::now(),
            dirty: false,
            state_written: u64::MAX,
            unreported: pb::Losses {
                spool_corrupt_records: stats.corrupt_records,
                ..Default::default()
            },
            stats,
            sent_upto: 0,
            in_flight_dropped: Default::default(),
        };
        spool.write_state(true)?;
        Ok(spool)
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The sequence of the newest batch appended (0: none yet in this epoch).
    pub fn last_sequence(&self) -> u64 {
        self.next_sequence - 1
    }

    pub fn stats(&self) -> SpoolStats {
        let mut s = self.stats.clone();
        s.bytes = self.segments.iter().map(|s| s.bytes).sum();
        s
    }

    /// The spool's losses since the last call, for the next batch.
    pub fn take_losses(&mut self) -> pb::Losses {
        std::mem::take(&mut self.unreported)
    }

    /// Applies a new config (on reload). A smaller bound takes effect at the next append.
    pub fn reconfigure(&mut self, config: SpoolConfig) {
        self.config = config;
    }

    fn is_acked(&self, sequence: u64) -> bool {
        sequence <= self.acked || self.acked_above.contains(&sequence)
    }

    fn count_unacked(&self) -> u64 {
        self.segments
            .iter()
            .flat_map(|s| &s.records)
            .filter(|r| !self.is_acked(r.sequence))
            .count() as u64
    }

    /// Gives `batch` the spool's epoch and the next sequence, and appends it. Returns
    /// the sequence.
    pub fn append(&mut self, batch: &mut pb::Batch) -> Result<u64, SpoolError> {
        batch.set_spool_epoch(self.epoch);
        batch.sequence = self.next_sequence;
        let record = encode_record(batch.sequence, &batch.encode_to_vec());
        let need_new = match (self.active.as_ref(), self.segments.back()) {
            (Some(_), Some(seg)) => {
                seg.bytes + record.len() as u64 > self.config.segment_bytes && seg.bytes > 0
            }
            _ => true,
        };
        if need_new {
            self.roll()?;
        }
        self.make_room(record.len() as u64)?;
        let (Some(file), Some(seg)) = (self.active.as_mut(), self.segments.back_mut()) else {
            unreachable!("roll() opened a segment");
        };
        file.write_all(&record).map_err(io(&seg.path))?;
        seg.records.push(Record {
            sequence: batch.sequence,
            offset: seg.bytes,
            len: (record.len() - HEADER) as u32,
        });
        seg.bytes += record.len() as u64;
        self.next_sequence += 1;
        self.stats.unacked += 1;
        self.dirty = true;
        self.maybe_fsync(false)?;
        Ok(batch.sequence)
    }

    /// fsyncs per the policy (`force`: now, whatever the policy says).
    pub fn maybe_fsync(&mut self, force: bool) -> Result<(), SpoolError> {
        if !self.dirty {
            return Ok(());
        }
        let due = force
            || match self.config.fsync {
                Fsync::Batch => true,
                Fsync::Interval => self.last_fsync.elapsed() >= self.config.fsync_interval.0,
                Fsync::Never => false,
            };
        if let (true, Some(file), Some(seg)) = (due, self.active.as_ref(), self.segments.back()) {
            file.sync_data().map_err(io(&seg.path))?;
            self.last_fsync = Instant::now();
            self.dirty = false;
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<(), SpoolError> {
        if let (Some(file), Some(seg)) = (self.active.take(), self.segments.back()) {
            if self.dirty && self.config.fsync != Fsync::Never {
                file.sync_data().map_err(io(&seg.path))?;
            }
        }
        let path = self.dir.join(format!(
            "{}-{:020}.seg",
            self.epoch.hex(),
            self.next_sequence
        ));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(&path))?;
        // The new name must survive a crash too.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        let bytes = file.metadata().map_err(io(&path))?.len();
        self.segments.push_back(Segment {
            path,
            bytes,
            records: Vec::new(),
        });
        self.active = Some(file);
        Ok(())
    }

    /// Deletes the oldest segments until `extra` more bytes fit under the bound.
    fn make_room(&mut self, extra: u64) -> Result<(), SpoolError> {
        while self.segments.len() > 1
            && self.segments.iter().map(|s| s.bytes).sum::<u64>() + extra > self.config.max_bytes
        {
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            let unacked: Vec<Record> = seg
                .records
                .iter()
                .filter(|r| !self.is_acked(r.sequence))
                .copied()
                .collect();
            if !unacked.is_empty() {
                // Their losses would otherwise never be reported: carry them over.
                let file = File::open(&seg.path).ok();
                let carried: Vec<(u64, pb::Losses)> = unacked
                    .iter()
                    .map(|r| {
                        let mut buf = vec![0u8; r.len as usize];
                        let losses = file
                            .as_ref()
                            .and_then(|f| f.read_exact_at(&mut buf, r.offset + HEADER as u64).ok())
                            .and_then(|()| pb::Batch::decode(buf.as_slice()).ok())
                            .and_then(|b| b.losses)
                            .unwrap_or_default();
                        (r.sequence, losses)
                    })
                    .collect();
                self.stats.unacked = self.stats.unacked.saturating_sub(unacked.len() as u64);
                let mut n = 0u64;
                for (sequence, losses) in carried {
                    if sequence <= self.sent_upto {
                        // On the wire: the collector may store it; decided by its ack
                        // or by the stream's end.
                        self.in_flight_dropped.insert(sequence, losses);
                    } else {
                        self.unreported.add(&losses);
                        n += 1;
                    }
                }
                self.stats.dropped_batches += n;
                self.unreported.spool_dropped_batches += n;
                tracing::warn!(
                    dropped = n,
                    on_the_wire = unacked.len() as u64 - n,
                    first = unacked[0].sequence,
                    bound = self.config.max_bytes,
                    "spool full: oldest unacked batches dropped and counted"
                );
                // Those sequences will never be sent again: treat them as done.
                for r in &unacked {
                    self.acked_above.insert(r.sequence);
                }
                self.advance_acked();
            }
            self.write_state(true)?;
            fs::remove_file(&seg.path).map_err(io(&seg.path))?;
        }
        Ok(())
    }

    fn advance_acked(&mut self) {
        while self.acked_above.remove(&(self.acked + 1)) {
            self.acked += 1;
        }
    }

    /// Records the collector's ack of `sequence` (of this spool's epoch).
    pub fn ack(&mut self, epoch: Epoch, sequence: u64) -> Result<(), SpoolError> {
        if epoch != self.epoch {
            return Ok(());
        }
        if self.in_flight_dropped.remove(&sequence).is_some() {
            // Pushed out of the spool while on the wire, and it arrived: not lost.
            return Ok(());
        }
        if self.is_acked(sequence) || sequence >= self.next_sequence {
            return Ok(());
        }
        self.acked_above.insert(sequence);
        self.advance_acked();
        self.stats.unacked = self.stats.unacked.saturating_sub(1);
        self.collect_acked()
    }

    /// Deletes closed segments whose records are all acked.
    fn collect_acked(&mut self) -> Result<(), SpoolError> {
        let mut removed = false;
        while self.segments.len() > 1 || (self.active.is_none() && !self.segments.is_empty()) {
            let done = self
                .segments
                .front()
                .is_some_and(|s| s.records.iter().all(|r| self.is_acked(r.sequence)));
            // Never delete the segment being appended to.
            if !done || (self.segments.len() == 1 && self.active.is_some()) {
                break;
            }
            if !removed {
                // The state must say how far we got before the records that prove it go.
                self.write_state(true)?;
                removed = true;
            }
            if let Some(seg) = self.segments.pop_front() {
                fs::remove_file(&seg.path).map_err(io(&seg.path))?;
            }
        }
        Ok(())
    }

    /// Persists epoch and ack watermark (`sync`: fsync it too).
    fn write_state(&mut self, sync: bool) -> Result<(), SpoolError> {
        if self.state_written == self.acked && !sync {
            return Ok(());
        }
        let path = self.dir.join("state");
        let tmp = self.dir.join("state.tmp");
        let text = format!("epoch {}\nacked {}\n", self.epoch.hex(), self.acked);
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(text.as_bytes()).map_err(io(&tmp))?;
        if sync {
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        self.state_written = self.acked;
        Ok(())
    }

    /// Writes the ack watermark if it moved (cheap; call now and then, and at exit).
    pub fn checkpoint(&mut self) -> Result<(), SpoolError> {
        if self.state_written != self.acked {
            self.write_state(false)?;
        }
        Ok(())
    }

    /// Notes that the stream sent `sequence` (a batch the bound pushes out from now on
    /// until its ack is on the wire, not yet lost).
    pub fn mark_sent(&mut self, sequence: u64) {
        self.sent_upto = self.sent_upto.max(sequence);
    }

    /// The stream ended: batches pushed out while on the wire whose ack never came
    /// are lost now, and counted (one the collector stored just before the stream
    /// broke is counted too: an over-count of at most the in-flight window).
    pub fn stream_ended(&mut self) {
        self.sent_upto = 0;
        let lost = std::mem::take(&mut self.in_flight_dropped);
        if lost.is_empty() {
            return;
        }
        let n = lost.len() as u64;
        for losses in lost.values() {
            self.unreported.add(losses);
        }
        self.stats.dropped_batches += n;
        self.unreported.spool_dropped_batches += n;
        tracing::warn!(
            dropped = n,
            "stream ended before the collector acked batches the spool bound had pushed out: counted as dropped"
        );
    }

    /// The oldest unacked batch with a sequence above `after` (0: from the start).
    pub fn next_unacked(&self, after: u64) -> Result<Option<pb::Batch>, SpoolError> {
        for seg in &self.segments {
            if seg.records.last().is_none_or(|r| r.sequence <= after) {
                continue;
            }
            let start = seg.records.partition_point(|r| r.sequence <= after);
            let Some(r) = seg.records[start..]
                .iter()
                .find(|r| !self.is_acked(r.sequence))
            else {
                continue;
            };
            let file = File::open(&seg.path).map_err(io(&seg.path))?;
            let mut buf = vec![0u8; r.len as usize];
            file.read_exact_at(&mut buf, r.offset + HEADER as u64)
                .map_err(io(&seg.path))?;
            return pb::Batch::decode(buf.as_slice())
                .map(Some)
                .map_err(|source| SpoolError::Decode {
                    path: seg.path.clone(),
                    sequence: r.sequence,
                    source,
                });
        }
        Ok(None)
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.maybe_fsync(self.config.fsync != Fsync::Never);
        let _ = self.checkpoint();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: u64, seg: u64) -> SpoolConfig {
        SpoolConfig {
            max_bytes: max,
            segment_bytes: seg,
            ..Default::default()
        }
    }

    fn batch(n: usize) -> pb::Batch {
        pb::Batch {
            agent_id: "a".into(),
            slow_syscalls: vec![
                pb::SlowSyscall {
                    comm: "worker".into(),
                    latency_ns: 12_345_678,
                    ..Default::default()
                };
                n
            ],
            ..Default::default()
        }
    }

    fn all_unacked(s: &Spool) -> Vec<u64> {
        let mut out = Vec::new();
        let mut after = 0;
        while let Some(b) = s.next_unacked(after).unwrap() {
            out.push(b.sequence);
            after = b.sequence;
        }
        out
    }

    #[test]
    fn sequences_continue_across_reopen_and_acked_ones_are_not_resent() {
        let dir = tempfile::tempdir().unwrap();
        let epoch;
        {
            let mut s = Spool::open(dir.path(), config(1 << 20, 4096)).unwrap();
            epoch = s.epoch();
            for _ in 0..10 {
                s.append(&mut batch(3)).unwrap();
            }
            for q in 1..=4 {
                s.ack(epoch, q).unwrap();
            }
            s.ack(epoch, 7).unwrap();
        }
        let mut s = Spool::open(dir.path(), config(1 << 20, 4096)).unwrap();
        assert_eq!(s.epoch(), epoch, "the epoch survives a restart");
        // The out-of-order ack of 7 was not persisted: at-least-once, 7 is sent again.
        assert_eq!(all_unacked(&s), vec![5, 6, 7, 8, 9, 10]);
        let mut b = batch(1);
        assert_eq!(s.append(&mut b).unwrap(), 11);
        assert_eq!((b.spool_epoch(), b.sequence), (epoch, 11));
    }

    #[test]
    fn acked_segments_are_deleted_but_the_sequence_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(1 << 20, 4096)).unwrap();
        let e = s.epoch();
        for q in 1..=40 {
            s.append(&mut batch(5)).unwrap();
            s.ack(e, q).unwrap();
        }
        let segs = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count();
        assert_eq!(segs, 1, "only the active segment stays");
        drop(s);
        let mut s = Spool::open(dir.path(), config(1 << 20, 4096)).unwrap();
        assert_eq!(all_unacked(&s), Vec::<u64>::new());
        assert_eq!(s.append(&mut batch(1)).unwrap(), 41);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts_it_with_the_losses_it_carried() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(16384, 4096)).unwrap();
        let mut appended = 0;
        for _ in 0..100 {
            let mut b = batch(20);
            b.losses = Some(pb::Losses {
                slow_syscall_ringbuf_full: 1,
                ..Default::default()
            });
            s.append(&mut b).unwrap();
            appended += 1;
        }
        let st = s.stats();
        assert!(st.bytes <= 16384, "{st:?}");
        let left = all_unacked(&s);
        assert_eq!(left.len() as u64 + st.dropped_batches, appended, "{st:?}");
        assert!(st.dropped_batches > 0);
        assert_eq!(*left.last().unwrap(), 100, "the newest are kept");
        let l = s.take_losses();
        assert_eq!(l.spool_dropped_batches, st.dropped_batches);
        assert_eq!(
            l.slow_syscall_ringbuf_full, st.dropped_batches,
            "carried losses"
        );
        assert_eq!(s.take_losses(), pb::Losses::default(), "reported once");
    }

    #[test]
    fn a_batch_pushed_out_while_on_the_wire_is_lost_only_if_its_ack_never_comes() {
        // The race CI hit: the stream sent the oldest batches, the bound pushed them
        // out of the spool before their acks came, and they were stored anyway.
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), config(16384, 4096)).unwrap();
        let e = s.epoch();
        let mut sent = Vec::new();
        for _ in 0..4 {
            let mut b = batch(20);
            b.losses = Some(pb::Losses {
                slow_syscall_ringbuf_full: 1,
                ..Default::default()
            });
            let q = s.append(&mut b).unwrap();
            s.mark_sent(q);
            sent.push(q);
        }
        for _ in 0..100 {
            s.append(&mut batch(20)).unwrap();
        }
        let left = all_unacked(&s);
        assert!(
            sent.iter().all(|q| !left.contains(q)),
            "the sent ones were pushed out: {left:?}"
        );
        let never_sent = s.stats().dropped_batches;
        assert!(never_sent > 0);
        assert_eq!(
            left.len() as u64 + never_sent + sent.len() as u64,
            104,
            "every batch is kept, dropped, or on the wire"
        );
        // Two of the four arrive; the stream breaks before the others' acks.
        s.ack(e, sent[0]).unwrap();
        s.ack(e, sent[2]).unwrap();
        assert_eq!(s.stats().dropped_batches, never_sent, "not lost yet");
        s.stream_ended();
        assert_eq!(s.stats().dropped_batches, never_sent + 2);
        let l = s.take_losses();
        assert_eq!(l.spool_dropped_batches, never_sent + 2);
        assert_eq!(
            l.slow_syscall_ringbuf_full, 2,
            "only the lost batches' own losses are carried over (the delivered ones reported theirs)"
        );
        s.stream_ended();
        assert_eq!(s.stats().dropped_batches, never_sent + 2, "counted once");
    }

    #[test]
    fn damage_is_skipped_and_counted_and_the_rest_is_read() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), config(1 << 20, 1 << 20)).unwrap();
            for _ in 0..10 {
                s.append(&mut batch(2)).unwrap();
            }
        }
        let seg = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        let mut data = fs::read(&seg).unwrap();
        let len = data.len();
        let rec = len / 10;
        // Flip a byte inside record 3's payload, and tear the last record.
        data[3 * rec + HEADER + 2] ^= 0xff;
        data.truncate(len - 5);
        fs::write(&seg, &data).unwrap();
        let mut s = Spool::open(dir.path(), config(1 << 20, 1 << 20)).unwrap();
        assert_eq!(all_unacked(&s), vec![1, 2, 3, 5, 6, 7, 8, 9]);
        assert_eq!(s.stats().corrupt_records, 2);
        assert_eq!(s.take_losses().spool_corrupt_records, 2);
        let next = s.append(&mut batch(1)).unwrap();
        assert!(
            next > 10,
            "never reuses a sequence that may have been sent: {next}"
        );
    }

    #[test]
    fn a_damaged_or_inconsistent_state_is_set_aside_and_rebuilt() {
        for (name, state) in [
            ("empty", &b""[..]),
            ("garbage", &b"\xff\xfe\x00 not utf-8"[..]),
            ("truncated", &b"epoch 0123"[..]),
            (
                "acked at u64::MAX",
                &b"epoch 1\nacked 18446744073709551615\n"[..],
            ),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let epoch;
            {
                let mut s = Spool::open(dir.path(), config(1 << 20, 4096)).unwrap();
                epoch = s.epoch();
                for _ in 0..3 {
                    s.append(&mut batch(1)).unwrap();
                }
                s.ack(epoch, 1).unwrap();
            }
            let state = if name.starts_with("acked") {
                format!("epoch {}\nacked 18446744073709551615\n", epoch.hex()).into_bytes()
            } else {
                state.to_vec()
            };
            fs::write(dir.path().join("state"), &state).unwrap();
            let mut s = Spool::open(dir.path(), config(1 << 20, 4096)).unwrap();
            assert_eq!(s.stats().state_rebuilt, 1, "{name}");
            assert_eq!(s.epoch(), epoch, "{name}: the segments' epoch is kept");
            // Rebuilt with nothing acked: sent again (the collector takes resends).
            assert_eq!(all_unacked(&s), vec![1, 2, 3], "{name}");
            assert_eq!(s.append(&mut batch(1)).unwrap(), 4, "{name}: never wraps");
            let kept = fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("state.damaged-")
                })
                .count();
            assert_eq!(
                kept, 1,
                "{name}: the damaged state is kept for a postmortem"
            );
        }
    }

    #[test]
    fn epochs_are_random_and_files_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut sa = Spool::open(&a.path().join("spool"), config(1 << 20, 4096)).unwrap();
        let sb = Spool::open(b.path(), config(1 << 20, 4096)).unwrap();
        assert_ne!(sa.epoch(), sb.epoch());
        assert!(sa.epoch().high() != 0 && sa.epoch().low() != 0);
        sa.append(&mut batch(1)).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&a.path().join("spool")), 0o700);
        for e in fs::read_dir(a.path().join("spool")).unwrap() {
            let p = e.unwrap().path();
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }

    #[test]
    fn garbage_files_do_not_stop_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("1-00000000000000000001.seg"),
            b"not a spool at all",
        )
        .unwrap();
        fs::write(dir.path().join("state"), b"epoch 1\nacked nonsense\n").unwrap();
        let mut s = Spool::open(dir.path(), config(1 << 20, 4096)).unwrap();
        assert_eq!(s.stats().corrupt_records, 1);
        assert!(s.append(&mut batch(1)).unwrap() >= 1);
        assert_eq!(all_unacked(&s).len(), 1);
    }
}
