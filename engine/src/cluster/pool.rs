//! Worker processes: spawned by the coordinator (or started by hand with
//! `engine worker --coordinator ADDR`), joined over TCP, set up with the
//! job, then fed tasks. A worker whose connection drops is reported lost.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::executor::Event;
use super::wire::{self, CoordinatorMsg, WorkerMsg};
use crate::EngineError;

/// How long workers get to connect and build the job.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where workers come from.
#[derive(Clone, Debug)]
pub enum WorkerSource {
    /// Start `count` processes of `exe worker --coordinator ADDR --slots N`.
    Spawn { count: u32, slots: u32, exe: PathBuf },
    /// Wait for `count` workers started by hand.
    External { count: u32 },
}

/// Joined workers.
#[derive(Debug)]
pub(crate) struct WorkerPool {
    pub senders: Vec<mpsc::UnboundedSender<CoordinatorMsg>>,
    pub slots: Vec<u32>,
    pub pids: Vec<u32>,
    children: Vec<Child>,
    refused: u32,
    last_refusal: Option<String>,
}

/// Failed joins after which starting the workers gives up (a worker that
/// cannot build the job fails the same way on every try).
const MAX_REFUSED: u32 = 8;

impl WorkerPool {
    /// Accepts the workers on `listener`, sends each `setup`, and waits
    /// until every one built the job. Their messages then arrive as
    /// [`Event`]s on `events`.
    pub(crate) async fn start(
        listener: TcpListener,
        source: &WorkerSource,
        setup: CoordinatorMsg,
        events: mpsc::UnboundedSender<Event>,
        say: &(dyn Fn(String) + Sync),
    ) -> Result<Self, EngineError> {
        let addr = listener
            .local_addr()
            .map_err(EngineError::io("listen", "coordinator"))?;
        let (count, mut children) = match source {
            WorkerSource::Spawn { count, slots, exe } => {
                let mut children = Vec::new();
                for _ in 0..*count {
                    let child = Command::new(exe)
                        .args(["worker", "--coordinator", &addr.to_string(), "--slots"])
                        .arg(slots.to_string())
                        .stdin(std::process::Stdio::null())
                        // Inherited: a stdout sink writes there. The
                        // coordinator prints its report after the workers
                        // exited, so the report stays the last line.
                        .kill_on_drop(true)
                        .spawn()
                        .map_err(|e| EngineError::Workers {
                            reason: format!("cannot start {}: {e}", exe.display()),
                        })?;
                    children.push(child);
                }
                (*count, children)
            }
            WorkerSource::External { count } => {
                say(format!(
                    "coordinator listening on {addr}: start {count} worker(s) with `engine worker --coordinator {addr}`"
                ));
                (*count, Vec::new())
            }
        };
        let mut pool = WorkerPool {
            senders: Vec::new(),
            slots: Vec::new(),
            pids: Vec::new(),
            children: Vec::new(),
            refused: 0,
            last_refusal: None,
        };
        let joined = tokio::time::timeout(JOIN_TIMEOUT, async {
            while pool.senders.len() < count as usize {
                let (stream, peer) = tokio::select! {
                    accepted = listener.accept() => accepted.map_err(EngineError::io("accept", "coordinator"))?,
                    exited = first_exit(&mut children) => {
                        let why = pool.last_refusal.take().map_or(String::new(), |r| format!(" ({r})"));
                        return Err(EngineError::Workers { reason: format!("a worker exited before joining: {exited}{why}") });
                    }
                };
                // A peer that is not a worker, or a worker that cannot set
                // the job up, is refused alone; the others keep joining.
                if let Err(e) = pool.join(stream, peer, &setup, &events, say).await {
                    say(format!("refused a worker at {peer}: {e}"));
                    pool.refused += 1;
                    pool.last_refusal = Some(e.to_string());
                    if pool.refused >= MAX_REFUSED {
                        return Err(EngineError::Workers {
                            reason: format!("{} workers refused, the last: {e}", pool.refused),
                        });
                    }
                }
            }
            Ok(())
        })
        .await;
        pool.children = children;
        match joined {
            Ok(Ok(())) => Ok(pool),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EngineError::Workers {
                reason: format!(
                    "only {} of {count} worker(s) joined within {}s",
                    pool.senders.len(),
                    JOIN_TIMEOUT.as_secs()
                ),
            }),
        }
    }

    async fn join(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        setup: &CoordinatorMsg,
        events: &mpsc::UnboundedSender<Event>,
        say: &(dyn Fn(String) + Sync),
    ) -> Result<(), EngineError> {
        let name = format!("worker at {peer}");
        stream.set_nodelay(true).ok();
        let (mut rd, mut wr) = stream.into_split();
        let hello = tokio::time::timeout(
            Duration::from_secs(10),
            wire::recv::<_, WorkerMsg>(&mut rd, &name),
        )
        .await
        .map_err(|_| EngineError::Protocol {
            peer: name.clone(),
            reason: "no hello within 10s".into(),
        })??;
        let Some(WorkerMsg::Hello { slots, pid }) = hello else {
            return Err(EngineError::Protocol {
                peer: name,
                reason: format!("expected Hello, got {hello:?}"),
            });
        };
        if slots == 0 || slots > 100_000 {
            return Err(EngineError::Protocol {
                peer: name,
                reason: format!("{slots} slots"),
            });
        }
        wire::send(&mut wr, setup)
            .await
            .map_err(EngineError::io("send setup", name.clone()))?;
        match wire::recv::<_, WorkerMsg>(&mut rd, &name).await? {
            Some(WorkerMsg::Ready) => {}
            Some(WorkerMsg::SetupFailed { message }) => {
                return Err(EngineError::Workers {
                    reason: format!("worker pid {pid} could not set up the job: {message}"),
                })
            }
            other => {
                return Err(EngineError::Protocol {
                    peer: name,
                    reason: format!("expected Ready, got {other:?}"),
                })
            }
        }
        let worker = self.senders.len();
        say(format!("worker {worker} pid {pid} joined ({slots} slots)"));
        let (tx, mut rx) = mpsc::unbounded_channel::<CoordinatorMsg>();
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                let last = matches!(msg, CoordinatorMsg::Shutdown);
                if wire::send(&mut wr, &msg).await.is_err() || last {
                    break;
                }
            }
        });
        let events = events.clone();
        tokio::spawn(async move {
            let reason = loop {
                match wire::recv::<_, WorkerMsg>(&mut rd, &name).await {
                    Ok(Some(WorkerMsg::Progress { tasks })) => {
                        for (key, counts) in tasks {
                            let _ = events.send(Event::Progress { key, counts });
                        }
                    }
                    Ok(Some(WorkerMsg::Finished { key, output })) => {
                        let _ = events.send(Event::Finished { key, output });
                    }
                    Ok(Some(WorkerMsg::Failed { key, failure })) => {
                        let _ = events.send(Event::Failed { key, failure });
                    }
                    Ok(Some(other)) => break format!("unexpected {other:?}"),
                    Ok(None) => break "connection closed".to_string(),
                    Err(e) => break e.to_string(),
                }
            };
            let _ = events.send(Event::WorkerLost { worker, reason });
        });
        self.senders.push(tx);
        self.slots.push(slots);
        self.pids.push(pid);
        Ok(())
    }

    /// Tells every worker to exit and waits (a few seconds) for the
    /// processes this pool spawned.
    pub(crate) async fn shutdown(mut self) {
        for s in &self.senders {
            let _ = s.send(CoordinatorMsg::Shutdown);
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// Resolves when any child exits, with its status; never if there are none.
async fn first_exit(children: &mut [Child]) -> String {
    if children.is_empty() {
        return std::future::pending().await;
    }
    loop {
        for c in children.iter_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return status.to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
