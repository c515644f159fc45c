//! The install manifests, checked offline: every document of `config/kubernetes/*.yaml`
//! and `config/crds/*.yaml` is read into its k8s-openapi type (an unknown kind fails,
//! and a field the type does not know fails too, by a round trip), and the documents
//! are checked against each other and against the code: namespaces, ServiceAccounts and
//! what they are bound to (exactly `kubernetes::rbac`), ConfigMaps and Secrets, volumes,
//! privileges, the gateway's Guaranteed QoS, and the gateway configuration template,
//! rendered and planned by the gateway's own config code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sluice_control::kubernetes::rbac::{self, Access};
use sluice_control::kubernetes::{crd, operator};

const NAMESPACE: &str = "sluice-system";
/// Secrets the installer creates (README, "Installing on a Kubernetes cluster").
const USER_SECRETS: &[&str] = &["sluice-tls"];
const IMAGE: &str = "sluice:latest";
/// Binaries the image holds under /usr/local/bin.
const BINARIES: &[&str] = &[
    "sluice-controller",
    "sluicectl",
    "sluice-node",
    "sluice-cni",
    "sluice-gateway",
];

#[derive(Debug)]
enum Manifest {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    ConfigMap(ConfigMap),
    Service(Service),
    Deployment(Deployment),
    DaemonSet(DaemonSet),
    Crd(Box<CustomResourceDefinition>),
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("control/ sits in the repository")
        .to_path_buf()
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{dir} holds no YAML");
    files
}

/// Reads `value` as `T`, and fails if writing `T` back loses anything: a misspelt or
/// misplaced field is silently dropped by the typed reader, so it shows up here.
fn typed<T: DeserializeOwned + serde::Serialize>(value: serde_json::Value, at: &str) -> T {
    let object: T = serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{at}: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    if back != value {
        panic!(
            "{at}: fields the type does not know (or wrongly typed) were dropped:\nwritten: {value:#}\nread:    {back:#}"
        );
    }
    object
}

fn load() -> Vec<(String, Manifest)> {
    let mut out = Vec::new();
    for file in yaml_files("config/kubernetes")
        .into_iter()
        .chain(yaml_files("config/crds"))
    {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(repo()).unwrap().display().to_string();
        for (i, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value = serde_json::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{name} document {i}: {e}"));
            if value.is_null() {
                continue;
            }
            let at = format!("{name} document {i}");
            let kind = format!(
                "{}/{}",
                value["apiVersion"].as_str().unwrap_or("?"),
                value["kind"].as_str().unwrap_or("?")
            );
            let manifest = match kind.as_str() {
                "v1/Namespace" => Manifest::Namespace(typed(value, &at)),
                "v1/ServiceAccount" => Manifest::ServiceAccount(typed(value, &at)),
                "v1/ConfigMap" => Manifest::ConfigMap(typed(value, &at)),
                "v1/Service" => Manifest::Service(typed(value, &at)),
                "rbac.authorization.k8s.io/v1/ClusterRole" => {
                    Manifest::ClusterRole(typed(value, &at))
                }
                "rbac.authorization.k8s.io/v1/ClusterRoleBinding" => {
                    Manifest::ClusterRoleBinding(typed(value, &at))
                }
                "rbac.authorization.k8s.io/v1/Role" => Manifest::Role(typed(value, &at)),
                "rbac.authorization.k8s.io/v1/RoleBinding" => {
                    Manifest::RoleBinding(typed(value, &at))
                }
                "apps/v1/Deployment" => Manifest::Deployment(typed(value, &at)),
                "apps/v1/DaemonSet" => Manifest::DaemonSet(typed(value, &at)),
                "apiextensions.k8s.io/v1/CustomResourceDefinition" => {
                    Manifest::Crd(Box::new(typed(value, &at)))
                }
                other => panic!("{at}: unknown kind {other}"),
            };
            out.push((at, manifest));
        }
    }
    out
}

/// Every workload's pod spec, by `Kind/name`.
fn pods(manifests: &[(String, Manifest)]) -> BTreeMap<String, (Option<String>, PodSpec)> {
    manifests
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::Deployment(d) => Some((
                format!("Deployment/{}", d.metadata.name.clone().unwrap()),
                (d.metadata.namespace.clone(), d.spec.clone()?.template.spec?),
            )),
            Manifest::DaemonSet(d) => Some((
                format!("DaemonSet/{}", d.metadata.name.clone().unwrap()),
                (d.metadata.namespace.clone(), d.spec.clone()?.template.spec?),
            )),
            _ => None,
        })
        .collect()
}

fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

#[test]
fn every_document_is_a_known_kind_in_its_namespace() {
    let manifests = load();
    let kinds: BTreeSet<&str> = manifests
        .iter()
        .map(|(_, m)| match m {
            Manifest::Namespace(_) => "Namespace",
            Manifest::ServiceAccount(_) => "ServiceAccount",
            Manifest::ClusterRole(_) => "ClusterRole",
            Manifest::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Manifest::Role(_) => "Role",
            Manifest::RoleBinding(_) => "RoleBinding",
            Manifest::ConfigMap(_) => "ConfigMap",
            Manifest::Service(_) => "Service",
            Manifest::Deployment(_) => "Deployment",
            Manifest::DaemonSet(_) => "DaemonSet",
            Manifest::Crd(_) => "CustomResourceDefinition",
        })
        .collect();
    // Everything an install needs is there.
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Service",
        "Deployment",
        "DaemonSet",
        "CustomResourceDefinition",
    ] {
        assert!(kinds.contains(kind), "no {kind} among the manifests");
    }
    let namespaces: Vec<String> = manifests
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::Namespace(n) => n.metadata.name.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(namespaces, vec![NAMESPACE.to_owned()]);
    for (at, m) in &manifests {
        let (namespace, cluster_scoped) = match m {
            Manifest::Namespace(o) => (&o.metadata.namespace, true),
            Manifest::ClusterRole(o) => (&o.metadata.namespace, true),
            Manifest::ClusterRoleBinding(o) => (&o.metadata.namespace, true),
            Manifest::Crd(o) => (&o.metadata.namespace, true),
            Manifest::ServiceAccount(o) => (&o.metadata.namespace, false),
            Manifest::Role(o) => (&o.metadata.namespace, false),
            Manifest::RoleBinding(o) => (&o.metadata.namespace, false),
            Manifest::ConfigMap(o) => (&o.metadata.namespace, false),
            Manifest::Service(o) => (&o.metadata.namespace, false),
            Manifest::Deployment(o) => (&o.metadata.namespace, false),
            Manifest::DaemonSet(o) => (&o.metadata.namespace, false),
        };
        if cluster_scoped {
            assert_eq!(
                namespace, &None,
                "{at}: cluster-scoped, yet has a namespace"
            );
        } else {
            assert_eq!(namespace.as_deref(), Some(NAMESPACE), "{at}");
        }
    }
    // The CRDs are the generated ones for our group.
    let crds: BTreeSet<String> = manifests
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::Crd(c) => c.metadata.name.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(
        crds,
        [
            format!("subnets.{}", crd::GROUP),
            format!("vpcs.{}", crd::GROUP)
        ]
        .into()
    );
}

/// One granted permission: (group, resource, verb, resource name or "").
type Grant = (String, String, String, String);

fn grants_of_rules(rules: &[PolicyRule]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules {
        let names = rule.resource_names.clone().unwrap_or_default();
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for name in &names {
                        out.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
    }
    out
}

fn grants_of_access(access: &[Access]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for a in access {
        let names: Vec<&str> = if a.names.is_empty() {
            vec![""]
        } else {
            a.names.to_vec()
        };
        for resource in a.resources {
            for verb in a.verbs {
                for name in &names {
                    out.insert((
                        a.group.to_owned(),
                        (*resource).to_owned(),
                        (*verb).to_owned(),
                        (*name).to_owned(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn each_service_account_has_exactly_the_access_the_code_lists() {
    let manifests = load();
    let accounts: BTreeMap<String, &ServiceAccount> = manifests
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::ServiceAccount(sa) => Some((sa.metadata.name.clone().unwrap(), sa)),
            _ => None,
        })
        .collect();
    let cluster_roles: BTreeMap<String, &ClusterRole> = manifests
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::ClusterRole(r) => Some((r.metadata.name.clone().unwrap(), r)),
            _ => None,
        })
        .collect();
    let roles: BTreeMap<String, &Role> = manifests
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::Role(r) => Some((r.metadata.name.clone().unwrap(), r)),
            _ => None,
        })
        .collect();
    // What each account is granted, cluster-wide and in the namespace.
    let mut cluster: BTreeMap<String, BTreeSet<Grant>> = BTreeMap::new();
    let mut namespaced: BTreeMap<String, BTreeSet<Grant>> = BTreeMap::new();
    for (at, m) in &manifests {
        let (role_ref, subjects, is_cluster) = match m {
            Manifest::ClusterRoleBinding(b) => (&b.role_ref, &b.subjects, true),
            Manifest::RoleBinding(b) => (&b.role_ref, &b.subjects, false),
            _ => continue,
        };
        let rules = match role_ref.kind.as_str() {
            "ClusterRole" => cluster_roles
                .get(&role_ref.name)
                .unwrap_or_else(|| panic!("{at}: no ClusterRole {}", role_ref.name))
                .rules
                .clone()
                .unwrap_or_default(),
            "Role" => roles
                .get(&role_ref.name)
                .unwrap_or_else(|| panic!("{at}: no Role {}", role_ref.name))
                .rules
                .clone()
                .unwrap_or_default(),
            other => panic!("{at}: roleRef kind {other}"),
        };
        for subject in subjects.iter().flatten() {
            assert_eq!(subject.kind, "ServiceAccount", "{at}");
            assert_eq!(subject.namespace.as_deref(), Some(NAMESPACE), "{at}");
            assert!(
                accounts.contains_key(&subject.name),
                "{at}: binds missing ServiceAccount {}",
                subject.name
            );
            let into = if is_cluster && role_ref.kind == "ClusterRole" {
                &mut cluster
            } else {
                &mut namespaced
            };
            into.entry(subject.name.clone())
                .or_default()
                .extend(grants_of_rules(&rules));
        }
    }
    let expected: [(&str, &[Access], &[Access]); 3] = [
        (
            "sluice-controller",
            rbac::CONTROLLER_CLUSTER,
            rbac::CONTROLLER_NAMESPACE,
        ),
        ("sluice-node", rbac::NODE_AGENT, &[]),
        ("sluice-gateway", rbac::GATEWAY, &[]),
    ];
    assert_eq!(
        accounts.keys().cloned().collect::<BTreeSet<_>>(),
        expected.iter().map(|e| e.0.to_owned()).collect(),
        "one ServiceAccount per component"
    );
    for (account, cluster_wide, in_namespace) in expected {
        assert_eq!(
            cluster.get(account).cloned().unwrap_or_default(),
            grants_of_access(cluster_wide),
            "{account}: cluster-wide grants differ from kubernetes::rbac"
        );
        assert_eq!(
            namespaced.get(account).cloned().unwrap_or_default(),
            grants_of_access(in_namespace),
            "{account}: namespace grants differ from kubernetes::rbac"
        );
        // An account with nothing to do with the API server gets no token.
        if cluster_wide.is_empty() && in_namespace.is_empty() {
            assert_eq!(
                accounts[account].automount_service_account_token,
                Some(false),
                "{account}: needs no API access, so mounts no token"
            );
        }
    }
    // The lease the Role names is the one the controller elects with.
    let lease_names: BTreeSet<String> = namespaced["sluice-controller"]
        .iter()
        .filter(|g| g.1 == "leases" && !g.3.is_empty())
        .map(|g| g.3.clone())
        .collect();
    assert_eq!(lease_names, [rbac::LEASE_NAME.to_owned()].into());
}

#[test]
fn pods_reference_only_what_exists() {
    let manifests = load();
    let accounts: BTreeMap<String, &ServiceAccount> = manifests
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::ServiceAccount(sa) => Some((sa.metadata.name.clone().unwrap(), sa)),
            _ => None,
        })
        .collect();
    let config_maps: BTreeMap<String, &ConfigMap> = manifests
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::ConfigMap(c) => Some((c.metadata.name.clone().unwrap(), c)),
            _ => None,
        })
        .collect();
    let workloads = pods(&manifests);
    assert_eq!(
        workloads.keys().cloned().collect::<Vec<_>>(),
        [
            "DaemonSet/sluice-gateway",
            "DaemonSet/sluice-node",
            "Deployment/sluice-controller"
        ]
    );
    for (workload, (_, spec)) in &workloads {
        let account = spec
            .service_account_name
            .as_deref()
            .unwrap_or_else(|| panic!("{workload}: no serviceAccountName"));
        let sa = accounts
            .get(account)
            .unwrap_or_else(|| panic!("{workload}: ServiceAccount {account} does not exist"));
        if sa.automount_service_account_token == Some(false) {
            assert_eq!(
                spec.automount_service_account_token,
                Some(false),
                "{workload}: its account mounts no token; say so on the pod too"
            );
        }
        let volumes: BTreeMap<&str, _> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| (v.name.as_str(), v))
            .collect();
        for volume in volumes.values() {
            if let Some(cm) = &volume.config_map {
                assert!(
                    config_maps.contains_key(&cm.name),
                    "{workload}: ConfigMap {} does not exist",
                    cm.name
                );
            }
            if let Some(secret) = &volume.secret {
                let name = secret.secret_name.as_deref().unwrap_or("");
                assert!(
                    USER_SECRETS.contains(&name),
                    "{workload}: Secret {name} is neither in the manifests nor documented"
                );
            }
        }
        for c in containers(spec) {
            let at = format!("{workload} container {}", c.name);
            assert_eq!(c.image.as_deref(), Some(IMAGE), "{at}");
            // Commands run our binaries from the image, or a shell script.
            let program = c
                .command
                .as_ref()
                .and_then(|c| c.first())
                .expect("a command");
            if let Some(binary) = program.strip_prefix("/usr/local/bin/") {
                assert!(BINARIES.contains(&binary), "{at}: no binary {binary}");
            } else {
                assert_eq!(program, "/bin/sh", "{at}");
            }
            for mount in c.volume_mounts.iter().flatten() {
                assert!(
                    volumes.contains_key(mount.name.as_str()),
                    "{at}: mounts volume {} that the pod does not have",
                    mount.name
                );
                if mount.mount_propagation.as_deref() == Some("Bidirectional") {
                    let privileged = c
                        .security_context
                        .as_ref()
                        .and_then(|s| s.privileged)
                        .unwrap_or(false);
                    assert!(
                        privileged,
                        "{at}: Bidirectional propagation needs a privileged container"
                    );
                }
            }
            for env in c.env.iter().flatten() {
                if let Some(cm) = env
                    .value_from
                    .as_ref()
                    .and_then(|v| v.config_map_key_ref.as_ref())
                {
                    assert!(
                        config_maps.contains_key(&cm.name),
                        "{at}: ConfigMap {}",
                        cm.name
                    );
                }
            }
        }
        // Every volume is used by some container.
        for name in volumes.keys() {
            assert!(
                containers(spec)
                    .flat_map(|c| c.volume_mounts.iter().flatten())
                    .any(|m| m.name == *name),
                "{workload}: volume {name} is mounted by no container"
            );
        }
    }
    // The conflist the node agent installs is the repository's.
    let installed: serde_json::Value = serde_json::from_str(
        &config_maps["sluice-node"].data.as_ref().unwrap()["10-sluice.conflist"],
    )
    .unwrap();
    let repository: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("config/10-sluice.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(installed, repository);
}

fn quantity(c: &Container, which: &str, resource: &str) -> Option<String> {
    let r = c.resources.as_ref()?;
    let map = if which == "requests" {
        r.requests.as_ref()?
    } else {
        r.limits.as_ref()?
    };
    map.get(resource).map(|q| q.0.clone())
}

#[test]
fn the_gateway_pod_is_guaranteed_with_whole_cpus() {
    let manifests = load();
    let workloads = pods(&manifests);
    let (_, spec) = &workloads["DaemonSet/sluice-gateway"];
    for c in containers(spec) {
        for resource in ["cpu", "memory"] {
            let requests = quantity(c, "requests", resource);
            assert!(requests.is_some(), "{}: no {resource} request", c.name);
            assert_eq!(
                requests,
                quantity(c, "limits", resource),
                "{}: {resource} requests != limits, so the pod is not Guaranteed",
                c.name
            );
        }
    }
    let gateway = spec
        .containers
        .iter()
        .find(|c| c.name == "gateway")
        .unwrap();
    let cpus: u32 = quantity(gateway, "limits", "cpu")
        .unwrap()
        .parse()
        .expect("a whole number of CPUs, for the static CPU manager");
    assert!(
        cpus >= 2,
        "the control thread takes one core; workers need more"
    );
    // The controller finds gateway pods by this label.
    let (key, value) = operator::GATEWAY_SELECTOR.split_once('=').unwrap();
    let ds = manifests
        .iter()
        .find_map(|(_, m)| match m {
            Manifest::DaemonSet(d) if d.metadata.name.as_deref() == Some("sluice-gateway") => {
                Some(d)
            }
            _ => None,
        })
        .unwrap();
    let labels = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert_eq!(labels.get(key).map(String::as_str), Some(value));
}

#[test]
fn the_gateway_config_template_renders_to_a_valid_auto_plan() {
    use sluice_dataplane::config::{allowed::CgroupPaths, GatewayConfig};
    let manifests = load();
    let data = manifests
        .iter()
        .find_map(|(_, m)| match m {
            Manifest::ConfigMap(c) if c.metadata.name.as_deref() == Some("sluice-gateway") => {
                c.data.clone()
            }
            _ => None,
        })
        .expect("ConfigMap sluice-gateway");
    let rendered = data["gateway.toml"]
        .replace("@INTERFACE@", data["interface"].trim())
        .replace("@NODE_IP@", "198.18.0.10")
        .replace("@MAC@", "02:00:00:00:00:0a");
    assert!(!rendered.contains('@'), "a placeholder is left: {rendered}");
    let config = GatewayConfig::parse(&rendered).unwrap_or_else(|e| panic!("{e}\n{rendered}"));
    assert_eq!(
        (config.cores.control.as_str(), config.cores.workers.as_str()),
        ("auto", "auto")
    );
    // As the static CPU manager would give a 4-CPU container: cores 4-7.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cgroup"), "0::/\n").unwrap();
    std::fs::write(dir.path().join("cpuset.cpus.effective"), "4-7\n").unwrap();
    let plan = config
        .plan_with(&CgroupPaths {
            proc_self_cgroup: dir.path().join("cgroup"),
            cgroup_root: dir.path().to_path_buf(),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.control_core, 4);
    assert_eq!(
        plan.workers.iter().map(|w| w.core).collect::<Vec<_>>(),
        [5, 6, 7]
    );
    // The registration names the pod and reaches the gateway where it listens.
    let register = data["register.yaml"].clone();
    assert!(register.contains("kind: Gateway"), "{register}");
    let port = config.control.grpc.rsplit(':').next().unwrap();
    assert!(register.contains(&format!(":{port}\"")), "{register}");
}
