use std::collections::HashMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

const CONF: &str = r#"{"cniVersion":"1.0.0","name":"sluice","type":"sluice"}"#;

fn add_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
    ]
}

fn err(pairs: &[(&str, &str)], stdin: &str) -> CniError {
    Invocation::parse(env(pairs), stdin.as_bytes()).expect_err("must be rejected")
}

#[test]
fn add_parses_environment_and_config() {
    let inv = Invocation::parse(env(&add_env()), CONF.as_bytes()).expect("valid");
    let Invocation::Add(conf, att) = inv else {
        panic!("not ADD")
    };
    assert_eq!(conf.name, "sluice");
    assert_eq!(conf.socket, PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(att.container_id, "abc123");
    assert_eq!(att.netns, "/run/netns/pod");
    assert_eq!(att.arg("K8S_POD_NAME"), "web-0");
    assert_eq!(att.arg("K8S_POD_NAMESPACE"), "default");
    assert_eq!(att.arg("K8S_POD_UID"), "");
}

#[test]
fn version_needs_nothing_else() {
    let inv = Invocation::parse(env(&[("CNI_COMMAND", "VERSION")]), b"").expect("valid");
    assert_eq!(inv, Invocation::Version);
    let v = version_json();
    assert_eq!(v["supportedVersions"], json!(["1.0.0", "1.1.0"]));
}

#[test]
fn command_errors_are_code_4() {
    let e = err(&[], CONF);
    assert_eq!(e.code, code::INVALID_ENVIRONMENT);
    assert!(e.msg.contains("CNI_COMMAND"), "{}", e.msg);
    let e = err(&[("CNI_COMMAND", "ATTACH")], CONF);
    assert_eq!(e.code, code::INVALID_ENVIRONMENT);
    assert!(e.msg.contains("\"ATTACH\""), "{}", e.msg);
}

#[test]
fn missing_or_bad_variables_are_named() {
    for (drop, name) in [
        ("CNI_CONTAINERID", "CNI_CONTAINERID"),
        ("CNI_NETNS", "CNI_NETNS"),
        ("CNI_IFNAME", "CNI_IFNAME"),
    ] {
        let pairs: Vec<_> = add_env().into_iter().filter(|(k, _)| *k != drop).collect();
        let e = err(&pairs, CONF);
        assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{drop}");
        assert!(e.msg.contains(name), "{}", e.msg);
    }
    for (var, value) in [
        ("CNI_CONTAINERID", "-abc"),
        ("CNI_CONTAINERID", "a/b"),
        ("CNI_IFNAME", "averyveryverylongname"),
        ("CNI_IFNAME", "eth:0"),
        ("CNI_IFNAME", ".."),
        ("CNI_NETNS", "relative/path"),
        ("CNI_ARGS", "K8S_POD_NAME"),
        ("CNI_ARGS", "=x"),
    ] {
        let mut pairs = add_env();
        pairs.retain(|(k, _)| *k != var);
        pairs.push((var, value));
        let e = err(&pairs, CONF);
        assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{var}={value}");
        assert!(e.msg.contains(var), "{}", e.msg);
    }
}

#[test]
fn del_does_not_need_a_netns() {
    let pairs: Vec<_> = add_env()
        .into_iter()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .map(|(k, v)| {
            if k == "CNI_COMMAND" {
                (k, "DEL")
            } else {
                (k, v)
            }
        })
        .collect();
    let inv = Invocation::parse(env(&pairs), CONF.as_bytes()).expect("valid");
    assert!(matches!(inv, Invocation::Del(_, ref a) if a.netns.is_empty()));
}

#[test]
fn config_errors_have_the_spec_codes() {
    let cases: &[(&str, u32, &str)] = &[
        ("not json", code::DECODING_FAILURE, "decoding"),
        ("[1]", code::DECODING_FAILURE, "not a JSON object"),
        (
            r#"{"name":"n","type":"sluice"}"#,
            code::INVALID_NETWORK_CONFIG,
            "cniVersion is missing",
        ),
        (
            r#"{"cniVersion":"0.4.0","name":"n","type":"sluice"}"#,
            code::INCOMPATIBLE_VERSION,
            "\"0.4.0\" is not supported",
        ),
        (
            r#"{"cniVersion":"1.0.0","type":"sluice"}"#,
            code::INVALID_NETWORK_CONFIG,
            "name is missing",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"a b","type":"sluice"}"#,
            code::INVALID_NETWORK_CONFIG,
            "name \"a b\"",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
            code::INVALID_NETWORK_CONFIG,
            "type is missing",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
            code::INVALID_NETWORK_CONFIG,
            "type is \"bridge\"",
        ),
        (
            r#"{"cniVersion":1,"name":"n","type":"sluice"}"#,
            code::INVALID_NETWORK_CONFIG,
            "cniVersion must be a string",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","ipam":{"type":"host-local"}}"#,
            code::UNSUPPORTED_FIELD,
            "unsupported field ipam",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","socket":"x.sock"}"#,
            code::INVALID_NETWORK_CONFIG,
            "socket",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"n","type":"sluice","network":"justone"}"#,
            code::INVALID_NETWORK_CONFIG,
            "VPC/SUBNET",
        ),
    ];
    for (stdin, want, fragment) in cases {
        let e = err(&add_env(), stdin);
        assert_eq!(e.code, *want, "{stdin}: {}", e.msg);
        assert!(e.msg.contains(fragment), "{stdin}: {}", e.msg);
    }
}

#[test]
fn check_needs_prev_result_and_gc_needs_valid_attachments() {
    let mut pairs = add_env();
    pairs[0] = ("CNI_COMMAND", "CHECK");
    let e = err(&pairs, CONF);
    assert_eq!(e.code, code::INVALID_NETWORK_CONFIG);
    assert!(e.msg.contains("prevResult"), "{}", e.msg);

    let gc = [("CNI_COMMAND", "GC")];
    let e = err(&gc, r#"{"cniVersion":"1.1.0","name":"n","type":"sluice"}"#);
    assert!(e.msg.contains("cni.dev/valid-attachments"), "{}", e.msg);
    let e = err(&gc, CONF);
    assert_eq!(e.code, code::INCOMPATIBLE_VERSION, "GC is 1.1.0 only");
    let inv = Invocation::parse(
        env(&gc),
        br#"{"cniVersion":"1.1.0","name":"n","type":"sluice",
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
    )
    .expect("valid GC");
    let Invocation::Gc(conf) = inv else {
        panic!("not GC")
    };
    assert_eq!(
        conf.valid_attachments,
        vec![ValidAttachment {
            container_id: "c1".into(),
            ifname: "eth0".into()
        }]
    );
    let e = err(
        &gc,
        r#"{"cniVersion":"1.1.0","name":"n","type":"sluice","cni.dev/valid-attachments":[{"ifname":"eth0"}]}"#,
    );
    assert!(e.msg.contains("[0]: containerID"), "{}", e.msg);
}

#[test]
fn error_json_has_the_spec_shape() {
    let e = CniError::new(code::AGENT_NOT_RUNNING, "node agent not running")
        .with_details("connecting to /run/sluice/node.sock: No such file");
    assert_eq!(
        e.to_json("1.0.0"),
        json!({"cniVersion":"1.0.0","code":100,"msg":"node agent not running",
               "details":"connecting to /run/sluice/node.sock: No such file"})
    );
    assert_eq!(
        CniError::new(7, "x").to_json("1.1.0"),
        json!({"cniVersion":"1.1.0","code":7,"msg":"x"})
    );
}

#[test]
fn add_result_has_the_spec_shape() {
    use crate::api::proto::v1::{AddReply, CniInterface, CniIp, CniRoute};
    let reply = AddReply {
        interfaces: vec![
            CniInterface {
                name: "sl0123456789a".into(),
                mac: "02:00:00:00:00:01".into(),
                sandbox: String::new(),
                mtu: 1400,
            },
            CniInterface {
                name: "eth0".into(),
                mac: "0a:58:0a:01:00:05".into(),
                sandbox: "/run/netns/pod".into(),
                mtu: 1400,
            },
        ],
        ips: vec![CniIp {
            address: "10.1.0.5/24".into(),
            gateway: "10.1.0.1".into(),
            interface: 1,
        }],
        routes: vec![CniRoute {
            dst: "0.0.0.0/0".into(),
            gw: "10.1.0.1".into(),
        }],
        vni: 100,
        vpc: "v".into(),
        subnet: "s".into(),
    };
    let v = add_result_json("1.0.0", &reply);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["interfaces"][1]["sandbox"], "/run/netns/pod");
    assert!(v["interfaces"][0].get("sandbox").is_none());
    assert!(v["interfaces"][1].get("mtu").is_none(), "mtu is 1.1.0 only");
    assert_eq!(
        v["ips"][0],
        json!({"address":"10.1.0.5/24","gateway":"10.1.0.1","interface":1})
    );
    assert_eq!(v["routes"][0], json!({"dst":"0.0.0.0/0","gw":"10.1.0.1"}));
    assert_eq!(v["dns"], json!({}));
    assert_eq!(
        add_result_json("1.1.0", &reply)["interfaces"][1]["mtu"],
        1400
    );
    let (addresses, names) = prev_result_summary(&v).expect("valid");
    assert_eq!(addresses, vec!["10.1.0.5/24"]);
    assert_eq!(names, vec!["sl0123456789a", "eth0"]);
}
