//! The coordinator–worker protocol: JSON messages, each behind a 4-byte
//! big-endian length, over one TCP connection per worker.
//!
//! The length is checked against [`MAX_MESSAGE_LEN`] before the body is
//! allocated; a message that does not decode into the expected type is a
//! typed error naming the peer, and ends that connection only.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use shuffle_client::protocol::{AppId, Replication, ShuffleId, ShuffleMode, ShuffleSpec};
use shuffle_client::{Placement, ShuffleHandle, WriterOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::jobs::JobSpec;
use crate::plan::{StageId, TaskOutput};
use crate::EngineError;

/// Largest message accepted (a job spec with many input files fits easily).
pub const MAX_MESSAGE_LEN: u32 = 16 << 20;

/// One try of one task of one stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TaskKey {
    pub stage: StageId,
    pub task: u32,
    /// The attempt id the task writes its map output under (unique per
    /// task across the whole job, region restarts included).
    pub attempt: u32,
}

impl std::fmt::Display for TaskKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stage {} task {} attempt {}",
            self.stage.0, self.task, self.attempt
        )
    }
}

/// How the shuffle service is reached from a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Data-plane URLs (`tcp://` or `quic://`).
    pub urls: Vec<String>,
    /// Pinned QUIC certificate fingerprints.
    pub quic_pins: Vec<String>,
    /// PEM file of QUIC roots.
    pub quic_ca: Option<std::path::PathBuf>,
    /// How long connection errors are retried before a server is taken as
    /// lost; `None`: the client's default (30 s).
    #[serde(default)]
    pub retry_window_ms: Option<u64>,
    /// Copies of each partition of the shuffles registered (1 or 2).
    #[serde(default = "one_copy")]
    pub replication: u32,
}

/// A shuffle handle as sent to a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHandle {
    pub app: String,
    pub shuffle: u32,
    pub maps: u32,
    pub partitions: u32,
    pub mode: String,
    /// Empty for an in-process service.
    pub servers: Vec<String>,
    pub offset: u32,
    /// Copies of each partition (1 when absent: a coordinator of before
    /// replication).
    #[serde(default = "one_copy")]
    pub replication: u32,
}

fn one_copy() -> u32 {
    1
}

impl WireHandle {
    pub fn from_handle(h: &ShuffleHandle) -> Self {
        let (servers, offset) = match h.placement() {
            Placement::Local => (Vec::new(), 0),
            Placement::Spread { servers, offset, .. } => (servers.to_vec(), *offset),
        };
        WireHandle {
            app: h.app().to_string(),
            shuffle: h.shuffle().0,
            maps: h.spec().num_maps(),
            partitions: h.spec().num_partitions(),
            mode: h.spec().mode().name().to_string(),
            servers,
            offset,
            replication: h.placement().replication().copies() as u32,
        }
    }

    /// Validates every field into a handle.
    pub fn to_handle(&self) -> Result<ShuffleHandle, EngineError> {
        let bad = |reason: String| EngineError::Protocol {
            peer: "coordinator".into(),
            reason,
        };
        let app = AppId::new(self.app.clone()).map_err(|e| bad(format!("app id: {e}")))?;
        let mode: ShuffleMode = self.mode.parse().map_err(|e| bad(format!("mode: {e}")))?;
        let spec = ShuffleSpec::new(self.maps, self.partitions, mode)
            .map_err(|e| bad(format!("shuffle spec: {e}")))?;
        let placement = if self.servers.is_empty() {
            Placement::Local
        } else {
            if self.offset as usize >= self.servers.len() {
                return Err(bad(format!(
                    "placement offset {} for {} servers",
                    self.offset,
                    self.servers.len()
                )));
            }
            let replication = Replication::new(self.replication).map_err(|e| bad(e.to_string()))?;
            if replication.copies() > self.servers.len() {
                return Err(bad(format!(
                    "replication {replication} over {} servers",
                    self.servers.len()
                )));
            }
            Placement::Spread {
                servers: self.servers.clone().into(),
                offset: self.offset,
                replication,
            }
        };
        Ok(ShuffleHandle::from_parts(
            app,
            ShuffleId(self.shuffle),
            spec,
            placement,
        ))
    }
}

/// Writer settings as sent to a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireWriterOptions {
    pub block_size: usize,
    pub buffer_limit: usize,
    pub compress: bool,
}

impl From<WriterOptions> for WireWriterOptions {
    fn from(o: WriterOptions) -> Self {
        WireWriterOptions {
            block_size: o.block_size,
            buffer_limit: o.buffer_limit,
            compress: o.compress,
        }
    }
}

impl From<WireWriterOptions> for WriterOptions {
    fn from(o: WireWriterOptions) -> Self {
        WriterOptions {
            block_size: o.block_size,
            buffer_limit: o.buffer_limit,
            compress: o.compress,
        }
    }
}

/// Live figures of a running task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub records_in: u64,
    pub records_out: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

/// What the scheduler does about a failed task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureClass {
    /// Another attempt may succeed (I/O, connection, lost worker).
    Transient,
    /// The task read blocks of a map attempt that then failed: it must run
    /// again (and, where data was consumed, its region with it).
    InputAttemptFailed,
    /// Data the task needed was consumed from memory and is gone: its
    /// region must run again.
    InputGone,
    /// A shuffle server holding part of `shuffle` was lost (its data
    /// there is gone, or it takes no more writes): the shuffle's producers
    /// run again on a fresh shuffle, and its consumers read that.
    ShuffleLost { shuffle: u32 },
    /// Running it again cannot help (bad input, a bug).
    Permanent,
}

/// Why a task failed, as reported by its worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    pub class: FailureClass,
    pub message: String,
}

/// Worker to coordinator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum WorkerMsg {
    /// First message: how many tasks the worker runs at once.
    Hello {
        slots: u32,
        pid: u32,
    },
    /// The job was built and the shuffle service reached.
    Ready,
    /// The job could not be set up on this worker.
    SetupFailed {
        message: String,
    },
    /// Figures of running tasks (sent a few times a second).
    Progress {
        tasks: Vec<(TaskKey, Counts)>,
    },
    Finished {
        key: TaskKey,
        output: TaskOutput,
    },
    Failed {
        key: TaskKey,
        failure: TaskFailure,
    },
}

/// Coordinator to worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum CoordinatorMsg {
    /// Build this job and connect to this shuffle service.
    Setup {
        job: JobSpec,
        service: ServiceSpec,
        writer: WireWriterOptions,
        /// How often to send progress.
        progress_every: Duration,
        /// Readers wait this long before each block (a deliberately slow
        /// consumer, for tests of backpressure).
        read_delay: Duration,
    },
    /// Run a task; `handles` has one entry per edge of the job.
    Run { key: TaskKey, handles: Vec<WireHandle> },
    /// Stop a task (its region restarts); no reply.
    Cancel { key: TaskKey },
    /// The job is over: exit.
    Shutdown,
}

/// Writes one message.
pub async fn send<W: AsyncWrite + Unpin, M: Serialize>(writer: &mut W, msg: &M) -> std::io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_MESSAGE_LEN)
        .ok_or_else(|| std::io::Error::other(format!("message of {} bytes is too large", body.len())))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Reads one message; `Ok(None)` when the peer closed between messages.
pub async fn recv<R: AsyncRead + Unpin, M: for<'de> Deserialize<'de>>(
    reader: &mut R,
    peer: &str,
) -> Result<Option<M>, EngineError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => {
            return Err(EngineError::Protocol {
                peer: peer.into(),
                reason: format!("read: {e}"),
            })
        }
    }
    let len = u32::from_be_bytes(prefix);
    if len > MAX_MESSAGE_LEN {
        return Err(EngineError::Protocol {
            peer: peer.into(),
            reason: format!("message of {len} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit"),
        });
    }
    let mut body = vec![0u8; len as usize];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| EngineError::Protocol {
            peer: peer.into(),
            reason: format!("truncated message: {e}"),
        })?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| EngineError::Protocol {
            peer: peer.into(),
            reason: format!("undecodable message: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_bad_frames_are_typed_errors() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let msg = WorkerMsg::Failed {
            key: TaskKey {
                stage: StageId(1),
                task: 7,
                attempt: 2,
            },
            failure: TaskFailure {
                class: FailureClass::InputGone,
                message: "gone".into(),
            },
        };
        send(&mut a, &msg).await.expect("send");
        let got: Option<WorkerMsg> = recv(&mut b, "w").await.expect("recv");
        assert_eq!(got, Some(msg));

        // Oversized length: refused before allocating.
        a.write_all(&(MAX_MESSAGE_LEN + 1).to_be_bytes())
            .await
            .expect("w");
        let err = recv::<_, WorkerMsg>(&mut b, "w").await.expect_err("too large");
        assert!(matches!(err, EngineError::Protocol { .. }), "{err}");

        // Well-framed garbage.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&3u32.to_be_bytes()).await.expect("w");
        a.write_all(b"{x}").await.expect("w");
        let err = recv::<_, WorkerMsg>(&mut b, "w").await.expect_err("garbage");
        assert!(err.to_string().contains("undecodable"), "{err}");

        // Clean close between messages.
        drop(a);
        assert!(recv::<_, WorkerMsg>(&mut b, "w").await.expect("eof").is_none());
    }

    #[test]
    fn hostile_handles_are_refused() {
        let mut h = WireHandle {
            app: "../etc".into(),
            shuffle: 1,
            maps: 1,
            partitions: 1,
            mode: "blocking".into(),
            servers: vec![],
            offset: 0,
            replication: 1,
        };
        assert!(h.to_handle().is_err());
        h.app = "ok".into();
        h.mode = "sideways".into();
        assert!(h.to_handle().is_err());
        h.mode = "pipelined".into();
        h.servers = vec!["tcp://127.0.0.1:1".into()];
        h.offset = 3;
        assert!(h.to_handle().is_err());
        h.offset = 0;
        assert!(h.to_handle().is_ok());
        h.replication = 2;
        let e = h.to_handle().expect_err("two copies over one server").to_string();
        assert!(e.contains("replication 2 over 1 servers"), "{e}");
        h.servers.push("tcp://127.0.0.1:2".into());
        assert_eq!(
            h.to_handle()
                .expect("two servers")
                .placement()
                .replication()
                .copies(),
            2
        );
        h.replication = 3;
        let e = h.to_handle().expect_err("three copies").to_string();
        assert!(e.contains("replication factor"), "{e}");
    }
}
