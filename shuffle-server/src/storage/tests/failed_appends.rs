//! A failed append (a disk filling up mid-block, an I/O error) leaves every
//! partition file and index exactly as before: later blocks of the same
//! partition and of every other shuffle land where the index says, and
//! every committed shuffle reads back byte for byte.

use super::*;
use crate::storage::partition::failpoint;

fn shuffle_block(shuffle: u32, map: u32, partition: u32, seq: u32, len: usize) -> Block {
    let mut raw = Vec::new();
    let mut record = format!("s{shuffle}m{map}p{partition}q{seq}:").into_bytes();
    record.resize(len, b'a' + (seq % 26) as u8);
    records::append(&mut raw, &record).expect("fits");
    let id = BlockId {
        shuffle: ShuffleId(shuffle),
        map: MapId(map),
        attempt: AttemptId(0),
        partition: PartitionId(partition),
        seq,
    };
    Block::seal(id, raw, 1, false).expect("seal")
}

fn read_records(store: &Store, shuffle: u32, partition: u32, maps: u32) -> Vec<Vec<u8>> {
    let mut reader = store
        .read(
            &app(),
            ShuffleId(shuffle),
            PartitionId(partition),
            MapRange::all(maps),
        )
        .expect("open");
    let mut out = Vec::new();
    while let Some(block) = reader.next_block().expect("every block intact") {
        for rec in block.records().expect("records") {
            out.push(rec.expect("record").to_vec());
        }
    }
    out
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).expect("stat").len()
}

#[test]
fn a_short_write_is_cut_back_and_the_next_block_lands_where_the_index_says() {
    // Kept handles (the case the old code got wrong: the handle's position
    // stayed past the cut) and handles opened per block.
    for max_open_files in [16, 0] {
        let (_tmp, store) = store(1, max_open_files);
        register(&store, 1, 1);
        store.push(&app(), SHUFFLE, &[block(0, 0, 0, 0)]).expect("first");
        let path = partition_path(&store, SHUFFLE, 0);
        let len_before = file_len(&path);
        // The second block gets 20 bytes of its header out, then ENOSPC.
        failpoint::fail_after(20);
        let err = store
            .push(&app(), SHUFFLE, &[block(0, 0, 0, 1)])
            .expect_err("disk full");
        assert!(!failpoint::armed());
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(file_len(&path), len_before, "the partial block was cut off");
        assert_eq!(store.disk_status()[0].errors, [1, 0]);
        // The retry lands right after the first block: no hole, no zeros.
        store.push(&app(), SHUFFLE, &[block(0, 0, 0, 1)]).expect("retry");
        store
            .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[2]))
            .expect("seal");
        assert_eq!(
            read_all(&store, 0, MapRange::all(1)).expect("read"),
            ["m0a0p0s0", "m0a0p0s1"]
        );
    }
}

#[test]
fn a_first_block_that_fails_goes_to_another_dir_and_leaves_nothing_behind() {
    let (_tmp, store) = store(2, 16);
    // Both partitions' first blocks: whichever dir each prefers, one write
    // fails there and the block lands in the other dir.
    register(&store, 1, 1);
    failpoint::fail_after(7);
    store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 0)])
        .expect("placed elsewhere");
    let path = partition_path(&store, SHUFFLE, 0);
    let status = store.disk_status();
    let (full, used): (Vec<_>, Vec<_>) = status.iter().partition(|d| !d.accepting);
    assert_eq!((full.len(), used.len()), (1, 1), "{status:?}");
    assert!(path.starts_with(&used[0].path));
    assert_eq!(walk(&full[0].path), Vec::<PathBuf>::new(), "no partial file left");
    assert!(full[0].reason.as_deref().is_some_and(|r| r.contains("no space")));
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[1]))
        .expect("seal");
    assert_eq!(read_all(&store, 0, MapRange::all(1)).expect("read"), ["m0a0p0s0"]);
}

#[test]
fn an_io_error_takes_the_dir_out_of_service_and_its_partitions_are_lost() {
    let (_tmp, store) = store(2, 16);
    register(&store, 1, 4);
    let firsts: Vec<Block> = (0..4).map(|p| block(0, 0, p, 0)).collect();
    store.push(&app(), SHUFFLE, &firsts).expect("first blocks");
    let dir_of = |p: u32| {
        let path = partition_path(&store, SHUFFLE, p);
        (0..2)
            .find(|&d| path.starts_with(&store.disk_status()[d].path))
            .expect("in a dir")
    };
    let failing = dir_of(0);
    let lost: Vec<u32> = (0..4).filter(|&p| dir_of(p) == failing).collect();
    // The next block of partition 0 meets EIO part-way.
    failpoint::fail_after_with(10, libc::EIO);
    let err = store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 1)])
        .expect_err("EIO");
    assert!(err.to_string().contains("Input/output error"), "{err}");
    let status = &store.disk_status()[failing];
    assert!(!status.healthy && !status.accepting, "{status:?}");
    assert_eq!(status.errors, [0, 1]);
    // Every partition of that dir is lost; the others go on.
    for p in 0..4 {
        let again = store.push(&app(), SHUFFLE, &[block(0, 0, p, 1)]);
        if lost.contains(&p) {
            assert!(
                matches!(again, Err(ServerError::Service(ServiceError::DiskFailed { partition, .. })) if partition == PartitionId(p)),
                "{again:?}"
            );
        } else {
            again.expect("the other dir takes appends");
        }
    }
    let counts: Vec<u32> = (0..4).map(|p| if lost.contains(&p) { 1 } else { 2 }).collect();
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&counts))
        .expect("seal: the meta goes to the healthy dir only");
    for p in 0..4 {
        let read = read_all(&store, p, MapRange::all(1));
        if lost.contains(&p) {
            assert!(
                matches!(read, Err(ServerError::Service(ServiceError::DiskFailed { .. }))),
                "{read:?}"
            );
        } else {
            assert_eq!(read.expect("read").len(), 2);
        }
    }
    // A probe that writes brings the dir back for new partitions; the lost
    // ones stay lost.
    store.disks.probe_all();
    assert!(store.disk_status()[failing].healthy);
    assert!(read_all(&store, lost[0], MapRange::all(1)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Three shuffles written at once, block by block in a scrambled order,
    /// with writes failing part-way at random points; each failed block is
    /// pushed again (as a client retries). Every shuffle then reads back
    /// exactly what was pushed, and each file holds exactly its blocks.
    #[test]
    fn interleaved_shuffles_survive_random_short_writes(
        order in proptest::collection::vec((0u32..3, 0u32..2, 0u32..3), 10..60),
        failures in proptest::collection::vec((0usize..60, 0usize..200), 0..12),
        lens in proptest::collection::vec(1usize..3000, 60),
    ) {
        let (_tmp, store) = store(2, 4);
        for s in 0..3 {
            let spec = ShuffleSpec::new(2, 3, ShuffleMode::Blocking).expect("spec");
            store.register_shuffle(&app(), ShuffleId(s), spec).expect("register");
        }
        // Next seq and what each (shuffle, map, partition) pushed.
        let mut next: HashMap<(u32, u32, u32), u32> = HashMap::new();
        let mut pushed: HashMap<(u32, u32, u32), Vec<Vec<u8>>> = HashMap::new();
        for (i, &(s, m, p)) in order.iter().enumerate() {
            let seq = *next.entry((s, m, p)).or_insert(0);
            let b = shuffle_block(s, m, p, seq, lens[i % lens.len()]);
            let mut stored = false;
            if let Some(&(_, after)) = failures.iter().find(|(at, _)| *at == i) {
                failpoint::fail_after(after.min(b.encoded_len() - 1));
                // A partition's first block moves to the other dir; any
                // other fails, and the dir takes no new partition until the
                // next probe finds room.
                stored = store.push(&app(), ShuffleId(s), std::slice::from_ref(&b)).is_ok();
                prop_assert!(!failpoint::armed());
                store.probe_disks();
            }
            if !stored {
                store.push(&app(), ShuffleId(s), std::slice::from_ref(&b)).expect("push");
            }
            pushed.entry((s, m, p)).or_default().push(b.records().expect("r").map(|r| r.expect("r").to_vec()).collect::<Vec<_>>().concat());
            *next.get_mut(&(s, m, p)).expect("seen") += 1;
        }
        for s in 0..3 {
            for m in 0..2 {
                let counts: Vec<u32> = (0..3).map(|p| next.get(&(s, m, p)).copied().unwrap_or(0)).collect();
                store.commit(&app(), ShuffleId(s), MapId(m), AttemptId(0), manifest(&counts)).expect("commit");
            }
            for p in 0..3 {
                let want: Vec<Vec<u8>> = (0..2).flat_map(|m| pushed.get(&(s, m, p)).cloned().unwrap_or_default()).collect();
                prop_assert_eq!(read_records(&store, s, p, 2), want);
                let state = store.shuffle(&app(), ShuffleId(s)).expect("registered");
                if let Some(file) = state.file(PartitionId(p)) {
                    let file = locks::lock(&file);
                    if let Some(place) = file.place() {
                        prop_assert_eq!(file_len(&place.path), file.len(), "no hole, no tail");
                    }
                }
            }
        }
    }
}
