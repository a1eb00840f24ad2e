//! What every entry point shares: the runtime, the panic guard that turns
//! errors into Java exceptions, boxed handles, and array conversions.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use jni::objects::{JByteArray, JObject, JString, JValue};
use jni::sys::{jbyteArray, jint, jlong, jlongArray, jobjectArray};
use jni::JNIEnv;
use shuffle_client::protocol::ProtocolError;
use shuffle_client::ClientError;
use tokio::runtime::Runtime;

/// The Java exception every error becomes.
const EXCEPTION: &str = "rss/spark/RssException";
/// Its constructor: (message, kind, retryable, dataLost).
const EXCEPTION_INIT: &str = "(Ljava/lang/String;Ljava/lang/String;ZZ)V";
/// Worker threads of the one runtime: pushes and fetches are I/O bound,
/// and Java's task threads do the record work.
const RUNTIME_THREADS: usize = 2;

/// Why an entry point failed: a client error, or a JNI call that failed
/// (then a Java exception is usually pending already).
#[derive(Debug)]
pub(crate) enum Failure {
    Client(ClientError),
    Jni(jni::errors::Error),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl From<jni::errors::Error> for Failure {
    fn from(e: jni::errors::Error) -> Self {
        Failure::Jni(e)
    }
}

/// The process's one runtime, made on first use.
pub(crate) fn runtime() -> Result<&'static Runtime, ClientError> {
    static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();
    let made = RUNTIME.get_or_init(|| {
        init_logging();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("rss-native")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    made.as_ref().map_err(|reason| ClientError::Internal {
        server: "native".into(),
        reason: format!("cannot start the runtime: {reason}"),
    })
}

/// Logs to stderr at the level `RSS_NATIVE_LOG` names (default `warn`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RSS_NATIVE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs an entry point's body: a panic or an error becomes a pending
/// `RssException` and the entry point returns `on_error`.
pub(crate) fn entry<'l, T>(
    env: &mut JNIEnv<'l>,
    on_error: T,
    body: impl FnOnce(&mut JNIEnv<'l>) -> Result<T, Failure>,
) -> T {
    let outcome = catch_unwind(AssertUnwindSafe(|| body(env)));
    let error = match outcome {
        Ok(Ok(value)) => return value,
        Ok(Err(Failure::Client(e))) => e,
        Ok(Err(Failure::Jni(e))) => {
            if env.exception_check().unwrap_or(false) {
                // Java's own exception (say an OutOfMemoryError) stands.
                return on_error;
            }
            ClientError::Internal {
                server: "native".into(),
                reason: format!("JNI call failed: {e}"),
            }
        }
        Err(panic) => ClientError::Internal {
            server: "native".into(),
            reason: format!("panic in the native library: {}", panic_message(&panic)),
        },
    };
    throw(env, &error);
    on_error
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Makes `error` the pending Java exception.
fn throw(env: &mut JNIEnv<'_>, error: &ClientError) {
    let thrown = (|| -> jni::errors::Result<()> {
        let message = env.new_string(error.to_string())?;
        let kind = env.new_string(kind_of(error))?;
        let exception = env.new_object(
            EXCEPTION,
            EXCEPTION_INIT,
            &[
                JValue::Object(&message),
                JValue::Object(&kind),
                JValue::Bool(u8::from(error.is_retryable())),
                JValue::Bool(u8::from(error.loses_data())),
            ],
        )?;
        env.throw(jni::objects::JThrowable::from(exception))
    })();
    if thrown.is_err() && !env.exception_check().unwrap_or(false) {
        let _ = env.throw_new("java/io/IOException", error.to_string());
    }
}

/// The error's variant name (`CommitConflict`, `Connection`...), which
/// Java matches on.
pub(crate) fn kind_of(error: &ClientError) -> String {
    let debug = format!("{error:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_string()
}

/// Boxes `value` into a handle for Java.
pub(crate) fn into_ptr<T>(value: T) -> jlong {
    Box::into_raw(Box::new(value)) as jlong
}

/// The object behind a live handle.
///
/// # Safety
/// `ptr` must come from [`into_ptr::<T>`] and not have been taken back,
/// and no other thread may use it meanwhile. Java's wrappers keep both
/// rules (one owner per handle, zeroed once freed).
pub(crate) unsafe fn from_ptr<'a, T>(ptr: jlong) -> Result<&'a mut T, ClientError> {
    if ptr == 0 {
        return Err(closed());
    }
    // SAFETY: per the contract above.
    Ok(unsafe { &mut *(ptr as *mut T) })
}

/// Takes a handle back (to free it).
///
/// # Safety
/// As [`from_ptr`]; afterwards `ptr` must never be used again.
pub(crate) unsafe fn take_ptr<T>(ptr: jlong) -> Result<Box<T>, ClientError> {
    if ptr == 0 {
        return Err(closed());
    }
    // SAFETY: per the contract above.
    Ok(unsafe { Box::from_raw(ptr as *mut T) })
}

fn closed() -> ClientError {
    ClientError::InvalidArgument(ProtocolError::Malformed {
        what: "native handle",
        reason: "used after it was closed".into(),
    })
}

/// A Java string.
pub(crate) fn text(env: &mut JNIEnv<'_>, s: &JString<'_>) -> Result<String, Failure> {
    if s.is_null() {
        return Ok(String::new());
    }
    Ok(env.get_string(s)?.into())
}

/// A whole Java byte array.
pub(crate) fn bytes(env: &mut JNIEnv<'_>, array: &JByteArray<'_>) -> Result<Vec<u8>, Failure> {
    if array.is_null() {
        return Ok(Vec::new());
    }
    Ok(env.convert_byte_array(array)?)
}

/// The first `len` bytes of `array`, copied into `scratch` (one copy; no
/// JVM memory is pinned while the client works).
pub(crate) fn region<'s>(
    env: &mut JNIEnv<'_>,
    array: &JByteArray<'_>,
    len: jint,
    scratch: &'s mut Vec<i8>,
) -> Result<&'s [u8], Failure> {
    let total = env.get_array_length(array)?;
    if len < 0 || len > total {
        return Err(Failure::Client(ClientError::InvalidArgument(
            ProtocolError::Malformed {
                what: "chunk",
                reason: format!("length {len} outside the array's 0..={total}"),
            },
        )));
    }
    scratch.clear();
    scratch.resize(len as usize, 0);
    env.get_byte_array_region(array, 0, scratch)?;
    // SAFETY: i8 and u8 have the same size and alignment, and every bit
    // pattern is valid for both.
    Ok(unsafe { std::slice::from_raw_parts(scratch.as_ptr().cast::<u8>(), scratch.len()) })
}

/// A new Java `byte[]`.
pub(crate) fn byte_array(env: &mut JNIEnv<'_>, data: &[u8]) -> Result<jbyteArray, Failure> {
    Ok(env.byte_array_from_slice(data)?.into_raw())
}

/// A new Java `long[]` (u64 values above `i64::MAX` cannot occur: byte
/// and record counts).
pub(crate) fn long_array(env: &mut JNIEnv<'_>, values: &[u64]) -> Result<jlongArray, Failure> {
    let longs: Vec<i64> = values
        .iter()
        .map(|&v| i64::try_from(v).unwrap_or(i64::MAX))
        .collect();
    signed_long_array(env, &longs)
}

/// A new Java `long[]`.
pub(crate) fn signed_long_array(env: &mut JNIEnv<'_>, values: &[i64]) -> Result<jlongArray, Failure> {
    let array = env.new_long_array(values.len() as i32)?;
    env.set_long_array_region(&array, 0, values)?;
    Ok(array.into_raw())
}

/// A new Java `byte[][]`.
pub(crate) fn array_of_byte_arrays(
    env: &mut JNIEnv<'_>,
    items: &[impl AsRef<[u8]>],
) -> Result<jobjectArray, Failure> {
    let array = env.new_object_array(items.len() as i32, "[B", JObject::null())?;
    for (i, item) in items.iter().enumerate() {
        let element = env.byte_array_from_slice(item.as_ref())?;
        env.set_object_array_element(&array, i as i32, &element)?;
        // Free the local reference now: a block may hold many chunks.
        env.delete_local_ref(element)?;
    }
    Ok(array.into_raw())
}
