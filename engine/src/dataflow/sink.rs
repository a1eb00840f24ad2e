//! Sinks: where a last stage's records go, how they are written, and what
//! each task reports of them ([`Summary`]) for the job's validation.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{kv, EngineError};

/// Where a sink stage's records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    /// One file per task, `part-NNNNN`, under this folder (created).
    Files(PathBuf),
    /// Standard output, one line per record.
    Stdout,
    /// Nowhere: records are only counted (and summarized).
    Count,
}

/// A custom record formatter: appends the bytes written for `record`.
pub type FormatFn = Arc<dyn Fn(&[u8], &mut Vec<u8>) -> Result<(), EngineError> + Send + Sync>;

/// How records become bytes in a [`Sink::Files`] or [`Sink::Stdout`].
#[derive(Clone)]
pub enum Format {
    /// The record's bytes, then `\n`.
    Lines,
    /// A pair as `key<TAB>value\n`.
    Pairs,
    /// A row as a CSV line (RFC 4180 quoting where needed).
    Csv,
    /// A custom formatter.
    Custom(FormatFn),
}

impl std::fmt::Debug for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Lines => "Lines",
            Format::Pairs => "Pairs",
            Format::Csv => "Csv",
            Format::Custom(_) => "Custom",
        })
    }
}

/// Appends `field` to a CSV line, quoted if it holds `,`, `"`, CR or LF.
pub fn push_csv_field(field: &[u8], out: &mut Vec<u8>) {
    if field.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for b in field {
            if *b == b'"' {
                out.push(b'"');
            }
            out.push(*b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(field);
    }
}

impl Format {
    /// Appends the formatted `record` to `out`.
    pub fn write(&self, record: &[u8], out: &mut Vec<u8>) -> Result<(), EngineError> {
        match self {
            Format::Lines => out.extend_from_slice(record),
            Format::Pairs => {
                let (k, v) = kv::decode(record)?;
                out.extend_from_slice(k);
                out.push(b'\t');
                out.extend_from_slice(v);
            }
            Format::Csv => {
                for (i, f) in kv::fields(record).enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    push_csv_field(f?, out);
                }
            }
            Format::Custom(f) => return f(record, out),
        }
        if !matches!(self, Format::Custom(_)) {
            out.push(b'\n');
        }
        Ok(())
    }
}

/// What one task saw of its output: observed record by record, reported
/// as JSON in [`crate::plan::TaskOutput::summary`].
pub trait Summary: Send {
    /// One record leaving the stage (to the shuffle or the sink).
    fn observe(&mut self, record: &[u8]) -> Result<(), EngineError>;
    /// The task's summary.
    fn finish(self: Box<Self>) -> serde_json::Value;
}

/// Makes the summary of task `task` of `tasks`.
pub type SummaryFactory = Arc<dyn Fn(u32, u32) -> Box<dyn Summary> + Send + Sync>;

/// An open sink of one task.
pub(crate) enum SinkWriter {
    File {
        path: PathBuf,
        out: BufWriter<File>,
        format: Format,
        buf: Vec<u8>,
    },
    Stdout {
        format: Format,
        buf: Vec<u8>,
    },
    Count,
}

impl SinkWriter {
    pub(crate) fn open(sink: &Sink, format: &Format, task: u32) -> Result<Self, EngineError> {
        Ok(match sink {
            Sink::Files(dir) => {
                std::fs::create_dir_all(dir).map_err(EngineError::io("create", dir))?;
                let path = part_path(dir, task);
                let file = File::create(&path).map_err(EngineError::io("create", &path))?;
                SinkWriter::File {
                    path,
                    out: BufWriter::with_capacity(256 << 10, file),
                    format: format.clone(),
                    buf: Vec::new(),
                }
            }
            Sink::Stdout => SinkWriter::Stdout {
                format: format.clone(),
                buf: Vec::new(),
            },
            Sink::Count => SinkWriter::Count,
        })
    }

    pub(crate) fn write(&mut self, record: &[u8]) -> Result<(), EngineError> {
        match self {
            SinkWriter::File {
                path,
                out,
                format,
                buf,
            } => {
                buf.clear();
                format.write(record, buf)?;
                out.write_all(buf)
                    .map_err(EngineError::io("write", path.as_path()))
            }
            SinkWriter::Stdout { format, buf } => {
                format.write(record, buf)?;
                if buf.len() >= 64 << 10 {
                    flush_stdout(buf)?;
                }
                Ok(())
            }
            SinkWriter::Count => Ok(()),
        }
    }

    pub(crate) fn finish(self) -> Result<(), EngineError> {
        match self {
            SinkWriter::File { path, mut out, .. } => out.flush().map_err(EngineError::io("write", path)),
            SinkWriter::Stdout { mut buf, .. } => flush_stdout(&mut buf),
            SinkWriter::Count => Ok(()),
        }
    }
}

/// The file task `task` of a [`Sink::Files`] writes.
pub fn part_path(dir: &Path, task: u32) -> PathBuf {
    dir.join(format!("part-{task:05}"))
}

fn flush_stdout(buf: &mut Vec<u8>) -> Result<(), EngineError> {
    let mut out = std::io::stdout().lock();
    out.write_all(buf)
        .and_then(|()| out.flush())
        .map_err(EngineError::io("write", "<stdout>"))?;
    buf.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lines_pairs_and_quoted_csv() {
        let mut out = Vec::new();
        Format::Lines.write(b"abc", &mut out).expect("lines");
        let mut pair = Vec::new();
        kv::encode(b"k", b"v", &mut pair);
        Format::Pairs.write(&pair, &mut out).expect("pairs");
        let row = kv::row([&b"a,b"[..], b"say \"hi\"", b"plain"]);
        Format::Csv.write(&row, &mut out).expect("csv");
        assert_eq!(out, b"abc\nk\tv\n\"a,b\",\"say \"\"hi\"\"\",plain\n");
        assert!(Format::Pairs.write(&[9], &mut out).is_err());
    }

    #[test]
    fn file_sinks_write_one_part_per_task() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("out");
        let mut w = SinkWriter::open(&Sink::Files(dir.clone()), &Format::Lines, 3).expect("open");
        w.write(b"x").expect("write");
        w.finish().expect("finish");
        assert_eq!(std::fs::read(part_path(&dir, 3)).expect("read"), b"x\n");
    }
}
