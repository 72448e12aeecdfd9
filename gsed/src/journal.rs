//! The health journal: an append-only file of events that survives power cuts.
//!
//! Each record is one line, `CRC32 JSON\n`, written with a single `write` and synced
//! before the call returns. A record is valid when its line is complete and its CRC
//! matches. On open, invalid lines are skipped (a torn last record is the usual case);
//! every append first cuts whatever follows the last complete line (a torn tail, or
//! the fragment of an append that failed on a full disk), so a record is never glued
//! to garbage, and a failed append leaves the file as it was. Earlier records are
//! never rewritten, and merely opening the file changes nothing. Early boot reads the same file to judge the last boot.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The daemon saw this boot for the first time.
    BootStarted,
    /// Every required check passed, or an administrator marked the boot good.
    Healthy { reason: String },
    /// A required check failed, the deadline passed, or an administrator marked it bad.
    Red { reason: String, failures: Vec<String> },
    /// The init system stopped the daemon for a shutdown or reboot.
    CleanShutdown,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::BootStarted => "boot-started",
            Event::Healthy { .. } => "healthy",
            Event::Red { .. } => "red",
            Event::CleanShutdown => "clean-shutdown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub boot_id: String,
    pub slot: String,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the health journal {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot write to the health journal {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// What opening found, for the log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Lines that were complete but failed their CRC or did not parse.
    pub skipped: usize,
    /// Bytes of an unfinished last line that were cut off.
    pub torn_bytes: u64,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    records: Vec<Record>,
    /// Length of the intact prefix: every append starts there, so a torn or
    /// failed write can never glue itself to the next record.
    len: u64,
}

impl Journal {
    /// Opens (creating if needed) and reads the journal, repairing a torn tail.
    pub fn open(path: &Path) -> Result<(Journal, Recovery), JournalError> {
        let open_err = |source| JournalError::Open { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(open_err)?;
        }
        let file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(open_err)?;
        let data = fs::read(path).map_err(open_err)?;
        let (records, good_len, skipped) = parse(&data);
        let torn_bytes = data.len() as u64 - good_len;
        // A torn tail is cut by the first append, not here: a gsed that only reads
        // (one that finds the bus name taken) leaves the file as it found it.
        // Complete bad lines stay for forensics.
        Ok((Journal { path: path.to_owned(), file, records, len: good_len }, Recovery { skipped, torn_bytes }))
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and syncs it to disk before returning.
    pub fn append(&mut self, boot_id: &str, slot: &str, event: Event) -> Result<&Record, JournalError> {
        let record = Record { time: now(), boot_id: boot_id.to_owned(), slot: slot.to_owned(), event };
        let line = encode(&record);
        let write_err = |source| JournalError::Write { path: self.path.clone(), source };
        let written = (|| {
            // Whatever follows the intact prefix (a torn tail, a failed append) goes.
            if self.file.metadata()?.len() != self.len {
                self.file.set_len(self.len)?;
            }
            self.file.write_all(line.as_bytes())?;
            self.file.sync_data()
        })();
        if let Err(e) = written {
            // Leave the file as it was (a full disk still lets a file shrink); if
            // even that fails, the next append cuts it first.
            let _ = self.file.set_len(self.len).and_then(|()| self.file.sync_data());
            return Err(write_err(e));
        }
        self.len += line.len() as u64;
        self.records.push(record);
        Ok(self.records.last().expect("just pushed"))
    }
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn encode(record: &Record) -> String {
    let json = serde_json::to_string(record).expect("a record always serialises");
    format!("{:08x} {json}\n", crc32fast::hash(json.as_bytes()))
}

/// Returns the valid records, the length of the prefix that ends with the last complete
/// line, and how many complete lines were invalid.
pub fn parse(data: &[u8]) -> (Vec<Record>, u64, usize) {
    let mut records = Vec::new();
    let mut skipped = 0;
    let mut good_len = 0;
    let mut start = 0;
    while let Some(nl) = data[start..].iter().position(|&b| b == b'\n') {
        let line = &data[start..start + nl];
        start += nl + 1;
        good_len = start as u64;
        match decode(line) {
            Some(r) => records.push(r),
            None if line.is_empty() => {}
            None => skipped += 1,
        }
    }
    (records, good_len, skipped)
}

fn decode(line: &[u8]) -> Option<Record> {
    let line = std::str::from_utf8(line).ok()?;
    let (crc, json) = line.split_once(' ')?;
    let crc = u32::from_str_radix(crc, 16).ok()?;
    (crc32fast::hash(json.as_bytes()) == crc).then_some(())?;
    serde_json::from_str(json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_with(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gse/health.journal");
        let (mut j, _) = Journal::open(&path).unwrap();
        for i in 0..n {
            j.append(&format!("boot{i}"), "a", Event::BootStarted).unwrap();
        }
        (dir, path)
    }

    #[test]
    fn records_survive_reopen() {
        let (_d, path) = journal_with(3);
        let (j, rec) = Journal::open(&path).unwrap();
        assert_eq!(j.records().len(), 3);
        assert_eq!(j.records()[2].boot_id, "boot2");
        assert_eq!(rec, Recovery::default());
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let (_d, path) = journal_with(2);
        let full = fs::read(&path).unwrap();
        // A record cut in the middle, as a power cut during write leaves it.
        let mut torn = full.clone();
        torn.extend_from_slice(&full[..full.len() / 3]);
        fs::write(&path, &torn).unwrap();

        let (mut j, rec) = Journal::open(&path).unwrap();
        assert_eq!(j.records().len(), 2);
        assert_eq!(rec.torn_bytes, (full.len() / 3) as u64);
        j.append("boot9", "b", Event::CleanShutdown).unwrap();
        drop(j);
        let (j, rec) = Journal::open(&path).unwrap();
        assert_eq!(j.records().len(), 3);
        assert_eq!(j.records()[2].event, Event::CleanShutdown);
        assert_eq!(rec, Recovery::default());
    }

    #[test]
    fn opening_changes_nothing_and_a_fragment_never_eats_the_next_record() {
        let (_d, path) = journal_with(1);
        let mut data = fs::read(&path).unwrap();
        data.extend_from_slice(b"0badf00d {\"time\":1,\"boot_id\":\"x");
        fs::write(&path, &data).unwrap();
        let (mut j, rec) = Journal::open(&path).unwrap();
        assert!(rec.torn_bytes > 0);
        assert_eq!(fs::read(&path).unwrap(), data, "a reader leaves the file alone");
        // What a write that failed half-way (ENOSPC) leaves behind.
        fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"1234abcd {\"half").unwrap();
        j.append("boot1", "a", Event::CleanShutdown).unwrap();
        let (j, _) = Journal::open(&path).unwrap();
        assert_eq!(j.records().len(), 2);
        assert_eq!(j.records()[1].event, Event::CleanShutdown, "the clean shutdown is kept whole");
    }

    #[test]
    fn garbage_lines_are_skipped_not_fatal() {
        let (_d, path) = journal_with(1);
        let mut data = fs::read(&path).unwrap();
        data.extend_from_slice(b"deadbeef {\"not\":\"a record\"}\n\x00\xff\xfe garbage\n");
        // A valid-looking line with one flipped byte fails its CRC.
        let mut flipped = fs::read(&path).unwrap();
        let i = flipped.len() - 5;
        flipped[i] ^= 0x01;
        data.extend_from_slice(&flipped);
        fs::write(&path, &data).unwrap();
        let (mut j, rec) = Journal::open(&path).unwrap();
        assert_eq!(j.records().len(), 1);
        assert_eq!(rec.skipped, 3);
        j.append("boot1", "a", Event::BootStarted).unwrap();
        assert_eq!(Journal::open(&path).unwrap().0.records().len(), 2);
    }
}
