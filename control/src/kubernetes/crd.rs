//! The `Vpc` and `Subnet` custom resources (`sluice.dev/v1alpha1`, cluster-scoped), as
//! Rust types: the CRDs in `config/crds/` are generated from them (`crdgen`), and a test
//! fails when the committed YAML drifts.
//!
//! Specs carry what users write, checked by the API server where a schema can say it
//! (CIDR syntax, role counts 1..=64, immutable fields, `serviceCidr` differing from
//! `cidr`); the rest (overlaps, a subnet inside its VPC) is the controller's check, and
//! a failing object gets `Ready=False` with the reason. Status is the controller's:
//! conditions, `observedGeneration`, the allocated VNI, and the placed gateways.

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::controller::objects::{self, ClusterObject, Metadata, ObjectError, Resource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// The API group of both kinds.
pub const GROUP: &str = "sluice.dev";

/// Dotted-quad IPv4 with a prefix length; the controller checks the rest.
const CIDR_PATTERN: &str = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/([0-9]|[12][0-9]|3[0-2])$";

const fn one() -> u32 {
    1
}

/// A tenant's virtual network.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Vpc",
    plural = "vpcs",
    shortname = "vpc",
    status = "VpcStatus",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"VNI","type":"integer","jsonPath":".status.vni"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[x_kube(validation = Rule::new("self.cidr != self.serviceCidr").message("serviceCidr must differ from cidr"))]
#[serde(rename_all = "camelCase")]
pub struct VpcSpec {
    /// The VPC's address space, e.g. 10.0.0.0/16.
    #[schemars(regex(pattern = CIDR_PATTERN))]
    pub cidr: String,
    /// Where service virtual IPs are allocated; disjoint from `cidr`, at least /30.
    #[schemars(regex(pattern = CIDR_PATTERN))]
    pub service_cidr: String,
    /// How many gateways hold the VPC's divider role.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub dividers: u32,
}

/// What the controller reports about a VPC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpcStatus {
    /// `Ready`: the VPC is allocated and placed (or why not).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The allocated VNI (24 bits), never reused while the VPC exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// Gateways holding the divider role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub divider_gateways: Vec<String>,
}

/// A subnet of a VPC; its name is unique across VPCs.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "Subnet",
    plural = "subnets",
    shortname = "vsubnet",
    status = "SubnetStatus",
    printcolumn = r#"{"name":"VPC","type":"string","jsonPath":".spec.vpc"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SubnetSpec {
    /// The VPC's name; cannot change.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("vpc is immutable"))]
    pub vpc: String,
    /// Inside the VPC's cidr, at least /30; cannot change.
    #[schemars(regex(pattern = CIDR_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("cidr is immutable"))]
    pub cidr: String,
    /// How many gateways hold the subnet's bouncer role.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 64))]
    pub bouncers: u32,
}

/// What the controller reports about a subnet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubnetStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The VPC's VNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// The subnet's router (first host) address and MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_mac: Option<String>,
    /// Gateways holding the bouncer role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bouncer_gateways: Vec<String>,
}

/// The CRDs as `config/crds/` holds them: (file name, YAML).
pub fn crd_documents() -> Vec<(String, String)> {
    let render = |crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition| {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let yaml = serde_norway::to_string(&crd).expect("a CRD always serializes");
        (
            format!("{name}.yaml"),
            format!("# Generated by `cargo run -p sluice-control --bin crdgen`; do not edit.\n{yaml}"),
        )
    };
    vec![render(Vpc::crd()), render(Subnet::crd())]
}

fn parse_cidr(field: &str, text: &str) -> Result<sluice_api::Ipv4Cidr, ObjectError> {
    text.parse()
        .map_err(|e: sluice_api::FieldError| ObjectError::new(field, e.reason))
}

/// The controller's object for a `Vpc` resource, checked as standalone mode checks it.
pub fn vpc_object(vpc: &Vpc) -> Result<objects::Vpc, ObjectError> {
    let name = vpc.metadata.name.clone().unwrap_or_default();
    let object = Resource::new(
        Metadata::named(name),
        objects::VpcSpec {
            cidr: parse_cidr("spec.cidr", &vpc.spec.cidr)?,
            service_cidr: parse_cidr("spec.serviceCidr", &vpc.spec.service_cidr)?,
            dividers: vpc.spec.dividers,
        },
    );
    let checked = ClusterObject::Vpc(object);
    checked.validate()?;
    match checked {
        ClusterObject::Vpc(v) => Ok(v),
        _ => unreachable!("built as a Vpc"),
    }
}

/// The controller's object for a `Subnet` resource.
pub fn subnet_object(subnet: &Subnet) -> Result<objects::Subnet, ObjectError> {
    let name = subnet.metadata.name.clone().unwrap_or_default();
    let object = Resource::new(
        Metadata::named(name),
        objects::SubnetSpec {
            vpc: subnet.spec.vpc.clone(),
            cidr: parse_cidr("spec.cidr", &subnet.spec.cidr)?,
            bouncers: subnet.spec.bouncers,
        },
    );
    let checked = ClusterObject::Subnet(object);
    checked.validate()?;
    match checked {
        ClusterObject::Subnet(s) => Ok(s),
        _ => unreachable!("built as a Subnet"),
    }
}

/// Prints the CRDs' YAML; used by the `crdgen` binary.
pub fn print_all() -> String {
    crd_documents()
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed CRDs are what the types generate: run `crdgen` after changing them.
    #[test]
    fn committed_crds_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/crds");
        for (file, yaml) in crd_documents() {
            let path = dir.join(&file);
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run `cargo run -p sluice-control --bin crdgen`",
                    path.display()
                )
            });
            assert!(
                committed == yaml,
                "{} drifted from the Rust types; run `cargo run -p sluice-control --bin crdgen`",
                path.display()
            );
        }
    }

    #[test]
    fn schemas_carry_the_validation() {
        let vpc = serde_json::to_string(&Vpc::crd()).unwrap();
        assert!(vpc.contains("\"scope\":\"Cluster\""), "{vpc}");
        assert!(vpc.contains("self.cidr != self.serviceCidr"));
        assert!(vpc.contains("\"maximum\":64"));
        assert!(vpc.contains("\"pattern\""));
        assert!(vpc.contains("\"status\":{}"), "status subresource: {vpc}");
        let subnet = serde_json::to_string(&Subnet::crd()).unwrap();
        assert!(subnet.contains("vpc is immutable"), "{subnet}");
        assert!(subnet.contains("cidr is immutable"));
    }

    #[test]
    fn resources_become_the_object_model_with_named_errors() {
        let vpc: Vpc = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Vpc",
            "metadata": {"name": "blue", "generation": 3},
            "spec": {"cidr": "10.0.0.0/16", "serviceCidr": "10.96.0.0/16"}
        }))
        .unwrap();
        let object = vpc_object(&vpc).unwrap();
        assert_eq!(object.name(), "blue");
        assert_eq!(object.spec.dividers, 1, "defaults to one divider");
        let mut bad = vpc.clone();
        bad.spec.service_cidr = "10.0.128.0/20".into();
        assert_eq!(vpc_object(&bad).unwrap_err().field, "spec.serviceCidr");
        bad.spec.cidr = "10.0.0.300/16".into();
        assert_eq!(vpc_object(&bad).unwrap_err().field, "spec.cidr");
        let subnet: Subnet = serde_json::from_value(serde_json::json!({
            "apiVersion": "sluice.dev/v1alpha1", "kind": "Subnet",
            "metadata": {"name": "blue-a"},
            "spec": {"vpc": "blue", "cidr": "10.0.1.0/24", "bouncers": 2}
        }))
        .unwrap();
        let object = subnet_object(&subnet).unwrap();
        assert_eq!(
            (object.spec.vpc.as_str(), object.spec.bouncers),
            ("blue", 2)
        );
    }
}
