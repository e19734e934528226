//! A test action whose effects are files and network, interleaved: the
//! undo journal's crash-recovery and rollback tests stop it after each
//! effect in turn. (The files probe and the network probe each import one
//! capability, so their tests' grants stay single-capability.)
//!
//! Params: `{"ops": [{"op": "ensure-file", "path": "/etc/x", "contents":
//! "...", "mode": 420}, {"op": "ensure-link", "netns": "n1", "name": "br0",
//! "kind": "bridge", "mtu": 1400, "up": true}, {"op": "ensure-link", "name":
//! "ve0", "kind": "veth", "peer": "ve1", "peer_netns": "n1"}, ...]}`. Ops run
//! in order; the first error fails the run (which is then rolled back).

use hostaction_sdk::network::{self, LinkKind, LinkSettings, Route, VethSpec};
use hostaction_sdk::{Outcome, files};
use serde::Deserialize;

/// The probe's params.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// The operations, run in order.
    #[serde(default)]
    ops: Vec<Op>,
}

/// One call, tagged by `"op"`; `netns` absent is the host's own namespace.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
enum Op {
    EnsureFile {
        path: String,
        contents: String,
        mode: u32,
    },
    EnsureDir {
        path: String,
        mode: u32,
    },
    Remove {
        path: String,
    },
    EnsureNetns {
        name: String,
    },
    EnsureLink {
        #[serde(default)]
        netns: Option<String>,
        name: String,
        /// `bridge`, `dummy` or `veth` (with `peer`).
        kind: String,
        #[serde(default)]
        peer: Option<String>,
        #[serde(default)]
        peer_netns: Option<String>,
        #[serde(default)]
        mtu: Option<u32>,
        #[serde(default)]
        up: Option<bool>,
        #[serde(default)]
        master: Option<String>,
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
        route: RouteSpec,
    },
    RemoveRoute {
        #[serde(default)]
        netns: Option<String>,
        #[serde(flatten)]
        route: RouteSpec,
    },
    Fail {
        message: String,
    },
}

/// A route: to `destination` on `device`, through `gateway` if given.
#[derive(Deserialize)]
struct RouteSpec {
    destination: String,
    device: String,
    #[serde(default)]
    gateway: Option<String>,
}

impl From<RouteSpec> for Route {
    fn from(r: RouteSpec) -> Self {
        Route {
            destination: r.destination,
            gateway: r.gateway,
            device: Some(r.device),
            metric: None,
        }
    }
}

fn run(params: Params) -> Result<Outcome, String> {
    let mut changed = false;
    for (index, op) in params.ops.into_iter().enumerate() {
        let done = match op {
            Op::EnsureFile {
                path,
                contents,
                mode,
            } => files::ensure_file(&path, contents.as_bytes(), mode),
            Op::EnsureDir { path, mode } => files::ensure_dir(&path, mode),
            Op::Remove { path } => files::remove(&path),
            Op::EnsureNetns { name } => network::ensure_netns(&name),
            Op::EnsureLink {
                netns,
                name,
                kind,
                peer,
                peer_netns,
                mtu,
                up,
                master,
            } => {
                let kind = match (kind.as_str(), peer) {
                    ("bridge", None) => LinkKind::Bridge,
                    ("dummy", None) => LinkKind::Dummy,
                    ("veth", Some(peer_name)) => LinkKind::Veth(VethSpec {
                        peer_name,
                        peer_netns,
                    }),
                    (other, _) => {
                        return Err(format!(
                            "op {index}: kind {other}: bridge, dummy, or veth with a peer"
                        ));
                    }
                };
                let settings = LinkSettings { mtu, up, master };
                network::ensure_link(netns.as_deref(), &name, &kind, &settings)
            }
            Op::EnsureAddress {
                netns,
                device,
                address,
            } => network::ensure_address(netns.as_deref(), &device, &address),
            Op::RemoveAddress {
                netns,
                device,
                address,
            } => network::remove_address(netns.as_deref(), &device, &address),
            Op::EnsureRoute { netns, route } => {
                network::ensure_route(netns.as_deref(), &route.into())
            }
            Op::RemoveRoute { netns, route } => {
                network::remove_route(netns.as_deref(), &route.into())
            }
            Op::Fail { message } => return Err(message),
        };
        changed |= done.map_err(|e| format!("op {index}: {}", e.message()))?;
    }
    Ok(Outcome::changed(changed).message("ran every op"))
}

hostaction_sdk::action!(run);
