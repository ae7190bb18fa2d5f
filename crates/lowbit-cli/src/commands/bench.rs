//! (in progress)

use super::CliResult;
use crate::Global;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args, _global: &Global) -> CliResult {
    Err("not implemented yet".into())
}
