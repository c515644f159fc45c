//! The table-churn controller of the loss test: `rate` transactions per second over the
//! gateway's gRPC `Apply` while traffic runs. Transaction `i` adds endpoint `i` of a churn
//! range (10.0.241.x to 10.0.250.x, on the sink host), deletes the one added before it,
//! and (unless asked for endpoints only) re-publishes service `i % services` of the run's
//! world with its backends rotated (all still on the sink host): what the traffic uses
//! changes, where it must go does not.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use sluice_api::client::{self, Target};
use sluice_api::proto::v1 as pb;
use sluice_api::{Backend, Endpoint, Object, ObjectKey, Protocol, Service, Transaction, Vni};

use crate::stats::median;
use crate::world::{World, SERVICE_PORT, SINK, VIP_BASE, VNI};

/// What failed while driving the gateway.
#[derive(Debug, thiserror::Error)]
pub enum ChurnError {
    #[error("{0}")]
    Connect(String),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// What a churn run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ChurnReport {
    pub applied: u64,
    pub failed: u64,
    pub seconds: f64,
    pub apply_ms_p50: f64,
    pub apply_ms_max: f64,
    pub first_error: Option<String>,
}

fn churn_endpoint(i: u64) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 250 - ((i / 250) % 10) as u8, 1 + (i % 250) as u8)
}

fn transaction(world: &World, services: bool, i: u64) -> Transaction {
    let vni = Vni::new(VNI).expect("a valid VNI");
    let mut upserts = vec![Object::Endpoint(Endpoint {
        vni,
        ip: churn_endpoint(i),
        mac: sluice_api::MacAddr([0x0a, 0x58, 0xee, 0, (i >> 8) as u8, i as u8]),
        host: SINK.ip,
    })];
    if services && world.services > 0 && world.endpoints > 2 {
        let j = (i % world.services as u64) as usize;
        let others = world.endpoints - 1;
        let backends = (0..world.backends.max(1))
            .map(|k| Backend {
                ip: world.endpoint(1 + (j + k + i as usize) % others).ip,
                port: 8000 + k as u16,
                weight: 1,
            })
            .collect();
        upserts.push(Object::Service(Service {
            vni,
            vip: Ipv4Addr::from(u32::from(VIP_BASE) + j as u32),
            port: SERVICE_PORT,
            protocol: Protocol::Udp,
            backends,
        }));
    }
    let deletes = if i == 0 {
        vec![]
    } else {
        vec![ObjectKey::Endpoint {
            vni,
            ip: churn_endpoint(i - 1),
        }]
    };
    Transaction { upserts, deletes }
}

/// Applies `rate` transactions per second for `duration`, paced, one at a time; with
/// `services`, each also re-publishes a service.
pub fn run(
    server: &str,
    world: &World,
    services: bool,
    rate: f64,
    duration: Duration,
) -> Result<ChurnReport, ChurnError> {
    let target: Target = server
        .parse()
        .map_err(|e: client::ConnectError| ChurnError::Connect(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ChurnError::Runtime)?;
    runtime.block_on(async {
        let channel = client::connect(&target, None)
            .await
            .map_err(|e| ChurnError::Connect(e.to_string()))?;
        let mut gateway = client::gateway(channel);
        let mut report = ChurnReport::default();
        let mut times = Vec::new();
        let step = Duration::from_secs_f64(1.0 / rate.max(1.0));
        let start = Instant::now();
        let mut next = start;
        let mut i = 0u64;
        while start.elapsed() < duration {
            tokio::time::sleep_until(next.into()).await;
            next += step;
            let tx = pb::Transaction::from(&transaction(world, services, i));
            let t = Instant::now();
            match gateway.apply(tx).await {
                Ok(_) => report.applied += 1,
                Err(status) => {
                    report.failed += 1;
                    report
                        .first_error
                        .get_or_insert_with(|| status.message().to_string());
                }
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
            i += 1;
        }
        report.seconds = start.elapsed().as_secs_f64();
        report.apply_ms_p50 = median(&times);
        report.apply_ms_max = times.iter().copied().fold(0.0, f64::max);
        Ok(report)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_transactions_apply_cleanly_in_sequence() {
        let world = World {
            endpoints: 100,
            services: 10,
            backends: 2,
        };
        let mut tables = sluice_dataplane::tables::TableWriter::new();
        tables.apply(&world.transaction()).expect("the world");
        for i in 0..3000 {
            tables
                .apply(&transaction(&world, i % 2 == 0, i))
                .unwrap_or_else(|e| panic!("transaction {i}: {e}"));
        }
    }
}
