//! Sample action: a VXLAN overlay on one host, idempotently. In the host's
//! namespace (or a named one standing in for it) a bridge, a vxlan enslaved to
//! it, and a veth pair whose host end is enslaved to it and whose other end is
//! in a workload namespace with an address.
//!
//! This is what a privileged DaemonSet's start script does with `ip` today
//! (`overlay.sh` beside this crate is that script); as an action it imports
//! only `log` and `network`, and its grant names the namespaces, the interface
//! names and the link kinds it may touch. Every step is an ensure, so a second
//! run with the same params changes nothing. See README.md.

mod params;

use hostaction_sdk::network::{self, LinkKind, LinkSettings, VethSpec, VxlanSpec};
use hostaction_sdk::{Error, Outcome, log};
use params::Params;

/// What the run changed, step by step, for the outcome.
#[derive(Default)]
struct Changes(Vec<String>);

impl Changes {
    /// Records the step `what` when its ensure-call changed something; a
    /// failed call ends the run with an error that names the step.
    fn note(&mut self, what: String, result: Result<bool, Error>) -> Result<(), String> {
        match result {
            Ok(true) => {
                log::info(&format!("changed: {what}"));
                self.0.push(what);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(format!("{what}: {e}")),
        }
    }
}

fn run(p: Params) -> Result<Outcome, String> {
    params::validate(&p)?;
    let ns = p.netns.as_deref();
    let here = ns.map_or_else(|| "host".to_owned(), |n| format!("netns {n}"));
    let work = p.workload.netns.as_str();
    let mtu = Some(p.mtu);
    let mut changes = Changes::default();

    // The bridge first: the vxlan and the veth join it.
    let bridge_settings = LinkSettings {
        mtu,
        up: Some(true),
        master: None,
    };
    changes.note(
        format!("bridge {} ({here})", p.bridge),
        network::ensure_link(ns, &p.bridge, &LinkKind::Bridge, &bridge_settings),
    )?;
    let port_settings = LinkSettings {
        mtu,
        up: Some(true),
        master: Some(p.bridge.clone()),
    };
    let vxlan = LinkKind::Vxlan(VxlanSpec {
        vni: p.vxlan.vni,
        local: p.vxlan.local.clone(),
        remote: p.vxlan.remote.clone(),
        group: p.vxlan.group.clone(),
        port: Some(p.vxlan.port),
        device: p.vxlan.device.clone(),
    });
    changes.note(
        format!("vxlan {} ({here})", p.vxlan.name),
        network::ensure_link(ns, &p.vxlan.name, &vxlan, &port_settings),
    )?;
    if let Some(cidr) = &p.bridge_address {
        changes.note(
            format!("address {cidr} on {} ({here})", p.bridge),
            network::ensure_address(ns, &p.bridge, cidr),
        )?;
    }

    // The workload side: its namespace, the pair into it, the far end's
    // settings and address.
    changes.note(format!("netns {work}"), network::ensure_netns(work))?;
    let veth = LinkKind::Veth(VethSpec {
        peer_name: p.workload.name.clone(),
        peer_netns: Some(work.to_owned()),
    });
    changes.note(
        format!("veth {} ({here})", p.workload.host_end),
        network::ensure_link(ns, &p.workload.host_end, &veth, &port_settings),
    )?;
    let peer_settings = LinkSettings {
        mtu,
        up: Some(true),
        master: None,
    };
    // The far end is ensured as a veth whose own peer is the host end (in
    // `netns`, or `host` for the host's own namespace).
    let peer = LinkKind::Veth(VethSpec {
        peer_name: p.workload.host_end.clone(),
        peer_netns: Some(ns.unwrap_or("host").to_owned()),
    });
    changes.note(
        format!("veth {} (netns {work})", p.workload.name),
        network::ensure_link(Some(work), &p.workload.name, &peer, &peer_settings),
    )?;
    changes.note(
        format!(
            "address {} on {} (netns {work})",
            p.workload.address, p.workload.name
        ),
        network::ensure_address(Some(work), &p.workload.name, &p.workload.address),
    )?;

    let changed = !changes.0.is_empty();
    let detail = if changed {
        format!("changed: {}", changes.0.join(", "))
    } else {
        "nothing changed".into()
    };
    let peer = p.vxlan.remote.as_ref().or(p.vxlan.group.as_ref());
    let outcome = Outcome::changed(changed)
        .message(format!(
            "overlay in place: {} with {} (vni {}) and {} to {} {} in netns {work} ({detail})",
            p.bridge,
            p.vxlan.name,
            p.vxlan.vni,
            p.workload.host_end,
            p.workload.name,
            p.workload.address,
        ))
        .fact("netns", ns.unwrap_or("host"))
        .fact("bridge", p.bridge.as_str())
        .fact("vxlan", p.vxlan.name.as_str())
        .fact("vni", p.vxlan.vni.to_string())
        .fact("remote", peer.map_or("", String::as_str))
        .fact("workloadNetns", work)
        .fact("workloadAddress", p.workload.address.as_str());
    Ok(outcome.fact("changed", changes.0.join(",")))
}

hostaction_sdk::action!(run);
