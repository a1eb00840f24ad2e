//! Streaming modes through the `Store` API: pipelined, hybrid-full and
//! hybrid-selective, with their memory, disk and error rules.

use protocol::ServiceError;
use std::task::Poll;

use super::*;
use protocol::SpillStrategy;

const FULL: ShuffleMode = ShuffleMode::Hybrid(SpillStrategy::Full);
const SELECTIVE: ShuffleMode = ShuffleMode::Hybrid(SpillStrategy::Selective);

fn streaming_store(budget: u64, spill_after: Duration) -> (tempfile::TempDir, Store) {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut config = StoreConfig::new(vec![tmp.path().join("disk0")]);
    config.memory_budget = MemoryBudget::unmetered(budget);
    config.spill_after = spill_after;
    config.fsync_on_seal = false;
    let store = Store::open(config).expect("open");
    (tmp, store)
}

fn register_mode(store: &Store, mode: ShuffleMode, maps: u32) {
    let spec = ShuffleSpec::new(maps, 1, mode).expect("spec");
    store.register_shuffle(&app(), SHUFFLE, spec).expect("register");
}

fn stream(store: &Store, maps: u32) -> StreamReader {
    match store
        .open_read(&app(), SHUFFLE, PartitionId(0), MapRange::all(maps))
        .expect("open")
    {
        ShuffleRead::Stream(r) => r,
        ShuffleRead::Sealed(_) => panic!("expected a streaming reader"),
    }
}

fn name(b: &Block) -> String {
    let rec = b.records().expect("records").next().expect("one").expect("ok");
    String::from_utf8(rec.to_vec()).expect("utf8")
}

fn next(r: &mut StreamReader) -> Result<Poll<Option<String>>, ServerError> {
    Ok(r.try_next()?.map(|b| b.map(|b| name(&b.block))))
}

#[test]
fn pipelined_streams_before_the_commit_and_frees_memory() {
    let (_tmp, store) = streaming_store(1 << 20, Duration::from_secs(60));
    register_mode(&store, ShuffleMode::Pipelined, 2);
    let mut reader = stream(&store, 2);
    assert!(next(&mut reader).expect("ok").is_pending());
    store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 0), block(0, 0, 0, 1)])
        .expect("push");
    assert!(store.stats().memory_bytes > 0);
    assert_eq!(store.budget().in_use(), store.stats().memory_bytes);
    assert_eq!(
        next(&mut reader).expect("ok"),
        Poll::Ready(Some("m0a0p0s0".into()))
    );
    assert_eq!(
        next(&mut reader).expect("ok"),
        Poll::Ready(Some("m0a0p0s1".into()))
    );
    assert_eq!((store.stats().memory_bytes, store.budget().in_use()), (0, 0));
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[2]))
        .expect("commit");
    store.push(&app(), SHUFFLE, &[block(1, 0, 0, 0)]).expect("push");
    let sealed = store
        .commit(&app(), SHUFFLE, MapId(1), AttemptId(0), manifest(&[1]))
        .expect("commit");
    assert!(sealed.sealed);
    assert_eq!(
        next(&mut reader).expect("ok"),
        Poll::Ready(Some("m1a0p0s0".into()))
    );
    assert_eq!(next(&mut reader).expect("ok"), Poll::Ready(None));
    let status = store.status(&app(), SHUFFLE).expect("status");
    assert_eq!(status.stored_bytes, 0, "pipelined writes nothing to disk");
    assert!(files_under(_tmp.path())
        .iter()
        .all(|f| !f.ends_with("shuffle.meta")));
}

fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    walk(dir)
}

#[test]
fn pipelined_pushes_without_credit_are_refused_whole_when_the_budget_is_full() {
    let (_tmp, store) = streaming_store(200, Duration::from_secs(60));
    register_mode(&store, ShuffleMode::Pipelined, 1);
    store.push(&app(), SHUFFLE, &[block(0, 0, 0, 0)]).expect("fits");
    let blocks: Vec<Block> = (1..8).map(|s| block(0, 0, 0, s)).collect();
    assert!(matches!(
        store.push(&app(), SHUFFLE, &blocks),
        Err(ServerError::NoCredit { .. })
    ));
    assert_eq!(store.stats().blocks_stored, 1);
    assert!(store.budget().in_use() <= 200);
}

#[test]
fn attempt_failed_and_data_gone_are_typed() {
    let (_tmp, store) = streaming_store(1 << 20, Duration::from_secs(60));
    register_mode(&store, ShuffleMode::Pipelined, 1);
    let mut reader = stream(&store, 1);
    store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 0), block(0, 0, 0, 1)])
        .expect("push");
    assert!(next(&mut reader).expect("ok").is_ready());
    assert!(matches!(
        store.open_read(&app(), SHUFFLE, PartitionId(0), MapRange::all(1)),
        Err(ServerError::Service(ServiceError::DataGone { map: MapId(0), .. }))
    ));
    store.push(&app(), SHUFFLE, &[block(0, 1, 0, 0)]).expect("push");
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(1), manifest(&[1]))
        .expect("commit");
    assert!(matches!(
        next(&mut reader),
        Err(ServerError::Service(ServiceError::AttemptFailed {
            map: MapId(0),
            attempt: AttemptId(0)
        }))
    ));
    assert!(matches!(
        store.push(&app(), SHUFFLE, &[block(0, 0, 0, 2)]),
        Err(ServerError::Service(ServiceError::AttemptSuperseded { .. }))
    ));
    assert_eq!(store.stats().memory_bytes, block(0, 1, 0, 0).encoded_len() as u64);
}

#[test]
fn hybrid_full_late_readers_read_disk_and_survive_a_restart() {
    let (tmp, store) = streaming_store(1 << 20, Duration::from_secs(60));
    register_mode(&store, FULL, 1);
    let mut live = stream(&store, 1);
    store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 0), block(0, 0, 0, 1)])
        .expect("push");
    assert_eq!(next(&mut live).expect("ok"), Poll::Ready(Some("m0a0p0s0".into())));
    // A second reader gets everything, the delivered block from disk.
    let mut late = stream(&store, 1);
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[2]))
        .expect("commit");
    for r in [&mut live, &mut late] {
        while let Poll::Ready(Some(_)) = next(r).expect("ok") {}
    }
    assert_eq!(late.delivered(), 2);
    assert_eq!(live.delivered(), 2);
    assert!(store.stats().spilled_bytes > 0);
    drop((live, late));
    drop(store);
    let mut config = StoreConfig::new(vec![tmp.path().join("disk0")]);
    config.fsync_on_seal = false;
    let store = Store::open(config).expect("reopen");
    assert_eq!(
        read_all(&store, 0, MapRange::all(1)).expect("sealed hybrid-full reads like blocking"),
        ["m0a0p0s0", "m0a0p0s1"]
    );
    assert!(matches!(
        store.open_read(&app(), SHUFFLE, PartitionId(0), MapRange::all(1)),
        Ok(ShuffleRead::Sealed(_))
    ));
}

#[test]
fn hybrid_selective_spills_when_memory_is_short_or_blocks_wait_too_long() {
    // Ample memory, consumed at once: nothing on disk.
    let (_tmp, store) = streaming_store(1 << 20, Duration::from_secs(60));
    register_mode(&store, SELECTIVE, 1);
    let mut reader = stream(&store, 1);
    store.push(&app(), SHUFFLE, &[block(0, 0, 0, 0)]).expect("push");
    assert!(next(&mut reader).expect("ok").is_ready());
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[1]))
        .expect("commit");
    assert_eq!(next(&mut reader).expect("ok"), Poll::Ready(None));
    assert_eq!(store.status(&app(), SHUFFLE).expect("status").stored_bytes, 0);

    // No memory: straight to disk, and a late reader reads it.
    let (_tmp, store) = streaming_store(10, Duration::from_secs(60));
    register_mode(&store, SELECTIVE, 1);
    store.push(&app(), SHUFFLE, &[block(0, 0, 0, 0)]).expect("push");
    assert!(store.status(&app(), SHUFFLE).expect("status").stored_bytes > 0);
    let mut reader = stream(&store, 1);
    assert_eq!(
        next(&mut reader).expect("ok"),
        Poll::Ready(Some("m0a0p0s0".into()))
    );

    // Not consumed in time: the sweep spills it, a reader still gets it.
    let (_tmp, store) = streaming_store(1 << 20, Duration::from_millis(1));
    register_mode(&store, SELECTIVE, 1);
    store.push(&app(), SHUFFLE, &[block(0, 0, 0, 0)]).expect("push");
    std::thread::sleep(Duration::from_millis(5));
    assert!(store.sweep_streams().expect("sweep") > 0);
    assert_eq!(store.stats().memory_bytes, 0);
    let mut reader = stream(&store, 1);
    assert_eq!(
        next(&mut reader).expect("ok"),
        Poll::Ready(Some("m0a0p0s0".into()))
    );
}

#[test]
fn unregister_frees_memory_and_fails_live_readers() {
    let (_tmp, store) = streaming_store(1 << 20, Duration::from_secs(60));
    register_mode(&store, ShuffleMode::Pipelined, 1);
    let mut reader = stream(&store, 1);
    store.push(&app(), SHUFFLE, &[block(0, 0, 0, 0)]).expect("push");
    store.unregister_shuffle(&app(), SHUFFLE).expect("unregister");
    assert_eq!((store.stats().memory_bytes, store.budget().in_use()), (0, 0));
    assert!(matches!(
        next(&mut reader),
        Err(ServerError::Service(ServiceError::UnknownShuffle { .. }))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reader_wakes_on_push_and_commit() {
    let (_tmp, store) = streaming_store(1 << 20, Duration::from_secs(60));
    let store = Arc::new(store);
    register_mode(&store, ShuffleMode::Pipelined, 1);
    let mut reader = stream(&store, 1);
    let task = tokio::spawn(async move {
        let mut names = Vec::new();
        while let Some(b) = reader.next_block().await.expect("read") {
            names.push(name(&b.block));
        }
        names
    });
    store.push(&app(), SHUFFLE, &[block(0, 0, 0, 0)]).expect("push");
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[1]))
        .expect("commit");
    assert_eq!(task.await.expect("join"), ["m0a0p0s0"]);
}
