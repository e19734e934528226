//! A test action for the `network` capability: runs the calls its params
//! list and reports the result of each, so the end-to-end tests can drive every
//! call, in and out of scope, from one component. It imports `network` (and
//! `log`), not `files`: the probe for files stays free of this import.
//!
//! Params: `{"ops": [{"op": "ensure-link", "netns": "n1", "name": "br0",
//! "kind": {"type": "bridge"}, "mtu": 1400, "up": true}, ...]}`. Ops run in
//! order; an error does not stop the run. Fact `"<index>"` holds `{"ok": value}`
//! or `{"err": {"kind": "...", "message": "..."}}`.

use hostaction_sdk::network::{
    self, LinkKind, LinkSettings, MacvlanSpec, VethSpec, VlanSpec, VxlanSpec,
};
use hostaction_sdk::{Error, Outcome};
use serde::Deserialize;
use serde_json::{Value, json};

/// The probe's params.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The operations, run in order.
    #[serde(default)]
    ops: Vec<Op>,
}

/// One call of the `network` interface, tagged by `"op"`; `netns` absent is
/// the host's own namespace.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
enum Op {
    EnsureLink {
        #[serde(default)]
        netns: Option<String>,
        name: String,
        kind: Kind,
        #[serde(default)]
        mtu: Option<u32>,
        #[serde(default)]
        up: Option<bool>,
        #[serde(default)]
        master: Option<String>,
    },
    DeleteLink {
        #[serde(default)]
        netns: Option<String>,
        name: String,
    },
    ListLinks {
        #[serde(default)]
        netns: Option<String>,
    },
    EnsureAddress {
        #[serde(default)]
        netns: Option<String>,
        device: String,
        address: String,
    },
    RemoveAddress {
        #[serde(default)]
        netns: Option<String>,
        device: String,
        address: String,
    },
    EnsureRoute {
        #[serde(default)]
        netns: Option<String>,
        #[serde(flatten)]
        route: Route,
    },
    RemoveRoute {
        #[serde(default)]
        netns: Option<String>,
        #[serde(flatten)]
        route: Route,
    },
    EnsureNetns {
        name: String,
    },
    DeleteNetns {
        name: String,
    },
    ListNetns,
}

/// A link kind with its attributes, tagged by `"type"`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Kind {
    Bridge,
    Dummy,
    Wireguard,
    Veth {
        peer: String,
        #[serde(default)]
        peer_netns: Option<String>,
    },
    Vxlan {
        vni: u32,
        #[serde(default)]
        local: Option<String>,
        #[serde(default)]
        remote: Option<String>,
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        device: Option<String>,
    },
    Macvlan {
        parent: String,
        #[serde(default)]
        mode: Option<String>,
    },
    Vlan {
        parent: String,
        id: u16,
    },
}

/// A route's fields.
#[derive(Deserialize)]
struct Route {
    destination: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    metric: Option<u32>,
}

impl From<Route> for network::Route {
    fn from(r: Route) -> Self {
        network::Route {
            destination: r.destination,
            gateway: r.gateway,
            device: r.device,
            metric: r.metric,
        }
    }
}

impl From<Kind> for LinkKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Bridge => LinkKind::Bridge,
            Kind::Dummy => LinkKind::Dummy,
            Kind::Wireguard => LinkKind::Wireguard,
            Kind::Veth { peer, peer_netns } => LinkKind::Veth(VethSpec {
                peer_name: peer,
                peer_netns,
            }),
            Kind::Vxlan {
                vni,
                local,
                remote,
                group,
                port,
                device,
            } => LinkKind::Vxlan(VxlanSpec {
                vni,
                local,
                remote,
                group,
                port,
                device,
            }),
            Kind::Macvlan { parent, mode } => LinkKind::Macvlan(MacvlanSpec { parent, mode }),
            Kind::Vlan { parent, id } => LinkKind::Vlan(VlanSpec { parent, id }),
        }
    }
}

fn run(params: Params) -> Result<Outcome, String> {
    let mut changed = false;
    let mut facts = Vec::with_capacity(params.ops.len());
    for (index, op) in params.ops.into_iter().enumerate() {
        let result = run_op(op);
        if let Ok(Value::Bool(true)) = result {
            // Only the mutating calls report a bool.
            changed = true;
        }
        let fact = match result {
            Ok(value) => json!({ "ok": value }),
            Err(e) => json!({ "err": { "kind": e.kind(), "message": e.message() } }),
        };
        facts.push((index.to_string(), fact.to_string()));
    }
    let count = facts.len();
    let outcome = facts
        .into_iter()
        .fold(Outcome::changed(changed), |o, (k, v)| o.fact(k, v));
    Ok(outcome.message(format!("ran {count} ops")))
}

fn run_op(op: Op) -> Result<Value, Error> {
    let ns = |n: &Option<String>| n.clone();
    Ok(match op {
        Op::EnsureLink {
            netns,
            name,
            kind,
            mtu,
            up,
            master,
        } => {
            let settings = LinkSettings { mtu, up, master };
            Value::Bool(network::ensure_link(
                ns(&netns).as_deref(),
                &name,
                &kind.into(),
                &settings,
            )?)
        }
        Op::DeleteLink { netns, name } => {
            Value::Bool(network::delete_link(netns.as_deref(), &name)?)
        }
        Op::ListLinks { netns } => network::list_links(netns.as_deref())?
            .into_iter()
            .map(|l| {
                json!({
                    "name": l.name, "kind": l.kind, "mtu": l.mtu, "up": l.up,
                    "master": l.master, "owned": l.owned,
                })
            })
            .collect(),
        Op::EnsureAddress {
            netns,
            device,
            address,
        } => Value::Bool(network::ensure_address(
            netns.as_deref(),
            &device,
            &address,
        )?),
        Op::RemoveAddress {
            netns,
            device,
            address,
        } => Value::Bool(network::remove_address(
            netns.as_deref(),
            &device,
            &address,
        )?),
        Op::EnsureRoute { netns, route } => {
            Value::Bool(network::ensure_route(netns.as_deref(), &route.into())?)
        }
        Op::RemoveRoute { netns, route } => {
            Value::Bool(network::remove_route(netns.as_deref(), &route.into())?)
        }
        Op::EnsureNetns { name } => Value::Bool(network::ensure_netns(&name)?),
        Op::DeleteNetns { name } => Value::Bool(network::delete_netns(&name)?),
        Op::ListNetns => network::list_netns()?.into_iter().collect(),
    })
}

hostaction_sdk::action!(run);
