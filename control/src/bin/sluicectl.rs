//! sluicectl: configure and inspect a Sluice gateway through its control service.
//!
//! ```text
//! sluicectl apply -f world.yaml
//! sluicectl get endpoints -o yaml
//! sluicectl stats
//! sluicectl health
//! sluicectl --server https://gw1:7443 --ca ca.pem --cert me.pem --key me.key get vpcs
//!
//! sluicectl --controller unix:///run/sluice/controller.sock apply -f cluster.yaml
//! sluicectl --controller unix:///run/sluice/controller.sock get gateways
//! sluicectl --controller unix:///run/sluice/controller.sock delete -f cluster.yaml
//! ```
//!
//! With `--controller`, `apply`, `delete` and `get` work on the controller's objects
//! (VPCs, subnets, services, gateways, nodes, endpoints) in the YAML schema of the CRDs;
//! without it, on one gateway's tables.
//!
//! Errors print one line, `sluicectl: WHAT: CODE: the server's message`, and exit 1.
#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_api::client::{self, ClientTls, Target};
use sluice_api::proto::v1 as pb;
use sluice_api::proto::v1::controller_client::ControllerClient;
use sluice_api::Object;
use sluice_control::cli::output::{self, Format};
use sluice_control::cli::{manifest, TableName};
use sluice_control::controller::objects::{parse_manifest, ClusterObject};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Parser, Debug)]
#[command(
    name = "sluicectl",
    version,
    about = "Configure and inspect a Sluice gateway"
)]
struct Args {
    /// The gateway's control service: unix:///path/to/socket or https://host:port.
    #[arg(
        long,
        global = true,
        env = "SLUICE_SERVER",
        default_value = "unix:///run/sluice/gateway.sock"
    )]
    server: String,
    /// Talk to the controller instead of a gateway: unix:///path/to/socket or
    /// https://host:port.
    #[arg(long, global = true, env = "SLUICE_CONTROLLER")]
    controller: Option<String>,
    /// CA certificate (PEM) that signed the gateway's certificate (https only).
    #[arg(long, global = true, env = "SLUICE_CA")]
    ca: Option<PathBuf>,
    /// This client's certificate (PEM), signed by a CA the gateway trusts (https only).
    #[arg(long, global = true, env = "SLUICE_CERT")]
    cert: Option<PathBuf>,
    /// This client's private key (PEM) (https only).
    #[arg(long, global = true, env = "SLUICE_KEY")]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply a transaction from YAML (gateway), or objects (controller): all or none.
    Apply {
        /// YAML file: for a gateway the sluice-api schema (`upserts:`, `deletes:`); for
        /// the controller one object per document (`kind: Vpc`, ...). `-` for stdin.
        #[arg(long, short)]
        file: PathBuf,
    },
    /// Delete the objects a YAML file names (controller only): all or none.
    Delete {
        #[arg(long, short)]
        file: PathBuf,
    },
    /// List one table.
    Get {
        #[arg(value_enum)]
        table: TableName,
    },
    /// Packet counters summed over the gateway's workers.
    Stats,
    /// Whether the gateway's control service is serving.
    Health,
}

fn main() -> ExitCode {
    sluice_api::process::one_line_panics("sluicectl");
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluicectl: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line, no backtrace: the chain of contexts down to the gateway's message.
            let message = format!("{e:#}").replace('\n', " ");
            eprintln!("sluicectl: {message}");
            ExitCode::FAILURE
        }
    }
}

/// A gRPC error as one line: its code and the server's message.
fn status(what: &str, status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {:?}: {}", status.code(), status.message())
}

async fn run(args: Args) -> anyhow::Result<String> {
    let target: Target = args.server.parse()?;
    let tls = match (&args.ca, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => Some(ClientTls {
            ca: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
        (None, None, None) => None,
        _ => anyhow::bail!("--ca, --cert and --key go together"),
    };
    // Read the file before connecting: a YAML mistake needs no gateway to report.
    if let Some(controller) = &args.controller {
        let target: Target = controller.parse()?;
        return controller_command(&args, &target, tls.as_ref()).await;
    }
    let txn = match &args.command {
        Command::Apply { file } => Some(manifest::load(file)?),
        _ => None,
    };
    let channel = client::connect(&target, tls.as_ref()).await?;
    let format = args.output;
    match args.command {
        Command::Delete { .. } => {
            anyhow::bail!("delete works on the controller's objects: use --controller")
        }
        Command::Apply { .. } => {
            let txn = txn.context("no transaction was read")?;
            let reply = client::gateway(channel)
                .apply(pb::Transaction::from(&txn))
                .await
                .map_err(|s| status("apply", s))?
                .into_inner();
            Ok(output::applied(format, reply.generation, &reply.boot_id)?)
        }
        Command::Get { table } => {
            let mut stream = client::gateway(channel)
                .list(pb::ListRequest {
                    kind: table
                        .kind()
                        .context("gateways and nodes are the controller's: use --controller")?
                        .into(),
                })
                .await
                .map_err(|s| status("get", s))?
                .into_inner();
            let (mut objects, mut generation, mut boot_id) = (Vec::new(), 0, String::new());
            while let Some(chunk) = stream.message().await.map_err(|s| status("get", s))? {
                generation = chunk.generation;
                boot_id = chunk.boot_id;
                for object in &chunk.objects {
                    objects.push(
                        Object::try_from(object)
                            .context("the gateway sent an object sluicectl cannot read")?,
                    );
                }
            }
            Ok(output::objects(format, &mut objects, generation, &boot_id)?)
        }
        Command::Stats => {
            let counters = client::gateway(channel)
                .get_counters(pb::GetCountersRequest {})
                .await
                .map_err(|s| status("stats", s))?
                .into_inner();
            Ok(output::counters(format, &counters)?)
        }
        Command::Health => health(channel, "sluice.v1.Gateway", format).await,
    }
}

/// Whether the server and `service` are serving.
async fn health(
    channel: tonic::transport::Channel,
    service_name: &str,
    format: Format,
) -> anyhow::Result<String> {
    let mut health = HealthClient::new(channel);
    let mut lines = String::new();
    for service in ["", service_name] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map_err(|s| status("health", s))?
            .into_inner();
        let state = reply.status();
        let name = if service.is_empty() {
            "server"
        } else {
            service
        };
        if state != ServingStatus::Serving {
            anyhow::bail!("health: {name} is {}", state.as_str_name());
        }
        lines.push_str(&format!("{name}: {}\n", state.as_str_name()));
    }
    Ok(match format {
        Format::Table => lines,
        Format::Json => "{\"status\": \"SERVING\"}\n".into(),
        Format::Yaml => "status: SERVING\n".into(),
    })
}

fn read_objects(file: &Path) -> anyhow::Result<Vec<ClusterObject>> {
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map(|_| text)
            .context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let objects = parse_manifest(&text).with_context(|| format!("{}", file.display()))?;
    if objects.is_empty() {
        anyhow::bail!("{}: no objects", file.display());
    }
    Ok(objects)
}

fn decode(objects: &[pb::ClusterObject]) -> anyhow::Result<Vec<ClusterObject>> {
    objects
        .iter()
        .map(|o| {
            serde_json::from_str(&o.json)
                .context("the controller sent an object sluicectl cannot read")
        })
        .collect()
}

/// `apply`, `delete`, `get` and `health` against the controller.
async fn controller_command(
    args: &Args,
    target: &Target,
    tls: Option<&ClientTls>,
) -> anyhow::Result<String> {
    // Read the file before connecting: a YAML mistake needs no controller to report.
    let objects = match &args.command {
        Command::Apply { file } | Command::Delete { file } => read_objects(file)?,
        _ => Vec::new(),
    };
    let channel = client::connect(target, tls).await?;
    let mut controller = ControllerClient::new(channel.clone())
        .max_decoding_message_size(sluice_api::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(sluice_api::MAX_MESSAGE_BYTES);
    let format = args.output;
    match &args.command {
        Command::Apply { .. } => {
            let request = pb::ApplyObjectsRequest {
                objects: objects
                    .iter()
                    .map(|o| serde_json::to_string(o).map(|json| pb::ClusterObject { json }))
                    .collect::<Result<_, _>>()?,
            };
            let reply = controller
                .apply_objects(request)
                .await
                .map_err(|s| status("apply", s))?
                .into_inner();
            let mut stored = decode(&reply.objects)?;
            Ok(output::cluster_applied(
                format,
                "applied",
                &mut stored,
                reply.apply_calls,
            )?)
        }
        Command::Delete { .. } => {
            let request = pb::DeleteObjectsRequest {
                objects: objects
                    .iter()
                    .map(|o| {
                        let r = o.reference();
                        let (namespace, name) = match r.name.split_once('/') {
                            Some((ns, name)) => (ns.to_owned(), name.to_owned()),
                            None => (String::new(), r.name.clone()),
                        };
                        pb::ObjectRef {
                            kind: r.kind.to_string(),
                            name,
                            namespace,
                        }
                    })
                    .collect(),
            };
            let reply = controller
                .delete_objects(request)
                .await
                .map_err(|s| status("delete", s))?
                .into_inner();
            let mut gone = objects;
            Ok(output::cluster_applied(
                format,
                "deleted",
                &mut gone,
                reply.apply_calls,
            )?)
        }
        Command::Get { table } => {
            let kind = table
                .object_kind()
                .context("hosts are a gateway table: use --server without --controller")?;
            let reply = controller
                .list_objects(pb::ListObjectsRequest {
                    kind: kind.to_string(),
                })
                .await
                .map_err(|s| status("get", s))?
                .into_inner();
            let mut objects = decode(&reply.objects)?;
            Ok(output::cluster_objects(format, &mut objects)?)
        }
        Command::Stats => anyhow::bail!("stats reads a gateway's counters: drop --controller"),
        Command::Health => health(channel, "sluice.v1.Controller", format).await,
    }
}
