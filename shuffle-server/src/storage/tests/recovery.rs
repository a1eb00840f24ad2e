//! Restarts: sealed shuffles come back, everything else is discarded.

use super::*;
use protocol::ServiceError;

fn config(root: &std::path::Path, dirs: usize) -> StoreConfig {
    StoreConfig::new((0..dirs).map(|i| root.join(format!("disk{i}"))).collect())
}

fn reopen(root: &std::path::Path, dirs: usize) -> Store {
    Store::open(config(root, dirs)).expect("reopen")
}

/// Simulates kill -9: no destructor runs, open handles are never closed.
fn crash(store: Store) {
    std::mem::forget(store);
}

/// Two maps, three partitions (one left empty), a losing attempt, and
/// scrambled arrival; returns what each partition must read back.
fn seal_sample(store: &Store, shuffle: ShuffleId) -> Vec<Vec<String>> {
    let spec = ShuffleSpec::new(2, 3, ShuffleMode::Blocking).expect("spec");
    store.register_shuffle(&app(), shuffle, spec).expect("register");
    let mut blocks = vec![
        block(1, 0, 0, 1),
        block(0, 0, 1, 0),
        block(1, 1, 0, 0), // loser
        block(0, 0, 0, 0),
        block(1, 0, 0, 0),
        block(1, 0, 1, 0),
        block(0, 0, 1, 1),
    ];
    for b in &mut blocks {
        b.header.id.shuffle = shuffle;
    }
    store.push(&app(), shuffle, &blocks).expect("push");
    let commit =
        |map, counts: &[u32]| store.commit(&app(), shuffle, MapId(map), AttemptId(0), manifest(counts));
    assert!(!commit(0, &[1, 2]).expect("commit 0").sealed);
    assert!(commit(1, &[2, 1]).expect("commit 1").sealed);
    vec![
        vec!["m0a0p0s0".into(), "m1a0p0s0".into(), "m1a0p0s1".into()],
        vec!["m0a0p1s0".into(), "m0a0p1s1".into(), "m1a0p1s0".into()],
        vec![],
    ]
}

fn read_shuffle(store: &Store, shuffle: ShuffleId, partition: u32) -> Result<Vec<String>, ServerError> {
    let mut reader = store.read(&app(), shuffle, PartitionId(partition), MapRange::all(2))?;
    let mut out = Vec::new();
    while let Some(block) = reader.next_block()? {
        for rec in block.records()? {
            out.push(String::from_utf8(rec?.to_vec()).expect("utf8"));
        }
    }
    Ok(out)
}

/// The meta files of a shuffle, one per folder.
fn meta_paths(store: &Store, shuffle: ShuffleId) -> Vec<PathBuf> {
    folders(store, shuffle)
        .into_iter()
        .map(|f| f.join(persist::META_FILE))
        .collect()
}

fn meta_path(store: &Store, shuffle: ShuffleId) -> PathBuf {
    meta_paths(store, shuffle).remove(0)
}

#[test]
fn a_sealed_shuffle_survives_a_crash_and_reads_back_the_same() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = reopen(tmp.path(), 2);
    let want = seal_sample(&store, SHUFFLE);
    let before = store.status(&app(), SHUFFLE).expect("status");
    let metas = meta_paths(&store, SHUFFLE);
    assert_eq!(metas.len(), 2, "a copy in each folder");
    assert!(metas.iter().all(|m| m.is_file()));
    crash(store);

    let store = reopen(tmp.path(), 2);
    assert_eq!(store.recovery().restored, [(app(), SHUFFLE)]);
    assert!(store.recovery().discarded.is_empty() && store.recovery().ignored.is_empty());
    for (p, records) in want.iter().enumerate() {
        assert_eq!(
            &read_shuffle(&store, SHUFFLE, p as u32).expect("read"),
            records,
            "partition {p}"
        );
    }
    assert_eq!(store.status(&app(), SHUFFLE).expect("status"), before);
    let by_dir = store.disk_status();
    assert_eq!(by_dir.len(), 2);
    assert_eq!(
        by_dir.iter().map(|d| d.stored_bytes).sum::<u64>(),
        before.stored_bytes
    );
    assert_eq!((store.app_ids(), store.shuffle_count()), (vec![app()], 1));

    // Re-registering: same spec is a no-op, another spec is refused.
    register(&store, 2, 3);
    assert!(matches!(
        store.register_shuffle(
            &app(),
            SHUFFLE,
            ShuffleSpec::new(2, 4, ShuffleMode::Blocking).expect("spec")
        ),
        Err(ServerError::Service(ServiceError::ShuffleExists { .. }))
    ));
    // Retried commits and pushes of the winners are harmless.
    let again = store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[1, 2]))
        .expect("retry");
    assert!(again.sealed && again.already_committed);
    assert_eq!(
        store
            .push(&app(), SHUFFLE, &[block(0, 0, 0, 0)])
            .expect("dup")
            .duplicates,
        1
    );
    assert!(matches!(
        store.push(&app(), SHUFFLE, &[block(1, 1, 0, 1)]),
        Err(ServerError::Service(ServiceError::AttemptSuperseded { .. }))
    ));
    // A second restart finds it again; unregistering deletes it for good.
    drop(store);
    let store = reopen(tmp.path(), 2);
    assert_eq!(read_shuffle(&store, SHUFFLE, 1).expect("read"), want[1]);
    store.unregister_app(&app()).expect("unregister");
    drop(store);
    let store = reopen(tmp.path(), 2);
    assert!(store.recovery().restored.is_empty());
    assert!(walk(tmp.path()).is_empty());
}

#[test]
fn unsealed_shuffles_are_deleted_in_every_data_dir() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = reopen(tmp.path(), 2);
    let sealed = ShuffleId(8);
    let want = seal_sample(&store, sealed);
    register(&store, 2, 4);
    let blocks: Vec<Block> = (0..4).map(|p| block(0, 0, p, 0)).collect();
    store.push(&app(), SHUFFLE, &blocks).expect("push");
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[1, 1, 1, 1]))
        .expect("one of two maps");
    let other = AppId::new("other-app").expect("id");
    let spec = ShuffleSpec::new(1, 1, ShuffleMode::Blocking).expect("spec");
    store.register_shuffle(&other, SHUFFLE, spec).expect("register");
    let unsealed_dirs = folders(&store, SHUFFLE);
    assert_eq!(unsealed_dirs.len(), 2);
    crash(store);

    let store = reopen(tmp.path(), 2);
    let report = store.recovery();
    assert_eq!(report.restored, [(app(), sealed)]);
    // The other app's shuffle wrote nothing: it has no folder to discard.
    assert_eq!(report.discarded, unsealed_dirs);
    assert!(unsealed_dirs.iter().all(|d| !d.exists()));
    for data_dir in store.data_dirs() {
        assert!(
            !data_dir.join("other-app").exists(),
            "empty app folder left behind"
        );
    }
    assert!(matches!(
        store.status(&app(), SHUFFLE),
        Err(ServerError::Service(ServiceError::UnknownShuffle { .. }))
    ));
    assert!(matches!(
        store.read(&app(), SHUFFLE, PartitionId(0), MapRange::all(2)),
        Err(ServerError::Service(ServiceError::UnknownShuffle { .. }))
    ));
    assert_eq!(read_shuffle(&store, sealed, 0).expect("read"), want[0]);
    // The id is free again and starts from nothing.
    register(&store, 1, 1);
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[]))
        .expect("commit");
    assert!(read_all(&store, 0, MapRange::all(1)).expect("read").is_empty());
}

#[test]
fn a_damaged_or_misplaced_meta_is_quarantined_never_deleted_nor_served() {
    type Damage = fn(&std::path::Path, &std::path::Path);
    let damages: [(&str, Damage); 5] = [
        ("flipped byte", |meta, _| {
            let mut bytes = std::fs::read(meta).expect("read");
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x20;
            std::fs::write(meta, bytes).expect("write");
        }),
        ("truncated", |meta, _| {
            let bytes = std::fs::read(meta).expect("read");
            std::fs::write(meta, &bytes[..bytes.len() - 5]).expect("write");
        }),
        ("empty", |meta, _| std::fs::write(meta, b"").expect("write")),
        ("unreadable (a folder)", |meta, _| {
            std::fs::remove_file(meta).expect("rm");
            std::fs::create_dir(meta).expect("mkdir");
        }),
        ("copied from another shuffle", |meta, other| {
            std::fs::copy(other, meta).expect("copy");
        }),
    ];
    for (what, damage) in damages {
        let tmp = tempfile::tempdir().expect("tmp");
        let store = reopen(tmp.path(), 2);
        let want = seal_sample(&store, SHUFFLE);
        seal_sample(&store, ShuffleId(8));
        let (meta, other) = (meta_path(&store, SHUFFLE), meta_path(&store, ShuffleId(8)));
        let dirs = folders(&store, SHUFFLE);
        let files: Vec<PathBuf> = (0..2).map(|p| partition_path(&store, SHUFFLE, p)).collect();
        let kept: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).expect("read")).collect();
        drop(store);
        damage(&meta, &other);

        let store = reopen(tmp.path(), 2);
        let report = store.recovery().clone();
        assert_eq!(report.restored, [(app(), ShuffleId(8))], "{what}");
        assert!(report.discarded.is_empty(), "{what}: nothing deleted");
        assert_eq!(report.quarantined.len(), 1, "{what}");
        let q = &report.quarantined[0];
        assert_eq!((q.app.clone(), q.shuffle), (app(), SHUFFLE), "{what}");
        assert!(
            q.reason.contains("shuffle.meta"),
            "{what}: reason names the file: {}",
            q.reason
        );
        assert!(dirs.iter().all(|d| !d.exists()), "{what}: moved aside");
        // Every byte is still there, under quarantine.
        assert_eq!(q.folders.len(), 2, "{what}");
        for (file, bytes) in files.iter().zip(&kept) {
            let name = file.file_name().expect("name");
            let found: Vec<PathBuf> = q
                .folders
                .iter()
                .map(|f| f.join(name))
                .filter(|f| f.is_file())
                .collect();
            assert_eq!(found.len(), 1, "{what}");
            assert!(found[0].starts_with(tmp.path()) && found[0].to_string_lossy().contains(".quarantine"));
            assert_eq!(&std::fs::read(&found[0]).expect("read"), bytes, "{what}");
        }
        assert!(
            matches!(
                store.read(&app(), SHUFFLE, PartitionId(0), MapRange::all(2)),
                Err(ServerError::Service(ServiceError::UnknownShuffle { .. }))
            ),
            "{what}"
        );
        // The id is free again; a later restart leaves the quarantine alone.
        drop(store);
        let store = reopen(tmp.path(), 2);
        assert!(store.recovery().quarantined.is_empty(), "{what}");
        assert!(q.folders.iter().all(|f| f.is_dir()), "{what}");
        assert!(!want.is_empty());
    }
}

#[test]
fn a_crash_between_meta_copies_still_seals_and_one_before_any_discards() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = reopen(tmp.path(), 2);
    let want = seal_sample(&store, SHUFFLE);
    let metas = meta_paths(&store, SHUFFLE);
    drop(store);
    // The second copy was still a temporary file: sealed, from the first.
    std::fs::rename(&metas[1], metas[1].with_file_name(persist::META_TMP_FILE)).expect("rename");
    let store = reopen(tmp.path(), 2);
    assert_eq!(store.recovery().restored, [(app(), SHUFFLE)]);
    assert_eq!(read_shuffle(&store, SHUFFLE, 1).expect("read"), want[1]);
    assert!(
        !metas[1].with_file_name(persist::META_TMP_FILE).exists(),
        "leftover removed"
    );
    let dirs = folders(&store, SHUFFLE);
    let metas = meta_paths(&store, SHUFFLE);
    drop(store);
    // Neither copy made it: never sealed, discarded.
    for meta in &metas {
        if meta.exists() {
            std::fs::rename(meta, meta.with_file_name(persist::META_TMP_FILE)).expect("rename");
        }
    }
    let store = reopen(tmp.path(), 2);
    assert!(store.recovery().restored.is_empty());
    assert_eq!(store.recovery().discarded, dirs);
}

#[test]
fn a_meta_of_a_newer_format_is_left_alone_and_its_id_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = reopen(tmp.path(), 2);
    let want = seal_sample(&store, SHUFFLE);
    let metas = meta_paths(&store, SHUFFLE);
    let before: Vec<(PathBuf, Vec<u8>)> = walk(tmp.path())
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(&f).expect("read");
            (f, bytes)
        })
        .collect();
    drop(store);
    let set_version = |v: u16| {
        for meta in &metas {
            let mut bytes = std::fs::read(meta).expect("read");
            bytes[4..6].copy_from_slice(&v.to_le_bytes());
            std::fs::write(meta, bytes).expect("write");
        }
    };
    set_version(meta::META_VERSION + 1);
    let newer: Vec<(PathBuf, Vec<u8>)> = before
        .iter()
        .map(|(f, _)| (f.clone(), std::fs::read(f).expect("read")))
        .collect();

    let store = reopen(tmp.path(), 2);
    let report = store.recovery();
    assert!(report.restored.is_empty() && report.discarded.is_empty() && report.quarantined.is_empty());
    assert_eq!(report.held.len(), 1);
    let reason = &report.held[0].reason;
    assert!(
        reason.contains(&format!("version {}", meta::META_VERSION + 1))
            && reason.contains(&format!("reads version {}", meta::META_VERSION)),
        "{reason}"
    );
    assert!(matches!(
        store.read(&app(), SHUFFLE, PartitionId(0), MapRange::all(2)),
        Err(ServerError::Service(ServiceError::UnknownShuffle { .. }))
    ));
    let spec = ShuffleSpec::new(2, 3, ShuffleMode::Blocking).expect("spec");
    assert!(
        matches!(
            store.register_shuffle(&app(), SHUFFLE, spec),
            Err(ServerError::CorruptFile { .. })
        ),
        "its id cannot be reused, which would overwrite it"
    );
    store.unregister_app(&app()).expect("unregister");
    drop(store);
    // Untouched, byte for byte, by the open and by the unregister.
    for (file, bytes) in &newer {
        assert_eq!(
            &std::fs::read(file).expect("still there"),
            bytes,
            "{}",
            file.display()
        );
    }
    // Rolling forward again (here: back to this version) finds it whole.
    set_version(meta::META_VERSION);
    let store = reopen(tmp.path(), 2);
    assert_eq!(store.recovery().restored, [(app(), SHUFFLE)]);
    for (p, records) in want.iter().enumerate() {
        assert_eq!(&read_shuffle(&store, SHUFFLE, p as u32).expect("read"), records);
    }
}

#[test]
fn reordering_or_adding_data_dirs_neither_loses_nor_misreads_sealed_data() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dirs: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("disk{i}"))).collect();
    let open = |list: &[PathBuf]| Store::open(StoreConfig::new(list.to_vec())).expect("open");
    let store = open(&dirs[..2]);
    let want: Vec<Vec<Vec<String>>> = (0..4).map(|s| seal_sample(&store, ShuffleId(s))).collect();
    drop(store);
    let check = |store: &Store, what: &str| {
        assert_eq!(store.recovery().restored.len(), 4, "{what}");
        assert!(store.recovery().discarded.is_empty() && store.recovery().quarantined.is_empty());
        for (s, parts) in want.iter().enumerate() {
            for (p, records) in parts.iter().enumerate() {
                assert_eq!(
                    &read_shuffle(store, ShuffleId(s as u32), p as u32).expect("read"),
                    records,
                    "{what}: shuffle {s} partition {p}"
                );
            }
        }
    };
    let store = open(&[dirs[1].clone(), dirs[0].clone()]);
    check(&store, "reordered");
    drop(store);
    let store = open(&[dirs[2].clone(), dirs[1].clone(), dirs[0].clone()]);
    check(&store, "a new first dir");
    // New shuffles use the new dir too.
    register(&store, 1, 8);
    let blocks: Vec<Block> = (0..8).map(|p| block(0, 0, p, 0)).collect();
    store.push(&app(), SHUFFLE, &blocks).expect("push");
    let status = store.disk_status();
    assert!(status.iter().all(|d| d.stored_bytes > 0), "{status:?}");
}

#[test]
fn foreign_entries_are_left_untouched() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = reopen(tmp.path(), 1);
    seal_sample(&store, SHUFFLE);
    let root = store.data_dirs()[0].clone();
    drop(store);
    let foreign = [
        root.join("lost+found"),
        root.join("app-test").join("shuffle-07"),
        root.join("app-test").join("shuffle-x"),
        root.join("empty-app-looking").join("notes"),
    ];
    for dir in &foreign {
        std::fs::create_dir_all(dir.join("inner")).expect("mkdir");
    }
    let files = [root.join("README"), root.join("app-test").join("shuffle-9")];
    for file in &files {
        std::fs::write(file, b"keep").expect("write");
    }

    let store = reopen(tmp.path(), 1);
    assert_eq!(store.recovery().restored, [(app(), SHUFFLE)]);
    assert!(store.recovery().discarded.is_empty());
    let mut ignored: Vec<PathBuf> = foreign.iter().chain(&files).cloned().collect();
    ignored.sort();
    assert_eq!(store.recovery().ignored, ignored);
    assert!(foreign.iter().all(|d| d.join("inner").is_dir()));
    assert!(files.iter().all(|f| std::fs::read(f).expect("kept") == b"keep"));
}

#[cfg(unix)]
#[test]
fn discarding_never_follows_a_symlinked_app_folder_out_of_the_data_dirs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = reopen(tmp.path(), 2);
    register(&store, 1, 2);
    store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 0), block(0, 0, 1, 0)])
        .expect("push");
    let dirs = folders(&store, SHUFFLE);
    assert_eq!(dirs.len(), 2);
    drop(store);
    // The app folder of disk 0 is replaced by a symlink to a folder outside
    // the data dirs that happens to hold a `shuffle-7`.
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(outside.join("shuffle-7")).expect("mkdir");
    std::fs::write(outside.join("shuffle-7").join("precious"), b"keep").expect("write");
    let app0 = dirs[0].parent().expect("app folder").to_path_buf();
    std::fs::remove_dir_all(&app0).expect("rm");
    std::os::unix::fs::symlink(&outside, &app0).expect("symlink");

    let store = reopen(tmp.path(), 2);
    assert_eq!(store.recovery().discarded, [dirs[1].clone()]);
    assert_eq!(store.recovery().ignored, [app0]);
    assert_eq!(
        std::fs::read(outside.join("shuffle-7").join("precious")).expect("kept"),
        b"keep"
    );
}

#[test]
fn without_fsync_on_seal_the_meta_is_still_written() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut cfg = config(tmp.path(), 2);
    cfg.fsync_on_seal = false;
    assert!(StoreConfig::new(vec![]).fsync_on_seal, "on by default");
    let store = Store::open(cfg.clone()).expect("open");
    let want = seal_sample(&store, SHUFFLE);
    assert!(meta_path(&store, SHUFFLE).is_file());
    crash(store);
    let store = Store::open(cfg).expect("reopen");
    assert_eq!(store.recovery().restored, [(app(), SHUFFLE)]);
    assert_eq!(read_shuffle(&store, SHUFFLE, 0).expect("read"), want[0]);
}

#[test]
fn a_short_or_missing_partition_file_after_restart_is_corrupt_not_a_crash() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = reopen(tmp.path(), 2);
    seal_sample(&store, SHUFFLE);
    let (p0, p1) = (
        partition_path(&store, SHUFFLE, 0),
        partition_path(&store, SHUFFLE, 1),
    );
    drop(store);
    let len = std::fs::metadata(&p0).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p0)
        .expect("open")
        .set_len(len - 1)
        .expect("truncate");
    std::fs::remove_file(&p1).expect("remove");

    let store = reopen(tmp.path(), 2);
    assert_eq!(store.recovery().restored, [(app(), SHUFFLE)]);
    assert_eq!(store.recovery().missing_files, [(app(), SHUFFLE, PartitionId(1))]);
    for p in [0, 1] {
        let err = read_shuffle(&store, SHUFFLE, p).expect_err("damaged");
        assert!(
            matches!(err, ServerError::CorruptFile { .. }),
            "partition {p}: {err}"
        );
    }
    assert!(read_shuffle(&store, SHUFFLE, 2).expect("empty").is_empty());
}

#[test]
fn a_seal_whose_meta_cannot_be_written_does_not_take_effect() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = reopen(tmp.path(), 2);
    register(&store, 2, 1);
    store
        .push(&app(), SHUFFLE, &[block(0, 0, 0, 0), block(1, 0, 0, 0)])
        .expect("push");
    store
        .commit(&app(), SHUFFLE, MapId(0), AttemptId(0), manifest(&[1]))
        .expect("commit 0");
    // A folder where the temporary meta must go makes the write fail.
    let blocker = folders(&store, SHUFFLE)[0].join(persist::META_TMP_FILE);
    std::fs::create_dir(&blocker).expect("mkdir");
    let err = store
        .commit(&app(), SHUFFLE, MapId(1), AttemptId(0), manifest(&[1]))
        .expect_err("meta write fails");
    assert!(matches!(err, ServerError::Io { .. }), "{err}");
    let status = store.status(&app(), SHUFFLE).expect("status");
    assert_eq!((status.sealed, status.committed_maps), (false, 1));
    assert!(matches!(
        store.read(&app(), SHUFFLE, PartitionId(0), MapRange::all(2)),
        Err(ServerError::Service(ServiceError::NotReady { .. }))
    ));
    assert!(meta_paths(&store, SHUFFLE).iter().all(|m| !m.exists()));
    // The commit was undone: retrying it seals.
    std::fs::remove_dir(&blocker).expect("rmdir");
    let outcome = store
        .commit(&app(), SHUFFLE, MapId(1), AttemptId(0), manifest(&[1]))
        .expect("retry");
    assert!(outcome.sealed && !outcome.already_committed);
    drop(store);
    let store = reopen(tmp.path(), 2);
    assert_eq!(
        read_all(&store, 0, MapRange::all(2)).expect("read"),
        ["m0a0p0s0", "m1a0p0s0"]
    );
}

#[test]
fn live_shuffles_report_bytes_per_disk_and_sync() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = reopen(tmp.path(), 2);
    assert!(store.app_ids().is_empty() && store.shuffle_count() == 0);
    register(&store, 1, 4);
    let blocks: Vec<Block> = (0..4).map(|p| block(0, 0, p, 0)).collect();
    store.push(&app(), SHUFFLE, &blocks).expect("push");
    store.sync_all().expect("sync");
    let by_dir = store.disk_status();
    for d in &by_dir {
        let on_disk: u64 = walk(&d.path)
            .iter()
            .map(|f| std::fs::metadata(f).expect("stat").len())
            .sum();
        assert_eq!(d.stored_bytes, on_disk, "{}", d.path.display());
        assert!(d.stored_bytes > 0 && d.written_bytes == d.stored_bytes);
    }
    assert_eq!(
        by_dir.iter().map(|d| d.path.clone()).collect::<Vec<_>>(),
        store.data_dirs()
    );
    store.unregister_shuffle(&app(), SHUFFLE).expect("unregister");
    assert!(store.disk_status().iter().all(|d| d.stored_bytes == 0));
}
