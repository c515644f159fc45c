//! sluice-gateway: the gateway appliance.
//!
//! * `sluice-gateway --config F --check-config`: validate F against this host and print
//!   the resolved plan (which core serves which queue), touching nothing.
//! * `sluice-gateway --config F`: run until SIGTERM or SIGINT (see `appliance`).
//! * `sluice-gateway stats --metrics ADDR`: print a running gateway's counters.
//!
//! Failures print one line, `sluice-gateway: ...`, and exit 1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_dataplane::appliance::{self, metrics};

#[derive(Debug, Parser)]
#[command(version, about = "Sluice's gateway: AF_XDP workers on pinned cores")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// The configuration file (see config/gateway.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and print the plan, without touching the network.
    #[arg(long, requires = "config")]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a running gateway's counters, per worker core and in total.
    Stats {
        /// The gateway's metrics address (control.metrics).
        #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9471")]
        metrics: SocketAddr,
    },
}

fn main() -> ExitCode {
    sluice_api::process::one_line_panics("sluice-gateway");
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-gateway: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The cause chain on one line, without the causes a message already quotes (library
/// errors include their source's text), and never a backtrace.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string().replace('\n', " ");
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Stats { metrics: addr }) = cli.command {
        let text = metrics::fetch(addr, Duration::from_secs(5))
            .with_context(|| format!("fetching http://{addr}/metrics"))?;
        print!(
            "{}",
            metrics::stats_table(&text).map_err(anyhow::Error::msg)?
        );
        return Ok(());
    }
    let path = cli
        .config
        .context("--config FILE is required (or use the stats subcommand)")?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (config, plan) = appliance::check(&text).with_context(|| path.display().to_string())?;
    if cli.check_config {
        let tables =
            appliance::check_tables(&config).with_context(|| path.display().to_string())?;
        println!("{plan}");
        if let Some(line) = tables {
            println!("{line}");
        }
        return Ok(());
    }
    appliance::run(&config, &plan)?;
    Ok(())
}
