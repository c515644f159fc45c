//! `sluicectl` run as a process against a real control service on a Unix socket.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sluice_api::Object;
use sluice_dataplane::service::harness::GatewayHarness;
use sluice_dataplane::service::{Limits, Listen};
use sluice_dataplane::tables::TableWriter;

const WORLD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/world.yaml");

struct Gateway {
    _server: GatewayHarness,
    _dir: tempfile::TempDir,
    server_arg: String,
}

fn gateway() -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.sock");
    let server = GatewayHarness::start(
        Listen::Unix(path.clone()),
        TableWriter::new(),
        Limits::default(),
    )
    .unwrap();
    Gateway {
        _server: server,
        server_arg: format!("unix://{}", path.display()),
        _dir: dir,
    }
}

fn sluicectl(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluicectl"))
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("SLUICE_SERVER")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("sluicectl runs")
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "sluicectl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The one line a failed sluicectl printed, checked to be one line and non-zero exit.
fn failed(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    stderr.trim_end().to_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn sluicectl_configures_and_inspects_a_gateway() {
    let gw = gateway();
    let server = gw.server_arg.as_str();

    let out = ok(&sluicectl(server, &["apply", "-f", WORLD]));
    assert!(out.starts_with("applied: tables at generation 1 "), "{out}");
    // Idempotent: the same file again keeps the generation.
    let out = ok(&sluicectl(server, &["apply", "-f", WORLD, "-o", "json"]));
    let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["generation"], 1);
    assert_eq!(reply["bootId"].as_str().unwrap().len(), 36);

    // What went in comes back out, in the same schema.
    let want = sluice_control::cli::manifest::load(Path::new(WORLD)).unwrap();
    for (table, kind) in [
        ("hosts", "Host"),
        ("vpcs", "Vpc"),
        ("subnets", "Subnet"),
        ("endpoints", "Endpoint"),
        ("services", "Service"),
    ] {
        for format in ["json", "yaml"] {
            let out = ok(&sluicectl(server, &["get", table, "-o", format]));
            let listing: serde_json::Value = if format == "json" {
                serde_json::from_str(&out).unwrap()
            } else {
                serde_norway::from_str(&out).unwrap()
            };
            let got: Vec<Object> = serde_json::from_value(listing["items"].clone()).unwrap();
            let mut expected: Vec<Object> = want
                .upserts
                .iter()
                .filter(|o| serde_json::to_value(o).unwrap()["kind"] == kind)
                .cloned()
                .collect();
            expected.sort_by_key(Object::key);
            assert_eq!(got, expected, "get {table} -o {format}");
        }
    }

    let hosts = ok(&sluicectl(server, &["get", "hosts"]));
    assert_eq!(
        hosts,
        "IP           MAC\n\
         198.18.0.1   02:00:00:00:00:01\n\
         198.18.0.11  02:00:00:00:00:11\n"
    );
    let services = ok(&sluicectl(server, &["get", "services"]));
    assert!(
        services.contains("10.96.0.10  80    tcp       10.0.1.10:8080*1,10.0.1.11:8080*3"),
        "{services}"
    );

    let stats = ok(&sluicectl(server, &["stats"]));
    assert!(stats.starts_with("COUNTER"), "{stats}");
    assert!(stats.contains("tables at generation 1"), "{stats}");
    let stats = ok(&sluicectl(server, &["stats", "-o", "yaml"]));
    let stats: serde_json::Value = serde_norway::from_str(&stats).unwrap();
    assert_eq!(stats["generation"], 1);
    assert!(stats["drops"].as_array().unwrap().len() > 10);

    let health = ok(&sluicectl(server, &["health"]));
    assert_eq!(health, "server: SERVING\nsluice.v1.Gateway: SERVING\n");
}

#[test]
fn sluicectl_errors_print_one_line_and_exit_non_zero() {
    let gw = gateway();
    let server = gw.server_arg.as_str();
    ok(&sluicectl(server, &["apply", "-f", WORLD]));
    let dir = tempfile::tempdir().unwrap();

    let outside = write(
        dir.path(),
        "outside.yaml",
        "upserts:\n\
         - {kind: Endpoint, vni: 100, ip: 10.0.1.12, mac: \"0a:58:0a:00:01:0c\", host: 198.18.0.11}\n\
         - {kind: Endpoint, vni: 100, ip: 10.0.200.1, mac: \"0a:58:0a:00:c8:01\", host: 198.18.0.11}\n",
    );
    let err = failed(&sluicectl(
        server,
        &["apply", "-f", outside.to_str().unwrap()],
    ));
    assert_eq!(
        err,
        "sluicectl: apply: InvalidArgument: endpoint 10.0.200.1 in VNI 100: ip: \
         10.0.200.1 is outside every subnet of VPC 100"
    );
    // Nothing of it was applied: the good endpoint is not there either.
    let endpoints = ok(&sluicectl(server, &["get", "endpoints"]));
    assert!(!endpoints.contains("10.0.1.12"), "{endpoints}");

    let in_use = write(
        dir.path(),
        "in_use.yaml",
        "deletes:\n- {kind: Host, ip: 198.18.0.11}\n",
    );
    let err = failed(&sluicectl(
        server,
        &["apply", "-f", in_use.to_str().unwrap()],
    ));
    assert!(
        err.starts_with("sluicectl: apply: FailedPrecondition: host 198.18.0.11: ip: "),
        "{err}"
    );

    let bad_yaml = write(
        dir.path(),
        "bad.yaml",
        "upserts:\n- kind: Subnet\n  vni: 100\n  cidr: 10.0.9.0/33\n",
    );
    let err = failed(&sluicectl(
        server,
        &["apply", "-f", bad_yaml.to_str().unwrap()],
    ));
    assert!(err.contains("bad.yaml: "), "{err}");
    assert!(err.contains("prefix length /33 exceeds /32"), "{err}");

    let err = failed(&sluicectl(
        &format!("unix://{}/nobody.sock", dir.path().display()),
        &["health"],
    ));
    assert!(err.starts_with("sluicectl: connecting to unix://"), "{err}");

    let err = failed(&sluicectl("http://127.0.0.1:1", &["health"]));
    assert!(err.contains("is not a server address"), "{err}");
    let err = failed(&sluicectl("https://127.0.0.1:1", &["health"]));
    assert!(err.contains("needs --ca, --cert and --key"), "{err}");
}
