//! sluice-node: the node agent, one per worker. Loads the XDP stubs, attaches the transit
//! program to the underlay interface and serves the CNI shim on a Unix socket until
//! SIGTERM or SIGINT. Attached programs, pinned maps and pods outlive it, so a restart
//! breaks no pod. Errors print as one line, and so do panics (which end the process).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use clap::Parser;
use sluice_cni::agent::allocator::{AnyAllocator, ControllerAllocator, StaticAllocator};
use sluice_cni::agent::config::NodeConfig;
use sluice_cni::agent::{node, service};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(name = "sluice-node", about = "Sluice's node agent")]
struct Args {
    /// The configuration file (see config/node.toml).
    #[arg(long, default_value = "/etc/sluice/node.toml")]
    config: PathBuf,
}

fn main() -> std::process::ExitCode {
    sluice_api::process::one_line_panics("sluice-node");
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = NodeConfig::load(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let allocator = match (&config.controller, &config.static_allocation) {
            (Some(target), _) => AnyAllocator::Controller(ControllerAllocator::new(
                target,
                config.controller_tls.as_ref().map(|t| t.client_tls()),
            )?),
            (None, Some(file)) => {
                AnyAllocator::Static(StaticAllocator::load(file, &config.state_dir)?)
            }
            (None, None) => unreachable!("NodeConfig::parse requires one"),
        };
        let socket = config.socket.clone();
        let handle = node::start(config, Arc::new(allocator)).map_err(|e| anyhow!(e))?;
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("stopping; pods keep forwarding");
        };
        service::serve(handle, &socket, shutdown).await?;
        Ok(())
    })
}
