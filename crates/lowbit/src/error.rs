//! One error type for the whole library. Every variant says what was wrong and what to do about it.

use std::path::PathBuf;

/// Result alias used across lowbit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Messages are written for the person running the program: each names the bad value and
/// the accepted ones.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("{op} does not accept dtype {got}; use one of: {expected}")]
    DType {
        op: &'static str,
        got: String,
        expected: &'static str,
    },

    #[error("block size {got} is not allowed for {op}; use one of {allowed:?}")]
    BlockSize {
        op: &'static str,
        got: usize,
        allowed: &'static [usize],
    },

    #[error("length mismatch in {op}: {what} has {got} elements, expected {expected}")]
    Length {
        op: &'static str,
        what: &'static str,
        got: usize,
        expected: usize,
    },

    #[error("unknown format {got:?}; known formats: {known}")]
    UnknownFormat { got: String, known: &'static str },

    #[error("corrupt quantization state: {0}")]
    CorruptQuantState(String),

    #[error(
        "{op}: input contains {count} non-finite value(s) (first at index {first}); \
         clean the input or pass it through nan_to_num first"
    )]
    NonFinite {
        op: &'static str,
        count: usize,
        first: usize,
    },

    #[error(
        "{op}: an operand lives on {got}, but the op runs on {expected}; move it there with \
         Device::to_device (or Device::to_host first)"
    )]
    WrongDevice {
        op: &'static str,
        got: String,
        expected: String,
    },

    #[error("invalid argument for {op}: {detail}")]
    InvalidArgument { op: &'static str, detail: String },

    #[error("{path}: {detail}")]
    Checkpoint { path: PathBuf, detail: String },

    /// A device failed, or no device matches a name (see [`crate::capability::DeviceError`]).
    #[error(transparent)]
    Device(#[from] crate::capability::DeviceError),

    /// Ctrl-C / SIGTERM (see [`crate::io::temps`]): the run stopped and removed its temporary output.
    #[error("interrupted: nothing was written at {path} and the temporary output was removed")]
    Interrupted { path: PathBuf },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape {
            op,
            detail: detail.into(),
        }
    }

    pub fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            detail: detail.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
