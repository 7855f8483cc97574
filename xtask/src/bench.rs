//! Benchmarks recorded in BENCHMARKS.md.

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {}

pub fn run(which: Bench) -> Result<()> {
    match which {}
}
