//! `sluice-gen`: the generator, sink and helpers of `scripts/bench.sh` (and
//! `scripts/bench-gateway.sh`). Every subcommand prints JSON on stdout.
//!
//! * `tables FILE`: the standard test world (`testkit::world()`) as YAML.
//! * `world --endpoints E --services S --backends B FILE`: a benchmark world (perf's
//!   `world` module) as YAML, the gateway's `tables.file`.
//! * `send geneve|udp DST:PORT SECONDS CORE`: the old UDP-socket generator.
//! * `xsk ...`: the AF_XDP generator (perf's `xsk` module), pinned to one core.
//! * `sink --iface IF --seconds T [--stamps]`: counts at XDP and drops; prints one line
//!   per second and a summary with delay percentiles.
//! * `fwd --iface IN --out OUT --dst-mac M --src-mac M`: the in-kernel XDP forwarder,
//!   attached until the process is stopped.
//! * `churn --server unix:///S --rate R --seconds T --endpoints E --services S`: table
//!   updates over the gateway's gRPC Apply (perf's `churn` module) while traffic runs.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use sluice_api::MacAddr;
use sluice_dataplane::testkit::*;
use sluice_perf::packets::{Addrs, Spec, Template, PAYLOAD_64};
use sluice_perf::stats::histogram_quantile;
use sluice_perf::world::{self, World};
use sluice_perf::xdp::{bucket_us, ifindex, Bench, Program};
use sluice_perf::xsk::{Generator, Pace};

#[derive(Parser)]
#[command(about = "Sluice's benchmark generator, sink and helpers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    Plain,
    Geneve,
}

#[derive(Subcommand)]
enum Command {
    /// The standard test world as YAML.
    Tables { file: String },
    /// A benchmark world as YAML (the gateway's tables.file).
    World {
        #[arg(long)]
        endpoints: usize,
        #[arg(long, default_value_t = 0)]
        services: usize,
        #[arg(long, default_value_t = 2)]
        backends: usize,
        file: String,
    },
    /// The UDP-socket generator: geneve|udp DST:PORT SECONDS CORE.
    Send {
        kind: String,
        dst: SocketAddr,
        seconds: f64,
        core: usize,
    },
    /// The AF_XDP generator.
    Xsk {
        #[arg(long, default_value = "eth0")]
        iface: String,
        #[arg(long, value_enum)]
        kind: Kind,
        /// Outer destination MAC (the device under test).
        #[arg(long, default_value = "02:00:00:00:00:01")]
        dst_mac: String,
        /// Outer destination address (plain: the flow's destination).
        #[arg(long, default_value = "198.18.0.1")]
        dst_ip: Ipv4Addr,
        /// Destination UDP port of the flow header (Geneve: the inner one).
        #[arg(long, default_value_t = 80)]
        port: u16,
        #[arg(long, default_value_t = 1)]
        flows: u32,
        /// Spread flows over this many services from --vip-base (Geneve: the world's VIPs).
        #[arg(long, default_value_t = 0)]
        services: u32,
        #[arg(long, default_value = "198.19.128.0")]
        vip_base: Ipv4Addr,
        /// Geneve: the world's endpoint count (the inner addresses come from it).
        #[arg(long, default_value_t = 10)]
        world_endpoints: usize,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value_t = 0)]
        core: usize,
        /// Packets per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<f64>,
        /// Stamp every frame for the sink's delay histogram.
        #[arg(long)]
        stamps: bool,
        #[arg(long, default_value_t = 64)]
        batch: usize,
    },
    /// The XDP sink.
    Sink {
        #[arg(long, default_value = "eth0")]
        iface: String,
        #[arg(long)]
        seconds: f64,
        #[arg(long)]
        stamps: bool,
    },
    /// Table updates over the gateway's gRPC Apply, paced.
    Churn {
        #[arg(long)]
        server: String,
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[arg(long)]
        seconds: f64,
        /// The world the gateway was started with.
        #[arg(long)]
        endpoints: usize,
        #[arg(long, default_value_t = 0)]
        services: usize,
        #[arg(long, default_value_t = 2)]
        backends: usize,
        /// Add and remove endpoints only; leave the services alone.
        #[arg(long)]
        endpoints_only: bool,
    },
    /// The in-kernel XDP forwarder (bpf_redirect), until stopped.
    Fwd {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        out: String,
        #[arg(long)]
        dst_mac: String,
        #[arg(long)]
        src_mac: String,
    },
}

fn main() {
    sluice_api::process::one_line_panics("sluice-gen");
    if let Err(e) = run(Cli::parse()) {
        eprintln!("sluice-gen: {e:#}");
        std::process::exit(1);
    }
}

fn mac(s: &str) -> Result<MacAddr> {
    MacAddr::from_str(s).map_err(|e| anyhow::anyhow!("{s:?} is not a MAC address: {e}"))
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tables { file } => {
            let yaml = serde_norway::to_string(&world()).context("the world as YAML")?;
            std::fs::write(&file, yaml).with_context(|| format!("writing {file}"))?;
        }
        Command::World {
            endpoints,
            services,
            backends,
            file,
        } => {
            if endpoints < 2 {
                bail!("--endpoints must be at least 2");
            }
            let w = World {
                endpoints,
                services,
                backends,
            };
            let yaml = serde_norway::to_string(&w.transaction()).context("the world as YAML")?;
            std::fs::write(&file, yaml).with_context(|| format!("writing {file}"))?;
        }
        Command::Send {
            kind,
            dst,
            seconds,
            core,
        } => {
            let payload = match kind.as_str() {
                "geneve" => {
                    let inner = inner_udp(
                        POD_A1_MAC,
                        POD_A1B_MAC,
                        POD_A1,
                        POD_A1B,
                        (1000, 2000),
                        &[0u8; PAYLOAD_64],
                    );
                    let mut p = geneve_header(VNI_A, &[]);
                    p.extend_from_slice(&inner);
                    p
                }
                "udp" => vec![0u8; PAYLOAD_64],
                other => bail!("send: {other:?} is neither geneve nor udp"),
            };
            send(dst, &payload, Duration::from_secs_f64(seconds), core)?;
        }
        Command::Xsk {
            iface,
            kind,
            dst_mac,
            dst_ip,
            port,
            flows,
            services,
            vip_base,
            world_endpoints,
            seconds,
            core,
            rate,
            stamps,
            batch,
        } => {
            if !(1..=16_000_000).contains(&flows) {
                bail!("--flows must be within 1..=16000000");
            }
            let dst = Addrs {
                mac: mac(&dst_mac)?,
                ip: dst_ip,
            };
            let spec = match kind {
                Kind::Plain => Spec {
                    src: world::GENERATOR,
                    dst,
                    geneve: None,
                    port,
                    flows,
                    services,
                    vip_base,
                },
                Kind::Geneve => {
                    let w = World {
                        endpoints: world_endpoints.max(2),
                        services: services as usize,
                        backends: 0,
                    };
                    let (src, peer) = w.bounce_pair();
                    Spec {
                        src: world::GENERATOR,
                        dst,
                        geneve: Some((world::VNI, src, peer)),
                        port,
                        flows,
                        services,
                        vip_base: world::VIP_BASE,
                    }
                }
            };
            let template = Template::new(&spec);
            sluice_dataplane::engine::pin_current_thread(core).context("pinning the generator")?;
            let mut generator = Generator::new(&iface, &template)?;
            let sent = generator.run(
                &template,
                flows,
                Duration::from_secs_f64(seconds),
                Pace {
                    rate,
                    stamps,
                    batch,
                },
            )?;
            println!(
                "{}",
                json!({"sent": sent.total, "seconds": sent.seconds, "windows": sent.windows})
            );
        }
        Command::Churn {
            server,
            rate,
            seconds,
            endpoints,
            services,
            backends,
            endpoints_only,
        } => {
            let w = World {
                endpoints,
                services,
                backends,
            };
            let report = sluice_perf::churn::run(
                &server,
                &w,
                !endpoints_only,
                rate,
                Duration::from_secs_f64(seconds),
            )?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::Sink {
            iface,
            seconds,
            stamps,
        } => sink(&iface, seconds, stamps)?,
        Command::Fwd {
            iface,
            out,
            dst_mac,
            src_mac,
        } => {
            let mut bench = Bench::load()?;
            let dst = Addrs {
                mac: mac(&dst_mac)?,
                ip: Ipv4Addr::UNSPECIFIED,
            };
            let src = Addrs {
                mac: mac(&src_mac)?,
                ip: Ipv4Addr::UNSPECIFIED,
            };
            bench.configure(ifindex(&out)?, false, Some(dst), Some(src))?;
            bench.attach(Program::Fwd, &iface)?;
            println!("{}", json!({"attached": iface, "out": out}));
            // The link detaches when the process ends (SIGTERM from the bench script).
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
    Ok(())
}

fn sink(iface: &str, seconds: f64, stamps: bool) -> Result<()> {
    let mut bench = Bench::load()?;
    bench.configure(0, stamps, None, None)?;
    bench.attach(Program::Sink, iface)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut last = bench.counts()?[0];
    let mut next = start + Duration::from_secs(1);
    let mut windows = Vec::new();
    while next <= deadline {
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let now = bench.counts()?[0];
        windows.push(now - last);
        last = now;
        next += Duration::from_secs(1);
    }
    let counts = bench.counts()?;
    let mut summary = json!({"frames": counts[0], "bytes": counts[1], "windows": windows});
    if stamps {
        let hist = bench.histogram()?;
        let q = |p| histogram_quantile(&hist, p).map(bucket_us);
        summary["stamped"] = json!(counts[2]);
        summary["future_stamps"] = json!(counts[3]);
        summary["delay_us"] = json!({"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0)});
    }
    println!("{summary}");
    Ok(())
}

fn send(dst: SocketAddr, payload: &[u8], duration: Duration, core: usize) -> Result<()> {
    sluice_dataplane::engine::pin_current_thread(core).context("pinning the generator")?;
    let socket = UdpSocket::bind("0.0.0.0:50000").context("binding UDP port 50000")?;
    socket.connect(dst).context("connecting the UDP socket")?;
    let (mut sent, mut failed) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + duration;
    loop {
        for _ in 0..1024 {
            match socket.send(payload) {
                Ok(_) => sent += 1,
                Err(_) => failed += 1,
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({"sent": sent, "failed": failed, "seconds": elapsed})
    );
    Ok(())
}
