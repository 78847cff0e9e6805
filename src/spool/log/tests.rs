//! The spool's files in a temporary directory: order across segments and reopens, the cursor,
//! torn tails and damaged records, and dropping the oldest segment.

use std::fs;

use super::*;

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// Appends records `bodies` the way the writer does: frames, write, sync, `appended`.
fn append(log: &mut Log, bodies: &[&[u8]]) {
    let first = log.next_seq();
    let mut frames = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        frame(first + i as u64, body, &mut frames);
    }
    let (file, at) = log.appender(first).expect("appender");
    file.write_all_at(&frames, at).expect("write");
    file.sync_data().expect("sync");
    log.appended(first + bodies.len() as u64 - 1, frames.len() as u64);
}

/// Every record in the spool after `shipped_through`, in order, as (seq, body).
fn read_all(log: &Log) -> Vec<(u64, Vec<u8>)> {
    let mut found = Vec::new();
    let mut position = Position::default();
    while let Some((start, limit)) = log.next_read(position) {
        let mut reader = SegmentReader::open(&log.segment_path(start.segment)).expect("open");
        let mut offset = start.offset;
        loop {
            match reader.step(offset, limit).expect("step") {
                Step::Frame { seq, body, next } => {
                    if seq > log.shipped_through() {
                        found.push((seq, reader.body(body).to_vec()));
                    }
                    offset = next;
                }
                Step::Damaged { to } => offset = to,
                Step::End { .. } => break,
            }
        }
        position = Position {
            segment: start.segment,
            offset: limit,
        };
    }
    found
}

#[test]
fn records_come_back_in_order_across_segments_and_a_reopen() {
    let dir = temp_dir();
    let (mut log, opened) = Log::open(dir.path(), 64).expect("open");
    assert_eq!(opened, Opened::default());
    for i in 0..10u8 {
        append(&mut log, &[&[i; 20], &[i + 100; 3]]);
    }
    assert!(log.segments().count() > 1, "small segments roll");
    let written = read_all(&log);
    assert_eq!(written.len(), 20);
    assert!(written.windows(2).all(|w| w[0].0 + 1 == w[1].0));

    let (log, opened) = Log::open(dir.path(), 64).expect("reopen");
    assert_eq!(opened.records, 20);
    assert_eq!(opened.damaged_bytes, 0);
    assert_eq!(read_all(&log), written);
    assert_eq!(log.next_seq(), 21);
}

#[test]
fn shipped_segments_are_deleted_and_the_cursor_survives_a_reopen() {
    let dir = temp_dir();
    let (mut log, _) = Log::open(dir.path(), 64).expect("open");
    for i in 0..10u8 {
        append(&mut log, &[&[i; 40]]);
    }
    let before = log.segments().count();
    let freed = log.shipped(6).expect("shipped");
    assert!(freed > 0);
    assert!(log.segments().count() < before);
    write_cursor(dir.path(), 6).expect("cursor");

    let (log, opened) = Log::open(dir.path(), 64).expect("reopen");
    assert_eq!(opened.records, 4);
    let seqs: Vec<u64> = read_all(&log).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, [7, 8, 9, 10]);
    assert_eq!(log.next_seq(), 11);
}

#[test]
fn a_spool_shipped_to_the_end_numbers_on_after_a_reopen() {
    let dir = temp_dir();
    let (mut log, _) = Log::open(dir.path(), 1 << 20).expect("open");
    append(&mut log, &[b"a", b"b"]);
    log.shipped(2).expect("shipped");
    write_cursor(dir.path(), 2).expect("cursor");
    let (log, opened) = Log::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(opened.records, 0);
    assert_eq!(log.next_seq(), 3, "numbers are never reused");
    assert_eq!(log.segments().count(), 0, "the shipped segment is gone");
}

#[test]
fn a_torn_tail_is_cut_off_at_open_and_counted_and_appends_go_on_after_the_last_good_record() {
    let dir = temp_dir();
    let (mut log, _) = Log::open(dir.path(), 1 << 20).expect("open");
    append(&mut log, &[b"one", b"two"]);
    let path = log.segment_path(1);
    let good = fs::metadata(&path).expect("metadata").len();
    // Half of a third record, as a power loss in the middle of an append leaves it.
    let mut torn = Vec::new();
    frame(3, b"three, never synced", &mut torn);
    let mut file = OpenOptions::new().append(true).open(&path).expect("open");
    file.write_all(&torn[..torn.len() / 2]).expect("write");
    drop(file);

    let (mut log, opened) = Log::open(dir.path(), 1 << 20).expect("reopen");
    assert_eq!(opened.records, 2);
    assert_eq!(opened.damaged_bytes, (torn.len() / 2) as u64);
    assert_eq!(fs::metadata(&path).expect("metadata").len(), good);
    append(&mut log, &[b"three"]);
    let bodies: Vec<Vec<u8>> = read_all(&log).into_iter().map(|(_, b)| b).collect();
    assert_eq!(
        bodies,
        [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
    );
}

#[test]
fn a_damaged_record_in_the_middle_is_skipped_and_counted_and_every_later_record_kept() {
    let dir = temp_dir();
    let (mut log, _) = Log::open(dir.path(), 1 << 20).expect("open");
    append(
        &mut log,
        &[b"first", b"second, to be damaged", b"third", b"fourth"],
    );
    let path = log.segment_path(1);
    let mut bytes = fs::read(&path).expect("read");
    let second = bytes
        .windows(6)
        .position(|w| w == b"second")
        .expect("the second body");
    bytes[second + 2] ^= 0xff;
    fs::write(&path, &bytes).expect("write");

    let (log, opened) = Log::open(dir.path(), 1 << 20).expect("reopen");
    let second_frame = (HEADER + b"second, to be damaged".len()) as u64;
    assert_eq!(opened.damaged_bytes, second_frame);
    let bodies: Vec<Vec<u8>> = read_all(&log).into_iter().map(|(_, b)| b).collect();
    assert_eq!(
        bodies,
        [b"first".to_vec(), b"third".to_vec(), b"fourth".to_vec()]
    );
}

#[test]
fn dropping_the_oldest_frees_its_segment_and_the_next_append_starts_a_new_one() {
    let dir = temp_dir();
    let (mut log, _) = Log::open(dir.path(), 1 << 20).expect("open");
    append(&mut log, &[b"a", b"b", b"c"]);
    let dropped = log.drop_oldest().expect("drop").expect("a segment");
    assert_eq!((dropped.first_seq, dropped.records()), (1, 3));
    assert_eq!((log.bytes(), log.records()), (0, 0));
    append(&mut log, &[b"d"]);
    let seqs: Vec<u64> = read_all(&log).into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, [4]);
    assert!(!log.segment_path(1).exists());
}

#[test]
fn a_cursor_that_is_not_a_number_is_an_error_that_names_the_file() {
    let dir = temp_dir();
    fs::write(dir.path().join("cursor"), "seven\n").expect("write");
    let error = Log::open(dir.path(), 64).expect_err("refused");
    assert!(error.to_string().contains("cursor"), "{error}");
}
