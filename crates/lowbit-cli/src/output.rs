//! Output helpers shared by commands: logging, progress bars, JSON.

use indicatif::{ProgressBar, ProgressStyle};

/// Logs go to stderr; `RUST_LOG` overrides the default level (warn).
pub fn init_logging(quiet: bool) {
    let default = if quiet { "error" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A progress bar on stderr over `len` steps, hidden with `--quiet` or `--json`.
pub fn progress(len: u64, hidden: bool, msg: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<28} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// A progress bar counting bytes, for checkpoint commands.
#[allow(dead_code)] // used once the checkpoint commands land
pub fn byte_progress(total: u64, hidden: bool, msg: &str) -> ProgressBar {
    if hidden {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Writing to stdout failed. A closed pipe (`lowbit inspect M | head -1`) ends the program quietly with
/// success, as ripgrep and other Unix tools do; anything else (a full disk) is an error.
#[derive(Debug)]
pub struct StdoutError(pub std::io::Error);

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

impl StdoutError {
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// Writes formatted text and a newline to stdout, returning the error instead of panicking as `println!`
/// does. Use through [`outln!`].
pub fn write_line(args: std::fmt::Arguments) -> Result<(), StdoutError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(StdoutError)
}

/// Writes formatted text to stdout (no newline). Use through [`out!`].
pub fn write_text(args: std::fmt::Arguments) -> Result<(), StdoutError> {
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_fmt(args)
        .map_err(StdoutError)
}

/// Flushes stdout (at the end of the program), reporting failure.
pub fn flush() -> Result<(), StdoutError> {
    use std::io::Write;
    std::io::stdout().flush().map_err(StdoutError)
}

/// `println!` that returns a [`StdoutError`] through `?` instead of panicking.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::write_line(format_args!(""))? };
    ($($t:tt)*) => { $crate::output::write_line(format_args!($($t)*))? };
}

/// `print!` that returns a [`StdoutError`] through `?` instead of panicking.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::output::write_text(format_args!($($t)*))? };
}

/// Prints a JSON value on stdout.
pub fn print_json(v: &serde_json::Value) -> Result<(), StdoutError> {
    write_line(format_args!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    ))
}

/// `s` with control characters (terminal escapes, newlines, tabs) escaped as `\u{1b}`, `\n`, ...: names
/// from untrusted files must not move the cursor, clear the screen or forge table lines.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}
