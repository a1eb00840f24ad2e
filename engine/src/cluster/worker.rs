//! A worker process: connects to its coordinator, builds the job it is
//! given, and runs tasks on its own runtime until told to stop (or until the
//! coordinator's connection closes: a worker never outlives its job).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use shuffle_client::protocol::AttemptId;
use shuffle_client::{ClientError, RemoteShuffle, ShuffleHandle, WriterOptions};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::clients::{DryWrites, SlowReads};
use super::service::connect_remote;
use super::wire::{self, CoordinatorMsg, Counts, FailureClass, TaskFailure, TaskKey, WorkerMsg};
use crate::dataflow::Job;
use crate::jobs::Registry;
use crate::plan::{TaskContext, TaskCounters, TaskOutput};
use crate::EngineError;

/// How a worker runs.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The coordinator's address (`engine run` prints it and passes it to
    /// the workers it spawns).
    pub coordinator: SocketAddr,
    /// Tasks run at once.
    pub slots: u32,
}

/// Sorts a task's error into what the scheduler should do about it.
pub fn classify(e: &EngineError) -> FailureClass {
    match e {
        EngineError::Remote { class, .. } => *class,
        EngineError::Shuffle(c) => {
            // A task only touches shuffles of its running job, which the
            // job releases after their consumers finished: a server that
            // does not know one restarted without it (its unsealed data
            // there is gone), which the job recovers from as from a lost
            // server.
            let restarted_without = match c {
                ClientError::UnknownShuffle { shuffle, .. } => Some(*shuffle),
                _ => None,
            };
            match c.lost_shuffle().or(restarted_without) {
                Some(shuffle) => FailureClass::ShuffleLost { shuffle: shuffle.0 },
                None if c.is_retryable() || c.loses_data() => FailureClass::Transient,
                None => FailureClass::Permanent,
            }
        }
        e if e.is_transient() => FailureClass::Transient,
        _ => FailureClass::Permanent,
    }
}

struct Running {
    abort: AbortHandle,
    counters: Arc<TaskCounters>,
}

/// Runs a worker until its coordinator says stop or goes away.
pub async fn run_worker(options: WorkerOptions, registry: &Registry) -> Result<(), EngineError> {
    let peer = format!("coordinator {}", options.coordinator);
    let stream = TcpStream::connect(options.coordinator)
        .await
        .map_err(|e| EngineError::Workers {
            reason: format!("cannot reach the {peer}: {e}"),
        })?;
    stream.set_nodelay(true).ok();
    let (mut rd, mut wr) = stream.into_split();
    // One writer task owns the socket's write half; everything else sends
    // through this channel (unbounded: messages are small and few, a
    // handful per task plus a progress line per tick).
    let (out, mut out_rx) = mpsc::unbounded_channel::<WorkerMsg>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = out_rx.recv().await {
            if wire::send(&mut wr, &msg).await.is_err() {
                break;
            }
        }
    });
    let send = |msg: WorkerMsg| {
        let _ = out.send(msg);
    };
    send(WorkerMsg::Hello {
        slots: options.slots.max(1),
        pid: std::process::id(),
    });

    let Some(CoordinatorMsg::Setup {
        job,
        service,
        writer: writer_options,
        progress_every,
        read_delay,
    }) = wire::recv::<_, CoordinatorMsg>(&mut rd, &peer).await?
    else {
        return Err(EngineError::Protocol {
            peer,
            reason: "expected Setup first".into(),
        });
    };
    let setup = async {
        let job = Arc::new(registry.build(&job)?);
        let client = Arc::new(SlowReads::new(connect_remote(&service).await?, read_delay));
        Ok::<_, EngineError>((job, client))
    };
    let (job, client) = match setup.await {
        Ok(x) => x,
        Err(e) => {
            send(WorkerMsg::SetupFailed {
                message: e.to_string(),
            });
            drop(out);
            let _ = writer.await;
            return Err(e);
        }
    };
    send(WorkerMsg::Ready);

    let running: Arc<std::sync::Mutex<HashMap<TaskKey, Running>>> = Arc::default();
    let ticker = tokio::spawn(progress_loop(running.clone(), out.clone(), progress_every));
    let result = loop {
        let msg = match wire::recv::<_, CoordinatorMsg>(&mut rd, &peer).await {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match msg {
            CoordinatorMsg::Run { key, handles } => {
                let handles: Result<Vec<ShuffleHandle>, _> = handles.iter().map(|h| h.to_handle()).collect();
                match handles {
                    Ok(handles) => {
                        start_task(key, handles, writer_options.into(), &job, &client, &running, &out)
                    }
                    Err(e) => send(WorkerMsg::Failed {
                        key,
                        failure: TaskFailure {
                            class: FailureClass::Permanent,
                            message: e.to_string(),
                        },
                    }),
                }
            }
            CoordinatorMsg::Cancel { key } => {
                if let Some(task) = lock(&running).remove(&key) {
                    task.abort.abort();
                }
            }
            CoordinatorMsg::Shutdown => break Ok(()),
            CoordinatorMsg::Setup { .. } => {
                break Err(EngineError::Protocol {
                    peer: peer.clone(),
                    reason: "a second Setup".into(),
                })
            }
        }
    };
    for (_, task) in lock(&running).drain() {
        task.abort.abort();
    }
    ticker.abort();
    drop(out);
    let _ = writer.await;
    result
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn start_task(
    key: TaskKey,
    handles: Vec<ShuffleHandle>,
    writer_options: WriterOptions,
    job: &Arc<Job>,
    client: &Arc<SlowReads<RemoteShuffle>>,
    running: &Arc<std::sync::Mutex<HashMap<TaskKey, Running>>>,
    out: &mpsc::UnboundedSender<WorkerMsg>,
) {
    let counters = Arc::new(TaskCounters::default());
    let (job, client, out2, running2, c2) = (
        job.clone(),
        client.clone(),
        out.clone(),
        running.clone(),
        counters.clone(),
    );
    // Registered before the task can finish, so its removal below always
    // finds it.
    let mut map = lock(running);
    let handle = tokio::spawn(async move {
        let result = run_one(&job, &client, key, &handles, writer_options, &c2).await;
        // Gone from the table = cancelled: report nothing.
        if lock(&running2).remove(&key).is_none() {
            return;
        }
        let _ = out2.send(match result {
            Ok(output) => WorkerMsg::Finished { key, output },
            Err(e) => WorkerMsg::Failed {
                key,
                failure: TaskFailure {
                    class: classify(&e),
                    message: e.to_string(),
                },
            },
        });
    });
    map.insert(
        key,
        Running {
            abort: handle.abort_handle(),
            counters,
        },
    );
}

/// Runs one task of `job` with `client`: the same code in a worker process
/// and in process.
pub async fn run_one<C: shuffle_client::ShuffleClient>(
    job: &Job,
    client: &Arc<C>,
    key: TaskKey,
    handles: &[ShuffleHandle],
    writer_options: WriterOptions,
    counters: &TaskCounters,
) -> Result<TaskOutput, EngineError> {
    let stage = job
        .stages()
        .get(key.stage.0 as usize)
        .ok_or_else(|| EngineError::Protocol {
            peer: "coordinator".into(),
            reason: format!("no stage {} in job {}", key.stage.0, job.name()),
        })?;
    if key.task >= stage.tasks || handles.len() != job.edges().len() {
        return Err(EngineError::Protocol {
            peer: "coordinator".into(),
            reason: format!(
                "task {} of a {}-task stage with {} handles for {} edges",
                key.task,
                stage.tasks,
                handles.len(),
                job.edges().len()
            ),
        });
    }
    match job
        .run_task(context(&**client, key, handles, writer_options, counters))
        .await
    {
        // A retried producer whose map an earlier attempt already committed
        // (its worker died after the commit, before it could say so): the
        // map's output is stored. Tasks are deterministic, so running it
        // again with writes counted but dropped gives the summary the lost
        // attempt would have reported, without touching the stored output.
        Err(EngineError::Shuffle(
            ClientError::AttemptSuperseded { .. } | ClientError::CommitConflict { .. },
        )) if !stage.outputs.is_empty() => {
            counters.reset();
            let dry = DryWrites::new(client.clone());
            job.run_task(context(&dry, key, handles, writer_options, counters))
                .await
        }
        other => other,
    }
}

fn context<'a, C>(
    client: &'a C,
    key: TaskKey,
    handles: &'a [ShuffleHandle],
    writer_options: WriterOptions,
    counters: &'a TaskCounters,
) -> TaskContext<'a, C> {
    TaskContext {
        client,
        stage: key.stage,
        task: key.task,
        attempt: AttemptId(key.attempt),
        handles,
        writer_options,
        counters,
    }
}

pub(crate) fn counts_of(c: &TaskCounters) -> Counts {
    Counts {
        records_in: c.records_in.load(Ordering::Relaxed),
        records_out: c.records_out.load(Ordering::Relaxed),
        bytes_read: c.bytes_read.load(Ordering::Relaxed),
        bytes_written: c.bytes_written.load(Ordering::Relaxed),
    }
}

async fn progress_loop(
    running: Arc<std::sync::Mutex<HashMap<TaskKey, Running>>>,
    out: mpsc::UnboundedSender<WorkerMsg>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let tasks: Vec<(TaskKey, Counts)> = lock(&running)
            .iter()
            .map(|(k, r)| (*k, counts_of(&r.counters)))
            .collect();
        if !tasks.is_empty() && out.send(WorkerMsg::Progress { tasks }).is_err() {
            return;
        }
    }
}

/// For programs with their own jobs: when this process was started as a
/// worker (`PROGRAM worker --coordinator ADDR [--slots N]`, which is how
/// [`super::run_job`] starts workers), runs the worker with `registry` and
/// returns its outcome; otherwise returns `None` and the program goes on
/// (typically to call [`super::run_job`] with the same registry).
pub fn serve_if_worker(registry: &Registry) -> Option<Result<(), EngineError>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("worker") {
        return None;
    }
    Some(worker_from_args(&args[1..], registry))
}

fn worker_from_args(args: &[String], registry: &Registry) -> Result<(), EngineError> {
    let bad = |reason: String| EngineError::InvalidArgument {
        what: "worker arguments",
        reason,
    };
    let mut coordinator = None;
    let mut slots = 64u32;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| bad(format!("{flag} needs a value")))?;
        match flag.as_str() {
            "--coordinator" => {
                coordinator = Some(
                    value
                        .parse()
                        .map_err(|e| bad(format!("--coordinator {value}: {e}")))?,
                )
            }
            "--slots" => slots = value.parse().map_err(|e| bad(format!("--slots {value}: {e}")))?,
            other => return Err(bad(format!("unknown flag {other}"))),
        }
    }
    let coordinator = coordinator.ok_or_else(|| bad("--coordinator ADDR is required".into()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(EngineError::io("start runtime", "worker"))?;
    runtime.block_on(run_worker(
        WorkerOptions {
            coordinator,
            slots: slots.max(1),
        },
        registry,
    ))
}
