//! Container log files in the CRI format that kubelet (`kubectl logs`) and crictl read.
//!
//! Every entry is one line: `<RFC3339Nano UTC timestamp> <stdout|stderr> <F|P> <content>\n`.
//! `F` marks the end of a line the container wrote, `P` a piece of a line too long to keep
//! (kubelet joins consecutive `P` entries with the next `F`).
//!
//! The writer is plain blocking code for the single-threaded process that copies a container's
//! output; it never fails the caller: a log that cannot be written is dropped and counted, since
//! blocking or killing the container over its log would be worse.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest content of one entry; longer lines are split into `P` entries (containerd's default
/// `max_container_log_line_size`).
pub const MAX_LINE: usize = 16 * 1024;

/// Which of the container's output streams data came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The name written in the log's stream field.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Writes one container's log file, buffering each stream's unterminated line separately so
/// that stdout and stderr never mix within an entry.
pub struct LogWriter {
    /// `None` for a disabled writer: output is still split into entries and then discarded.
    path: Option<PathBuf>,
    file: Option<File>,
    /// Unterminated bytes per stream (index by `Stream::index`); never longer than `MAX_LINE`.
    pending: [Vec<u8>; 2],
    /// Reused to build each entry so that it goes out in one write(2).
    entry: Vec<u8>,
    write_errors: u64,
}

impl LogWriter {
    /// Opens (creating if needed) the log file at `path` for appending; its directory must exist.
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        let file = open_log(path)?;
        Ok(LogWriter {
            path: Some(path.to_path_buf()),
            file: Some(file),
            ..LogWriter::disabled()
        })
    }

    /// A writer without a file, for containers whose log path is empty: the output is consumed
    /// (so the container never blocks on a full pipe) and thrown away.
    pub fn disabled() -> LogWriter {
        LogWriter {
            path: None,
            file: None,
            pending: [Vec::new(), Vec::new()],
            entry: Vec::new(),
            write_errors: 0,
        }
    }

    /// How many entries could not be written (fully) so far.
    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }

    /// Bytes of `stream` waiting for their newline.
    pub fn pending_len(&self, stream: Stream) -> usize {
        self.pending[stream.index()].len()
    }

    /// Takes `data` read from `stream`: each complete line becomes an `F` entry (content without
    /// its `\n`; a `\r` before it is kept, as containerd does), and an unterminated remainder
    /// longer than `MAX_LINE` goes out in `MAX_LINE`-sized `P` entries.
    pub fn write(&mut self, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        // One timestamp per read: the moment the data reached us, shared by all its entries.
        let ts = format_timestamp(SystemTime::now());
        // Taken out so that entries can be written (`&mut self`) while slicing the buffer.
        let mut buf = std::mem::take(&mut self.pending[stream.index()]);
        buf.extend_from_slice(data);

        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
            let mut line = &buf[start..start + nl];
            while line.len() > MAX_LINE {
                self.emit(&ts, stream, true, &line[..MAX_LINE]);
                line = &line[MAX_LINE..];
            }
            self.emit(&ts, stream, false, line);
            start += nl + 1;
        }
        // A line exactly `MAX_LINE` long is held back: its newline may still come and make it F.
        while buf.len() - start > MAX_LINE {
            self.emit(&ts, stream, true, &buf[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        buf.drain(..start);
        self.pending[stream.index()] = buf;
    }

    /// At EOF of `stream`: its unterminated remainder, if any, is written as a full line, since no
    /// more data can continue it.
    pub fn flush_stream(&mut self, stream: Stream) {
        let mut buf = std::mem::take(&mut self.pending[stream.index()]);
        if !buf.is_empty() {
            let ts = format_timestamp(SystemTime::now());
            self.emit(&ts, stream, false, &buf);
        }
        // Keep the allocation for a (rare) reuse of the stream.
        buf.clear();
        self.pending[stream.index()] = buf;
    }

    /// Reopens the log path after kubelet's rotation renamed the file away. Pending partial lines
    /// are kept and continue in the new file. On failure the old file stays in use, so output
    /// still lands somewhere rather than nowhere; a disabled writer has nothing to reopen.
    pub fn reopen(&mut self) -> io::Result<()> {
        if let Some(path) = &self.path {
            self.file = Some(open_log(path)?);
        }
        Ok(())
    }

    /// Writes one entry with a single write(2): the file is O_APPEND, so readers (and kubelet's
    /// rotation) only ever see whole entries.
    fn emit(&mut self, ts: &str, stream: Stream, partial: bool, content: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let entry = &mut self.entry;
        entry.clear();
        entry.extend_from_slice(ts.as_bytes());
        entry.push(b' ');
        entry.extend_from_slice(stream.as_str().as_bytes());
        entry.extend_from_slice(if partial { b" P " } else { b" F " });
        entry.extend_from_slice(content);
        entry.push(b'\n');

        let mut rest = &entry[..];
        while !rest.is_empty() {
            match file.write(rest) {
                Ok(n) if n == rest.len() => return,
                // A short write (disk nearly full): finish the entry if possible so the next one
                // still starts on its own line; if not, the error below drops it.
                Ok(n) if n > 0 => rest = &rest[n..],
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.write_errors += 1;
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// RFC3339 with nanoseconds in UTC, always nine fraction digits: `2026-11-22T10:04:05.123456789Z`.
pub fn format_timestamp(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            // Before 1970: floor to the whole second below, so the fraction counts upward.
            let d = e.duration();
            let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (secs - 1, 1_000_000_000 - n),
            }
        }
    };
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Proleptic Gregorian (year, month, day) for days since 1970-01-01, after Howard Hinnant's
/// `civil_from_days`: counting from 0000-03-01 puts the leap day at the end of each year, and
/// 400-year eras repeat exactly.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of the March-based year, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Splits one log line (with or without its `\n`) into timestamp, stream, partial flag and
/// content; `None` if it is not in the CRI format. Only the first tag of a `:`-separated tag
/// list is looked at, as kubelet does.
pub fn parse_line(line: &str) -> Option<(String, Stream, bool, String)> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let mut fields = line.splitn(4, ' ');
    let ts = fields.next().filter(|ts| !ts.is_empty())?;
    let stream = match fields.next()? {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let partial = match fields.next()?.split(':').next()? {
        "P" => true,
        "F" => false,
        _ => return None,
    };
    let content = fields.next()?;
    Some((ts.to_string(), stream, partial, content.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    fn read_entries(path: &Path) -> Vec<(Stream, bool, String)> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "unterminated entry"
        );
        // Not `lines()`: it would also eat the `\r` that content may end with.
        text.split_terminator('\n')
            .map(|l| {
                let (ts, s, p, c) = parse_line(l).unwrap_or_else(|| panic!("bad line {l:?}"));
                assert_eq!(ts.len(), "2026-11-22T10:04:05.123456789Z".len(), "{ts}");
                (s, p, c)
            })
            .collect()
    }

    fn entry(stream: Stream, partial: bool, content: &str) -> (Stream, bool, String) {
        (stream, partial, content.to_string())
    }

    #[test]
    fn timestamps_of_known_instants() {
        let cases = [
            (at(0, 0), "1970-01-01T00:00:00.000000000Z"),
            (at(1_709_210_096, 0), "2024-02-29T12:34:56.000000000Z"),
            (
                at(951_868_799, 999_999_999),
                "2000-02-29T23:59:59.999999999Z",
            ),
            (at(951_868_800, 0), "2000-03-01T00:00:00.000000000Z"),
            (at(946_684_799, 1), "1999-12-31T23:59:59.000000001Z"),
            (at(946_684_800, 0), "2000-01-01T00:00:00.000000000Z"),
            (at(1_704_067_199, 0), "2023-12-31T23:59:59.000000000Z"),
            (at(1_735_689_599, 500), "2024-12-31T23:59:59.000000500Z"),
            (
                at(1_795_341_845, 123_456_789),
                "2026-11-22T10:04:05.123456789Z",
            ),
            // 2100 is not a leap year: February 28th is followed by March 1st.
            (at(4_107_542_399, 0), "2100-02-28T23:59:59.000000000Z"),
            (at(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z"),
            (
                UNIX_EPOCH - Duration::from_millis(500),
                "1969-12-31T23:59:59.500000000Z",
            ),
        ];
        for (t, want) in cases {
            assert_eq!(format_timestamp(t), want);
        }
    }

    #[test]
    fn civil_dates_match_a_day_by_day_count() {
        // Walk 1970..2401 one day at a time with the plain leap-year rule.
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days = 0;
        for year in 1970..2401 {
            for month in 1..=12u32 {
                let len = match month {
                    2 if leap(year) => 29,
                    2 => 28,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                for day in 1..=len {
                    assert_eq!(civil_from_days(days), (year, month, day));
                    days += 1;
                }
            }
        }
    }

    #[test]
    fn parse_line_reads_entries_back() {
        assert_eq!(
            parse_line("2026-11-22T10:04:05.123456789Z stderr P a b  c\n"),
            Some((
                "2026-11-22T10:04:05.123456789Z".to_string(),
                Stream::Stderr,
                true,
                "a b  c".to_string()
            ))
        );
        let (_, s, p, c) = parse_line("2026-11-22T10:04:05.123456789Z stdout F ").unwrap();
        assert_eq!((s, p, c.as_str()), (Stream::Stdout, false, ""));
        assert!(parse_line("2026-11-22T10:04:05.123456789Z stdin F x").is_none());
        assert!(parse_line("2026-11-22T10:04:05.123456789Z stdout X x").is_none());
        assert!(parse_line("2026-11-22T10:04:05.123456789Z stdout F").is_none());
        assert!(parse_line("").is_none());
    }

    #[test]
    fn lines_split_across_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"hel");
        w.write(Stream::Stdout, b"lo\nwor");
        w.write(Stream::Stdout, b"ld\r\n\n");
        w.write(Stream::Stdout, b"a\nb\nc");
        assert_eq!(w.pending_len(Stream::Stdout), 1);
        assert_eq!(
            read_entries(&path),
            vec![
                entry(Stream::Stdout, false, "hello"),
                entry(Stream::Stdout, false, "world\r"),
                entry(Stream::Stdout, false, ""),
                entry(Stream::Stdout, false, "a"),
                entry(Stream::Stdout, false, "b"),
            ]
        );
        assert_eq!(w.write_errors(), 0);
    }

    #[test]
    fn two_streams_interleaved_keep_their_own_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"out-");
        w.write(Stream::Stderr, b"err-");
        w.write(Stream::Stderr, b"one\n");
        w.write(Stream::Stdout, b"one\nout-two\n");
        w.write(Stream::Stderr, b"err-two\n");
        assert_eq!(
            read_entries(&path),
            vec![
                entry(Stream::Stderr, false, "err-one"),
                entry(Stream::Stdout, false, "out-one"),
                entry(Stream::Stdout, false, "out-two"),
                entry(Stream::Stderr, false, "err-two"),
            ]
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().next().unwrap().ends_with(" stderr F err-one"));
    }

    #[test]
    fn long_line_becomes_partial_entries_of_exact_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path).unwrap();
        let line: Vec<u8> = (0..40 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        w.write(Stream::Stdout, &line);
        // Two full chunks are out already; the rest waits for its newline.
        assert_eq!(w.pending_len(Stream::Stdout), 8 * 1024);
        w.write(Stream::Stdout, b"\n");
        let got = read_entries(&path);
        let shape: Vec<(bool, usize)> = got.iter().map(|(_, p, c)| (*p, c.len())).collect();
        assert_eq!(shape, vec![(true, 16384), (true, 16384), (false, 8192)]);
        let joined: String = got.iter().map(|(_, _, c)| c.as_str()).collect();
        assert_eq!(joined.as_bytes(), &line[..]);

        // In one write, and with a line of exactly two chunks: P then F, no empty F after it.
        let path2 = dir.path().join("1.log");
        let mut w = LogWriter::open(&path2).unwrap();
        let mut data = vec![b'x'; 2 * MAX_LINE];
        data.push(b'\n');
        w.write(Stream::Stderr, &data);
        let shape: Vec<(bool, usize)> = read_entries(&path2)
            .iter()
            .map(|(_, p, c)| (*p, c.len()))
            .collect();
        assert_eq!(shape, vec![(true, MAX_LINE), (false, MAX_LINE)]);
    }

    #[test]
    fn flush_writes_unterminated_remainder_as_full_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut w = LogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"done\nno newline");
        w.write(Stream::Stderr, b"err tail");
        w.flush_stream(Stream::Stdout);
        w.flush_stream(Stream::Stdout); // nothing left: no empty entry
        assert_eq!(w.pending_len(Stream::Stdout), 0);
        assert_eq!(w.pending_len(Stream::Stderr), 8);
        assert_eq!(
            read_entries(&path),
            vec![
                entry(Stream::Stdout, false, "done"),
                entry(Stream::Stdout, false, "no newline"),
            ]
        );
    }

    #[test]
    fn reopen_after_rename_writes_to_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let rotated = dir.path().join("0.log.20261122-100405");
        let mut w = LogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"before\npar");
        std::fs::rename(&path, &rotated).unwrap();
        w.reopen().unwrap();
        w.write(Stream::Stdout, b"tial\nafter\n");
        assert_eq!(
            read_entries(&rotated),
            vec![entry(Stream::Stdout, false, "before")]
        );
        assert_eq!(
            read_entries(&path),
            vec![
                entry(Stream::Stdout, false, "partial"),
                entry(Stream::Stdout, false, "after"),
            ]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        // 0640 (less whatever the umask takes): never group-writable or world-readable.
        assert_eq!(mode & 0o037, 0, "mode {mode:o}");
    }

    #[test]
    fn disabled_writer_consumes_and_discards() {
        let mut w = LogWriter::disabled();
        w.write(Stream::Stdout, b"line\n");
        w.write(Stream::Stderr, &vec![b'z'; 100 * 1024]);
        // Long output without newlines must not pile up in memory.
        assert!(w.pending_len(Stream::Stderr) <= MAX_LINE);
        w.flush_stream(Stream::Stderr);
        assert_eq!(w.pending_len(Stream::Stderr), 0);
        w.reopen().unwrap();
        assert_eq!(w.write_errors(), 0);
    }

    #[test]
    fn write_errors_are_counted_not_raised() {
        let path = Path::new("/dev/full");
        if !path.exists() {
            return;
        }
        let mut w = LogWriter::open(path).unwrap();
        w.write(Stream::Stdout, b"one\ntwo\n");
        w.write(Stream::Stderr, b"three");
        w.flush_stream(Stream::Stderr);
        assert_eq!(w.write_errors(), 3);
        assert_eq!(w.pending_len(Stream::Stdout), 0);
    }
}
