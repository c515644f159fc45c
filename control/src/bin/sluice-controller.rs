//! sluice-controller, standalone mode: objects and allocations in a local redb store,
//! gateways programmed over gRPC, `sluice.v1.Controller` served to node agents and
//! sluicectl.
//!
//! ```text
//! sluice-controller --store /var/lib/sluice/controller.redb \
//!     --listen unix:///run/sluice/controller.sock
//! ```
//!
//! Fails with one line (`sluice-controller: WHAT: WHY`) and exit code 1.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice_api::client::ClientTls;
use sluice_control::controller::server::{self, ListenAddr, ServerTls};
use sluice_control::controller::service::ControllerService;
use sluice_control::controller::{Controller, Store};

#[derive(Parser, Debug)]
#[command(
    name = "sluice-controller",
    version,
    about = "Sluice's controller, standalone mode"
)]
struct Args {
    /// The embedded store (created if missing).
    #[arg(long, env = "SLUICE_CONTROLLER_STORE")]
    store: PathBuf,
    /// Where to serve: unix:///path/to/socket (mode 0600) or https://ADDR:PORT (mutual TLS).
    #[arg(long, default_value = "unix:///run/sluice/controller.sock")]
    listen: String,
    /// This server's certificate (PEM), for https.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// This server's private key (PEM), for https.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The CA that signs client certificates (PEM), for https.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// CA that signed the gateways' certificates, for gateways reached over https.
    #[arg(long)]
    gateway_ca: Option<PathBuf>,
    /// The controller's client certificate for gateways (PEM).
    #[arg(long)]
    gateway_cert: Option<PathBuf>,
    /// The controller's client key for gateways (PEM).
    #[arg(long)]
    gateway_key: Option<PathBuf>,
    /// Milliseconds between checks of every gateway's boot id.
    #[arg(long, default_value_t = 2000)]
    check_interval_ms: u64,
    /// The underlay MTU; pods get this minus the encapsulation overhead.
    #[arg(long, default_value_t = 1500)]
    underlay_mtu: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice-controller: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("sluice-controller: {message}");
            ExitCode::FAILURE
        }
    }
}

fn read(what: &str, path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} from {}", path.display()))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let listen: ListenAddr = args.listen.parse()?;
    let tls = match (&args.tls_cert, &args.tls_key, &args.client_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(ServerTls {
            cert_pem: read("the server certificate", cert)?,
            key_pem: read("the server key", key)?,
            client_ca_pem: read("the client CA", ca)?,
        }),
        (None, None, None) => None,
        _ => anyhow::bail!("--tls-cert, --tls-key and --client-ca go together"),
    };
    let gateway_tls = match (&args.gateway_ca, &args.gateway_cert, &args.gateway_key) {
        (Some(ca), Some(cert), Some(key)) => Some(ClientTls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None, None) => None,
        _ => anyhow::bail!("--gateway-ca, --gateway-cert and --gateway-key go together"),
    };
    if let Some(dir) = args.store.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the store's directory {}", dir.display()))?;
    }
    let store = Store::open(&args.store)?;
    let controller = Controller::new(Arc::new(store), gateway_tls);
    // Push what the store holds to every registered gateway before serving.
    let first = controller.reconcile().await?;
    tracing::info!(
        store = %args.store.display(),
        apply_calls = first.apply_calls,
        unreachable = ?first.failed,
        "store opened, gateways synced"
    );
    let _checks = controller.spawn_checks(Duration::from_millis(args.check_interval_ms.max(50)));
    let bound = server::bind(&listen, tls).await?;
    tracing::info!(listen = %args.listen, "serving sluice.v1.Controller");
    let service = ControllerService::new(controller, args.underlay_mtu);
    server::serve(bound, service, shutdown()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still stops on the default action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
