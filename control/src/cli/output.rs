//! What `sluicectl` prints: tables for people, JSON and YAML for programs.
//!
//! JSON and YAML use the sluice-api schema, so the `items` of `get -o yaml` can be pasted
//! into a transaction's `upserts`. Tables are sorted by key and aligned in columns.

use serde::Serialize;
use sluice_api::proto::v1 as pb;
use sluice_api::Object;

use crate::controller::objects::ClusterObject;

/// How to print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Something could not be printed in the chosen format.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("writing YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
}

fn structured<T: Serialize>(format: Format, value: &T) -> Result<Option<String>, OutputError> {
    Ok(match format {
        Format::Table => None,
        Format::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        Format::Yaml => Some(serde_norway::to_string(value)?),
    })
}

/// Aligns `rows` under `header`, two spaces between columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(&format!("{cell:<w$}"));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn joined<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Applied<'a> {
    generation: u64,
    boot_id: &'a str,
}

/// The answer to `apply`.
pub fn applied(format: Format, generation: u64, boot_id: &str) -> Result<String, OutputError> {
    Ok(structured(
        format,
        &Applied {
            generation,
            boot_id,
        },
    )?
    .unwrap_or_else(|| {
        format!("applied: tables at generation {generation} (gateway boot {boot_id})\n")
    }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listing<'a> {
    generation: u64,
    boot_id: &'a str,
    items: &'a [Object],
}

/// The answer to `get`: `objects` of one table, sorted by key.
pub fn objects(
    format: Format,
    objects: &mut [Object],
    generation: u64,
    boot_id: &str,
) -> Result<String, OutputError> {
    objects.sort_by_key(Object::key);
    let listing = Listing {
        generation,
        boot_id,
        items: objects,
    };
    if let Some(text) = structured(format, &listing)? {
        return Ok(text);
    }
    let Some(first) = objects.first() else {
        return Ok(format!("no objects (generation {generation})\n"));
    };
    let header: &[&str] = match first {
        Object::Host(_) => &["IP", "MAC"],
        Object::Vpc(_) => &["VNI", "CIDR", "SERVICE CIDR", "DIVIDERS"],
        Object::Subnet(_) => &["VNI", "CIDR", "ROUTER", "ROUTER MAC", "BOUNCERS"],
        Object::Endpoint(_) => &["VNI", "IP", "MAC", "HOST"],
        Object::Service(_) => &["VNI", "VIP", "PORT", "PROTOCOL", "BACKENDS"],
    };
    let rows: Vec<Vec<String>> = objects
        .iter()
        .map(|o| match o {
            Object::Host(h) => vec![h.ip.to_string(), h.mac.to_string()],
            Object::Vpc(v) => vec![
                v.vni.to_string(),
                v.cidr.to_string(),
                v.service_cidr.to_string(),
                joined(&v.dividers),
            ],
            Object::Subnet(s) => vec![
                s.vni.to_string(),
                s.cidr.to_string(),
                s.router_ip().to_string(),
                s.router_mac.to_string(),
                joined(&s.bouncers),
            ],
            Object::Endpoint(e) => vec![
                e.vni.to_string(),
                e.ip.to_string(),
                e.mac.to_string(),
                e.host.to_string(),
            ],
            Object::Service(s) => vec![
                s.vni.to_string(),
                s.vip.to_string(),
                s.port.to_string(),
                s.protocol.to_string(),
                s.backends
                    .iter()
                    .map(|b| format!("{}:{}*{}", b.ip, b.port, b.weight))
                    .collect::<Vec<_>>()
                    .join(","),
            ],
        })
        .collect();
    Ok(table(header, &rows))
}

#[derive(Serialize)]
struct ClusterListing<'a> {
    items: &'a [ClusterObject],
}

fn names<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        joined(items)
    }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The answer to `get` against the controller: objects of one kind, sorted by name.
pub fn cluster_objects(
    format: Format,
    objects: &mut [ClusterObject],
) -> Result<String, OutputError> {
    objects.sort_by_key(ClusterObject::reference);
    if let Some(text) = structured(format, &ClusterListing { items: objects })? {
        return Ok(text);
    }
    let Some(first) = objects.first() else {
        return Ok("no objects\n".into());
    };
    let header: &[&str] = match first {
        ClusterObject::Vpc(_) => &["NAME", "VNI", "CIDR", "SERVICE CIDR", "DIVIDERS"],
        ClusterObject::Subnet(_) => &["NAME", "VPC", "CIDR", "ROUTER", "ROUTER MAC", "BOUNCERS"],
        ClusterObject::Service(_) => &["NAME", "VPC", "VIP", "PORTS", "ENDPOINTS"],
        ClusterObject::Gateway(_) => &[
            "NAME", "IP", "MAC", "CONTROL", "IN SYNC", "APPLIES", "BOOT ID",
        ],
        ClusterObject::Node(_) => &["NAME", "IP", "MAC"],
        ClusterObject::Endpoint(_) => &["POD", "NODE", "SUBNET", "VNI", "IP", "MAC"],
    };
    let rows: Vec<Vec<String>> = objects
        .iter()
        .map(|o| match o {
            ClusterObject::Vpc(v) => {
                let st = v.status.clone().unwrap_or_default();
                vec![
                    v.metadata.name.clone(),
                    opt(st.vni),
                    v.spec.cidr.to_string(),
                    v.spec.service_cidr.to_string(),
                    names(&st.divider_gateways),
                ]
            }
            ClusterObject::Subnet(s) => {
                let st = s.status.clone().unwrap_or_default();
                vec![
                    s.metadata.name.clone(),
                    s.spec.vpc.clone(),
                    s.spec.cidr.to_string(),
                    opt(st.router_ip),
                    opt(st.router_mac),
                    names(&st.bouncer_gateways),
                ]
            }
            ClusterObject::Service(s) => {
                let st = s.status.clone().unwrap_or_default();
                vec![
                    o.reference().name,
                    s.spec.vpc.clone(),
                    opt(st.vip),
                    s.spec
                        .ports
                        .iter()
                        .map(|p| format!("{}/{}->{}", p.port, p.protocol, p.target()))
                        .collect::<Vec<_>>()
                        .join(","),
                    names(&st.endpoints),
                ]
            }
            ClusterObject::Gateway(g) => {
                let st = g.status.clone().unwrap_or_default();
                vec![
                    g.metadata.name.clone(),
                    g.spec.ip.to_string(),
                    g.spec.mac.to_string(),
                    g.spec.control.clone(),
                    if st.in_sync { "yes" } else { "no" }.into(),
                    st.apply_calls.to_string(),
                    if st.boot_id.is_empty() {
                        "-".into()
                    } else {
                        st.boot_id
                    },
                ]
            }
            ClusterObject::Node(n) => vec![
                n.metadata.name.clone(),
                n.spec.ip.to_string(),
                n.spec.mac.to_string(),
            ],
            ClusterObject::Endpoint(e) => vec![
                format!("{}/{}", e.spec.pod_namespace, e.spec.pod_name),
                e.spec.node.clone(),
                format!("{}/{}", e.spec.vpc, e.spec.subnet),
                e.spec.vni.to_string(),
                e.spec.ip.to_string(),
                e.spec.mac.to_string(),
            ],
        })
        .collect();
    Ok(table(header, &rows))
}

/// The answer to `apply` or `delete` against the controller.
pub fn cluster_applied(
    format: Format,
    verb: &str,
    objects: &mut [ClusterObject],
    apply_calls: u64,
) -> Result<String, OutputError> {
    if format != Format::Table {
        return cluster_objects(format, objects);
    }
    let mut out = String::new();
    for o in objects.iter() {
        out.push_str(&format!("{} {verb}\n", o.reference()));
    }
    out.push_str(&format!(
        "gateways updated with {apply_calls} Apply calls\n"
    ));
    Ok(out)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DropView<'a> {
    reason: &'a str,
    packets: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CountersView<'a> {
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    forwarded: u64,
    replied: u64,
    drops: Vec<DropView<'a>>,
    generation: u64,
    boot_id: &'a str,
}

/// The answer to `stats`. The table shows only reasons that dropped something.
pub fn counters(format: Format, c: &pb::Counters) -> Result<String, OutputError> {
    let view = CountersView {
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        forwarded: c.forwarded,
        replied: c.replied,
        drops: c
            .drops
            .iter()
            .map(|d| DropView {
                reason: &d.reason,
                packets: d.packets,
            })
            .collect(),
        generation: c.generation,
        boot_id: &c.boot_id,
    };
    if let Some(text) = structured(format, &view)? {
        return Ok(text);
    }
    let dropped: u64 = c.drops.iter().map(|d| d.packets).sum();
    let mut rows = vec![
        vec![
            "rx".into(),
            c.rx_packets.to_string(),
            c.rx_bytes.to_string(),
        ],
        vec![
            "tx".into(),
            c.tx_packets.to_string(),
            c.tx_bytes.to_string(),
        ],
        vec!["forwarded".into(), c.forwarded.to_string(), String::new()],
        vec!["replied".into(), c.replied.to_string(), String::new()],
        vec!["dropped".into(), dropped.to_string(), String::new()],
    ];
    rows.extend(c.drops.iter().filter(|d| d.packets > 0).map(|d| {
        vec![
            format!("  {}", d.reason),
            d.packets.to_string(),
            String::new(),
        ]
    }));
    let mut out = table(&["COUNTER", "PACKETS", "BYTES"], &rows);
    out.push_str(&format!(
        "tables at generation {}, gateway boot {}\n",
        c.generation, c.boot_id
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_sort() {
        let mut objects: Vec<Object> = serde_norway::from_str(
            "- {kind: Host, ip: 198.18.0.12, mac: \"02:00:00:00:00:12\"}\n\
             - {kind: Host, ip: 198.18.0.2, mac: \"02:00:00:00:00:02\"}\n",
        )
        .unwrap();
        let text = objects_text(&mut objects);
        assert_eq!(
            text,
            "IP           MAC\n\
             198.18.0.2   02:00:00:00:00:02\n\
             198.18.0.12  02:00:00:00:00:12\n"
        );
    }

    fn objects_text(items: &mut [Object]) -> String {
        objects(Format::Table, items, 1, "b").unwrap()
    }

    #[test]
    fn yaml_items_read_back_as_objects() {
        let mut items: Vec<Object> = serde_norway::from_str(
            "- {kind: Endpoint, vni: 100, ip: 10.0.1.10, mac: \"0a:58:0a:00:01:0a\", host: 198.18.0.11}\n",
        )
        .unwrap();
        let text = objects(Format::Yaml, &mut items, 7, "boot").unwrap();
        #[derive(serde::Deserialize)]
        struct Back {
            generation: u64,
            items: Vec<Object>,
        }
        let back: Back = serde_norway::from_str(&text).unwrap();
        assert_eq!(back.generation, 7);
        assert_eq!(back.items, items);
    }
}
