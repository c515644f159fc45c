//! One YAML for both modes: the same `Vpc` and `Subnet` documents are read by the
//! standalone object model (`objects::parse_manifest`, what `sluicectl apply -f` sends to
//! the controller) and by the Kubernetes CRD types (`kubernetes::crd`, what the API
//! server hands the controller), and both must read every spec field alike. Documents
//! come as users write them (`config/cluster.yaml`) and as `kubectl get -o yaml` prints
//! them (labels, annotations, server-set metadata, the CRD's status).

use std::collections::BTreeSet;

use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::Value;
use sluice_control::controller::objects::{parse_manifest, ClusterObject};
use sluice_control::kubernetes::crd;

/// A VPC and a subnet as `kubectl get -o yaml` prints them once the controller has run.
const FROM_KUBECTL: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Vpc
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"sluice.dev/v1alpha1","kind":"Vpc","metadata":{"name":"green"},"spec":{"cidr":"10.1.0.0/16","serviceCidr":"10.97.0.0/16","dividers":2}}
  creationTimestamp: "2025-01-02T03:04:05Z"
  finalizers:
  - sluice.dev/cleanup
  generation: 1
  labels:
    tenant: green
    app.kubernetes.io/part-of: shop
  managedFields:
  - apiVersion: sluice.dev/v1alpha1
    fieldsType: FieldsV1
    fieldsV1:
      f:status:
        f:vni: {}
    manager: sluice-controller
    operation: Apply
    subresource: status
    time: "2025-01-02T03:04:06Z"
  name: green
  resourceVersion: "4711"
  uid: 5f0c8a52-2f4e-4c1e-9d7a-0c6f3f1b2a11
spec:
  cidr: 10.1.0.0/16
  dividers: 2
  serviceCidr: 10.97.0.0/16
status:
  conditions:
  - lastTransitionTime: "2025-01-02T03:04:06Z"
    message: allocated and placed
    observedGeneration: 1
    reason: Placed
    status: "True"
    type: Ready
  dividerGateways:
  - gw-1
  - gw-2
  observedGeneration: 1
  vni: 7
---
apiVersion: sluice.dev/v1alpha1
kind: Subnet
metadata:
  creationTimestamp: "2025-01-02T03:04:07Z"
  finalizers:
  - sluice.dev/cleanup
  generation: 2
  labels:
    tenant: green
  name: green-a
  resourceVersion: "4720"
  uid: 0b9d7c1e-6a55-4d2b-8f43-1c2d3e4f5a6b
spec:
  bouncers: 3
  cidr: 10.1.4.0/22
  vpc: green
status:
  bouncerGateways: [gw-1, gw-2, gw-3]
  observedGeneration: 2
  routerIp: 10.1.4.1
  routerMac: 0a:59:0a:01:04:01
  vni: 7
"#;

/// A subnet written by hand with labels and every default left out.
const HAND_WRITTEN: &str = "
apiVersion: sluice.dev/v1alpha1
kind: Subnet
metadata:
  name: green-b
  labels: {tenant: green}
  annotations: {owner: team-shop}
spec:
  vpc: green
  cidr: 10.1.8.0/24
";

/// Each document of `text` with its kind.
fn documents(text: &str) -> Vec<(String, serde_norway::Value)> {
    serde_norway::Deserializer::from_str(text)
        .map(|document| serde_norway::Value::deserialize(document).unwrap())
        .filter(|value| !value.is_null())
        .map(|value| (value["kind"].as_str().unwrap().to_owned(), value))
        .collect()
}

/// Reads every Vpc and Subnet of `text` both ways and checks that they agree; returns how
/// many documents it compared.
fn both_modes_agree(source: &str, text: &str) -> usize {
    let mut compared = 0;
    for (kind, value) in documents(text) {
        let yaml = serde_norway::to_string(&value).unwrap();
        let standalone = parse_manifest(&yaml)
            .unwrap_or_else(|e| panic!("{source}: standalone refuses {kind}: {e}\n{yaml}"));
        assert_eq!(standalone.len(), 1);
        // (standalone spec, CRD spec, whether Kubernetes mode's conversion gives the
        // standalone object, the name), specs as JSON, their common form.
        let (standalone_spec, crd_spec, conversion_agrees, name) =
            match (kind.as_str(), &standalone[0]) {
                ("Vpc", ClusterObject::Vpc(object)) => {
                    let resource: crd::Vpc = serde_norway::from_value(value)
                        .unwrap_or_else(|e| panic!("{source}: the Vpc CRD type refuses it: {e}"));
                    assert_eq!(resource.metadata.name.as_deref(), Some(object.name()));
                    (
                        serde_json::to_value(&object.spec).unwrap(),
                        serde_json::to_value(&resource.spec).unwrap(),
                        crd::vpc_object(&resource).unwrap() == *object,
                        object.name().to_owned(),
                    )
                }
                ("Subnet", ClusterObject::Subnet(object)) => {
                    let resource: crd::Subnet =
                        serde_norway::from_value(value).unwrap_or_else(|e| {
                            panic!("{source}: the Subnet CRD type refuses it: {e}")
                        });
                    assert_eq!(resource.metadata.name.as_deref(), Some(object.name()));
                    (
                        serde_json::to_value(&object.spec).unwrap(),
                        serde_json::to_value(&resource.spec).unwrap(),
                        crd::subnet_object(&resource).unwrap() == *object,
                        object.name().to_owned(),
                    )
                }
                ("Vpc" | "Subnet", other) => panic!("{source}: {kind} read as {other:?}"),
                _ => continue, // a Service: Kubernetes mode reads native Services instead
            };
        // Every field, defaults filled in, in the same JSON form on both sides.
        assert_eq!(
            standalone_spec, crd_spec,
            "{source}: {kind} {name}: the two modes read different specs"
        );
        // And Kubernetes mode's conversion yields exactly the standalone object.
        assert!(
            conversion_agrees,
            "{source}: {kind} {name}: crd::{}_object differs from the standalone object",
            kind.to_lowercase()
        );
        compared += 1;
    }
    compared
}

#[test]
fn the_example_cluster_reads_alike_in_both_modes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/cluster.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    // blue, blue-a, blue-b, red, red-a.
    assert_eq!(both_modes_agree("config/cluster.yaml", &text), 5);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/demo-cluster.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(both_modes_agree("config/demo-cluster.yaml", &text), 5);
}

#[test]
fn kubectl_output_and_labels_read_alike_in_both_modes() {
    assert_eq!(both_modes_agree("kubectl get -o yaml", FROM_KUBECTL), 2);
    assert_eq!(both_modes_agree("hand-written subnet", HAND_WRITTEN), 1);
    // The values themselves, so that agreement is not agreement on nothing.
    let objects = parse_manifest(FROM_KUBECTL).unwrap();
    let (ClusterObject::Vpc(vpc), ClusterObject::Subnet(subnet)) = (&objects[0], &objects[1])
    else {
        panic!("{objects:?}");
    };
    assert_eq!(
        (
            vpc.spec.cidr.to_string(),
            vpc.spec.service_cidr.to_string(),
            vpc.spec.dividers
        ),
        ("10.1.0.0/16".into(), "10.97.0.0/16".into(), 2)
    );
    assert_eq!(
        vpc.status, None,
        "the CRD's status is not read as the controller's"
    );
    assert_eq!(
        (
            subnet.spec.vpc.as_str(),
            subnet.spec.cidr.to_string(),
            subnet.spec.bouncers
        ),
        ("green", "10.1.4.0/22".into(), 3)
    );
    let ClusterObject::Subnet(defaulted) = &parse_manifest(HAND_WRITTEN).unwrap()[0] else {
        panic!();
    };
    assert_eq!(
        defaulted.spec.bouncers, 1,
        "both modes default to one bouncer"
    );
}

/// The spec fields the CRD's schema declares, which are all the API server accepts.
fn schema_fields(crd: &impl serde::Serialize) -> BTreeSet<String> {
    let crd = serde_json::to_value(crd).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    spec["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no spec properties in {crd}"))
        .keys()
        .cloned()
        .collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

/// Both modes know the same spec fields, so a field one accepts is never dropped by the
/// other, and a misspelt one is refused by the controller as the CRD schema refuses it.
#[test]
fn both_modes_know_the_same_spec_fields() {
    let objects = parse_manifest(FROM_KUBECTL).unwrap();
    let (ClusterObject::Vpc(vpc), ClusterObject::Subnet(subnet)) = (&objects[0], &objects[1])
    else {
        panic!("{objects:?}");
    };
    assert_eq!(
        keys(&serde_json::to_value(&vpc.spec).unwrap()),
        schema_fields(&crd::Vpc::crd())
    );
    assert_eq!(
        keys(&serde_json::to_value(&subnet.spec).unwrap()),
        schema_fields(&crd::Subnet::crd())
    );
    for (misspelt, field) in [
        (
            "kind: Vpc\nmetadata: {name: b}\nspec: {cidr: 10.0.0.0/16, servicecidr: 10.96.0.0/16}\n",
            "servicecidr",
        ),
        (
            "kind: Subnet\nmetadata: {name: s, labels: {a: b}}\nspec: {vpc: b, cidr: 10.0.0.0/24, bouncer: 2}\n",
            "bouncer",
        ),
        (
            "kind: Subnet\nmetadata: {name: s, label: {a: b}}\nspec: {vpc: b, cidr: 10.0.0.0/24}\n",
            "label",
        ),
    ] {
        let err = parse_manifest(misspelt).unwrap_err().to_string();
        assert!(err.contains(&format!("unknown field `{field}`")), "{err}");
    }
}
