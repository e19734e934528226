//! Nodes as the controller reads them: name, labels and whether Ready —
//! nothing else of a Node is read.
//!
//! Why not the whole `Node`: every Node's kubelet writes its own status,
//! and the API server takes times there (a heartbeat on year 9999's last
//! day) that k8s-openapi cannot parse. One such Node would fail the
//! controller's list of every Node, and with it every rollout, until the
//! node changed it. Reading only these fields also keeps a Node's images
//! and other status out of the controller's memory.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A Node with only its name, uid, resourceVersion, labels and the type
/// and status of its conditions.
#[derive(Clone, Debug)]
pub struct ReadNode(pub Node);

impl<'de> Deserialize<'de> for ReadNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let meta = value.get("metadata");
        let labels = meta
            .and_then(|m| m.get("labels"))
            .and_then(Value::as_object)
            .map(|labels| {
                labels
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect::<BTreeMap<_, _>>()
            });
        let conditions = value
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(|c| {
                        Some(NodeCondition {
                            type_: text(c.get("type"))?,
                            status: text(c.get("status"))?,
                            ..NodeCondition::default()
                        })
                    })
                    .collect()
            });
        Ok(ReadNode(Node {
            metadata: ObjectMeta {
                name: text(meta.and_then(|m| m.get("name"))),
                uid: text(meta.and_then(|m| m.get("uid"))),
                resource_version: text(meta.and_then(|m| m.get("resourceVersion"))),
                labels,
                ..ObjectMeta::default()
            },
            spec: None,
            status: Some(NodeStatus {
                conditions,
                ..NodeStatus::default()
            }),
        }))
    }
}

impl Resource for ReadNode {
    type DynamicType = ();
    type Scope = <Node as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Node::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Node::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Node::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Node::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.0.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.metadata
    }
}

/// A watch event of [`ReadNode`]s as one of `Node`s (what the reflector
/// and the rollout rules take).
pub fn node_event(event: watcher::Event<ReadNode>) -> watcher::Event<Node> {
    match event {
        watcher::Event::Apply(ReadNode(node)) => watcher::Event::Apply(node),
        watcher::Event::Delete(ReadNode(node)) => watcher::Event::Delete(node),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(ReadNode(node)) => watcher::Event::InitApply(node),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_node_with_a_heartbeat_k8s_openapi_cannot_parse_still_reads() {
        let json = serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": "a", "uid": "u", "resourceVersion": "7",
                "labels": {"zone": "z1"},
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "managedFields": [{"manager": "kubelet", "time": "9999-12-31T23:59:59Z"}],
            },
            "status": {"conditions": [{
                "type": "Ready", "status": "True",
                "lastHeartbeatTime": "9999-12-31T23:59:59Z",
            }], "images": [{"names": ["x"], "sizeBytes": 1}]},
        });
        assert!(serde_json::from_value::<Node>(json.clone()).is_err());
        let ReadNode(node) = serde_json::from_value(json).unwrap();
        assert_eq!(node.metadata.name.as_deref(), Some("a"));
        assert_eq!(node.metadata.resource_version.as_deref(), Some("7"));
        let labels = node.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("zone").map(String::as_str), Some("z1"));
        assert!(crate::rollout::is_ready(&node));
        assert!(node.status.and_then(|s| s.images).is_none());
    }
}
