//! The stream index state machine: unit cases and a property over random
//! interleavings of pushes, commits and reads of two attempts.

use super::*;
use proptest::prelude::*;
use protocol::ServiceError;
use protocol::{BlockId, ShuffleId};

const P: PartitionId = PartitionId(0);

fn block(map: u32, attempt: u32, seq: u32) -> Block {
    let mut raw = Vec::new();
    protocol::records::append(&mut raw, format!("m{map}a{attempt}s{seq}").as_bytes()).expect("fits");
    let id = BlockId {
        shuffle: ShuffleId(1),
        map: MapId(map),
        attempt: AttemptId(attempt),
        partition: P,
        seq,
    };
    Block::seal(id, raw, 1, false).expect("seal")
}

fn push(index: &mut StreamIndex, gauge: &Arc<MemoryGauge>, map: u32, attempt: u32, seq: u32, on_disk: bool) {
    let held = Held::new(
        block(map, attempt, seq),
        None,
        Instant::now(),
        on_disk,
        gauge.clone(),
    );
    index.insert(MapId(map), AttemptId(attempt), seq, Slot::Memory(Box::new(held)));
}

fn delivered(step: Result<Step, ServerError>) -> (u32, u32, u32) {
    match step {
        Ok(Step::Deliver {
            map, attempt, seq, ..
        }) => (map.0, attempt.0, seq),
        other => panic!("expected a block, got {other:?}"),
    }
}

fn range(start: u32, end: u32) -> MapRange {
    MapRange::new(MapId(start), MapId(end)).expect("range")
}

#[test]
fn a_reader_streams_before_the_commit_and_ends_at_it() {
    let gauge = Arc::new(MemoryGauge::default());
    let mut index = StreamIndex::default();
    let mut reader = Cursor::new(range(0, 2));
    assert!(matches!(index.next(P, &mut reader), Ok(Step::Wait)));
    push(&mut index, &gauge, 0, 0, 0, false);
    push(&mut index, &gauge, 0, 0, 1, false);
    assert!(gauge.current() > 0);
    assert_eq!(delivered(index.next(P, &mut reader)), (0, 0, 0));
    assert_eq!(delivered(index.next(P, &mut reader)), (0, 0, 1));
    assert_eq!(gauge.current(), 0, "delivered memory-only blocks are dropped");
    assert!(matches!(index.next(P, &mut reader), Ok(Step::Wait)));
    index.commit(MapId(0), AttemptId(0), 2);
    index.commit(MapId(1), AttemptId(0), 0);
    assert!(matches!(index.next(P, &mut reader), Ok(Step::End)));
    assert_eq!(
        index.first_missing(MapId(0), AttemptId(0), 2),
        None,
        "consumed counts as arrived"
    );
}

#[test]
fn a_losing_attempt_fails_its_reader_and_is_dropped() {
    let gauge = Arc::new(MemoryGauge::default());
    let mut index = StreamIndex::default();
    let mut reader = Cursor::new(range(0, 1));
    push(&mut index, &gauge, 0, 0, 0, false);
    push(&mut index, &gauge, 0, 0, 1, false);
    assert_eq!(delivered(index.next(P, &mut reader)), (0, 0, 0));
    push(&mut index, &gauge, 0, 1, 0, false);
    index.commit(MapId(0), AttemptId(1), 1);
    assert_eq!(
        gauge.current(),
        block(0, 1, 0).encoded_len() as u64,
        "the loser's block is freed"
    );
    assert!(matches!(
        index.next(P, &mut reader),
        Err(ServerError::Service(ServiceError::AttemptFailed {
            map: MapId(0),
            attempt: AttemptId(0)
        }))
    ));
    // A new reader gets the winner.
    let mut fresh = Cursor::new(range(0, 1));
    assert_eq!(delivered(index.next(P, &mut fresh)), (0, 1, 0));
    assert!(matches!(index.next(P, &mut fresh), Ok(Step::End)));
}

#[test]
fn consumed_memory_only_blocks_are_gone_for_other_readers() {
    let gauge = Arc::new(MemoryGauge::default());
    let mut index = StreamIndex::default();
    let mut first = Cursor::new(range(0, 1));
    let mut waiting = Cursor::new(range(0, 1));
    push(&mut index, &gauge, 0, 0, 0, false);
    assert_eq!(delivered(index.next(P, &mut first)), (0, 0, 0));
    assert!(matches!(
        index.check_open(P, range(0, 1)),
        Err(ServerError::Service(ServiceError::DataGone { map: MapId(0), .. }))
    ));
    assert!(matches!(
        index.next(P, &mut waiting),
        Err(ServerError::Service(ServiceError::DataGone { .. }))
    ));
}

#[test]
fn full_copies_fall_back_to_disk_for_later_readers() {
    let gauge = Arc::new(MemoryGauge::default());
    let mut index = StreamIndex::default();
    push(&mut index, &gauge, 0, 0, 0, true);
    index.commit(MapId(0), AttemptId(0), 1);
    let mut a = Cursor::new(range(0, 1));
    assert!(matches!(
        index.next(P, &mut a),
        Ok(Step::Deliver {
            source: Source::Memory(..),
            ..
        })
    ));
    let mut b = Cursor::new(range(0, 1));
    assert!(index.check_open(P, range(0, 1)).is_ok());
    assert!(matches!(
        index.next(P, &mut b),
        Ok(Step::Deliver {
            source: Source::Disk,
            ..
        })
    ));
    assert!(matches!(index.next(P, &mut b), Ok(Step::End)));
}

#[derive(Clone, Debug)]
enum Op {
    Push { attempt: u32, seq: u32 },
    Commit { attempt: u32 },
    Read,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..2, 0u32..4).prop_map(|(attempt, seq)| Op::Push { attempt, seq }),
        1 => (0u32..2).prop_map(|attempt| Op::Commit { attempt }),
        4 => Just(Op::Read),
    ]
}

const BLOCKS: u32 = 4;

proptest! {
    /// Whatever the interleaving of pushes (duplicates included), commits
    /// and reads of two attempts, a reader never delivers a block twice,
    /// delivers one attempt per map in seq order, never a block of a
    /// losing attempt without failing, and ends exactly at the winner's
    /// last block.
    #[test]
    fn readers_deliver_each_block_once_and_only_from_the_winner(ops in proptest::collection::vec(op(), 1..80)) {
        let gauge = Arc::new(MemoryGauge::default());
        let mut index = StreamIndex::default();
        let mut reader = Cursor::new(range(0, 1));
        let mut got: Vec<(u32, u32)> = Vec::new();
        let mut failed = false;
        let mut ended = false;
        let mut committed: Option<u32> = None;
        for op in ops.iter().cloned().chain(std::iter::repeat_n(Op::Read, 10)) {
            match op {
                Op::Push { attempt, seq } => {
                    let dup = index.contains(MapId(0), AttemptId(attempt), seq);
                    let lost = committed.is_some_and(|c| c != attempt);
                    if !dup && !lost {
                        push(&mut index, &gauge, 0, attempt, seq, false);
                    }
                }
                Op::Commit { attempt } => {
                    if committed.is_none() && index.first_missing(MapId(0), AttemptId(attempt), BLOCKS).is_none() {
                        index.commit(MapId(0), AttemptId(attempt), BLOCKS);
                        committed = Some(attempt);
                    }
                }
                Op::Read if failed || ended => {}
                Op::Read => match index.next(P, &mut reader) {
                    Ok(Step::Deliver { attempt, seq, .. }) => {
                        prop_assert!(!got.contains(&(attempt.0, seq)), "delivered twice");
                        if let Some(&(a, _)) = got.first() {
                            prop_assert_eq!(a, attempt.0, "one attempt per map");
                        }
                        prop_assert_eq!(seq as usize, got.len(), "seq order");
                        if let Some(c) = committed {
                            prop_assert_eq!(c, attempt.0, "a losing attempt's block was delivered");
                        }
                        got.push((attempt.0, seq));
                    }
                    Ok(Step::Wait) => {}
                    Ok(Step::End) => {
                        ended = true;
                        let c = committed.expect("ends only after the commit");
                        let want: Vec<(u32, u32)> = (0..BLOCKS).map(|s| (c, s)).collect();
                        prop_assert_eq!(&got, &want);
                    }
                    Err(ServerError::Service(ServiceError::AttemptFailed { attempt, .. })) => {
                        failed = true;
                        prop_assert_eq!(Some(attempt.0), got.first().map(|g| g.0));
                        prop_assert!(committed.is_some_and(|c| c != attempt.0));
                    }
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                },
            }
        }
        if committed.is_some() && !failed {
            prop_assert!(ended, "a committed map read by one reader ends");
        }
        if committed.is_some() {
            // Only the winner's undelivered blocks may still hold memory.
            let max = u64::from(BLOCKS) * block(0, 0, 0).encoded_len() as u64 + 64;
            prop_assert!(gauge.current() <= max);
        }
    }
}
