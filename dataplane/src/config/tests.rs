//! The example file is valid, and every rule rejects what it should, naming the field.

use super::allowed;
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
        ("idle_sleep_ms = 0", "engine.idle_sleep_ms"),
        ("idle_sleep_ms = 1000", "engine.idle_sleep_ms"),
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

/// A cgroup v2 tree whose `cpuset.cpus.effective` says `cpus`.
fn cgroup_fixture(cpus: &str) -> (tempfile::TempDir, allowed::CgroupPaths) {
    let dir = tempfile::tempdir().unwrap();
    let proc_self_cgroup = dir.path().join("cgroup");
    std::fs::write(&proc_self_cgroup, "0::/kubepods.slice/gw.scope\n").unwrap();
    let scope = dir.path().join("fs/kubepods.slice/gw.scope");
    std::fs::create_dir_all(&scope).unwrap();
    std::fs::write(scope.join("cpuset.cpus.effective"), cpus).unwrap();
    let paths = allowed::CgroupPaths {
        proc_self_cgroup,
        cgroup_root: dir.path().join("fs"),
    };
    (dir, paths)
}

#[test]
fn auto_cores_come_from_the_cgroup_minus_the_control_core() {
    let (_dir, paths) = cgroup_fixture("4-7\n");
    let text = with("control = \"auto\"\nworkers = \"auto\"\nqueues = \"0-3\"");
    let plan = GatewayConfig::parse(&text)
        .unwrap()
        .plan_with(&paths)
        .unwrap();
    assert_eq!(plan.control_core, 4);
    let cores: Vec<u32> = plan.workers.iter().map(|w| w.core).collect();
    assert_eq!(cores, vec![5, 6, 7]);
    let auto = plan.auto_cores.as_ref().unwrap();
    assert_eq!(auto.allowed, [4, 5, 6, 7].into());
    assert!(auto.unused.is_empty());
    let shown = plan.to_string();
    assert!(
        shown.contains("allowed cores    4-7 from cgroup ")
            && shown.contains("kubepods.slice/gw.scope/cpuset.cpus.effective"),
        "{shown}"
    );
    assert!(shown.contains("control thread   core 4"), "{shown}");
}

#[test]
fn auto_workers_with_an_explicit_control_core() {
    let (_dir, paths) = cgroup_fixture("2-4");
    let text = with("control = \"3\"\nworkers = \"auto\"\nqueues = \"0-1\"");
    let plan = GatewayConfig::parse(&text)
        .unwrap()
        .plan_with(&paths)
        .unwrap();
    assert_eq!(plan.control_core, 3);
    let cores: Vec<u32> = plan.workers.iter().map(|w| w.core).collect();
    assert_eq!(cores, vec![2, 4]);
    // A control core outside the cpuset could not be pinned: refused up front.
    let outside = with("control = \"0\"\nworkers = \"auto\"\nqueues = \"0-1\"");
    let err = GatewayConfig::parse(&outside)
        .unwrap()
        .plan_with(&paths)
        .unwrap_err();
    assert_eq!(err.field, "cores.control");
    assert!(
        err.problem
            .contains("core 0 is outside the allowed cores 2-4"),
        "{err}"
    );
}

#[test]
fn auto_leaves_extra_cores_idle_and_needs_two_cores() {
    let (_dir, paths) = cgroup_fixture("0-5");
    let text = with("control = \"auto\"\nworkers = \"auto\"\nqueues = \"0-1\"");
    let plan = GatewayConfig::parse(&text)
        .unwrap()
        .plan_with(&paths)
        .unwrap();
    let cores: Vec<u32> = plan.workers.iter().map(|w| w.core).collect();
    assert_eq!(cores, vec![1, 2]);
    assert_eq!(plan.auto_cores.as_ref().unwrap().unused, [3, 4, 5].into());
    assert!(plan.to_string().contains("unused cores     3-5"), "{plan}");

    let (_dir, one) = cgroup_fixture("3");
    let err = GatewayConfig::parse(&with("control = \"auto\"\nworkers = \"auto\""))
        .unwrap()
        .plan_with(&one)
        .unwrap_err();
    assert_eq!(err.field, "cores.workers");
    assert!(err.problem.contains("found only core 3"), "{err}");
    assert!(err.fix.contains("at least two cores"), "{err}");
}

#[test]
fn auto_on_this_machine_resolves_from_somewhere() {
    // This machine's real /proc/self/cgroup: the cgroup's cpuset, or the affinity mask.
    let text = with("control = \"auto\"\nworkers = \"auto\"\nqueues = \"0-63\"");
    let config = GatewayConfig::parse(&text).unwrap();
    match config.plan() {
        Ok(plan) => {
            let auto = plan.auto_cores.unwrap();
            assert!(!auto.allowed.is_empty());
            assert!(auto.allowed.contains(&plan.control_core));
            assert!(!plan.workers.is_empty());
        }
        // A one-core machine: auto must say so rather than plan nothing.
        Err(e) => assert!(e.problem.contains("found only core"), "{e}"),
    }
}
