//! Sources: where a stage's records come from when it does not read a
//! shuffle. A source knows its task count at build time (deterministically:
//! a worker rebuilding the job gets the same tasks) and opens a
//! [`RecordCursor`] per task.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use crate::EngineError;

use super::ops::Downstream;

/// Records of one task, produced a chunk at a time so that the task can
/// push each chunk to the shuffle before making the next.
pub trait RecordCursor: Send {
    /// Emits the next chunk of records (a few thousand, or a few hundred
    /// KiB); returns `false` once the cursor is exhausted.
    fn fill(&mut self, emit: &mut Downstream<'_>) -> Result<bool, EngineError>;
}

/// A stage's source.
pub trait Source: Send + Sync {
    /// Tasks of the stage.
    fn tasks(&self) -> u32;
    /// Opens the records of `task`.
    fn open(&self, task: u32) -> Result<Box<dyn RecordCursor>, EngineError>;
}

/// Rows spread evenly over tasks; task `t` of `n` gets rows
/// `rows*t/n .. rows*(t+1)/n`.
pub fn rows_of(rows: u64, task: u32, tasks: u32) -> std::ops::Range<u64> {
    let (t, n) = (u128::from(task), u128::from(tasks.max(1)));
    let r = u128::from(rows);
    ((r * t / n) as u64)..((r * (t + 1) / n) as u64)
}

/// A row generator: `f(row, buf)` writes row `row` into the cleared `buf`.
pub type RowFn = Arc<dyn Fn(u64, &mut Vec<u8>) + Send + Sync>;

/// `rows` generated rows over `tasks` tasks.
pub(crate) struct GenerateRows {
    pub tasks: u32,
    pub rows: u64,
    pub f: RowFn,
}

impl Source for GenerateRows {
    fn tasks(&self) -> u32 {
        self.tasks
    }

    fn open(&self, task: u32) -> Result<Box<dyn RecordCursor>, EngineError> {
        Ok(Box::new(RowCursor {
            rows: rows_of(self.rows, task, self.tasks),
            f: self.f.clone(),
            buf: Vec::new(),
        }))
    }
}

struct RowCursor {
    rows: std::ops::Range<u64>,
    f: RowFn,
    buf: Vec<u8>,
}

impl RecordCursor for RowCursor {
    fn fill(&mut self, emit: &mut Downstream<'_>) -> Result<bool, EngineError> {
        for _ in 0..4096 {
            let Some(row) = self.rows.next() else {
                return Ok(false);
            };
            self.buf.clear();
            (self.f)(row, &mut self.buf);
            emit(&self.buf)?;
        }
        Ok(!self.rows.is_empty())
    }
}

/// A generator given as a function of (task, tasks) to a cursor.
pub type CursorFn = Arc<dyn Fn(u32, u32) -> Result<Box<dyn RecordCursor>, EngineError> + Send + Sync>;

pub(crate) struct Generate {
    pub tasks: u32,
    pub f: CursorFn,
}

impl Source for Generate {
    fn tasks(&self) -> u32 {
        self.tasks
    }

    fn open(&self, task: u32) -> Result<Box<dyn RecordCursor>, EngineError> {
        (self.f)(task, self.tasks)
    }
}

/// A byte range of one input file; lines starting inside it belong to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Split {
    pub path: PathBuf,
    pub start: u64,
    pub end: u64,
}

/// Cuts files into splits of about `split_size` bytes (at least one per
/// file, an empty file included).
pub(crate) fn plan_splits(inputs: &[PathBuf], split_size: u64) -> Result<Vec<Split>, EngineError> {
    let mut splits = Vec::new();
    for path in inputs {
        let meta = std::fs::metadata(path).map_err(EngineError::io("read", path))?;
        if !meta.is_file() {
            return Err(EngineError::InvalidArgument {
                what: "input",
                reason: format!("{} is not a file", path.display()),
            });
        }
        let len = meta.len();
        let step = split_size.max(1);
        let mut start = 0;
        loop {
            let end = (start + step).min(len);
            splits.push(Split {
                path: path.clone(),
                start,
                end,
            });
            if end >= len {
                break;
            }
            start = end;
        }
    }
    Ok(splits)
}

/// Reads the lines that start inside `split`: a line that begins before it
/// belongs to the previous split, which reads past its end to finish it.
pub(crate) fn read_split(split: &Split) -> Result<Vec<u8>, EngineError> {
    let io = |op| EngineError::io(op, &split.path);
    let mut file = File::open(&split.path).map_err(io("open"))?;
    let begin = split.start.saturating_sub(1);
    file.seek(SeekFrom::Start(begin)).map_err(io("seek"))?;
    let mut buf = Vec::with_capacity((split.end.saturating_sub(begin)) as usize + 256);
    (&mut file)
        .take(split.end.saturating_sub(begin))
        .read_to_end(&mut buf)
        .map_err(io("read"))?;
    // Finish the last line.
    if buf.last().is_some_and(|b| *b != b'\n') {
        let mut byte = [0u8; 4096];
        'extend: loop {
            let n = file.read(&mut byte).map_err(io("read"))?;
            if n == 0 {
                break;
            }
            for (i, b) in byte[..n].iter().enumerate() {
                if *b == b'\n' {
                    buf.extend_from_slice(&byte[..=i]);
                    break 'extend;
                }
            }
            buf.extend_from_slice(&byte[..n]);
        }
    }
    // Skip the line that started in the previous split (at `begin`, the
    // byte before our start, is either its newline or part of it).
    if split.start > 0 {
        match buf.iter().position(|b| *b == b'\n') {
            Some(nl) => {
                buf.drain(..=nl);
            }
            None => buf.clear(),
        }
    }
    Ok(buf)
}

/// Lines of text files; each split of about `split_size` bytes is a task.
pub(crate) struct TextFiles {
    pub splits: Vec<Split>,
}

impl TextFiles {
    /// Plans the splits: `maps` tasks' worth of bytes each, or
    /// `split_size` bytes without `maps`.
    pub(crate) fn new(inputs: &[PathBuf], maps: Option<u32>, split_size: u64) -> Result<Self, EngineError> {
        if inputs.is_empty() {
            return Err(EngineError::InvalidArgument {
                what: "inputs",
                reason: "at least one input file is required".into(),
            });
        }
        let mut total = 0u64;
        for path in inputs {
            total += std::fs::metadata(path)
                .map_err(EngineError::io("read", path))?
                .len();
        }
        let split_size = match maps {
            Some(0) => {
                return Err(EngineError::InvalidArgument {
                    what: "maps",
                    reason: "must be at least 1".into(),
                })
            }
            Some(m) => total.div_ceil(u64::from(m)).max(1),
            None => split_size.max(1),
        };
        Ok(TextFiles {
            splits: plan_splits(inputs, split_size)?,
        })
    }
}

impl Source for TextFiles {
    fn tasks(&self) -> u32 {
        self.splits.len() as u32
    }

    fn open(&self, task: u32) -> Result<Box<dyn RecordCursor>, EngineError> {
        let split = self
            .splits
            .get(task as usize)
            .ok_or_else(|| EngineError::InvalidArgument {
                what: "task",
                reason: format!("task {task} of {} splits", self.splits.len()),
            })?;
        Ok(Box::new(LineCursor {
            data: read_split(split)?,
            pos: 0,
        }))
    }
}

/// Emits the lines of a buffer, without their `\n` (or `\r\n`).
struct LineCursor {
    data: Vec<u8>,
    pos: usize,
}

impl RecordCursor for LineCursor {
    fn fill(&mut self, emit: &mut Downstream<'_>) -> Result<bool, EngineError> {
        let start = self.pos;
        while self.pos < self.data.len() && self.pos - start < 256 << 10 {
            let rest = &self.data[self.pos..];
            let (line, used) = match rest.iter().position(|b| *b == b'\n') {
                Some(nl) => (&rest[..nl], nl + 1),
                None => (rest, rest.len()),
            };
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            emit(line)?;
            self.pos += used;
        }
        Ok(self.pos < self.data.len())
    }
}

/// Every record a cursor emits, for tests.
#[cfg(test)]
pub(crate) fn drain(mut c: Box<dyn RecordCursor + '_>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while c
        .fill(&mut |r| {
            out.push(r.to_vec());
            Ok(())
        })
        .expect("fill")
    {}
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_split_exactly_over_tasks() {
        let total: u64 = (0..7).map(|t| rows_of(1001, t, 7).count() as u64).sum();
        assert_eq!(total, 1001);
        assert_eq!(rows_of(1001, 6, 7).end, 1001);
        let src = GenerateRows {
            tasks: 3,
            rows: 10_000,
            f: Arc::new(|row, buf| buf.extend_from_slice(&row.to_le_bytes())),
        };
        let all: Vec<Vec<u8>> = (0..3).flat_map(|t| drain(src.open(t).expect("open"))).collect();
        assert_eq!(all.len(), 10_000);
        assert_eq!(all[9_999], 9_999u64.to_le_bytes());
    }

    #[test]
    fn splits_cover_every_line_exactly_once() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("in.txt");
        let text: String = (0..200)
            .map(|i| format!("line{i} {}\n", "x".repeat(i % 17)))
            .collect();
        std::fs::write(&path, &text).expect("write");
        for split_size in [1, 7, 64, 1000, 100_000] {
            let splits = plan_splits(std::slice::from_ref(&path), split_size).expect("plan");
            let joined: Vec<u8> = splits.iter().flat_map(|s| read_split(s).expect("read")).collect();
            assert_eq!(
                String::from_utf8(joined).expect("utf8"),
                text,
                "split size {split_size}"
            );
        }
        std::fs::write(&path, "a b\r\nc d").expect("write");
        let src = TextFiles::new(std::slice::from_ref(&path), Some(3), 1).expect("plan");
        let lines: Vec<Vec<u8>> = (0..src.tasks())
            .flat_map(|t| drain(src.open(t).expect("open")))
            .collect();
        assert_eq!(lines, vec![b"a b".to_vec(), b"c d".to_vec()]);
        assert!(TextFiles::new(&[], None, 1).is_err());
        assert!(TextFiles::new(&[tmp.path().join("missing")], None, 1).is_err());
    }
}
