//! sluice-controller. Standalone mode: objects and allocations in a local redb store,
//! gateways programmed over gRPC, `sluice.v1.Controller` served to node agents and
//! sluicectl.
//!
//! ```text
//! sluice-controller --store /var/lib/sluice/controller.redb \
//!     --listen unix:///run/sluice/controller.sock
//! ```
//!
//! Kubernetes mode (`--mode kubernetes`): VPCs and subnets from the `Vpc`/`Subnet`
//! CRDs, services from ClusterIP Services and their EndpointSlices, pod networks from
//! annotations; one replica leads through a Lease and exits as soon as it is not sure
//! to hold it any more (its renew deadline passed). `RUST_LOG` sets what is logged
//! (default `info`).
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
use sluice_control::kubernetes::allocations;
use sluice_control::kubernetes::lease::Elector;
use sluice_control::kubernetes::operator::{self, Caches, KubeSource, Signals};
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-controller",
    version,
    about = "Sluice's controller (standalone or Kubernetes mode)"
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
    /// `standalone` (objects from sluicectl) or `kubernetes` (Vpc and Subnet CRDs,
    /// Services, EndpointSlices and Pods from the API server; in-cluster config or
    /// KUBECONFIG).
    #[arg(long, value_enum, default_value_t = Mode::Standalone)]
    mode: Mode,
    /// Kubernetes mode: the namespace of the leader-election Lease and the gateway pods.
    #[arg(long, env = "POD_NAMESPACE", default_value = "sluice-system")]
    namespace: String,
    /// Kubernetes mode: this replica's identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "sluice-controller")]
    identity: String,
    /// Kubernetes mode: seconds a leader's Lease lasts without renewal.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Standalone,
    Kubernetes,
}

fn main() -> ExitCode {
    sluice_api::process::one_line_panics("sluice-controller");
    let args = Args::parse();
    // RUST_LOG (e.g. `info`, `sluice_control=debug,kube=warn`); `info` when unset.
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("sluice-controller: RUST_LOG={spec:?}: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(filter)
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
    let result = runtime.block_on(run(args));
    // Whatever is still running (a gateway call, a watch) stops here, not later.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
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

/// Aborts a spawned task when dropped, so that nothing a leader started outlives its
/// leadership.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
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
    let serving = Serving {
        listen,
        listen_text: args.listen.clone(),
        tls,
        underlay_mtu: args.underlay_mtu,
        check_interval: Duration::from_millis(args.check_interval_ms.max(50)),
    };
    match args.mode {
        Mode::Standalone => {
            let store = Arc::new(Store::open(&args.store)?);
            let controller = Controller::new(store, gateway_tls);
            serving.serve(&args, controller, shutdown()).await?;
        }
        Mode::Kubernetes => kubernetes(args, serving, gateway_tls).await?,
    }
    tracing::info!("stopped");
    Ok(())
}

/// How `sluice.v1.Controller` is served.
struct Serving {
    listen: ListenAddr,
    listen_text: String,
    tls: Option<ServerTls>,
    underlay_mtu: u32,
    check_interval: Duration,
}

impl Serving {
    /// Pushes what the store holds to every registered gateway, then serves until
    /// `stop`.
    async fn serve(
        self,
        args: &Args,
        controller: Arc<Controller>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let first = controller.reconcile().await?;
        tracing::info!(
            store = %args.store.display(),
            apply_calls = first.apply_calls,
            unreachable = ?first.failed,
            "store opened, gateways synced"
        );
        let _checks = AbortOnDrop(controller.spawn_checks(self.check_interval));
        let bound = server::bind(&self.listen, self.tls).await?;
        match bound.tcp_addr() {
            // The bound address: the port chosen when --listen names port 0.
            Some(addr) => {
                tracing::info!(listen = %self.listen_text, %addr, "serving sluice.v1.Controller")
            }
            None => tracing::info!(listen = %self.listen_text, "serving sluice.v1.Controller"),
        }
        let service = ControllerService::new(controller, self.underlay_mtu);
        server::serve(bound, service, stop).await?;
        Ok(())
    }
}

/// Kubernetes mode: campaigns for the lease, then leads until SIGTERM or until the
/// lease is lost. Leadership ends the moment the renew deadline passes: everything the
/// leader runs (reconcilers, gateway calls, the gRPC server) is dropped then, and the
/// process exits so that its replacement campaigns again.
async fn kubernetes(
    args: Args,
    serving: Serving,
    gateway_tls: Option<ClientTls>,
) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    // Only the leader programs gateways and serves: a replica waits here.
    let elector = Elector::new(
        kube::Api::namespaced(client.clone(), &args.namespace),
        "sluice-controller",
        &args.identity,
        Duration::from_secs(args.lease_seconds.max(3)),
    );
    let won = tokio::select! {
        won = elector.acquire() => won,
        _ = shutdown() => return Ok(()),
    };
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
    let _holding = AbortOnDrop(tokio::spawn(async move {
        let why = elector.hold(won).await;
        let _ = lost_tx.send(why);
    }));
    tokio::select! {
        led = lead(&args, serving, client, gateway_tls) => led,
        why = lost_rx => match why {
            Ok(why) => anyhow::bail!("stepped down: {why}; stopping so that another replica leads"),
            Err(_) => anyhow::bail!("leader election stopped; stopping so that another replica leads"),
        },
    }
}

/// What the leader does: rebuild the store from the cluster, start the caches and the
/// reconcilers, and serve once the caches are filled.
async fn lead(
    args: &Args,
    serving: Serving,
    client: kube::Client,
    gateway_tls: Option<ClientTls>,
) -> anyhow::Result<()> {
    // The API server is the record (Vpc status, pod annotations): this replica's store
    // is rebuilt from it, whatever an earlier term left there, before any gateway is
    // programmed.
    match std::fs::remove_file(&args.store) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("removing the previous store {}", args.store.display()))
        }
    }
    let store = Arc::new(Store::open(&args.store)?);
    let rebuilt = allocations::rebuild(&client, &store)
        .await
        .context("rebuilding allocations from the Kubernetes API")?;
    tracing::info!(
        vpcs = rebuilt.vpcs,
        subnets = rebuilt.subnets,
        nodes = rebuilt.nodes,
        endpoints = rebuilt.endpoints,
        skipped = rebuilt.skipped.len(),
        "allocations rebuilt from Vpc status and pod annotations"
    );
    let (caches, feed) = Caches::new(store.clone());
    let signals = Signals::default();
    let source = KubeSource::new(store.clone(), feed.pods.clone(), feed.namespaces.clone())
        .recording(client.clone())
        .signalling(signals.clone());
    let controller = Controller::new(Arc::new(source), gateway_tls);
    let ready = feed.ready();
    let _caches = AbortOnDrop(tokio::spawn(caches.run(client.clone())));
    let ctx = operator::Context::with_signals(client, controller.clone(), store, signals);
    let _operator = AbortOnDrop(tokio::spawn(operator::run(
        ctx,
        feed,
        args.namespace.clone(),
    )));
    // AttachEndpoint reads pod and namespace annotations from the caches: a pod looked
    // up before they are filled would seem to have none.
    tracing::info!("waiting for the Pod and Namespace caches");
    tokio::select! {
        filled = ready => filled?,
        _ = shutdown() => return Ok(()),
    }
    serving.serve(args, controller, shutdown()).await
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
