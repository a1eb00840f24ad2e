//! Unregistering with one server of two gone: the call goes on to the
//! server left and deletes its data there, then reports the lost one's
//! error. (Spark's driver unregisters shuffles and its app this way after
//! losing a server; stopping at the first failure kept the others' data
//! until the app expired.) Two real servers on loopback.

mod support;

use std::sync::Arc;
use std::time::Duration;

use protocol::{AppId, AttemptId, MapId, PartitionId, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::remote::Transport;
use shuffle_client::{
    ClientError, Placement, RemoteOptions, RemoteShuffle, ShuffleClient, ShuffleHandle, ShuffleWriter,
    WriterOptions,
};
use support::Cluster;

#[tokio::test]
async fn unregister_goes_on_past_a_lost_server() {
    let cluster = Cluster::start(2, Transport::Tcp).await;
    let urls = Cluster::urls(&cluster.servers, Transport::Tcp);
    let options = RemoteOptions {
        retry_window: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(1),
        ..Cluster::options(&cluster.servers)
    };
    let client = RemoteShuffle::connect(&urls, options.clone())
        .await
        .expect("connect");
    let app = AppId::new("lost-one").expect("app");
    let spec = ShuffleSpec::new(1, 4, ShuffleMode::Blocking).expect("spec");
    let handle = client
        .register_shuffle(&app, ShuffleId(3), spec)
        .await
        .expect("register");
    let mut w = client
        .open_writer(&handle, MapId(0), AttemptId(0), WriterOptions::default())
        .await
        .expect("writer");
    for p in 0..4 {
        w.write(PartitionId(p), b"a record").await.expect("write");
    }
    w.commit().await.expect("commit");

    // The second server alone, to look at what it holds.
    let survivor_url = urls[1].clone();
    let survivor = RemoteShuffle::connect(std::slice::from_ref(&survivor_url), options)
        .await
        .expect("connect");
    let on_survivor = ShuffleHandle::from_parts(
        app.clone(),
        ShuffleId(3),
        spec,
        Placement::Spread {
            servers: Arc::from(vec![survivor_url.to_string()]),
            offset: 0,
            replication: shuffle_client::protocol::Replication::ONE,
        },
    );
    survivor
        .committed_sizes(&on_survivor, None)
        .await
        .expect("the survivor holds the shuffle");

    // The first server is lost; it comes first in the order of calls.
    let mut servers = cluster.servers;
    servers.remove(0).shutdown().await.expect("shutdown");

    let err = client
        .unregister_shuffle(&handle)
        .await
        .expect_err("a server is gone");
    assert!(matches!(err, ClientError::Connection { .. }), "{err:?}");
    let after = survivor.committed_sizes(&on_survivor, None).await;
    assert!(
        matches!(after, Err(ClientError::UnknownShuffle { .. })),
        "the survivor still holds it: {after:?}"
    );

    let err = client.unregister_app(&app).await.expect_err("a server is gone");
    assert!(matches!(err, ClientError::Connection { .. }), "{err:?}");
}
