//! The generated CustomResourceDefinitions: `manifests/crds.yaml` is what
//! `hostaction crds` prints (regenerate with
//! `cargo run -p hostaction-cli -- crds > manifests/crds.yaml`), and the
//! example HostActions under `manifests/examples/` are valid for these types.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use crate::{HostAction, crds_yaml};

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
        "{} is stale: regenerate it with `cargo run -p hostaction-cli -- crds > manifests/crds.yaml`",
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

/// Every string, list and map of both schemas has a bound, so the API
/// server refuses oversized objects (only free-form `params` has none).
#[test]
fn every_string_list_and_map_in_the_crds_is_bounded() {
    fn walk(path: &str, schema: &serde_json::Value, unbounded: &mut Vec<String>) {
        if !schema.is_object() || schema["x-kubernetes-preserve-unknown-fields"] == true {
            return;
        }
        match schema["type"].as_str() {
            Some("string") if schema["maxLength"].is_null() && schema["enum"].is_null() => {
                unbounded.push(format!("{path}: string without maxLength"));
            }
            Some("array") if schema["maxItems"].is_null() => {
                unbounded.push(format!("{path}: list without maxItems"));
            }
            Some("object")
                if schema["additionalProperties"].is_object()
                    && schema["maxProperties"].is_null() =>
            {
                unbounded.push(format!("{path}: map without maxProperties"));
            }
            _ => {}
        }
        walk(&format!("{path}[]"), &schema["items"], unbounded);
        walk(
            &format!("{path}{{}}"),
            &schema["additionalProperties"],
            unbounded,
        );
        for (name, property) in schema["properties"].as_object().into_iter().flatten() {
            walk(&format!("{path}.{name}"), property, unbounded);
        }
    }
    let yaml = crds_yaml().unwrap();
    let mut unbounded = Vec::new();
    for doc in yaml.split("\n---\n") {
        let crd: serde_json::Value = serde_yaml_ng::from_str(doc).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap().to_owned();
        walk(
            &kind,
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
            &mut unbounded,
        );
    }
    assert!(unbounded.is_empty(), "{unbounded:#?}");
    // The run's status: its size budget holds what the schema allows per item.
    assert!(yaml.contains(&format!("maxLength: {}", crate::run::LINE_BYTES)));
}

/// A run's module is a registry reference pinned by digest, a HostAction's
/// a registry reference: never a file path or a URL (a node would run a
/// local file with the run's grants).
#[test]
fn module_rules_take_registry_references_only() {
    use crate::run::{MODULE_PATTERN, PINNED_MODULE_PATTERN};
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let pinned = regex::Regex::new(PINNED_MODULE_PATTERN).unwrap();
    let any = regex::Regex::new(MODULE_PATTERN).unwrap();
    for good in [
        format!("registry.example/actions/cni-install@{digest}"),
        format!("registry.example:5000/a/b-c/d_e@{digest}"),
        format!("127.0.0.1:5000/actions/probe:v1@{digest}"),
        format!("localhost/x@{digest}"),
        format!("localhost:5000/x@{digest}"),
        format!("reg/x@{digest}").replace("reg/", "reg:1/"),
    ] {
        assert!(pinned.is_match(&good), "{good}");
        assert!(any.is_match(&good), "{good}");
    }
    for tagged in [
        "registry.example/actions/cni-install:v1",
        "registry.example/actions/cni-install",
        "127.0.0.1:5000/x:latest",
    ] {
        assert!(!pinned.is_match(tagged), "{tagged}");
        assert!(any.is_match(tagged), "{tagged}");
    }
    for bad in [
        format!("/var/lib/x@{digest}"),
        format!("/host/tmp/evil.wasm@{digest}"),
        format!("file:///tmp/x@{digest}"),
        format!("file://registry.example/x@{digest}"),
        format!("https://registry.example/x@{digest}"),
        format!("./x@{digest}"),
        format!("../x@{digest}"),
        format!("x@{digest}"),
        format!("library/x@{digest}"),
        "registry.example/x@sha256:abc".to_owned(),
        format!("registry.example/x@{digest}0"),
        format!("registry.example/x@{}", digest.to_uppercase()),
        format!("registry.example/../x@{digest}"),
        format!("registry.example//x@{digest}"),
        format!("registry.example/x@{digest}\n"),
        format!("registry.example/x y@{digest}"),
        String::new(),
    ] {
        assert!(!pinned.is_match(&bad), "{bad:?}");
        assert!(!any.is_match(&bad), "{bad:?}");
    }
    // The CEL rules are these patterns.
    let yaml = crds_yaml().unwrap();
    let rules: Vec<String> =
        yaml.split("\n---\n")
            .map(|doc| {
                let crd: serde_json::Value = serde_yaml_ng::from_str(doc).unwrap();
                let module = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
                    ["spec"]["properties"]["module"];
                module["x-kubernetes-validations"][0]["rule"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
    assert_eq!(
        rules,
        [
            format!("self.matches('{MODULE_PATTERN}')"),
            format!("self.matches('{PINNED_MODULE_PATTERN}')")
        ]
    );
}

/// A run status whose times k8s-openapi cannot parse (stored under an older
/// CRD) still reads, without them: one unreadable run must not fail the
/// controller's list of every run. Readable ones are kept.
#[test]
fn a_run_status_with_unreadable_times_still_reads() {
    use crate::{HostActionRunStatus, RunPhase};
    for at in [
        "2024-01-01T00:00:00x5Z",
        "2024-01-01T00:00:00+99:99",
        "9999-12-31T23:59:59Z",
        "2024-01-01T00:00:00.1234567890123456789Z",
    ] {
        let status: HostActionRunStatus = serde_json::from_value(serde_json::json!({
            "phase": "Succeeded", "startedAt": at, "finishedAt": at,
        }))
        .unwrap_or_else(|e| panic!("{at}: {e}"));
        assert_eq!(status.phase, RunPhase::Succeeded);
        assert_eq!(
            (status.started_at, status.finished_at),
            (None, None),
            "{at}"
        );
    }
    let status: HostActionRunStatus = serde_json::from_value(serde_json::json!({
        "finishedAt": "2024-01-01T00:00:00Z",
    }))
    .unwrap();
    assert!(status.finished_at.is_some());
}

/// Every `date-time` string of both CRDs carries the pattern that keeps out
/// what k8s-openapi cannot parse.
#[test]
fn every_date_time_in_the_crds_has_the_pattern() {
    fn visit(schema: &serde_json::Value, at: &str, found: &mut Vec<String>) {
        let Some(map) = schema.as_object() else {
            return;
        };
        if map.get("format").and_then(|f| f.as_str()) == Some("date-time") {
            assert_eq!(
                map.get("pattern").and_then(|p| p.as_str()),
                Some(crate::DATE_TIME_PATTERN),
                "{at}"
            );
            found.push(at.to_owned());
        }
        for (key, value) in map {
            match value {
                serde_json::Value::Array(items) => {
                    items
                        .iter()
                        .for_each(|v| visit(v, &format!("{at}/{key}"), found));
                }
                other => visit(other, &format!("{at}/{key}"), found),
            }
        }
    }
    let mut found = Vec::new();
    for doc in crds_yaml().unwrap().split("\n---\n") {
        let doc: serde_json::Value = serde_yaml_ng::from_str(doc).unwrap();
        visit(&doc, "", &mut found);
    }
    assert!(found.iter().any(|f| f.contains("finishedAt")), "{found:?}");
    assert!(found.iter().any(|f| f.contains("startedAt")), "{found:?}");
}

/// `onFailure`, `onDelete` and `journal` default to rollback, keep and
/// required; other words are refused naming the word; `off` is quoted in
/// the YAML (kubectl's YAML 1.1 reads a bare `off` as false).
#[test]
fn undo_fields_default_and_take_only_their_words() {
    use crate::action::{Journal, OnDelete, OnFailure};
    let yaml = crds_yaml().unwrap();
    assert!(yaml.contains("- 'off'"), "{yaml}");
    assert!(!yaml.lines().any(|l| l.trim() == "- off"), "{yaml}");
    let minimal = serde_json::json!({
        "apiVersion": "hostaction.dev/v1alpha1",
        "kind": "HostAction",
        "metadata": {"name": "x"},
        "spec": {"module": "registry.example/a/b:v1"},
    });
    let action: HostAction = serde_json::from_value(minimal.clone()).unwrap();
    assert_eq!(action.spec.on_failure, OnFailure::Rollback);
    assert_eq!(action.spec.on_delete, OnDelete::Keep);
    assert_eq!(action.spec.journal, Journal::Required);
    let mut chosen = minimal.clone();
    chosen["spec"]["onFailure"] = "keep".into();
    chosen["spec"]["onDelete"] = "undo".into();
    chosen["spec"]["journal"] = "best-effort".into();
    let action: HostAction = serde_json::from_value(chosen).unwrap();
    assert_eq!(action.spec.on_failure, OnFailure::Keep);
    assert_eq!(action.spec.on_delete, OnDelete::Undo);
    assert_eq!(action.spec.journal, Journal::BestEffort);
    let mut bad = minimal;
    bad["spec"]["onDelete"] = "later".into();
    let error = serde_json::from_value::<HostAction>(bad)
        .unwrap_err()
        .to_string();
    assert!(error.contains("later"), "{error}");
}
