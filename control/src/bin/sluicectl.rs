//! sluicectl: configure and inspect a Sluice gateway through its control service.
//!
//! ```text
//! sluicectl apply -f world.yaml
//! sluicectl get endpoints -o yaml
//! sluicectl stats
//! sluicectl health
//! sluicectl --server https://gw1:7443 --ca ca.pem --cert me.pem --key me.key get vpcs
//! ```
//!
//! Errors print one line, `sluicectl: WHAT: CODE: the gateway's message`, and exit 1.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_api::client::{self, ClientTls, Target};
use sluice_api::proto::v1 as pb;
use sluice_api::Object;
use sluice_control::cli::output::{self, Format};
use sluice_control::cli::{manifest, TableName};
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
    /// Apply a transaction from YAML: every upsert and delete, or none of them.
    Apply {
        /// YAML file of the sluice-api schema (`upserts:`, `deletes:`); `-` for stdin.
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
    let txn = match &args.command {
        Command::Apply { file } => Some(manifest::load(file)?),
        _ => None,
    };
    let channel = client::connect(&target, tls.as_ref()).await?;
    let format = args.output;
    match args.command {
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
                    kind: table.kind().into(),
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
        Command::Health => {
            let mut health = HealthClient::new(channel);
            let mut lines = String::new();
            for service in ["", "sluice.v1.Gateway"] {
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
    }
}
