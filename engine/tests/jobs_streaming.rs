//! A join reads its two inputs at once: with a streaming shuffle
//! (pipelined, hybrid), reading one input to its end before the other can
//! deadlock. A mock client makes the left input's second block wait until
//! the right input has been read from: a join that drained the left first
//! would never finish.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::dataflow::{JobBuilder, Sink};
use engine::plan::{StageId, TaskContext, TaskCounters};
use shuffle_client::protocol::{
    AppId, AttemptId, Block, CommitManifest, MapId, MapRange, PartitionId, ShuffleId, ShuffleMode,
    ShuffleSpec,
};
use shuffle_client::{
    Batcher, ClientError, CommitAck, Placement, PushAck, ReadStats, RecordBatch, ShuffleClient,
    ShuffleHandle, ShuffleReader, ShuffleStatus, ShuffleWriter, WriteStats, WriterOptions,
};
use tokio::sync::Notify;

/// Set once the right input was read from.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    notify: Notify,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.open.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

struct MockClient {
    gate: Arc<Gate>,
}

/// Blocks of one-record pairs `(key, value)`.
fn blocks(shuffle: u32, pairs: &[(&str, &str)]) -> Vec<Block> {
    let options = WriterOptions {
        block_size: 1,
        ..WriterOptions::default()
    };
    let mut b = Batcher::new(ShuffleId(shuffle), MapId(0), AttemptId(0), 1, options);
    let mut ready = Vec::new();
    for (k, v) in pairs {
        let mut rec = Vec::new();
        engine::kv::encode(k.as_bytes(), v.as_bytes(), &mut rec);
        b.write(PartitionId(0), &rec, &mut ready).expect("write");
    }
    b.finish(&mut ready).expect("finish");
    ready
}

struct MockReader {
    side: u32,
    blocks: std::vec::IntoIter<Block>,
    served: u32,
    gate: Arc<Gate>,
}

impl ShuffleReader for MockReader {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>, ClientError> {
        if self.side == 0 && self.served == 1 {
            // The left input's producer waits for credit the right input's
            // reads free.
            self.gate.wait().await;
        }
        if self.side == 1 {
            self.gate.open();
        }
        self.served += 1;
        self.blocks
            .next()
            .map(|b| RecordBatch::from_block(&b))
            .transpose()
    }

    fn stats(&self) -> ReadStats {
        ReadStats::default()
    }
}

struct NoWriter;
impl ShuffleWriter for NoWriter {
    async fn write(&mut self, _: PartitionId, _: &[u8]) -> Result<(), ClientError> {
        Err(mock_error())
    }
    async fn commit(self) -> Result<WriteStats, ClientError> {
        Err(mock_error())
    }
}

fn mock_error() -> ClientError {
    ClientError::Internal {
        server: "mock".into(),
        reason: "not in this mock".into(),
    }
}

fn unsupported<T>() -> Result<T, ClientError> {
    Err(mock_error())
}

impl ShuffleClient for MockClient {
    type Writer = NoWriter;
    type Reader = MockReader;

    async fn register_shuffle(
        &self,
        _: &AppId,
        _: ShuffleId,
        _: ShuffleSpec,
    ) -> Result<ShuffleHandle, ClientError> {
        unsupported()
    }
    async fn open_writer(
        &self,
        _: &ShuffleHandle,
        _: MapId,
        _: AttemptId,
        _: WriterOptions,
    ) -> Result<NoWriter, ClientError> {
        unsupported()
    }
    async fn push_blocks(&self, _: &ShuffleHandle, _: Vec<Block>) -> Result<PushAck, ClientError> {
        unsupported()
    }
    async fn commit_map(
        &self,
        _: &ShuffleHandle,
        _: MapId,
        _: AttemptId,
        _: CommitManifest,
    ) -> Result<CommitAck, ClientError> {
        unsupported()
    }
    async fn open_reader(
        &self,
        handle: &ShuffleHandle,
        _: PartitionId,
        _: MapRange,
    ) -> Result<MockReader, ClientError> {
        let side = handle.shuffle().0;
        let pairs: &[(&str, &str)] = if side == 0 {
            &[("a", "l1"), ("b", "l2")]
        } else {
            &[("a", "r1"), ("b", "r2")]
        };
        Ok(MockReader {
            side,
            blocks: blocks(side, pairs).into_iter(),
            served: 0,
            gate: self.gate.clone(),
        })
    }
    async fn shuffle_status(&self, _: &ShuffleHandle) -> Result<ShuffleStatus, ClientError> {
        unsupported()
    }
    async fn unregister_shuffle(&self, _: &ShuffleHandle) -> Result<(), ClientError> {
        unsupported()
    }
    async fn unregister_app(&self, _: &AppId) -> Result<(), ClientError> {
        unsupported()
    }
}

#[tokio::test]
async fn a_join_reads_both_inputs_at_once() {
    let mut b = JobBuilder::new("join");
    let left = b.generate_rows(1, 0, |_, _| {}).key_prefix(1);
    let right = b.generate_rows(1, 0, |_, _| {}).key_prefix(1);
    left.join(right, 1).sink(Sink::Count);
    let job = b.build().expect("job");
    assert_eq!(job.stages()[2].inputs, vec![0, 1]);

    let app = AppId::new("mock").expect("app");
    let handles: Vec<ShuffleHandle> = (0..2)
        .map(|i| {
            let spec = ShuffleSpec::new(1, 1, ShuffleMode::Pipelined).expect("spec");
            ShuffleHandle::from_parts(app.clone(), ShuffleId(i), spec, Placement::Local)
        })
        .collect();
    let client = MockClient { gate: Arc::default() };
    let counters = TaskCounters::default();
    let ctx = TaskContext {
        client: &client,
        stage: StageId(2),
        task: 0,
        attempt: AttemptId(0),
        handles: &handles,
        writer_options: WriterOptions::default(),
        counters: &counters,
    };
    let out = tokio::time::timeout(Duration::from_secs(10), job.run_task(ctx))
        .await
        .expect("the join read one input to its end first: deadlock")
        .expect("join task");
    assert_eq!(out.records_out, 2, "a and b match once each");
    assert_eq!(
        counters.records_in.load(Ordering::Relaxed),
        0,
        "the mock reports no stats"
    );
}
