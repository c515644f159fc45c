//! The workers' published counters: summed for the control service, rendered as
//! Prometheus text, served over a minimal HTTP/1.1 responder, and read back as a table
//! by `sluice-gateway stats`.
//!
//! Reading never touches a worker: each worker copies its counters into its own
//! [`CounterSlot`] about every 100 ms, and this module only reads those slots. Figures
//! are therefore up to that old.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use sluice_api::Protocol;

use crate::engine::{CounterSlot, WorkerCounters};
use crate::pipeline::DropReason;
use crate::service::{BackendCount, CounterSource, PacketCounters, ServiceCount};
use crate::tables::TableView;

/// One worker's published counters and what identifies it.
#[derive(Debug)]
pub struct PublishedWorker {
    pub core: u32,
    pub interface: String,
    pub queue: u32,
    pub slot: Arc<CounterSlot>,
}

/// Every worker's slots (one per queue it serves), and the tables that say which
/// services exist. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Published {
    workers: Arc<[PublishedWorker]>,
    tables: Option<TableView>,
}

impl Published {
    pub fn new(workers: Vec<PublishedWorker>) -> Self {
        Self {
            workers: workers.into(),
            tables: None,
        }
    }

    /// Reports per-service counts for the services in these tables.
    pub fn with_tables(mut self, tables: TableView) -> Self {
        self.tables = Some(tables);
        self
    }

    pub fn workers(&self) -> &[PublishedWorker] {
        &self.workers
    }

    /// All workers' counters summed (per-service counts aside: see [`Self::services`]).
    pub fn total(&self) -> WorkerCounters {
        let mut total = WorkerCounters::default();
        for worker in self.workers.iter() {
            total.merge(&worker.slot.read());
        }
        total
    }

    /// Forwarded packets per service that exists now and per backend, summed over the
    /// workers' counts for that service's current instance; ordered by VNI, VIP, port
    /// and protocol. Empty without tables.
    pub fn services(&self, snapshots: &[WorkerCounters]) -> Vec<ServiceCount> {
        let Some(tables) = &self.tables else {
            return Vec::new();
        };
        let tables = tables.snapshot();
        let mut services: Vec<ServiceCount> = tables
            .service_entries()
            .map(|entry| {
                let slots: Vec<_> = snapshots
                    .iter()
                    .filter_map(|c| c.services.get(entry.instance))
                    .collect();
                let svc = &entry.service;
                ServiceCount {
                    vni: svc.vni.get(),
                    vip: svc.vip,
                    port: svc.port,
                    protocol: svc.protocol,
                    packets: slots.iter().map(|s| s.packets).sum(),
                    backends: svc
                        .backends
                        .iter()
                        .enumerate()
                        .map(|(i, b)| BackendCount {
                            ip: b.ip,
                            port: b.port,
                            packets: slots.iter().filter_map(|s| s.backends.get(i)).sum(),
                        })
                        .collect(),
                }
            })
            .collect();
        services.sort_by_key(|s| (s.vni, s.vip, s.port, s.protocol.number()));
        services
    }

    /// The Prometheus text exposition (format 0.0.4) of every worker's counters.
    pub fn render(&self) -> String {
        let snapshots: Vec<(&PublishedWorker, WorkerCounters)> =
            self.workers.iter().map(|w| (w, w.slot.read())).collect();
        let mut out = String::new();
        let labels = |w: &PublishedWorker| {
            format!(
                "worker=\"{}\",interface=\"{}\",queue=\"{}\"",
                w.core,
                escape(&w.interface),
                w.queue
            )
        };
        type Field = fn(&WorkerCounters) -> u64;
        let counters: [(&str, &str, Field); 10] = [
            (
                "sluice_rx_packets_total",
                "Packets received from the AF_XDP RX ring.",
                |c| c.rx_packets,
            ),
            (
                "sluice_tx_packets_total",
                "Packets put on the AF_XDP TX ring.",
                |c| c.tx_packets,
            ),
            (
                "sluice_rx_bytes_total",
                "Bytes received from the AF_XDP RX ring.",
                |c| c.rx_bytes,
            ),
            (
                "sluice_tx_bytes_total",
                "Bytes put on the AF_XDP TX ring.",
                |c| c.tx_bytes,
            ),
            (
                "sluice_forwarded_total",
                "Packets rewritten toward their next hop.",
                |c| c.outcomes.forwarded,
            ),
            (
                "sluice_replied_total",
                "Packets turned into replies to their sender (ARP).",
                |c| c.outcomes.replied,
            ),
            (
                "sluice_fill_ring_empty_total",
                "Refills that found no free frame for the fill ring.",
                |c| c.fill_ring_empty,
            ),
            (
                "sluice_tx_ring_full_total",
                "Batches that did not fit in the TX ring at once.",
                |c| c.tx_ring_full,
            ),
            ("sluice_kicks_total", "TX wakeup syscalls (sendto).", |c| {
                c.kicks
            }),
            (
                "sluice_tx_abandoned_total",
                "Forwarded packets that never reached the TX ring (stopping, or a failed TX wakeup).",
                |c| c.tx_abandoned,
            ),
        ];
        for (name, help, field) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (worker, counters) in &snapshots {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(worker), field(counters));
            }
        }
        let name = "sluice_drops_total";
        let _ = writeln!(out, "# HELP {name} Packets dropped, by reason.");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (worker, counters) in &snapshots {
            for (reason, count) in counters.outcomes.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{{},reason=\"{}\"}} {count}",
                    labels(worker),
                    reason.label()
                );
            }
        }
        let counts: Vec<WorkerCounters> = snapshots.into_iter().map(|(_, c)| c).collect();
        render_services(&mut out, &self.services(&counts));
        out
    }
}

/// The per-service and per-backend families; left out while no service exists.
fn render_services(out: &mut String, services: &[ServiceCount]) {
    if services.is_empty() {
        return;
    }
    let labels = |s: &ServiceCount| {
        format!(
            "vni=\"{}\",vip=\"{}\",port=\"{}\",protocol=\"{}\"",
            s.vni,
            s.vip,
            s.port,
            protocol_label(s.protocol)
        )
    };
    let name = "sluice_service_packets_total";
    let _ = writeln!(
        out,
        "# HELP {name} Packets translated to a backend of the service and forwarded."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for service in services {
        let _ = writeln!(out, "{name}{{{}}} {}", labels(service), service.packets);
    }
    let name = "sluice_backend_packets_total";
    let _ = writeln!(
        out,
        "# HELP {name} Packets of the service forwarded to this backend (address:port)."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for service in services {
        for backend in &service.backends {
            let _ = writeln!(
                out,
                "{name}{{{},backend=\"{}:{}\"}} {}",
                labels(service),
                backend.ip,
                backend.port,
                backend.packets
            );
        }
    }
}

/// The `protocol` label of a service.
pub fn protocol_label(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

impl CounterSource for Published {
    fn read(&self) -> PacketCounters {
        let snapshots: Vec<WorkerCounters> = self.workers.iter().map(|w| w.slot.read()).collect();
        let mut total = WorkerCounters::default();
        for counters in &snapshots {
            total.merge(counters);
        }
        PacketCounters {
            services: self.services(&snapshots),
            ..total.packet_counters()
        }
    }
}

/// Label values escape backslash, quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Connections served at once; more wait for a turn.
const MAX_CONNECTIONS: usize = 16;
/// Longest a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head read.
const MAX_REQUEST: usize = 8 << 10;

/// Serves `GET /metrics` on `listener` until `shutdown` completes. Any other path is
/// 404, any other method 405; every connection is closed after one response.
pub async fn serve_metrics(
    listener: TcpListener,
    published: Published,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let published = published.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, respond(stream, &published)).await;
            drop(permit);
        });
    }
}

async fn respond(mut stream: TcpStream, published: &Published) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            break;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            published.render(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".into()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Fetches `http://ADDR/metrics` (blocking, for `sluice-gateway stats`).
pub fn fetch(addr: std::net::SocketAddr, timeout: Duration) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("the response has no header end"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(std::io::Error::other(format!(
            "the metrics server answered {status:?}"
        )));
    }
    Ok(body.to_string())
}

/// Turns Sluice's Prometheus text into tables: one row per counter (drop reasons that
/// are zero everywhere are left out), one column per worker queue, then the total; then,
/// if any service exists, one row per service and per backend with its packets.
pub fn stats_table(text: &str) -> Result<String, String> {
    // row name -> column -> value
    let mut rows: BTreeMap<(usize, String), BTreeMap<Column, u64>> = BTreeMap::new();
    let mut columns = std::collections::BTreeSet::new();
    // (vni, vip, port, protocol) -> (service packets, [(backend, packets)])
    let mut services: BTreeMap<ServiceLabels, (u64, Vec<(String, u64)>)> = BTreeMap::new();
    let order = |name: &str| {
        [
            "rx_packets",
            "rx_bytes",
            "tx_packets",
            "tx_bytes",
            "forwarded",
            "replied",
            "drops",
            "fill_ring_empty",
            "tx_ring_full",
            "kicks",
            "tx_abandoned",
        ]
        .iter()
        .position(|n| *n == name)
        .unwrap_or(usize::MAX)
    };
    for (number, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: not a Sluice sample: {line:?}", number + 1);
        let (series, value) = line.rsplit_once(' ').ok_or_else(bad)?;
        let value: u64 = value.parse().map_err(|_| bad())?;
        let (name, labels) = series.split_once('{').ok_or_else(bad)?;
        let labels = labels.strip_suffix('}').ok_or_else(bad)?;
        let label = |key: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_string())
            })
        };
        let Some(short) = name
            .strip_prefix("sluice_")
            .and_then(|n| n.strip_suffix("_total"))
        else {
            continue;
        };
        if short == "service_packets" || short == "backend_packets" {
            let key = (
                label("vni")
                    .ok_or_else(bad)?
                    .parse::<u32>()
                    .map_err(|_| bad())?,
                label("vip").ok_or_else(bad)?,
                label("port")
                    .ok_or_else(bad)?
                    .parse::<u16>()
                    .map_err(|_| bad())?,
                label("protocol").ok_or_else(bad)?,
            );
            let entry = services.entry(key).or_default();
            match label("backend") {
                Some(backend) => entry.1.push((backend, value)),
                None => entry.0 = value,
            }
            continue;
        }
        let worker: u32 = label("worker")
            .and_then(|w| w.parse().ok())
            .ok_or_else(bad)?;
        let column = (
            worker,
            label("interface").unwrap_or_default(),
            label("queue").and_then(|q| q.parse().ok()).unwrap_or(0),
        );
        columns.insert(column.clone());
        let row = match label("reason") {
            Some(reason) => format!("drops {reason}"),
            None => short.to_string(),
        };
        rows.entry((order(short), row))
            .or_default()
            .insert(column, value);
    }
    if columns.is_empty() {
        return Err("no sluice_* counters in the answer".into());
    }
    let mut out = format!("{:<34}", "counter");
    for (worker, interface, queue) in &columns {
        let _ = write!(out, " {:>16}", format!("core {worker} {interface}:{queue}"));
    }
    let _ = writeln!(out, " {:>16}", "total");
    for ((_, row), values) in &rows {
        let total: u64 = values.values().sum();
        if row.starts_with("drops ") && total == 0 {
            continue;
        }
        let _ = write!(out, "{row:<34}");
        for column in &columns {
            let _ = write!(out, " {:>16}", values.get(column).copied().unwrap_or(0));
        }
        let _ = writeln!(out, " {total:>16}");
    }
    if !services.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<44} {:>16}", "service / backend", "packets");
        for ((vni, vip, port, protocol), (packets, backends)) in &services {
            let service = format!("vni {vni} {vip}:{port}/{protocol}");
            let _ = writeln!(out, "{service:<44} {packets:>16}");
            for (backend, packets) in backends {
                let _ = writeln!(out, "{:<44} {packets:>16}", format!("  -> {backend}"));
            }
        }
    }
    Ok(out)
}

/// A column of the stats table: worker core, interface, queue.
type Column = (u32, String, u32);
/// A service as its labels name it: VNI, VIP, port, protocol.
type ServiceLabels = (u32, String, u16, String);

/// Every drop reason label, for tests that check each has a series.
pub fn drop_labels() -> impl Iterator<Item = &'static str> {
    DropReason::ALL.iter().map(|r| r.label())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Verdict;

    fn published() -> Published {
        let workers = [(1, 0), (2, 1)]
            .into_iter()
            .map(|(core, queue)| {
                let slot = Arc::new(CounterSlot::default());
                let mut counters = WorkerCounters {
                    rx_packets: 10 * u64::from(core),
                    ..Default::default()
                };
                counters
                    .outcomes
                    .record(Verdict::Drop(DropReason::NotGeneve));
                slot.publish(&counters);
                PublishedWorker {
                    core,
                    interface: "eth1".into(),
                    queue,
                    slot,
                }
            })
            .collect();
        Published::new(workers)
    }

    #[test]
    fn every_counter_and_drop_reason_has_a_series_per_worker() {
        let text = published().render();
        for name in [
            "sluice_rx_packets_total",
            "sluice_tx_packets_total",
            "sluice_rx_bytes_total",
            "sluice_tx_bytes_total",
            "sluice_fill_ring_empty_total",
            "sluice_tx_ring_full_total",
            "sluice_kicks_total",
            "sluice_tx_abandoned_total",
        ] {
            assert!(text.contains(&format!("# TYPE {name} counter")), "{name}");
            for worker in [1, 2] {
                assert!(
                    text.contains(&format!("{name}{{worker=\"{worker}\",")),
                    "{name} {worker}"
                );
            }
        }
        for label in drop_labels() {
            assert_eq!(
                text.matches(&format!("reason=\"{label}\"}}")).count(),
                2,
                "{label}"
            );
        }
        assert!(text
            .contains("sluice_rx_packets_total{worker=\"2\",interface=\"eth1\",queue=\"1\"} 20\n"));
    }

    #[cfg(feature = "testkit")]
    #[test]
    fn service_series_sum_the_workers_counts_of_live_services_only() {
        use crate::pipeline::ServiceHit;
        use crate::testkit::*;

        let mut writer = world_tables();
        let tables = writer.snapshot();
        let tcp = tables
            .service(VNI_A, VIP_TCP.to_bits(), VIP_TCP_PORT, 6)
            .unwrap()
            .instance;
        let slots: Vec<_> = (0..2).map(|_| Arc::new(CounterSlot::default())).collect();
        for (slot, backends) in slots.iter().zip([&[0u16, 0, 2][..], &[2, 1][..]]) {
            let mut counters = WorkerCounters::default();
            counters.services.reserve_ids(tables.service_id_bound());
            for backend in backends {
                counters.services.record(ServiceHit {
                    instance: tcp,
                    backend: *backend,
                });
            }
            slot.publish(&counters);
        }
        let workers = slots
            .iter()
            .enumerate()
            .map(|(i, slot)| PublishedWorker {
                core: 1,
                interface: "eth1".into(),
                queue: i as u32,
                slot: Arc::clone(slot),
            })
            .collect();
        let published = Published::new(workers).with_tables(writer.view());
        let text = published.render();
        let svc = "vni=\"100\",vip=\"10.96.0.10\",port=\"80\",protocol=\"tcp\"";
        assert!(
            text.contains(&format!("sluice_service_packets_total{{{svc}}} 5\n")),
            "{text}"
        );
        let backend = |b: &str, n: u64| {
            format!("sluice_backend_packets_total{{{svc},backend=\"{b}\"}} {n}\n")
        };
        let service = &tables
            .service(VNI_A, VIP_TCP.to_bits(), VIP_TCP_PORT, 6)
            .unwrap()
            .service;
        let name = |i: usize| format!("{}:{}", service.backends[i].ip, service.backends[i].port);
        for (i, n) in [(0, 2), (1, 1), (2, 2)] {
            assert!(text.contains(&backend(&name(i), n)), "{text}");
        }
        // Every other service is there too, at zero.
        assert_eq!(
            text.matches("sluice_service_packets_total{").count(),
            tables.len_services(),
            "{text}"
        );
        let counters = published.read();
        let tcp_count = counters.services.iter().find(|s| s.vip == VIP_TCP).unwrap();
        assert_eq!(tcp_count.packets, 5);
        let table = stats_table(&text).unwrap();
        assert!(table.contains("vni 100 10.96.0.10:80/tcp"), "{table}");

        // Deleted: its series go; re-created: it starts from zero, not from 5.
        let key = sluice_api::Object::Service(service.clone()).key();
        let txn = |upserts, deletes| sluice_api::Transaction { upserts, deletes };
        writer.apply(&txn(vec![], vec![key])).unwrap();
        assert!(!published.render().contains("10.96.0.10"));
        writer
            .apply(&txn(
                vec![sluice_api::Object::Service(service.clone())],
                vec![],
            ))
            .unwrap();
        assert!(
            published
                .render()
                .contains(&format!("sluice_service_packets_total{{{svc}}} 0\n")),
            "a re-created service inherits no counts"
        );
    }

    #[test]
    fn the_sum_and_the_table_agree_with_the_workers() {
        let published = published();
        assert_eq!(published.read().rx_packets, 30);
        let table = stats_table(&published.render()).unwrap();
        let rx = table.lines().find(|l| l.starts_with("rx_packets")).unwrap();
        assert_eq!(
            rx.split_whitespace().collect::<Vec<_>>(),
            ["rx_packets", "10", "20", "30"]
        );
        assert!(table.contains("core 1 eth1:0"), "{table}");
        assert!(table.contains("drops not_geneve"), "{table}");
        assert!(!table.contains("drops no_route"), "zero drops are left out");
        assert!(stats_table("garbage").is_err());
    }
}
