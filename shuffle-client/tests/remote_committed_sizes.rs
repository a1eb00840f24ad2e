//! `RemoteShuffle::committed_sizes`: a map's committed attempt and its
//! bytes per partition, as a map that runs again after its earlier attempt
//! committed reports them (Spark's executor lost after the commit), and a
//! shuffle's bytes per partition. Two real servers on loopback.

mod support;

use protocol::{AppId, AttemptId, MapId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::remote::Transport;
use shuffle_client::{ClientError, ShuffleClient, ShuffleWriter, WriterOptions};
use support::Cluster;

const PARTITIONS: u32 = 6;

#[tokio::test]
async fn a_rerun_map_learns_the_committed_attempt_and_its_sizes() {
    let cluster = Cluster::start(2, Transport::Tcp).await;
    let client = &cluster.client;
    let app = AppId::new("sizes").expect("app");
    let spec = ShuffleSpec::new(2, PARTITIONS, ShuffleMode::Blocking).expect("spec");
    let handle = client
        .register_shuffle(&app, ShuffleId(1), spec)
        .await
        .expect("register");

    // Map 0, attempt 0, commits: records in partitions 0, 2 and 5.
    let mut w = client
        .open_writer(&handle, MapId(0), AttemptId(0), WriterOptions::default())
        .await
        .expect("writer");
    for i in 0..300u32 {
        let p = [0, 2, 5][(i % 3) as usize];
        w.write(PartitionId(p), format!("record {i} of attempt 0").as_bytes())
            .await
            .expect("write");
    }
    let (stats, first) = w.commit_with_partition_bytes().await.expect("commit");
    assert_eq!(first.iter().sum::<u64>(), stats.pushed_bytes);
    assert_eq!(first.iter().filter(|b| **b > 0).count(), 3);

    // Not committed yet: no attempt, no bytes.
    let none = client
        .committed_sizes(&handle, Some(MapId(1)))
        .await
        .expect("sizes");
    assert_eq!(none.attempt, None);
    assert_eq!(none.bytes, vec![0; PARTITIONS as usize]);

    // Map 0 runs again as attempt 1 (other data): it is refused (its
    // pushes are superseded, or its commit conflicts), and the sizes are
    // the committed attempt's.
    let mut again = client
        .open_writer(&handle, MapId(0), AttemptId(1), WriterOptions::default())
        .await
        .expect("writer");
    for i in 0..50u32 {
        again
            .write(PartitionId(i % PARTITIONS), b"a different, later attempt")
            .await
            .expect("write");
    }
    let conflict = again.commit_with_partition_bytes().await.expect_err("conflict");
    assert!(
        matches!(
            conflict,
            ClientError::CommitConflict { .. } | ClientError::AttemptSuperseded { .. }
        ),
        "{conflict:?}"
    );
    let sizes = client
        .committed_sizes(&handle, Some(MapId(0)))
        .await
        .expect("sizes");
    assert_eq!(sizes.attempt, Some(AttemptId(0)));
    assert_eq!(sizes.bytes, first);

    // The whole shuffle: map 1 commits too; totals add up per partition.
    let mut w1 = client
        .open_writer(&handle, MapId(1), AttemptId(0), WriterOptions::default())
        .await
        .expect("writer");
    for p in 0..PARTITIONS {
        w1.write(PartitionId(p), b"map one").await.expect("write");
    }
    let (_, second) = w1.commit_with_partition_bytes().await.expect("commit");
    let all = client.committed_sizes(&handle, None).await.expect("sizes");
    assert_eq!(all.attempt, None);
    let expected: Vec<u64> = first.iter().zip(&second).map(|(a, b)| a + b).collect();
    assert_eq!(all.bytes, expected);

    // Out of range is a typed error.
    let e = client
        .committed_sizes(&handle, Some(MapId(2)))
        .await
        .expect_err("out of range");
    assert!(matches!(e, ClientError::MapOutOfRange { .. }), "{e:?}");
}
