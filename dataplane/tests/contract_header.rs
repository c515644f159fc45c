//! The wire contract is written twice, in Rust (`src/wire/contract.rs`) and in C for the
//! XDP programs (`bpf/sluice.h`); this checks the two hold the same names and values.
//!
//! A constant added on one side only fails here: the test lists the names declared in
//! contract.rs, the names defined in the header's contract block, and the values below,
//! and requires all three to agree.

use std::collections::BTreeMap;
use std::path::Path;

use sluice_dataplane::wire::contract;

/// Every constant of the contract with its Rust value. Adding one to contract.rs without
/// adding it here (and to the header) fails `rust_and_c_declare_the_same_constants`.
fn rust_values() -> BTreeMap<&'static str, u64> {
    BTreeMap::from([
        ("GENEVE_UDP_PORT", u64::from(contract::GENEVE_UDP_PORT)),
        (
            "GENEVE_PROTO_ETHERNET",
            u64::from(contract::GENEVE_PROTO_ETHERNET),
        ),
        (
            "SLUICE_OPTION_CLASS",
            u64::from(contract::SLUICE_OPTION_CLASS),
        ),
        ("OPT_HOST_HINT", u64::from(contract::OPT_HOST_HINT)),
        ("OPT_DIRECT", u64::from(contract::OPT_DIRECT)),
        ("OPT_SERVICE_ORIG", u64::from(contract::OPT_SERVICE_ORIG)),
        ("OPT_STALE", u64::from(contract::OPT_STALE)),
        (
            "OPTION_CRITICAL_BIT",
            u64::from(contract::OPTION_CRITICAL_BIT),
        ),
        ("UDP_SRC_PORT_BASE", u64::from(contract::UDP_SRC_PORT_BASE)),
        (
            "UDP_SRC_PORT_RANGE",
            u64::from(contract::UDP_SRC_PORT_RANGE),
        ),
        ("OUTER_TTL", u64::from(contract::OUTER_TTL)),
        (
            "ENCAP_MTU_OVERHEAD",
            u64::from(contract::ENCAP_MTU_OVERHEAD),
        ),
        (
            "OUTER_HEADERS_LEN",
            u64::try_from(contract::OUTER_HEADERS_LEN).expect("fits"),
        ),
    ])
}

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `#define NAME VALUE` lines between the header's BEGIN and END WIRE CONTRACT markers.
fn header_values() -> BTreeMap<String, u64> {
    let header = read("bpf/sluice.h");
    let block = header
        .split_once("/* BEGIN WIRE CONTRACT */")
        .and_then(|(_, rest)| rest.split_once("/* END WIRE CONTRACT */"))
        .map(|(block, _)| block)
        .expect("bpf/sluice.h has the BEGIN/END WIRE CONTRACT markers");
    let mut values = BTreeMap::new();
    for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let rest = line
            .strip_prefix("#define ")
            .unwrap_or_else(|| panic!("bpf/sluice.h: not a `#define NAME VALUE` line: {line}"));
        let (name, value) = rest
            .split_once(char::is_whitespace)
            .unwrap_or_else(|| panic!("bpf/sluice.h: no value: {line}"));
        let value = c_value(value.trim())
            .unwrap_or_else(|| panic!("bpf/sluice.h: cannot read the value of {name}: {value}"));
        assert!(
            values.insert(name.to_string(), value).is_none(),
            "bpf/sluice.h defines {name} twice"
        );
    }
    values
}

/// A decimal or hex literal, or a parenthesised sum of them.
fn c_value(text: &str) -> Option<u64> {
    let text = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(text);
    text.split('+').map(|term| c_literal(term.trim())).sum()
}

fn c_literal(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Names of the `pub const` items of contract.rs.
fn rust_declared_names() -> Vec<String> {
    read("src/wire/contract.rs")
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("pub const "))
        .filter(|rest| !rest.starts_with("fn "))
        .filter_map(|rest| {
            rest.split_once(':')
                .map(|(name, _)| name.trim().to_string())
        })
        .collect()
}

#[test]
fn rust_and_c_declare_the_same_constants() {
    let mut declared = rust_declared_names();
    declared.sort();
    let listed: Vec<String> = rust_values().keys().map(|k| k.to_string()).collect();
    assert_eq!(
        declared, listed,
        "contract.rs declares constants this test does not list (or the reverse)"
    );
    let defined: Vec<String> = header_values().into_keys().collect();
    assert_eq!(
        listed, defined,
        "contract.rs and bpf/sluice.h declare different constants"
    );
}

#[test]
fn rust_and_c_values_agree() {
    let header = header_values();
    for (name, rust) in rust_values() {
        assert_eq!(
            header.get(name),
            Some(&rust),
            "{name}: contract.rs says {rust:#x}, bpf/sluice.h says {}",
            header
                .get(name)
                .map_or_else(|| "nothing".to_string(), |v| format!("{v:#x}"))
        );
    }
}

#[test]
fn the_header_parser_reads_what_the_header_uses() {
    assert_eq!(c_value("6081"), Some(6081));
    assert_eq!(c_value("0xFF01"), Some(0xFF01));
    assert_eq!(c_value("(14 + 20 + 8 + 8)"), Some(50));
    assert_eq!(c_value("FOO"), None);
    assert_eq!(c_value("1 << 3"), None);
}

// The worker stubs' maps and counters: the STUB MAPS and STUB COUNTERS blocks of the header
// against `sluice_dataplane::stubs`.

use sluice_dataplane::stubs::{self, layout, COUNTERS};

/// The text between `/* BEGIN {marker} */` and `/* END {marker} */` of the header.
fn header_block(marker: &str) -> String {
    let header = read("bpf/sluice.h");
    header
        .split_once(&format!("/* BEGIN {marker} */"))
        .and_then(|(_, rest)| rest.split_once(&format!("/* END {marker} */")))
        .map(|(block, _)| block.to_string())
        .unwrap_or_else(|| panic!("bpf/sluice.h has no BEGIN/END {marker} markers"))
}

#[test]
fn stub_map_layouts_agree() {
    let mut header = BTreeMap::new();
    for line in header_block("STUB MAPS")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let (name, value) = line
            .strip_prefix("#define ")
            .and_then(|rest| rest.split_once(char::is_whitespace))
            .unwrap_or_else(|| panic!("bpf/sluice.h STUB MAPS: not `#define NAME VALUE`: {line}"));
        let value = c_value(value.trim()).unwrap_or_else(|| panic!("{name}: {value}"));
        assert!(
            header.insert(name.to_string(), value).is_none(),
            "{name} twice"
        );
    }
    let rust = BTreeMap::from([
        ("MAX_BOUNCERS".to_string(), stubs::MAX_BOUNCERS),
        ("NODE_CONFIG_SIZE".to_string(), layout::NODE_CONFIG_SIZE),
        ("POD_VALUE_SIZE".to_string(), layout::POD_VALUE_SIZE),
        ("ENDPOINT_KEY_SIZE".to_string(), layout::ENDPOINT_KEY_SIZE),
        (
            "ENDPOINT_VALUE_SIZE".to_string(),
            layout::ENDPOINT_VALUE_SIZE,
        ),
        (
            "NEIGHBOR_VALUE_SIZE".to_string(),
            layout::NEIGHBOR_VALUE_SIZE,
        ),
        ("REV_NAT_KEY_SIZE".to_string(), layout::REV_NAT_KEY_SIZE),
        ("REV_NAT_VALUE_SIZE".to_string(), layout::REV_NAT_VALUE_SIZE),
        (
            "HOST_CACHE_VALUE_SIZE".to_string(),
            layout::HOST_CACHE_VALUE_SIZE,
        ),
    ]);
    let mut rust: BTreeMap<String, u64> = rust
        .into_iter()
        .map(|(k, v)| (k, u64::try_from(v).expect("fits")))
        .collect();
    rust.insert("HOST_CACHE_TTL_NS".to_string(), layout::HOST_CACHE_TTL_NS);
    assert_eq!(
        header, rust,
        "bpf/sluice.h STUB MAPS and stubs::layout disagree"
    );
}

#[test]
fn stub_counters_agree() {
    let mut header = Vec::new();
    for line in header_block("STUB COUNTERS")
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("STUB_CTR_"))
    {
        let (name, value) = line
            .trim_end_matches(',')
            .split_once(" = ")
            .unwrap_or_else(|| panic!("bpf/sluice.h: not `STUB_CTR_NAME = N,`: {line}"));
        let value: usize = value.parse().unwrap_or_else(|_| panic!("{name}: {value}"));
        header.push((name.to_ascii_lowercase(), value));
    }
    let (last, count) = header.pop().expect("enumerators");
    assert_eq!(last, "count", "STUB_CTR_COUNT comes last");
    assert_eq!(count, COUNTERS.len(), "STUB_CTR_COUNT");
    let rust: Vec<(String, usize)> = COUNTERS
        .iter()
        .map(|c| (c.label().to_string(), *c as usize))
        .collect();
    assert_eq!(
        header, rust,
        "enum stub_counter and stubs::COUNTERS disagree"
    );
}
