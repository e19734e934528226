//! The overlay made natively: the backend calls that the action's capability
//! calls come down to, in the same order and with the same arguments, with no
//! component, grant check or path resolution in between. The action's cost
//! over this is what hostaction adds.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use hostaction_runtime::capabilities::CapError;
use hostaction_runtime::capabilities::network::netlink::{
    self, Call, IpNetwork, LinkSettings, LinkSpec, Netns,
};

use super::{
    BRIDGE, DEVICE, HOST_END, LOCAL, MTU, PORT, Place, REMOTE, VNI, VXLAN, WORKLOAD_ADDRESS,
    WORKLOAD_IF,
};
use crate::BenchResult;

/// The run's deadline, as the runtime's default limit.
const DEADLINE: Duration = Duration::from_secs(30);

/// The parsed parts of the overlay, made once.
pub struct Native {
    vxlan: LinkSpec,
    address: IpNetwork,
}

impl Native {
    pub fn new() -> BenchResult<Self> {
        let ip = |s: &str| -> BenchResult<IpAddr> { Ok(s.parse()?) };
        Ok(Native {
            vxlan: LinkSpec::Vxlan {
                vni: VNI,
                local: Some(ip(LOCAL)?),
                remote: Some(ip(REMOTE)?),
                group: None,
                port: Some(PORT),
                device: Some(DEVICE.into()),
            },
            address: WORKLOAD_ADDRESS.parse()?,
        })
    }

    /// Ensures the overlay in `place` (namespaces under `dir`), as the action
    /// does; returns whether anything changed.
    pub fn ensure(&self, dir: &Path, place: &Place) -> Result<bool, CapError> {
        let deadline = Instant::now() + DEADLINE;
        let host_path = dir.join(&place.host);
        let work_path = dir.join(&place.work);
        // As the action's grant (ownedOnly) makes the capability call them.
        let call = |path| Call {
            ns: Netns(Some(path)),
            deadline,
            dry_run: false,
            owned_only: true,
        };
        let (host, work) = (call(&host_path), call(&work_path));
        let own = LinkSettings {
            mtu: Some(MTU),
            up: Some(true),
            master: None,
        };
        let port = LinkSettings {
            master: Some(BRIDGE.into()),
            ..own.clone()
        };
        let to_work = LinkSpec::Veth {
            peer: WORKLOAD_IF.into(),
            peer_netns: Some(work_path.clone()),
        };
        let to_host = LinkSpec::Veth {
            peer: HOST_END.into(),
            peer_netns: Some(host_path.clone()),
        };
        let mut changed = !netlink::ensure_link(host, BRIDGE, &LinkSpec::Bridge, &own)?.is_empty();
        changed |= !netlink::ensure_link(host, VXLAN, &self.vxlan, &port)?.is_empty();
        changed |= netlink::ensure_netns(dir, &place.work)?;
        changed |= !netlink::ensure_link(host, HOST_END, &to_work, &port)?.is_empty();
        changed |= !netlink::ensure_link(work, WORKLOAD_IF, &to_host, &own)?.is_empty();
        changed |= netlink::ensure_address(work, WORKLOAD_IF, self.address)?;
        Ok(changed)
    }
}
