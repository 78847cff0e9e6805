//! The spool's files: records appended to segment files in `spool.dir`, read back in order, and
//! deleted a whole segment at a time once everything in it was shipped (or, with
//! `on_full: drop_oldest`, when room is needed).
//!
//! ```text
//! spool.dir/
//!   00000000000000000001.spool   records 1 … n, oldest segment first
//!   00000000000000004711.spool   the segment appended to (named by its first record)
//!   cursor                       the last record shipped with everything before it
//! ```
//! A record is a frame: the magic `m2sp`, the body's length (u32 LE), a CRC-32 of sequence
//! number and body (u32 LE), the sequence number (u64 LE), the body (`wire`). The CRC is what
//! tells a torn write (power loss in the middle of an append) or a damaged sector from a record:
//! a reader skips to the next place where a whole frame checks, so one bad record never hides
//! the good ones after it, and counts what it skipped. A torn tail of the segment being appended
//! to is cut off at open, so appends continue after the last good record.
//!
//! The writer appends outside the lock (`appender`, then `appended` once the data is synced), so
//! a reader planning its next read never waits for an fsync.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"m2sp";
const HEADER: usize = 4 + 4 + 4 + 8;
/// Larger than any MQTT packet (256 MiB): a length beyond it is damage, not a record.
const MAX_BODY: usize = 256 << 20;
/// What a reader takes from the file per read.
const CHUNK: usize = 256 << 10;
const SUFFIX: &str = "spool";
const CURSOR: &str = "cursor";

/// Appends one frame for `body` with sequence number `seq` to `out`.
pub fn frame(seq: u64, body: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    // `wire` bodies are far below MAX_BODY, which fits in u32.
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&checksum(seq, body).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(body);
}

fn checksum(seq: u64, body: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(body);
    crc.finalize()
}

/// One segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The first record's sequence number; also the file's name.
    pub first_seq: u64,
    /// The last record's; `first_seq - 1` while it holds none.
    pub last_seq: u64,
    /// Bytes of whole, synced records (a reader reads no further).
    pub bytes: u64,
}

impl Segment {
    pub fn records(&self) -> u64 {
        self.last_seq + 1 - self.first_seq
    }
}

/// What opening found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Records in the spool not yet shipped.
    pub records: u64,
    /// Bytes that were no record (damage, or a tail torn by a crash) and were skipped or cut.
    pub damaged_bytes: u64,
}

/// The spool's segments and where the next record goes.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    segment_bytes: u64,
    /// Oldest first; the last one is the one appended to.
    segments: VecDeque<Segment>,
    /// The last segment, open for appending, once something was appended in this run.
    append: Option<File>,
    next_seq: u64,
    /// The last record shipped with everything before it (the cursor).
    shipped_through: u64,
}

impl Log {
    /// Opens the spool in `dir` (creating it), recovering what a crash left: segments already
    /// shipped are deleted, a torn tail cut off, damage counted.
    pub fn open(dir: &Path, segment_bytes: u64) -> io::Result<(Log, Opened)> {
        fs::create_dir_all(dir)?;
        let shipped_through = read_cursor(dir)?;
        let mut firsts: Vec<u64> = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name
                .strip_suffix(&format!(".{SUFFIX}"))
                .and_then(|stem| stem.parse().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut opened = Opened::default();
        let mut segments = VecDeque::new();
        let mut last_seen = shipped_through;
        let count = firsts.len();
        for (i, first_seq) in firsts.into_iter().enumerate() {
            let path = segment_path(dir, first_seq);
            let scanned = scan(&path, first_seq)?;
            opened.damaged_bytes += scanned.damaged + scanned.trailing;
            if scanned.trailing > 0 && i + 1 == count {
                // A torn tail: the append a crash interrupted, never synced, so never acknowledged.
                OpenOptions::new()
                    .write(true)
                    .open(&path)?
                    .set_len(scanned.valid_end)?;
            }
            let segment = Segment {
                first_seq,
                last_seq: scanned.last_seq,
                bytes: scanned.valid_end,
            };
            last_seen = last_seen.max(segment.last_seq);
            if segment.records() == 0 || segment.last_seq <= shipped_through {
                fs::remove_file(&path)?;
                continue;
            }
            opened.records += segment.last_seq - shipped_through.max(first_seq - 1);
            segments.push_back(segment);
        }
        let log = Log {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments,
            append: None,
            next_seq: last_seen + 1,
            shipped_through,
        };
        Ok((log, opened))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn shipped_through(&self) -> u64 {
        self.shipped_through
    }

    /// Bytes in all segments.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Records in the spool not yet shipped (dropped ones are gone from it).
    pub fn records(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| {
                s.last_seq
                    .saturating_sub(self.shipped_through.max(s.first_seq - 1))
            })
            .sum()
    }

    #[cfg(test)]
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter()
    }

    /// The file and offset the next append of records from `first_seq` on goes to, starting a
    /// new segment when the last one is full. Write there, sync, then call `appended`.
    pub fn appender(&mut self, first_seq: u64) -> io::Result<(File, u64)> {
        let full = match self.segments.back() {
            None => true,
            Some(last) => last.bytes >= self.segment_bytes,
        };
        if full {
            let path = segment_path(&self.dir, first_seq);
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)?;
            // The new name must survive a power loss as much as what is written in it.
            File::open(&self.dir)?.sync_all()?;
            self.segments.push_back(Segment {
                first_seq,
                last_seq: first_seq - 1,
                bytes: 0,
            });
            self.append = Some(file);
        } else if self.append.is_none() {
            // The last segment of an earlier run, appended to again.
            let last = self.segments.back().expect("not full, so there is one");
            let path = segment_path(&self.dir, last.first_seq);
            self.append = Some(OpenOptions::new().read(true).write(true).open(path)?);
        }
        let file = self.append.as_ref().expect("opened above").try_clone()?;
        let at = self.segments.back().expect("one segment at least").bytes;
        Ok((file, at))
    }

    /// Records up to `last_seq`, `bytes` long, are in the last segment and synced.
    pub fn appended(&mut self, last_seq: u64, bytes: u64) {
        let last = self.segments.back_mut().expect("appender made one");
        last.last_seq = last_seq;
        last.bytes += bytes;
        self.next_seq = last_seq + 1;
    }

    /// Everything through `seq` was shipped: segments wholly shipped are deleted (never the one
    /// appended to). Returns the bytes freed.
    pub fn shipped(&mut self, seq: u64) -> io::Result<u64> {
        self.shipped_through = self.shipped_through.max(seq);
        let mut freed = 0;
        while self.segments.len() > 1 && self.segments[0].last_seq <= self.shipped_through {
            let segment = self.segments.pop_front().expect("len checked");
            fs::remove_file(segment_path(&self.dir, segment.first_seq))?;
            freed += segment.bytes;
        }
        Ok(freed)
    }

    /// Deletes the oldest segment, shipped or not, to make room; the next append starts a new
    /// segment if it was the one appended to. `None` when the spool is empty.
    pub fn drop_oldest(&mut self) -> io::Result<Option<Segment>> {
        let Some(segment) = self.segments.pop_front() else {
            return Ok(None);
        };
        if self.segments.is_empty() {
            self.append = None;
        }
        fs::remove_file(segment_path(&self.dir, segment.first_seq))?;
        Ok(Some(segment))
    }

    /// Where to read after `position`: the segment holding it (or the next one, when it was
    /// read to its end or deleted meanwhile) and how far it is readable.
    pub fn next_read(&self, position: Position) -> Option<(Position, u64)> {
        let mut segments = self.segments.iter();
        for segment in segments.by_ref() {
            if segment.first_seq == position.segment && position.offset < segment.bytes {
                return Some((position, segment.bytes));
            }
            if segment.first_seq > position.segment {
                let start = Position {
                    segment: segment.first_seq,
                    offset: 0,
                };
                return (segment.bytes > 0).then_some((start, segment.bytes));
            }
        }
        None
    }

    pub fn segment_path(&self, first_seq: u64) -> PathBuf {
        segment_path(&self.dir, first_seq)
    }
}

/// A place in the spool: a segment (by its first record) and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.{SUFFIX}"))
}

/// Saves `seq` as the last record shipped with everything before it. Not fsynced: a cursor a
/// power loss takes back only ships records again, which their ids make harmless.
pub fn write_cursor(dir: &Path, seq: u64) -> io::Result<()> {
    let temporary = dir.join(format!("{CURSOR}.new"));
    let mut file = File::create(&temporary)?;
    writeln!(file, "{seq}")?;
    drop(file);
    fs::rename(temporary, dir.join(CURSOR))
}

fn read_cursor(dir: &Path) -> io::Result<u64> {
    match fs::read_to_string(dir.join(CURSOR)) {
        Ok(text) => text.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{:?} does not hold a record number", dir.join(CURSOR)),
            )
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error),
    }
}

/// What a whole segment holds.
struct Scanned {
    last_seq: u64,
    valid_end: u64,
    damaged: u64,
    trailing: u64,
}

fn scan(path: &Path, first_seq: u64) -> io::Result<Scanned> {
    let mut reader = SegmentReader::open(path)?;
    let limit = reader.len()?;
    let mut scanned = Scanned {
        last_seq: first_seq - 1,
        valid_end: 0,
        damaged: 0,
        trailing: 0,
    };
    let mut offset = 0;
    loop {
        match reader.step(offset, limit)? {
            Step::Frame { seq, next, .. } => {
                scanned.last_seq = scanned.last_seq.max(seq);
                scanned.valid_end = next;
                offset = next;
            }
            Step::Damaged { to } => {
                scanned.damaged += to - offset;
                offset = to;
            }
            Step::End { trailing } => {
                scanned.trailing = trailing;
                return Ok(scanned);
            }
        }
    }
}

/// One step through a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A whole record; its body is `SegmentReader::body(body)`; the next frame starts at `next`.
    Frame {
        seq: u64,
        body: Range<usize>,
        next: u64,
    },
    /// No record starts here; the next one that checks starts at `to`.
    Damaged { to: u64 },
    /// Nothing more up to the limit; `trailing` bytes there were no whole record.
    End { trailing: u64 },
}

/// Reads frames from a segment file through a window of `CHUNK` bytes.
pub struct SegmentReader {
    file: File,
    window_start: u64,
    window: Vec<u8>,
}

impl SegmentReader {
    pub fn open(path: &Path) -> io::Result<SegmentReader> {
        Ok(SegmentReader {
            file: File::open(path)?,
            window_start: 0,
            window: Vec::new(),
        })
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// The record at `offset`, or where the next one is, reading no further than `limit`.
    pub fn step(&mut self, offset: u64, limit: u64) -> io::Result<Step> {
        if offset >= limit {
            return Ok(Step::End { trailing: 0 });
        }
        if let Some((seq, body, next)) = self.frame_at(offset, limit)? {
            return Ok(Step::Frame { seq, body, next });
        }
        let mut candidate = offset + 1;
        while candidate + HEADER as u64 <= limit {
            if self
                .bytes(candidate, MAGIC.len(), limit)?
                .is_some_and(|b| b == MAGIC)
                && self.frame_at(candidate, limit)?.is_some()
            {
                return Ok(Step::Damaged { to: candidate });
            }
            candidate += 1;
        }
        Ok(Step::End {
            trailing: limit - offset,
        })
    }

    /// The body of the frame `step` returned last.
    pub fn body(&self, range: Range<usize>) -> &[u8] {
        &self.window[range]
    }

    fn frame_at(
        &mut self,
        offset: u64,
        limit: u64,
    ) -> io::Result<Option<(u64, Range<usize>, u64)>> {
        let Some(header) = self.bytes(offset, HEADER, limit)? else {
            return Ok(None);
        };
        if &header[..4] != MAGIC {
            return Ok(None);
        }
        let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let seq = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
        if len > MAX_BODY {
            return Ok(None);
        }
        // Header and body in the window together, so the body's range stays valid.
        if self.bytes(offset, HEADER + len, limit)?.is_none() {
            return Ok(None);
        }
        let start = (offset - self.window_start) as usize + HEADER;
        let body = start..start + len;
        if checksum(seq, &self.window[body.clone()]) != crc {
            return Ok(None);
        }
        Ok(Some((seq, body, offset + (HEADER + len) as u64)))
    }

    /// `len` bytes at `offset`, if they lie before `limit`.
    fn bytes(&mut self, offset: u64, len: usize, limit: u64) -> io::Result<Option<&[u8]>> {
        let end = offset + len as u64;
        if end > limit {
            return Ok(None);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if offset < self.window_start || end > window_end {
            let want = len.max(CHUNK).min((limit - offset) as usize);
            self.window.resize(want, 0);
            self.file.read_exact_at(&mut self.window, offset)?;
            self.window_start = offset;
        }
        let start = (offset - self.window_start) as usize;
        Ok(Some(&self.window[start..start + len]))
    }
}

#[cfg(test)]
mod tests;
