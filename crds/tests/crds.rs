//! The generated CustomResourceDefinitions: `manifests/crds.yaml` is what
//! `hostaction crds` prints (regenerate with
//! `cargo run -p hostaction-runtime -- crds > manifests/crds.yaml`), and the
//! example HostActions under `manifests/examples/` are valid for these types.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use hostaction_crds::{HostAction, crds_yaml};

fn manifests() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests"))
}

#[test]
fn manifests_crds_yaml_is_up_to_date() {
    let generated = crds_yaml().unwrap();
    let path = manifests().join("crds.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is stale: regenerate it with `cargo run -p hostaction-runtime -- crds > manifests/crds.yaml`",
        path.display()
    );
}

#[test]
fn the_crds_carry_their_names_columns_validations_and_status() {
    let yaml = crds_yaml().unwrap();
    let docs: Vec<serde_json::Value> = yaml
        .split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).unwrap())
        .collect();
    let [action, run] = docs.as_slice() else {
        panic!("two CRDs expected")
    };
    assert_eq!(action["metadata"]["name"], "hostactions.hostaction.dev");
    assert_eq!(action["spec"]["scope"], "Cluster");
    assert_eq!(action["spec"]["names"]["shortNames"][0], "ha");
    assert_eq!(run["metadata"]["name"], "hostactionruns.hostaction.dev");
    assert_eq!(run["spec"]["names"]["shortNames"][0], "har");
    for crd in [action, run] {
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
        assert!(
            version["additionalPrinterColumns"]
                .as_array()
                .unwrap()
                .len()
                >= 4
        );
        // A structural schema: no `additionalProperties: false` beside `properties`.
        assert!(!yaml.contains("additionalProperties: false"), "{yaml}");
    }
    let spec = &action["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let max = &spec["properties"]["rollout"]["properties"]["maxConcurrent"];
    assert_eq!(max["x-kubernetes-int-or-string"], true);
    assert!(max["x-kubernetes-validations"][0]["rule"].is_string());
    assert_eq!(
        spec["properties"]["params"]["x-kubernetes-preserve-unknown-fields"],
        true
    );
    assert!(
        spec["properties"]["grants"]["properties"]["network"]["properties"]["ownedOnly"]
            .is_object()
    );
}

#[test]
fn example_host_actions_parse_as_host_actions() {
    let dir = manifests().join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let action: HostAction =
            serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(action.spec.module.contains('/'), "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 3, "examples in {}", dir.display());
}
