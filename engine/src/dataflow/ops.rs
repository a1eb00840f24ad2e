//! Narrow operators: record-at-a-time transformations chained inside a
//! stage (no shuffle between them).
//!
//! An operator gets one record and emits zero or more records downstream
//! through a callback, so a chain runs without materializing anything in
//! between. Records are byte slices; keyed records are pairs
//! ([`crate::kv`]).

use std::sync::Arc;

use crate::{kv, EngineError};

/// The downstream of an operator: called with each output record.
pub type Downstream<'a> = dyn FnMut(&[u8]) -> Result<(), EngineError> + 'a;

/// A narrow operator. `scratch` is a buffer owned by the running task,
/// one per operator, for building output records without allocating.
pub trait Operator: Send + Sync {
    /// Processes one record, emitting results to `out`.
    fn apply(
        &self,
        record: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut Downstream<'_>,
    ) -> Result<(), EngineError>;
}

/// Handed to `flat_map` closures to emit records.
pub struct Emitter<'a> {
    out: &'a mut Downstream<'a>,
    scratch: &'a mut Vec<u8>,
    error: Option<EngineError>,
}

impl std::fmt::Debug for Emitter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter").field("error", &self.error).finish()
    }
}

impl Emitter<'_> {
    /// Emits one record downstream.
    pub fn emit(&mut self, record: &[u8]) {
        if self.error.is_none() {
            if let Err(e) = (self.out)(record) {
                self.error = Some(e);
            }
        }
    }

    /// Emits a pair record (`key`, `value`), framed as [`kv::encode`] does.
    pub fn emit_pair(&mut self, key: &[u8], value: &[u8]) {
        if self.error.is_none() {
            let mut buf = std::mem::take(self.scratch);
            buf.clear();
            kv::encode(key, value, &mut buf);
            self.emit(&buf);
            *self.scratch = buf;
        }
    }
}

/// Runs `f` with an emitter over `out`; returns the first downstream error.
fn with_emitter(
    scratch: &mut Vec<u8>,
    out: &mut Downstream<'_>,
    f: impl FnOnce(&mut Emitter<'_>) -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    let mut emitter = Emitter {
        out,
        scratch,
        error: None,
    };
    f(&mut emitter)?;
    match emitter.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A user closure lifted into an operator.
pub(crate) struct FnOp<F>(pub F);

/// `map`: one record in, one out.
pub(crate) struct MapOp<F>(pub F);
impl<F: Fn(&[u8]) -> Vec<u8> + Send + Sync> Operator for MapOp<F> {
    fn apply(&self, record: &[u8], _: &mut Vec<u8>, out: &mut Downstream<'_>) -> Result<(), EngineError> {
        out(&(self.0)(record))
    }
}

/// `filter`: records for which the predicate holds.
pub(crate) struct FilterOp<F>(pub F);
impl<F: Fn(&[u8]) -> bool + Send + Sync> Operator for FilterOp<F> {
    fn apply(&self, record: &[u8], _: &mut Vec<u8>, out: &mut Downstream<'_>) -> Result<(), EngineError> {
        if (self.0)(record) {
            out(record)?;
        }
        Ok(())
    }
}

/// `flat_map` / `try_flat_map`: any number of records out.
impl<F> Operator for FnOp<F>
where
    F: Fn(&[u8], &mut Emitter<'_>) -> Result<(), EngineError> + Send + Sync,
{
    fn apply(
        &self,
        record: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut Downstream<'_>,
    ) -> Result<(), EngineError> {
        with_emitter(scratch, out, |e| (self.0)(record, e))
    }
}

/// `key_by`: the record becomes the value of a pair keyed by `f(record)`.
pub(crate) struct KeyByOp<F>(pub F);
impl<F: Fn(&[u8]) -> &[u8] + Send + Sync> Operator for KeyByOp<F> {
    fn apply(
        &self,
        record: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut Downstream<'_>,
    ) -> Result<(), EngineError> {
        scratch.clear();
        kv::encode((self.0)(record), record, scratch);
        out(scratch)
    }
}

/// `key_prefix(n)`: the first `n` bytes are the key, the rest the value
/// (no byte is duplicated).
pub(crate) struct KeyPrefixOp(pub usize);
impl Operator for KeyPrefixOp {
    fn apply(
        &self,
        record: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut Downstream<'_>,
    ) -> Result<(), EngineError> {
        if record.len() < self.0 {
            return Err(EngineError::MalformedRecord {
                reason: format!("a {}-byte record has no {}-byte key", record.len(), self.0),
            });
        }
        let (key, value) = record.split_at(self.0);
        scratch.clear();
        kv::encode(key, value, scratch);
        out(scratch)
    }
}

/// `key_by_field(i)`: a row becomes a pair keyed by its field `i`, valued
/// by the other fields (a row keyed by field 0 already is that pair).
pub(crate) struct KeyByFieldOp(pub usize);
impl Operator for KeyByFieldOp {
    fn apply(
        &self,
        record: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut Downstream<'_>,
    ) -> Result<(), EngineError> {
        if self.0 == 0 {
            kv::decode(record)?;
            return out(record);
        }
        let fields = kv::split_row(record)?;
        let Some(key) = fields.get(self.0) else {
            return Err(EngineError::MalformedRecord {
                reason: format!("a row of {} fields has no field {}", fields.len(), self.0),
            });
        };
        scratch.clear();
        kv::push_field(key, scratch);
        for (i, f) in fields.iter().enumerate() {
            if i != self.0 {
                kv::push_field(f, scratch);
            }
        }
        out(scratch)
    }
}

/// `values`: a pair becomes its value.
pub(crate) struct ValuesOp;
impl Operator for ValuesOp {
    fn apply(&self, record: &[u8], _: &mut Vec<u8>, out: &mut Downstream<'_>) -> Result<(), EngineError> {
        out(kv::decode(record)?.1)
    }
}

/// The operators of a stage, with one scratch buffer each.
pub(crate) struct Chain<'a> {
    ops: &'a [Arc<dyn Operator>],
    scratch: Vec<Vec<u8>>,
}

impl<'a> Chain<'a> {
    pub(crate) fn new(ops: &'a [Arc<dyn Operator>]) -> Self {
        Chain {
            ops,
            scratch: ops.iter().map(|_| Vec::new()).collect(),
        }
    }

    /// Pushes `record` through every operator into `sink`.
    pub(crate) fn push(&mut self, record: &[u8], sink: &mut Downstream<'_>) -> Result<(), EngineError> {
        push(self.ops, &mut self.scratch, record, sink)
    }
}

fn push(
    ops: &[Arc<dyn Operator>],
    scratch: &mut [Vec<u8>],
    record: &[u8],
    sink: &mut Downstream<'_>,
) -> Result<(), EngineError> {
    match (ops.split_first(), scratch.split_first_mut()) {
        (Some((op, ops)), Some((buf, scratch))) => {
            op.apply(record, buf, &mut |r| push(ops, scratch, r, sink))
        }
        _ => sink(record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ops: Vec<Arc<dyn Operator>>, input: &[&[u8]]) -> Result<Vec<Vec<u8>>, EngineError> {
        let mut chain = Chain::new(&ops);
        let mut out = Vec::new();
        for r in input {
            chain.push(r, &mut |r| {
                out.push(r.to_vec());
                Ok(())
            })?;
        }
        Ok(out)
    }

    #[test]
    fn map_filter_flat_map_chain_in_order() {
        let ops: Vec<Arc<dyn Operator>> = vec![
            Arc::new(FnOp(|r: &[u8], e: &mut Emitter<'_>| {
                for w in r.split(|b| *b == b' ') {
                    e.emit(w);
                }
                Ok(())
            })),
            Arc::new(FilterOp(|r: &[u8]| !r.is_empty())),
            Arc::new(MapOp(|r: &[u8]| r.to_ascii_uppercase())),
        ];
        let out = run(ops, &[b"a bc", b"", b"d  e"]).expect("runs");
        assert_eq!(
            out,
            vec![b"A".to_vec(), b"BC".to_vec(), b"D".to_vec(), b"E".to_vec()]
        );
    }

    #[test]
    fn keying_operators_build_pairs() {
        fn first(r: &[u8]) -> &[u8] {
            &r[..1]
        }
        let ops: Vec<Arc<dyn Operator>> = vec![Arc::new(KeyByOp(first))];
        let out = run(ops, &[b"xyz"]).expect("runs");
        assert_eq!(kv::decode(&out[0]).expect("pair"), (&b"x"[..], &b"xyz"[..]));

        let ops: Vec<Arc<dyn Operator>> = vec![Arc::new(KeyPrefixOp(2)), Arc::new(ValuesOp)];
        assert_eq!(run(ops.clone(), &[b"abcd"]).expect("runs"), vec![b"cd".to_vec()]);
        assert!(matches!(
            run(ops, &[b"a"]),
            Err(EngineError::MalformedRecord { .. })
        ));

        let row = kv::row([&b"a"[..], b"b", b"c"]);
        let ops: Vec<Arc<dyn Operator>> = vec![Arc::new(KeyByFieldOp(1))];
        let out = run(ops, &[&row]).expect("runs");
        let (key, rest) = kv::decode(&out[0]).expect("pair");
        assert_eq!(key, b"b");
        assert_eq!(kv::split_row(rest).expect("row"), vec![&b"a"[..], b"c"]);
        let ops: Vec<Arc<dyn Operator>> = vec![Arc::new(KeyByFieldOp(5))];
        assert!(run(ops, &[&row]).is_err());
    }

    #[test]
    fn emit_pair_and_errors_propagate() {
        let ops: Vec<Arc<dyn Operator>> = vec![Arc::new(FnOp(|r: &[u8], e: &mut Emitter<'_>| {
            e.emit_pair(r, b"1");
            Ok(())
        }))];
        let mut chain = Chain::new(&ops);
        let err = chain.push(b"k", &mut |_| {
            Err(EngineError::MalformedRecord {
                reason: "downstream".into(),
            })
        });
        assert!(matches!(err, Err(EngineError::MalformedRecord { .. })));
        let mut seen = Vec::new();
        chain
            .push(b"k", &mut |r| {
                seen.push(r.to_vec());
                Ok(())
            })
            .expect("runs");
        assert_eq!(kv::decode(&seen[0]).expect("pair"), (&b"k"[..], &b"1"[..]));
    }
}
