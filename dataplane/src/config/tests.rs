//! The example file is valid, and every rule rejects what it should, naming the field.

use super::*;

const EXAMPLE: &str = include_str!("../../../config/gateway.toml");

fn with(edit: &str) -> String {
    // Later keys of the same table override nothing in TOML, so edits replace lines.
    let mut text = EXAMPLE.to_string();
    for line in edit.lines().filter(|l| !l.trim().is_empty()) {
        let (key, _) = line.split_once('=').expect("edit lines are key = value");
        let key = key.trim();
        let start = text
            .lines()
            .position(|l| {
                l.trim_start().starts_with(&format!("{key} "))
                    || l.trim_start().starts_with(&format!("{key}="))
            })
            .unwrap_or_else(|| panic!("no line for {key}"));
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        lines[start] = line.to_string();
        text = lines.join("\n");
    }
    text
}

fn plan_error(text: &str) -> ConfigError {
    GatewayConfig::parse(text)
        .and_then(|c| c.plan())
        .expect_err("must be rejected")
}

#[test]
fn the_example_file_is_valid() {
    let config = GatewayConfig::parse(EXAMPLE).unwrap();
    let plan = config.plan().unwrap();
    assert_eq!(plan.control_core, 0);
    assert_eq!(
        plan.workers,
        vec![WorkerPlan {
            core: 1,
            queues: vec![QueueRef {
                interface: "eth1".into(),
                queue: 0
            }]
        }]
    );
    assert_eq!(
        plan.grpc,
        GrpcListen::Unix("/run/sluice/gateway.sock".into())
    );
    let shown = plan.to_string();
    assert!(
        shown.contains("worker           core 1  queues eth1:0"),
        "{shown}"
    );
}

#[test]
fn queues_are_dealt_to_cores_in_turn() {
    let text = with("workers = \"2-3\"\nqueues = \"0-3\"");
    let plan = GatewayConfig::parse(&text).unwrap().plan().unwrap();
    let cores: Vec<(u32, Vec<u32>)> = plan
        .workers
        .iter()
        .map(|w| (w.core, w.queues.iter().map(|q| q.queue).collect()))
        .collect();
    assert_eq!(cores, vec![(2, vec![0, 2]), (3, vec![1, 3])]);
}

#[test]
fn explicit_assignment_must_cover_every_queue_once() {
    let base = with("workers = \"1-2\"\nqueues = \"0-1\"");
    let good = format!("{base}\n[[workers]]\ncore = 1\nqueues = [{{ interface = \"eth1\", queue = 1 }}]\n[[workers]]\ncore = 2\nqueues = [{{ interface = \"eth1\", queue = 0 }}]\n");
    let plan = GatewayConfig::parse(&good).unwrap().plan().unwrap();
    assert_eq!(plan.workers[0].queues[0].queue, 1);
    let twice = format!("{base}\n[[workers]]\ncore = 1\nqueues = [{{ interface = \"eth1\", queue = 0 }}, {{ interface = \"eth1\", queue = 1 }}]\n[[workers]]\ncore = 2\nqueues = [{{ interface = \"eth1\", queue = 0 }}]\n");
    let err = plan_error(&twice);
    assert_eq!(err.field, "workers[1].queues[0]");
    assert!(err.problem.contains("already served by core 1"), "{err}");
    let missing = format!("{base}\n[[workers]]\ncore = 1\nqueues = [{{ interface = \"eth1\", queue = 0 }}]\n[[workers]]\ncore = 2\nqueues = []\n");
    assert!(plan_error(&missing).problem.contains("served by no core"));
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        ("control = \"0-1\"", "cores.control"),
        ("control = \"x\"", "cores.control"),
        ("workers = \"0-1\"", "cores.workers"),
        ("workers = \"1-\"", "cores.workers"),
        ("workers = \"1-4\"", "cores.workers"),
        ("frame_size = 3000", "umem.frame_size"),
        ("frame_count = 1024", "umem.frame_count"),
        ("rx = 1000", "rings.rx"),
        ("batch_size = 0", "engine.batch_size"),
        ("batch_size = 512", "engine.batch_size"),
        ("queues = \"a\"", "interfaces[0].queues"),
        ("mac = \"01:00:5e:00:00:01\"", "interfaces[0].mac"),
        ("ip = \"0.0.0.0\"", "interfaces[0].ip"),
        ("name = \"averyveryverylongname\"", "interfaces[0].name"),
        ("grpc = \"tcp://0.0.0.0:9470\"", "control.grpc"),
        ("grpc = \"unix://relative.sock\"", "control.grpc"),
        ("grpc = \"http://x\"", "control.grpc"),
        ("metrics = \"nowhere\"", "control.metrics"),
    ];
    for (edit, field) in cases {
        let err = plan_error(&with(edit));
        assert_eq!(err.field, field, "{edit}: {err}");
        assert!(!err.fix.is_empty(), "{edit}: no fix in {err}");
    }
}

#[test]
fn unknown_fields_and_syntax_errors_name_the_line() {
    let err =
        GatewayConfig::parse(&EXAMPLE.replace("rx = 2048", "rx = 2048\nbogus = 1")).unwrap_err();
    assert!(err.problem.contains("bogus"), "{err}");
    assert!(err.field.starts_with("line "), "{err}");
    let err = GatewayConfig::parse("[cores\ncontrol = \"0\"").unwrap_err();
    assert_eq!(err.field, "line 1", "{err}");
}

#[test]
fn cores_must_be_online() {
    let plan = GatewayConfig::parse(&with("workers = \"1-2\"\nqueues = \"0-1\""))
        .unwrap()
        .plan()
        .unwrap();
    let host = HostFacts {
        online_cores: [0, 1].into(),
    };
    let err = plan.check_host(&host).unwrap_err();
    assert_eq!(err.field, "cores.workers");
    assert!(
        err.problem.contains("core 2 is not online (online: 0-1)"),
        "{err}"
    );
    assert!(plan
        .check_host(&HostFacts {
            online_cores: [0, 1, 2].into()
        })
        .is_ok());
}
