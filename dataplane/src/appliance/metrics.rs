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

use crate::engine::{CounterSlot, WorkerCounters};
use crate::pipeline::DropReason;
use crate::service::{CounterSource, PacketCounters};

/// One worker's published counters and what identifies it.
#[derive(Debug)]
pub struct PublishedWorker {
    pub core: u32,
    pub interface: String,
    pub queue: u32,
    pub slot: Arc<CounterSlot>,
}

/// Every worker's slot. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Published(Arc<[PublishedWorker]>);

impl Published {
    pub fn new(workers: Vec<PublishedWorker>) -> Self {
        Self(workers.into())
    }

    pub fn workers(&self) -> &[PublishedWorker] {
        &self.0
    }

    /// All workers' counters summed.
    pub fn total(&self) -> WorkerCounters {
        let mut total = WorkerCounters::default();
        for worker in self.0.iter() {
            total.merge(&worker.slot.read());
        }
        total
    }

    /// The Prometheus text exposition (format 0.0.4) of every worker's counters.
    pub fn render(&self) -> String {
        let snapshots: Vec<(&PublishedWorker, WorkerCounters)> =
            self.0.iter().map(|w| (w, w.slot.read())).collect();
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
        let counters: [(&str, &str, Field); 9] = [
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
        out
    }
}

impl CounterSource for Published {
    fn read(&self) -> PacketCounters {
        self.total().packet_counters()
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

/// Turns Sluice's Prometheus text into a table: one row per counter (drop reasons that
/// are zero everywhere are left out), one column per worker, then the total.
pub fn stats_table(text: &str) -> Result<String, String> {
    // row name -> worker -> value
    let mut rows: BTreeMap<(usize, String), BTreeMap<u32, u64>> = BTreeMap::new();
    let mut workers = std::collections::BTreeSet::new();
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
        let worker: u32 = label("worker")
            .and_then(|w| w.parse().ok())
            .ok_or_else(bad)?;
        workers.insert(worker);
        let row = match label("reason") {
            Some(reason) => format!("drops {reason}"),
            None => short.to_string(),
        };
        rows.entry((order(short), row))
            .or_default()
            .insert(worker, value);
    }
    if workers.is_empty() {
        return Err("no sluice_* counters in the answer".into());
    }
    let mut out = format!("{:<34}", "counter");
    for worker in &workers {
        let _ = write!(out, " {:>14}", format!("core {worker}"));
    }
    let _ = writeln!(out, " {:>14}", "total");
    for ((_, row), values) in &rows {
        let total: u64 = values.values().sum();
        if row.starts_with("drops ") && total == 0 {
            continue;
        }
        let _ = write!(out, "{row:<34}");
        for worker in &workers {
            let _ = write!(out, " {:>14}", values.get(worker).copied().unwrap_or(0));
        }
        let _ = writeln!(out, " {total:>14}");
    }
    Ok(out)
}

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
        assert!(table.contains("drops not_geneve"), "{table}");
        assert!(!table.contains("drops no_route"), "zero drops are left out");
        assert!(stats_table("garbage").is_err());
    }
}
