//! `report.jsonl`: the batch's rows, one JSON line per question, appended as each finishes.
//!
//! It is written as the batch goes, so a killed run (even SIGKILL) keeps every row that
//! finished before: each row is one `write` to a file opened for appending, so a line is whole
//! or, when the process died inside that write, the last line is torn; readers skip a torn
//! last line. `report.json` is assembled from it at the end ([`assemble`]), and `agentry
//! report show` / `merge` read it as they read a report.
//!
//! The rows are those of `report.json` (the same fields), in order of completion; each says
//! its place in the question list (`index`).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use super::Row;

/// The journal being written.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    /// The first failed append (later ones are not reported again).
    broken: Option<String>,
}

impl Journal {
    /// A new, empty journal at `path` (an earlier one is replaced).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
        // Appending: every write goes to the end, whole, whoever else has the file open.
        drop(file);
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Self { file, path: path.to_path_buf(), broken: None })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `row` as one line, in one write.
    pub fn append(&mut self, row: &Row) {
        let written = serde_json::to_vec(row).map_err(std::io::Error::other).and_then(|mut line| {
            line.push(b'\n');
            self.file.write_all(&line)
        });
        if let Err(error) = written
            && self.broken.is_none()
        {
            tracing::error!(journal = %self.path.display(), %error, "cannot append to the report journal");
            self.broken = Some(error.to_string());
        }
    }

    /// Flushes the rows to the disk; says whether every row reached the file.
    pub fn finish(&mut self) -> Result<(), String> {
        if let Some(error) = &self.broken {
            return Err(format!("{}: {error}", self.path.display()));
        }
        self.file.sync_data().map_err(|error| format!("{}: {error}", self.path.display()))
    }
}

/// Why a journal cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The journal.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// A line that is not a row (not the torn last line of a killed run).
    #[error("{path}:{line}: not a report row: {source}")]
    NotARow {
        /// The journal.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
}

/// The rows of the journal at `path`, one at a time, in the order they were written. A last
/// line without its newline (the process died inside its write) is skipped.
pub fn rows(path: &Path) -> Result<impl Iterator<Item = Result<Row, ReadError>>, ReadError> {
    lines(path)
}

/// [`rows`], each line read as a `T` (some of a row's fields: the others are skipped unread).
pub fn lines<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<impl Iterator<Item = Result<T, ReadError>>, ReadError> {
    let io = |source| ReadError::Io { path: path.to_path_buf(), source };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let path = path.to_path_buf();
    let mut number = 0;
    let mut line = Vec::new();
    Ok(std::iter::from_fn(move || {
        loop {
            line.clear();
            number += 1;
            match reader.read_until(b'\n', &mut line) {
                Err(source) => return Some(Err(ReadError::Io { path: path.clone(), source })),
                Ok(0) => return None,
                // Torn: the writer died inside this line's write.
                Ok(_) if line.last() != Some(&b'\n') => {
                    tracing::warn!(journal = %path.display(), line = number, "skipping a torn last line");
                    return None;
                }
                Ok(_) if line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(_) => {
                    return Some(serde_json::from_slice(&line).map_err(|source| ReadError::NotARow {
                        path: path.clone(),
                        line: number,
                        source,
                    }));
                }
            }
        }
    }))
}

/// The rows of the journal at `path` in question order (by `index`), read one at a time: a
/// first pass notes where each row starts, a second reads them in order. Memory: 16 bytes a
/// row, not the rows.
pub fn rows_in_order(path: &Path) -> Result<impl Iterator<Item = Result<Row, ReadError>>, ReadError> {
    use std::io::{Read, Seek, SeekFrom};

    #[derive(serde::Deserialize)]
    struct Place {
        index: usize,
    }
    let io = |source| ReadError::Io { path: path.to_path_buf(), source };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let mut places: Vec<(usize, u64, usize)> = Vec::new();
    let (mut offset, mut number, mut line) = (0u64, 0usize, Vec::new());
    loop {
        line.clear();
        number += 1;
        let read = reader.read_until(b'\n', &mut line).map_err(io)?;
        if read == 0 || line.last() != Some(&b'\n') {
            break;
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            let place: Place = serde_json::from_slice(&line).map_err(|source| ReadError::NotARow {
                path: path.to_path_buf(),
                line: number,
                source,
            })?;
            places.push((place.index, offset, read));
        }
        offset += read as u64;
    }
    places.sort_by_key(|&(index, _, _)| index);
    let path = path.to_path_buf();
    let mut file = reader.into_inner();
    Ok(places.into_iter().map(move |(_, offset, length)| {
        let io = |source| ReadError::Io { path: path.clone(), source };
        let mut line = vec![0; length];
        file.seek(SeekFrom::Start(offset)).and_then(|_| file.read_exact(&mut line)).map_err(io)?;
        serde_json::from_slice(&line).map_err(|source| ReadError::NotARow { path: path.clone(), line: 0, source })
    }))
}

/// The rows of the journal at `path` in the order of `indexes` (the plan's questions), read
/// ahead only as far as the next one is found. A batch's journal is almost in that order
/// already (questions start in order and rows are appended as they finish), so only the rows
/// that finished before an earlier question are held, as their places (16 bytes each): what
/// [`rows_in_order`] holds for every row. A question without a row is passed over.
pub fn rows_in_order_of(
    path: &Path,
    indexes: impl Iterator<Item = usize>,
) -> Result<RowsInOrderOf<impl Iterator<Item = usize>>, ReadError> {
    let io = |source| ReadError::Io { path: path.to_path_buf(), source };
    let ahead = BufReader::new(File::open(path).map_err(io)?);
    let places = File::open(path).map_err(io)?;
    Ok(RowsInOrderOf {
        path: path.to_path_buf(),
        indexes,
        ahead,
        offset: 0,
        number: 0,
        pending: Default::default(),
        places,
    })
}

/// The rows of a journal in a given order: see [`rows_in_order_of`].
pub struct RowsInOrderOf<I> {
    path: PathBuf,
    indexes: I,
    /// The journal read forward.
    ahead: BufReader<File>,
    offset: u64,
    number: usize,
    /// Rows read ahead of their turn: index → where the line starts and its length.
    pending: std::collections::HashMap<usize, (u64, usize)>,
    /// The journal again, for the lines read ahead.
    places: File,
}

impl<I: Iterator<Item = usize>> RowsInOrderOf<I> {
    fn row(&self, line: &[u8], number: usize) -> Result<Row, ReadError> {
        serde_json::from_slice(line).map_err(|source| ReadError::NotARow {
            path: self.path.clone(),
            line: number,
            source,
        })
    }

    /// Reads forward to `index`'s row; the rows passed on the way are noted in `pending`.
    fn find(&mut self, index: usize) -> Option<Result<Row, ReadError>> {
        #[derive(serde::Deserialize)]
        struct Place {
            index: usize,
        }
        let mut line = Vec::new();
        loop {
            line.clear();
            self.number += 1;
            let read = match self.ahead.read_until(b'\n', &mut line) {
                Ok(read) => read,
                Err(source) => return Some(Err(ReadError::Io { path: self.path.clone(), source })),
            };
            // The end, or a torn last line: this question has no row.
            if read == 0 || line.last() != Some(&b'\n') {
                return None;
            }
            let at = self.offset;
            self.offset += read as u64;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let place: Place = match serde_json::from_slice(&line) {
                Ok(place) => place,
                Err(source) => {
                    return Some(Err(ReadError::NotARow { path: self.path.clone(), line: self.number, source }));
                }
            };
            if place.index == index {
                return Some(self.row(&line, self.number));
            }
            self.pending.insert(place.index, (at, read));
        }
    }
}

impl<I: Iterator<Item = usize>> Iterator for RowsInOrderOf<I> {
    type Item = Result<Row, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::os::unix::fs::FileExt;
        loop {
            let index = self.indexes.next()?;
            if let Some((at, length)) = self.pending.remove(&index) {
                let mut line = vec![0; length];
                if let Err(source) = self.places.read_exact_at(&mut line, at) {
                    return Some(Err(ReadError::Io { path: self.path.clone(), source }));
                }
                return Some(self.row(&line, 0));
            }
            if let Some(found) = self.find(index) {
                return Some(found);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{Planned, Row, Status};

    fn row(index: usize) -> Row {
        let planned = Planned {
            index,
            question: format!("Question {index} \"quoted\"\nwith a newline"),
            id: format!("q-{index}"),
            done: None,
            replaces: None,
        };
        Row::empty(&planned, Status::Ok)
    }

    #[test]
    fn rows_come_back_in_the_plans_order_reading_ahead_only_as_far_as_needed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.jsonl");
        let mut journal = Journal::create(&path).expect("journal");
        // Finished almost in order; question 5 (a shard's gap) has no row.
        for index in [1, 0, 2, 4, 3, 7, 6] {
            journal.append(&row(index));
        }
        journal.finish().expect("flushed");
        let rows = rows_in_order_of(&path, [0, 1, 2, 3, 4, 5, 6, 7].into_iter()).expect("journal");
        let indexes: Vec<usize> = rows.map(|r| r.expect("row").index).collect();
        assert_eq!(indexes, [0, 1, 2, 3, 4, 6, 7]);
        let mut rows = rows_in_order_of(&path, [0, 1, 2].into_iter()).expect("journal");
        let first = rows.next().expect("row 0").expect("whole");
        assert_eq!((first.index, first.question.as_str()), (0, "Question 0 \"quoted\"\nwith a newline"));
        assert_eq!(rows.pending.len(), 1, "row 1 was read ahead, nothing more");
    }

    #[test]
    fn rows_come_back_whole_in_question_order_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.jsonl");
        let mut journal = Journal::create(&path).expect("journal");
        for index in [2, 0, 3, 1] {
            journal.append(&row(index));
        }
        journal.finish().expect("flushed");
        // A process killed inside its last write.
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(br#"{"index":4,"question":"cut"#).expect("torn");
        let written: Vec<usize> = rows(&path).expect("rows").map(|r| r.expect("row").index).collect();
        assert_eq!(written, [2, 0, 3, 1], "in order of completion");
        let ordered: Vec<Row> = rows_in_order(&path).expect("rows").map(|r| r.expect("row")).collect();
        assert_eq!(ordered.iter().map(|r| r.index).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(ordered[1].question, row(1).question, "text with quotes and newlines survives");
    }

    #[test]
    fn a_line_that_is_not_a_row_is_named_by_its_number() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("report.jsonl");
        std::fs::write(&path, format!("{}\nnot json\n", serde_json::to_string(&row(0)).expect("json"))).expect("write");
        let error = rows(&path).expect("rows").nth(1).expect("second").expect_err("not a row");
        assert!(error.to_string().contains("report.jsonl:2: not a report row"), "{error}");
        let error = rows_in_order(&path).err().expect("not a row");
        assert!(error.to_string().contains(":2:"), "{error}");
    }
}
