//! CSV input (RFC 4180): a header row, then rows of comma-separated
//! fields; a field may be quoted with `"`, holding commas, newlines and
//! doubled quotes (`""`). Lines end with `\n` or `\r\n`; blank lines are
//! skipped. A quote inside an unquoted field, text after a closing quote,
//! an unterminated quoted field and a row whose field count differs from
//! the header's are errors naming the file and the line the row starts on.
//!
//! The CSV source emits each row as a [`crate::kv`] row of the selected
//! columns: text columns as their bytes, number columns as the 8 bytes of
//! an `f64` (little-endian). Files are not split: task `t` of `n` reads
//! files `t`, `t + n`, ... (a quoted newline makes a byte offset an
//! unreliable place to start).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ops::Downstream;
use super::source::{RecordCursor, Source};
use crate::{kv, EngineError};

/// A column: by header name, or by 0-based index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Column {
    Index(usize),
    /// A header name; a name that is no header but a number is an index.
    Name(String),
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Column::Index(i) => write!(f, "#{i}"),
            Column::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// A column as a command line names it: a name, as a JSON string is read
/// (a name that is no header but a number is an index). Never fails.
impl std::str::FromStr for Column {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Column::Name(s.to_string()))
    }
}

/// How a selected column is typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    /// The field's bytes.
    Text,
    /// A number (surrounding spaces allowed), emitted as `f64` LE bytes.
    Number,
}

/// What the CSV source emits of each row, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Select {
    /// One column, typed.
    Column(Column, ColumnType),
    /// Every column of the row, as text.
    All,
}

/// Parses a number field: a finite decimal or exponent number, spaces
/// around allowed (`NaN`, `inf` and the empty field are not numbers).
pub fn parse_number(field: &[u8]) -> Option<f64> {
    std::str::from_utf8(field)
        .ok()?
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite())
}

/// A streaming RFC 4180 reader over one input.
#[derive(Debug)]
pub struct CsvReader<R> {
    input: R,
    /// Physical lines consumed so far.
    line: u64,
    raw: Vec<u8>,
    data: Vec<u8>,
    ends: Vec<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    FieldStart,
    Unquoted,
    Quoted,
    /// Just read a quote inside a quoted field.
    QuoteInQuoted,
}

impl<R: BufRead> CsvReader<R> {
    pub fn new(input: R) -> Self {
        CsvReader {
            input,
            line: 0,
            raw: Vec::new(),
            data: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// Reads the next row; returns the 1-based line it starts on, or
    /// `None` at the end. Errors are `(line, reason)`; I/O errors are
    /// returned as such.
    pub fn next_row(&mut self) -> Result<Option<u64>, CsvError> {
        self.data.clear();
        self.ends.clear();
        let mut state = State::FieldStart;
        let mut start_line = 0;
        loop {
            self.raw.clear();
            let n = self
                .input
                .read_until(b'\n', &mut self.raw)
                .map_err(CsvError::Io)?;
            if n == 0 {
                return match state {
                    State::FieldStart if self.ends.is_empty() => Ok(None),
                    State::Quoted => Err(CsvError::Malformed(
                        start_line,
                        "unterminated quoted field".into(),
                    )),
                    _ => {
                        self.ends.push(self.data.len());
                        Ok(Some(start_line))
                    }
                };
            }
            self.line += 1;
            if state == State::FieldStart && self.ends.is_empty() {
                start_line = self.line;
                if self.raw == b"\n" || self.raw == b"\r\n" {
                    continue; // a blank line
                }
            }
            let raw = &self.raw;
            let mut i = 0;
            while i < raw.len() {
                let b = raw[i];
                let at_eol = b == b'\n' || (b == b'\r' && raw.get(i + 1) == Some(&b'\n'));
                match state {
                    State::Quoted => {
                        if b == b'"' {
                            state = State::QuoteInQuoted;
                        } else {
                            self.data.push(b);
                        }
                    }
                    _ if at_eol => {
                        self.ends.push(self.data.len());
                        return Ok(Some(start_line));
                    }
                    _ if b == b',' => {
                        self.ends.push(self.data.len());
                        state = State::FieldStart;
                    }
                    State::FieldStart if b == b'"' => state = State::Quoted,
                    State::FieldStart | State::Unquoted => {
                        if b == b'"' {
                            return Err(CsvError::Malformed(
                                self.line,
                                "a quote inside an unquoted field".into(),
                            ));
                        }
                        self.data.push(b);
                        state = State::Unquoted;
                    }
                    State::QuoteInQuoted => {
                        if b != b'"' {
                            return Err(CsvError::Malformed(
                                self.line,
                                format!("{:?} after a closing quote", char::from(b)),
                            ));
                        }
                        self.data.push(b'"');
                        state = State::Quoted;
                    }
                }
                i += 1;
            }
        }
    }

    /// Fields of the last row read.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the last row had no field.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field `i` of the last row read.
    pub fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.data[start..self.ends[i]]
    }
}

/// A CSV reading failure.
#[derive(Debug)]
pub enum CsvError {
    Io(std::io::Error),
    /// The line and what is wrong.
    Malformed(u64, String),
}

impl CsvError {
    fn at(self, path: &Path) -> EngineError {
        match self {
            CsvError::Io(error) => EngineError::Io {
                op: "read",
                path: path.to_path_buf(),
                error,
            },
            CsvError::Malformed(line, reason) => EngineError::Csv {
                path: path.to_path_buf(),
                line,
                reason,
            },
        }
    }
}

/// A selection resolved against one file's header.
#[derive(Clone, Debug)]
enum Resolved {
    Field {
        index: usize,
        ty: ColumnType,
        name: String,
    },
    All,
}

fn resolve(select: &[Select], header: &[String], path: &Path) -> Result<Vec<Resolved>, EngineError> {
    let err = |reason: String| EngineError::Csv {
        path: path.to_path_buf(),
        line: 1,
        reason,
    };
    select
        .iter()
        .map(|s| match s {
            Select::All => Ok(Resolved::All),
            Select::Column(col, ty) => {
                let index = match col {
                    Column::Index(i) => Some(*i),
                    Column::Name(n) => header
                        .iter()
                        .position(|h| h == n)
                        .or_else(|| header.iter().position(|h| h.trim() == n.trim()))
                        .or_else(|| n.parse().ok()),
                }
                .filter(|i| *i < header.len())
                .ok_or_else(|| err(format!("no column {col} (header: {})", header.join(","))))?;
                Ok(Resolved::Field {
                    index,
                    ty: *ty,
                    name: header[index].clone(),
                })
            }
        })
        .collect()
}

/// CSV files read as rows of selected columns.
pub(crate) struct CsvFiles {
    pub files: Vec<PathBuf>,
    pub tasks: u32,
    pub select: Vec<Select>,
}

impl CsvFiles {
    pub(crate) fn new(
        files: Vec<PathBuf>,
        tasks: Option<u32>,
        select: Vec<Select>,
    ) -> Result<Self, EngineError> {
        if files.is_empty() {
            return Err(EngineError::InvalidArgument {
                what: "inputs",
                reason: "at least one CSV file is required".into(),
            });
        }
        if tasks == Some(0) {
            return Err(EngineError::InvalidArgument {
                what: "maps",
                reason: "must be at least 1".into(),
            });
        }
        let tasks = tasks.unwrap_or(u32::MAX).min(files.len() as u32);
        Ok(CsvFiles { files, tasks, select })
    }
}

impl Source for CsvFiles {
    fn tasks(&self) -> u32 {
        self.tasks
    }

    fn open(&self, task: u32) -> Result<Box<dyn RecordCursor>, EngineError> {
        let mine = self
            .files
            .iter()
            .skip(task as usize)
            .step_by(self.tasks.max(1) as usize)
            .cloned()
            .collect::<Vec<_>>();
        Ok(Box::new(CsvCursor {
            files: mine.into_iter(),
            select: self.select.clone(),
            current: None,
            out: Vec::new(),
        }))
    }
}

struct OpenFile {
    path: PathBuf,
    reader: CsvReader<BufReader<File>>,
    columns: Vec<Resolved>,
    header_len: usize,
}

struct CsvCursor {
    files: std::vec::IntoIter<PathBuf>,
    select: Vec<Select>,
    current: Option<OpenFile>,
    out: Vec<u8>,
}

impl CsvCursor {
    fn open_next(&mut self) -> Result<bool, EngineError> {
        let Some(path) = self.files.next() else {
            return Ok(false);
        };
        let file = File::open(&path).map_err(EngineError::io("open", &path))?;
        let mut reader = CsvReader::new(BufReader::with_capacity(256 << 10, file));
        if reader.next_row().map_err(|e| e.at(&path))?.is_none() {
            return Err(EngineError::Csv {
                path,
                line: 1,
                reason: "no header row".into(),
            });
        }
        let header: Vec<String> = (0..reader.len())
            .map(|i| String::from_utf8_lossy(reader.field(i)).into_owned())
            .collect();
        let mut header = header;
        if let Some(first) = header.first_mut() {
            // A UTF-8 byte order mark is not part of the first name.
            if let Some(rest) = first.strip_prefix('\u{feff}') {
                *first = rest.to_string();
            }
        }
        let columns = resolve(&self.select, &header, &path)?;
        self.current = Some(OpenFile {
            path,
            reader,
            columns,
            header_len: header.len(),
        });
        Ok(true)
    }
}

/// Appends the selected columns of the reader's current row to `out`.
fn project(f: &OpenFile, line: u64, out: &mut Vec<u8>) -> Result<(), EngineError> {
    let (r, header_len) = (&f.reader, f.header_len);
    if r.len() != header_len {
        return Err(EngineError::Csv {
            path: f.path.clone(),
            line,
            reason: format!("{} fields, the header has {header_len}", r.len()),
        });
    }
    for c in &f.columns {
        match c {
            Resolved::All => (0..r.len()).for_each(|i| kv::push_field(r.field(i), out)),
            Resolved::Field {
                index,
                ty: ColumnType::Text,
                ..
            } => kv::push_field(r.field(*index), out),
            Resolved::Field {
                index,
                ty: ColumnType::Number,
                name,
            } => {
                let field = r.field(*index);
                let n = parse_number(field).ok_or_else(|| EngineError::NotNumeric {
                    path: f.path.clone(),
                    line,
                    column: name.clone(),
                    value: String::from_utf8_lossy(field).into_owned(),
                })?;
                kv::push_field(&n.to_le_bytes(), out);
            }
        }
    }
    Ok(())
}

impl RecordCursor for CsvCursor {
    fn fill(&mut self, emit: &mut Downstream<'_>) -> Result<bool, EngineError> {
        if self.current.is_none() && !self.open_next()? {
            return Ok(false);
        }
        let Some(f) = self.current.as_mut() else {
            return Ok(false);
        };
        for _ in 0..4096 {
            match f.reader.next_row().map_err(|e| e.at(&f.path))? {
                None => {
                    self.current = None;
                    return Ok(true);
                }
                Some(line) => {
                    self.out.clear();
                    project(f, line, &mut self.out)?;
                    emit(&self.out)?;
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Result<Vec<(u64, Vec<String>)>, CsvError> {
        let mut r = CsvReader::new(text.as_bytes());
        let mut out = Vec::new();
        while let Some(line) = r.next_row()? {
            let fields = (0..r.len())
                .map(|i| String::from_utf8_lossy(r.field(i)).into_owned())
                .collect();
            out.push((line, fields));
        }
        Ok(out)
    }

    fn malformed(text: &str) -> (u64, String) {
        match rows(text) {
            Err(CsvError::Malformed(line, reason)) => (line, reason),
            other => panic!("expected malformed, got {other:?}"),
        }
    }

    #[test]
    fn plain_and_quoted_fields_per_rfc_4180() {
        let text = "a,b,c\r\n1,\"x, y\",\"he said \"\"hi\"\"\"\n\n2,\"multi\nline\",\r\n3,,\"\"";
        let got = rows(text).expect("parses");
        assert_eq!(
            got,
            vec![
                (1, vec!["a".into(), "b".into(), "c".into()]),
                (2, vec!["1".into(), "x, y".into(), "he said \"hi\"".into()]),
                (4, vec!["2".into(), "multi\nline".into(), "".into()]),
                (6, vec!["3".into(), "".into(), "".into()]),
            ]
        );
        assert!(rows("").expect("empty").is_empty());
        assert_eq!(rows("x").expect("no newline"), vec![(1, vec!["x".into()])]);
    }

    #[test]
    fn malformed_rows_name_their_line() {
        assert_eq!(malformed("a\nb\"c\n").0, 2);
        let (line, reason) = malformed("a\n\"b\"c\n");
        assert_eq!(line, 2);
        assert!(reason.contains("after a closing quote"), "{reason}");
        let (line, reason) = malformed("a\nb\n\"open\nstill open\n");
        assert_eq!(line, 3);
        assert!(reason.contains("unterminated"), "{reason}");
    }

    fn source_rows(text: &str, select: Vec<Select>) -> Result<Vec<Vec<Vec<u8>>>, EngineError> {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("in.csv");
        std::fs::write(&path, text).expect("write");
        let src = CsvFiles::new(vec![path], None, select)?;
        let mut cursor = src.open(0)?;
        let mut out = Vec::new();
        while cursor.fill(&mut |r| {
            out.push(kv::split_row(r)?.iter().map(|f| f.to_vec()).collect());
            Ok(())
        })? {}
        Ok(out)
    }

    #[test]
    fn the_source_selects_typed_columns_by_name_or_index() {
        let text = "k,v,w\nx,1.5,a\ny, 2 ,b\n";
        let select = vec![
            Select::Column(Column::Name("w".into()), ColumnType::Text),
            Select::Column(Column::Index(1), ColumnType::Number),
            Select::Column(Column::Name("0".into()), ColumnType::Text),
        ];
        let got = source_rows(text, select).expect("reads");
        assert_eq!(
            got[0],
            vec![b"a".to_vec(), 1.5f64.to_le_bytes().to_vec(), b"x".to_vec()]
        );
        assert_eq!(got[1][1], 2f64.to_le_bytes().to_vec());
        let bom = "\u{feff}key , v\nx,1\n";
        let select = vec![
            Select::Column(Column::Name("key".into()), ColumnType::Text),
            Select::Column(Column::Name("v".into()), ColumnType::Number),
        ];
        let got = source_rows(bom, select).expect("BOM and spaced names");
        assert_eq!(got[0], vec![b"x".to_vec(), 1f64.to_le_bytes().to_vec()]);
        let all = source_rows(text, vec![Select::All]).expect("reads");
        assert_eq!(all[1], vec![b"y".to_vec(), b" 2 ".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn bad_numbers_widths_and_columns_are_typed_errors() {
        let number = vec![Select::Column(Column::Name("v".into()), ColumnType::Number)];
        match source_rows("k,v\na,1\nb,zz\n", number.clone()) {
            Err(EngineError::NotNumeric {
                line: 3,
                column,
                value,
                ..
            }) => {
                assert_eq!((column.as_str(), value.as_str()), ("v", "zz"));
            }
            other => panic!("expected NotNumeric, got {other:?}"),
        }
        for not_a_number in ["", "NaN", "inf", "1,5", "0x10"] {
            let text = format!("k,v\na,\"{not_a_number}\"\n");
            assert!(
                matches!(
                    source_rows(&text, number.clone()),
                    Err(EngineError::NotNumeric { line: 2, .. })
                ),
                "{not_a_number:?}"
            );
        }
        assert!(matches!(
            source_rows("k,v\na,1,2\n", number.clone()),
            Err(EngineError::Csv { line: 2, .. })
        ));
        assert!(matches!(
            source_rows("k,w\na,1\n", number.clone()),
            Err(EngineError::Csv { line: 1, .. })
        ));
        assert!(matches!(source_rows("", number), Err(EngineError::Csv { .. })));
    }
}
