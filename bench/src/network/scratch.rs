//! Scratch network namespaces for the network suite: named
//! `habench-<pid>-...` under `/var/run/netns` (where both `ip netns` and the
//! runtime, with host root `/`, keep them), reset between fresh runs, and all
//! deleted when the suite ends, on error too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hostaction_runtime::capabilities::CapError;
use hostaction_runtime::capabilities::network::netlink::{
    self, Call, LinkInfo, LinkSettings, LinkSpec, Netns,
};

use super::{DEVICE, Place, UNDERLAY_PEER};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";
/// Prefix of every namespace the bench makes: `habench-<pid>-`.
const PREFIX: &str = "habench-";
/// Deadline of one setup or teardown call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The namespaces of one run of the suite; dropping it deletes them all.
pub struct Scratch {
    dir: PathBuf,
    prefix: String,
    /// Every namespace name the suite may make (the action and the script
    /// make the workload ones themselves).
    names: Vec<String>,
}

impl Scratch {
    /// Prepares `/var/run/netns` and deletes namespaces left by earlier bench
    /// processes that are gone (a run killed before its cleanup).
    pub fn new() -> Result<Self, CapError> {
        let dir = PathBuf::from(NETNS_DIR);
        remove_stale(&dir)?;
        Ok(Scratch {
            dir,
            prefix: format!("{PREFIX}{}-", std::process::id()),
            names: Vec::new(),
        })
    }

    /// The directory of named namespaces.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pattern that covers this process's namespaces (for the grant).
    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }

    /// Names a host-side and a workload namespace for the variant `tag`.
    pub fn place(&mut self, tag: &str) -> Place {
        let place = Place {
            host: format!("{}{tag}-host", self.prefix),
            work: format!("{}{tag}-work", self.prefix),
        };
        self.names.push(place.host.clone());
        self.names.push(place.work.clone());
        place
    }

    /// Deletes both namespaces of `place`, if they exist.
    pub fn delete(&self, place: &Place) -> Result<(), CapError> {
        netlink::delete_netns(&self.dir, &place.host)?;
        netlink::delete_netns(&self.dir, &place.work)?;
        Ok(())
    }

    /// Starts `place` from scratch (not timed): deletes both namespaces,
    /// makes a new host-side one with the underlay device `ul0` up in it (a
    /// veth, since not every kernel has dummy links).
    pub fn reset(&self, place: &Place) -> Result<(), CapError> {
        self.delete(place)?;
        netlink::ensure_netns(&self.dir, &place.host)?;
        let host = self.dir.join(&place.host);
        let call = Call::apply(Netns(Some(&host)), Instant::now() + CALL_TIMEOUT);
        let underlay = LinkSpec::Veth {
            peer: UNDERLAY_PEER.into(),
            peer_netns: None,
        };
        let up = LinkSettings {
            up: Some(true),
            ..LinkSettings::default()
        };
        netlink::ensure_link(call, DEVICE, &underlay, &up)?;
        Ok(())
    }

    /// The links of both namespaces of `place` as `ns/name kind mtu up
    /// master`, sorted: what the three ways of making the overlay must agree on.
    pub fn topology(&self, place: &Place) -> Result<Vec<String>, CapError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let mut lines = Vec::new();
        for (side, name) in [("host", &place.host), ("work", &place.work)] {
            let path = self.dir.join(name);
            for l in netlink::list_links(Netns(Some(&path)), deadline)? {
                lines.push(describe(side, &l));
            }
        }
        lines.sort();
        Ok(lines)
    }

    /// Deletes every namespace this run made.
    pub fn cleanup(&mut self) -> Result<(), CapError> {
        let mut first_error = None;
        for name in std::mem::take(&mut self.names) {
            if let Err(e) = netlink::delete_netns(&self.dir, &name) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("hostaction-bench: cleaning up the scratch namespaces: {e}");
        }
    }
}

fn describe(side: &str, l: &LinkInfo) -> String {
    format!(
        "{side}/{} {} mtu {} {} master {}",
        l.name,
        l.kind.as_deref().unwrap_or("-"),
        l.mtu,
        if l.up { "up" } else { "down" },
        l.master.as_deref().unwrap_or("-"),
    )
}

/// Deletes `habench-<pid>-*` namespaces whose process no longer exists.
fn remove_stale(dir: &Path) -> Result<(), CapError> {
    let stale: Vec<String> = netlink::list_netns(dir)?
        .into_iter()
        .filter(|name| {
            let pid = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            pid.is_some_and(|pid| !Path::new("/proc").join(pid.to_string()).exists())
        })
        .collect();
    for name in stale {
        println!("  removing network namespace {name} left by an earlier run");
        netlink::delete_netns(dir, &name)?;
    }
    Ok(())
}
