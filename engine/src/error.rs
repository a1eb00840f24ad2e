use std::path::PathBuf;

use shuffle_client::ClientError;

/// Everything a job can fail with.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The shuffle service refused or failed an operation.
    #[error("shuffle: {0}")]
    Shuffle(#[from] ClientError),
    /// An input or output file could not be used.
    /// The cause is part of the message (not also a `source()`, which
    /// would print it twice in an error chain).
    #[error("{op} {}: {error}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// A job parameter is unusable.
    #[error("invalid {what}: {reason}")]
    InvalidArgument { what: &'static str, reason: String },
    /// A record read from the shuffle does not have the job's layout.
    #[error("malformed record: {reason}")]
    MalformedRecord { reason: String },
    /// A CSV input row is malformed (bad quoting, wrong number of fields,
    /// missing header, unknown column).
    #[error("{}:{line}: {reason}", path.display())]
    Csv {
        path: PathBuf,
        /// 1-based line where the row starts.
        line: u64,
        reason: String,
    },
    /// A CSV field that must be a number is not.
    #[error("{}:{line}: column {column}: {value:?} is not a number", path.display())]
    NotNumeric {
        path: PathBuf,
        /// 1-based line where the row starts.
        line: u64,
        column: String,
        value: String,
    },
    /// A job's dataflow graph is unusable (a stream without a sink, a join
    /// of inputs with different partition counts...).
    #[error("invalid plan: {reason}")]
    InvalidPlan { reason: String },
    /// No job of that name is registered.
    #[error("unknown job {name:?} (known: {known})")]
    UnknownJob { name: String, known: String },
    /// A task of a job failed on its last allowed attempt.
    #[error("stage {stage} task {task} failed after {attempts} attempt(s): {source}")]
    JobTaskFailed {
        stage: String,
        task: u32,
        attempts: u32,
        #[source]
        source: Box<EngineError>,
    },
    /// The shuffle servers could not be reached.
    #[error("connecting to the shuffle servers {urls}: {source}")]
    ServiceUnreachable {
        urls: String,
        #[source]
        source: ClientError,
    },
    /// A coordinator or worker sent something that is not the protocol.
    #[error("protocol error from {peer}: {reason}")]
    Protocol { peer: String, reason: String },
    /// A pipelined region needs all its tasks running at once and the
    /// workers do not have that many slots.
    #[error(
        "{mode} mode runs all {needed} tasks of a region at once, but the workers have {available} slots; \
         add workers (--workers) or slots per worker (--slots), or use blocking or hybrid mode"
    )]
    NotEnoughSlots {
        mode: shuffle_client::protocol::ShuffleMode,
        needed: u32,
        available: u32,
    },
    /// Worker processes could not be started or did not join in time.
    #[error("workers: {reason}")]
    Workers { reason: String },
    /// A region was restarted more often than allowed.
    #[error("region restarted {restarts} times (limit {limit}); last failure: {last}")]
    TooManyRestarts { restarts: u32, limit: u32, last: String },
    /// A task failed on a worker (the worker's message, classified).
    #[error("{message}")]
    Remote {
        class: crate::cluster::wire::FailureClass,
        message: String,
    },
}

impl EngineError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> EngineError {
        let path = path.into();
        move |error| EngineError::Io { op, path, error }
    }

    /// Whether running the task again (a new attempt) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Shuffle(e) => e.is_retryable() || e.loses_data(),
            EngineError::Io { .. } => true,
            _ => false,
        }
    }
}
