//! The file behind `kept`: an append-only journal of keep and forget records, replayed into a
//! map at start and rewritten with only what is still kept once it is mostly dead records.
//!
//! Why a journal of our own and not a keyspace of the state database (fjall) as before: every
//! QoS 1 message is one keep and one forget a few milliseconds apart, and an LSM tree takes
//! each of them through its memtable, a flush to a table file and a compaction, for entries
//! that are all dead long before any flush. That was an eighth of mqtt2es's CPU per reading
//! upstream at QoS 1 and a third of its peak memory (issue 9). Here a record costs its bytes
//! in one `write` per commit, and the rewrite costs what is live (a window of messages per
//! connection, a few kilobytes).
//!
//! A record is `[body length: u32 LE][CRC-32 of the body: u32 LE][body]`, the body being
//! `[kind: u8][owner length: u16 LE][owner][packet id: u16 BE]` and, for a keep, the 24-byte
//! value (reading id, receive time: see `super::value`). Kinds: 1 keep, 0 forget, 2 forget
//! everything of the owner. Replay stops at the first record that is cut short or fails its
//! CRC (a write torn by a power loss: only the last can be), and the file is cut back there so
//! that what is appended next is read again after the next restart. (The spool's frames,
//! `spool::log`, carry a magic and a sequence number so that a reader can skip a damaged record
//! in the middle and go on; here nothing after a damaged record could be trusted to be in order,
//! so replay simply stops.)
//!
//! The rewrite goes to a new file that is synced and renamed over the journal, so a crash
//! during it leaves either the old journal or the new one, never a mix.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// A keep record's value: reading id (16 bytes) and receive time in nanoseconds (8).
pub type Value = [u8; 24];

/// Owner → packet id → value: what is kept.
pub type Live = HashMap<String, HashMap<u16, Value>>;

const KEEP: u8 = 1;
const FORGET: u8 = 0;
const FORGET_ALL: u8 = 2;
const HEADER: usize = 8;

/// Rewrite once the file is past this size and mostly dead records.
const REWRITE_AT: u64 = 4 << 20;

/// Appends `owner`'s keep (value `Some`) or forget of `pkid` to `out`.
pub fn encode(out: &mut Vec<u8>, owner: &str, pkid: u16, value: Option<&Value>) {
    let kind = if value.is_some() { KEEP } else { FORGET };
    record(out, kind, owner, pkid, value);
}

/// Appends a record that forgets everything of `owner` to `out`.
pub fn encode_forget_all(out: &mut Vec<u8>, owner: &str) {
    record(out, FORGET_ALL, owner, 0, None);
}

fn record(out: &mut Vec<u8>, kind: u8, owner: &str, pkid: u16, value: Option<&Value>) {
    // An owner (`upstream/` and a client id of up to 65,535 bytes) longer than the field is cut
    // to fit, at a character boundary so that replay reads it back as text (a cut inside a
    // character would stop the replay there); the same cut every time names one owner.
    let mut end = owner.len().min(usize::from(u16::MAX));
    while !owner.is_char_boundary(end) {
        end -= 1;
    }
    let owner = &owner.as_bytes()[..end];
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(kind);
    out.extend_from_slice(&(owner.len() as u16).to_le_bytes());
    out.extend_from_slice(owner);
    out.extend_from_slice(&pkid.to_be_bytes());
    if let Some(value) = value {
        out.extend_from_slice(value);
    }
    let body = &out[start + HEADER..];
    let (length, sum) = (
        (body.len() as u32).to_le_bytes(),
        crc32fast::hash(body).to_le_bytes(),
    );
    out[start..start + 4].copy_from_slice(&length);
    out[start + 4..start + HEADER].copy_from_slice(&sum);
}

/// Applies the whole records in `bytes` to `live`, in order; returns how many bytes they span
/// (less than `bytes.len()` when the last is cut short or damaged).
pub fn apply(live: &mut Live, bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some((body, next)) = next_record(bytes, at) {
        let Some((kind, owner, pkid, value)) = parse(body) else {
            break;
        };
        match (kind, value) {
            (KEEP, Some(value)) => {
                // Looked up first: a new owner's name is allocated once, not per record.
                match live.get_mut(owner) {
                    Some(of) => of.insert(pkid, value),
                    None => live
                        .entry(owner.to_owned())
                        .or_default()
                        .insert(pkid, value),
                };
            }
            (FORGET, None) => {
                if let Some(of) = live.get_mut(owner) {
                    of.remove(&pkid);
                    if of.is_empty() {
                        live.remove(owner);
                    }
                }
            }
            (FORGET_ALL, None) => {
                live.remove(owner);
            }
            _ => break,
        }
        at = next;
    }
    at
}

fn next_record(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(at..at + HEADER)?;
    let length = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(header[4..].try_into().ok()?);
    let body = bytes.get(at + HEADER..at + HEADER + length)?;
    (crc32fast::hash(body) == sum).then_some((body, at + HEADER + length))
}

fn parse(body: &[u8]) -> Option<(u8, &str, u16, Option<Value>)> {
    let (&kind, rest) = body.split_first()?;
    let owner_len = usize::from(u16::from_le_bytes(rest.get(..2)?.try_into().ok()?));
    let owner = std::str::from_utf8(rest.get(2..2 + owner_len)?).ok()?;
    let rest = &rest[2 + owner_len..];
    let pkid = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
    let value = match &rest[2..] {
        [] => None,
        value => Some(value.try_into().ok()?),
    };
    Some((kind, owner, pkid, value))
}

/// The journal file and the map it describes.
pub struct Journal {
    path: PathBuf,
    file: File,
    /// Bytes in the file.
    written: u64,
    pub live: Live,
}

impl Journal {
    /// Opens (or creates) the journal at `path` and replays it, cutting off a damaged tail.
    pub fn open(path: &Path) -> io::Result<Journal> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut live = Live::new();
        let good = apply(&mut live, &bytes);
        if good < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - good,
                "the end of the kept journal is damaged (a write cut short); it is cut off there"
            );
            file.set_len(good as u64)?;
        }
        Ok(Journal {
            path: path.to_owned(),
            file,
            written: good as u64,
            live,
        })
    }

    /// Appends `records` (from [`encode`]) in one write, applies them, and rewrites the file
    /// when it has grown past [`REWRITE_AT`] and is mostly dead records.
    pub fn append(&mut self, records: &[u8]) -> io::Result<()> {
        self.file.write_all(records)?;
        self.written += records.len() as u64;
        apply(&mut self.live, records);
        if self.written > REWRITE_AT && self.written > 8 * self.live_bytes() {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Writes what the OS holds of the journal to the disk.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn live_bytes(&self) -> u64 {
        let per_owner = |(owner, of): (&String, &HashMap<u16, Value>)| {
            (of.len() * (HEADER + 1 + 2 + owner.len() + 2 + 24)) as u64
        };
        self.live.iter().map(per_owner).sum()
    }

    /// The live entries as a fresh journal, synced, then renamed over this one.
    fn rewrite(&mut self) -> io::Result<()> {
        let mut records = Vec::with_capacity(self.live_bytes() as usize);
        for (owner, of) in &self.live {
            for (&pkid, value) in of {
                encode(&mut records, owner, pkid, Some(value));
            }
        }
        let fresh_path = self.path.with_extension("rewrite");
        let mut fresh = File::create(&fresh_path)?;
        fresh.write_all(&records)?;
        fresh.sync_data()?;
        std::fs::rename(&fresh_path, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.written = records.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(n: u8) -> Value {
        [n; 24]
    }

    #[test]
    fn records_replay_into_what_is_kept() {
        let mut bytes = Vec::new();
        encode(&mut bytes, "pi-1", 1, Some(&value(1)));
        encode(&mut bytes, "pi-1", 2, Some(&value(2)));
        encode(&mut bytes, "pi-2", 1, Some(&value(3)));
        encode(&mut bytes, "pi-1", 1, None);
        encode(&mut bytes, "pi-3", 9, Some(&value(4)));
        encode_forget_all(&mut bytes, "pi-3");
        let mut live = Live::new();
        assert_eq!(apply(&mut live, &bytes), bytes.len());
        assert_eq!(
            live,
            Live::from([
                ("pi-1".to_owned(), HashMap::from([(2, value(2))])),
                ("pi-2".to_owned(), HashMap::from([(1, value(3))])),
            ])
        );
    }

    #[test]
    fn an_owner_longer_than_the_field_is_cut_at_a_character_and_read_back() {
        // 10 bytes, then two-byte characters: byte 65,535 falls inside one.
        let long = format!("upstream/x{}", "ü".repeat(40_000));
        let mut bytes = Vec::new();
        encode(&mut bytes, &long, 1, Some(&value(1)));
        encode(&mut bytes, "pi-1", 2, Some(&value(2)));
        let mut live = Live::new();
        assert_eq!(apply(&mut live, &bytes), bytes.len(), "both records replay");
        assert_eq!(live.len(), 2);
        assert!(
            live.keys()
                .any(|owner| long.starts_with(owner.as_str()) && owner.len() <= 65_535)
        );
    }

    #[test]
    fn replay_stops_at_a_record_cut_short_or_damaged() {
        let mut bytes = Vec::new();
        encode(&mut bytes, "pi-1", 1, Some(&value(1)));
        let first = bytes.len();
        encode(&mut bytes, "pi-1", 2, Some(&value(2)));
        for cut in first..bytes.len() {
            let mut live = Live::new();
            assert_eq!(apply(&mut live, &bytes[..cut]), first, "cut at {cut}");
            assert_eq!(live["pi-1"].len(), 1);
        }
        let mut damaged = bytes.clone();
        *damaged.last_mut().expect("bytes") ^= 1;
        assert_eq!(apply(&mut Live::new(), &damaged), first);
    }

    #[test]
    fn a_damaged_tail_is_cut_off_so_what_is_appended_next_is_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kept.journal");
        let mut bytes = Vec::new();
        encode(&mut bytes, "pi-1", 1, Some(&value(1)));
        encode(&mut bytes, "pi-1", 2, Some(&value(2)));
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        let mut journal = Journal::open(&path).expect("open");
        assert_eq!(journal.live["pi-1"].len(), 1);
        let mut more = Vec::new();
        encode(&mut more, "pi-1", 3, Some(&value(3)));
        journal.append(&more).expect("append");
        drop(journal);
        let journal = Journal::open(&path).expect("reopen");
        assert_eq!(
            journal.live["pi-1"],
            HashMap::from([(1, value(1)), (3, value(3))])
        );
    }

    #[test]
    fn a_journal_of_mostly_forgotten_records_is_rewritten_with_what_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kept.journal");
        let mut journal = Journal::open(&path).expect("open");
        let mut records = Vec::new();
        encode(&mut records, "pi-1", 7, Some(&value(7)));
        journal.append(&records).expect("append");
        // Keep and forget, as every acknowledged message does, until the journal shrinks.
        let (mut n, mut peak) = (0u32, 0);
        loop {
            records.clear();
            for _ in 0..1000 {
                let pkid = (n % 60_000) as u16 + 100;
                encode(&mut records, "upstream/bench", pkid, Some(&value(1)));
                encode(&mut records, "upstream/bench", pkid, None);
                n += 1;
            }
            journal.append(&records).expect("append");
            if journal.written < peak {
                break;
            }
            peak = journal.written;
            assert!(peak <= REWRITE_AT + records.len() as u64, "no rewrite");
        }
        let size = std::fs::metadata(&path).expect("meta").len();
        assert!(size < 1024, "rewritten to what is live: {size} bytes");
        records.clear();
        encode(&mut records, "pi-1", 8, Some(&value(8)));
        journal.append(&records).expect("append after the rewrite");
        drop(journal);
        let journal = Journal::open(&path).expect("reopen");
        assert_eq!(
            journal.live,
            Live::from([(
                "pi-1".to_owned(),
                HashMap::from([(7, value(7)), (8, value(8))])
            )])
        );
    }
}
