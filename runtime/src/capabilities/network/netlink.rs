//! The network capability's host backend: links, addresses and routes through
//! rtnetlink, and named network namespaces as `ip netns` makes them.
//!
//! Pure Rust, no WIT types: the capability layer checks the grant and maps
//! these values to and from the contract. Every netlink call runs on a
//! dedicated thread that enters the requested namespace (the caller's thread
//! never switches namespace), with a current-thread tokio runtime bounded by
//! the call's deadline. Nothing forks or execs `ip`.

mod addr;
mod link;
mod netns;
/// Against the real kernel, as root (rtnetlink's `src/link/test.rs`).
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::File;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// An IP network in CIDR notation, v4 or v6 (`10.0.0.1/24`); for an address
/// it carries the address and its prefix length.
pub use ipnet::IpNet as IpNetwork;
use rtnetlink::Handle;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::capabilities::CapError;

pub use addr::{
    check_route, ensure_address, ensure_address_with, ensure_route, ensure_route_as,
    ensure_route_with, remove_address, remove_address_with, remove_route, remove_route_with,
};
pub use link::{
    check_spec, delete_link, delete_link_with, describe, ensure_link, ensure_link_with,
    inspect_link, list_links, set_link,
};
pub use netns::{delete_netns, ensure_netns, ensure_netns_with, is_netns, list_netns};

/// A change a backend call is about to make, handed to the call's hook right
/// before the request that makes it (after every check; in plan mode, where
/// it would be made): the capability journals what undoes it there, so
/// nothing is changed that the journal does not know of, and nothing is
/// journaled that the check refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The link is about to be created (then marked and set as asked).
    CreateLink,
    /// The settings of an existing link are about to change; how it was.
    ChangeLink {
        /// The link's attributes before the change.
        before: LinkState,
    },
    /// The link is about to be deleted; how it was.
    DeleteLink {
        /// The link before it is deleted.
        info: LinkInfo,
    },
    /// The address is about to be added.
    AddAddress,
    /// The address is about to be removed.
    RemoveAddress,
    /// The route is about to be added.
    AddRoute,
    /// These routes (each field as the kernel has it) are about to be removed.
    RemoveRoutes {
        /// The routes found, each with its protocol (`RTPROT_*`: who added it).
        routes: Vec<(Route, u8)>,
    },
    /// The named namespace is about to be made.
    CreateNetns,
}

/// What a backend call hands each [`Step`] to; an error stops the call
/// before that change.
pub type Hook<'a> = dyn FnMut(Step) -> Result<(), CapError> + Send + 'a;

/// The hook of a call nobody journals.
pub fn no_hook(_: Step) -> Result<(), CapError> {
    Ok(())
}

/// A link's settings as the kernel has them: what [`LinkSettings`] changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// The link's MTU.
    pub mtu: u32,
    /// Whether the link is administratively up.
    pub up: bool,
    /// Name of its master, if any.
    pub master: Option<String>,
}

/// The kind of link to ensure, with the attributes that identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSpec {
    /// A software bridge (`type bridge`).
    Bridge,
    /// A veth pair; this end keeps the link's name.
    Veth {
        /// Name of the other end.
        peer: String,
        /// Namespace file the peer is moved into; the link's own namespace when none.
        peer_netns: Option<PathBuf>,
    },
    /// A VXLAN tunnel endpoint (`type vxlan`).
    Vxlan {
        /// The VXLAN network identifier.
        vni: u32,
        /// Local tunnel address.
        local: Option<IpAddr>,
        /// Unicast remote (exclusive with `group`).
        remote: Option<IpAddr>,
        /// Multicast group (exclusive with `remote`).
        group: Option<IpAddr>,
        /// UDP destination port; the kernel's default (8472) when none.
        port: Option<u16>,
        /// Name of the underlying device.
        device: Option<String>,
    },
    /// A macvlan on a parent link (`type macvlan`).
    Macvlan {
        /// Name of the parent link.
        parent: String,
        /// How macvlans on the same parent reach each other.
        mode: MacvlanMode,
    },
    /// A dummy link (`type dummy`).
    Dummy,
    /// An 802.1Q vlan on a parent link (`type vlan`).
    Vlan {
        /// Name of the parent link.
        parent: String,
        /// The vlan id.
        id: u16,
    },
    /// A kernel WireGuard link (`type wireguard`).
    Wireguard,
}

impl LinkSpec {
    /// The link this one is built on: a vxlan's device, a macvlan's or a
    /// vlan's parent.
    pub fn lower(&self) -> Option<&str> {
        match self {
            LinkSpec::Vxlan { device, .. } => device.as_deref(),
            LinkSpec::Macvlan { parent, .. } | LinkSpec::Vlan { parent, .. } => Some(parent),
            _ => None,
        }
    }

    /// The kernel's kind name, as `ip -d link` shows it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            LinkSpec::Bridge => "bridge",
            LinkSpec::Veth { .. } => "veth",
            LinkSpec::Vxlan { .. } => "vxlan",
            LinkSpec::Macvlan { .. } => "macvlan",
            LinkSpec::Dummy => "dummy",
            LinkSpec::Vlan { .. } => "vlan",
            LinkSpec::Wireguard => "wireguard",
        }
    }
}

/// The mode of a macvlan link (`ip link add ... type macvlan mode MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MacvlanMode {
    /// Macvlans on the same parent talk to each other directly.
    #[default]
    Bridge,
    /// Macvlans on the same parent cannot talk to each other.
    Private,
    /// Traffic between macvlans goes out to the external switch.
    Vepa,
    /// One macvlan takes over the parent.
    Passthru,
}

/// Attributes common to every link; `None` leaves an attribute as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkSettings {
    /// The link's MTU.
    pub mtu: Option<u32>,
    /// Whether the link is administratively up.
    pub up: Option<bool>,
    /// Name of the bridge the link is enslaved to.
    pub master: Option<String>,
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// The link's name.
    pub name: String,
    /// The link's index in its namespace.
    pub index: u32,
    /// The kernel's kind name (`bridge`, `veth`, ...); none for plain devices like `lo`.
    pub kind: Option<String>,
    /// The link's MTU.
    pub mtu: u32,
    /// Whether the link is administratively up.
    pub up: bool,
    /// Name of the link's master (bridge), if any.
    pub master: Option<String>,
    /// Hardware address as `aa:bb:cc:dd:ee:ff`, if the link has one.
    pub mac: Option<String>,
    /// The link's alias (IFLA_IFALIAS), which marks links hostaction created.
    pub alias: Option<String>,
}

/// A route in the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network; `None` is the default route.
    pub destination: Option<IpNetwork>,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output device name, if any.
    pub device: Option<String>,
    /// Route metric (priority); the kernel's default when none.
    pub metric: Option<u32>,
}

/// How one backend call runs: where, until when, and what it may change.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The namespace the call works in.
    pub ns: Netns<'a>,
    /// When the call gives up with `Timeout`.
    pub deadline: Instant,
    /// Plan mode: every read is real, nothing is changed, and the result says
    /// what would have changed.
    pub dry_run: bool,
    /// Only links marked as hostaction's (alias [`super::scope::OWNED_ALIAS`])
    /// may be changed or deleted, or get addresses and routes.
    pub owned_only: bool,
}

impl<'a> Call<'a> {
    /// A call in `ns` that changes what it must, with no ownership rule.
    pub fn apply(ns: Netns<'a>, deadline: Instant) -> Self {
        Call {
            ns,
            deadline,
            dry_run: false,
            owned_only: false,
        }
    }
}

/// Where a call runs: the process's own namespace, or a namespace file (e.g.
/// `<host-root>/var/run/netns/NAME`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Netns<'a>(pub Option<&'a Path>);

impl fmt::Display for Netns<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "network namespace {}", p.display()),
            None => f.write_str("this process's network namespace"),
        }
    }
}

/// Runs `call` with a netlink handle in `ns`, on a dedicated thread with its
/// own current-thread runtime, and gives up at `deadline`.
///
/// A dedicated thread, because `setns` changes the calling thread: the
/// caller's thread (a wasmtime store's) must never change namespace.
fn in_netns<T, F, Fut>(ns: Netns<'_>, deadline: Instant, call: F) -> Result<T, CapError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, CapError>>,
{
    if Instant::now() >= deadline {
        return Err(CapError::Timeout(format!(
            "the deadline passed before the netlink call in {ns}"
        )));
    }
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("hostaction-netlink".into())
            .spawn_scoped(scope, move || -> Result<T, CapError> {
                if let Some(path) = ns.0 {
                    enter_netns(path)?;
                }
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| CapError::Io(format!("netlink runtime: {e}")))?;
                runtime.block_on(async move {
                    let until = tokio::time::Instant::from_std(deadline);
                    tokio::time::timeout_at(until, async move {
                        let handle = connect()?;
                        call(handle).await
                    })
                    .await
                    .map_err(|_| {
                        CapError::Timeout(format!("the netlink call in {ns} passed its deadline"))
                    })?
                })
            })
            .map_err(|e| CapError::Io(format!("cannot start the netlink thread: {e}")))?;
        worker
            .join()
            .map_err(|_| CapError::Io("the netlink thread panicked".into()))?
    })
}

/// Opens a netlink connection in the calling thread's current namespace and
/// drives it on the current runtime; the socket stays in that namespace.
fn connect() -> Result<Handle, CapError> {
    let (connection, handle, _) = rtnetlink::new_connection()
        .map_err(|e| CapError::Io(format!("cannot open a netlink socket: {e}")))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Opens a netlink connection inside the namespace file `path`, then moves the
/// calling (dedicated) thread back to the namespace it was in.
fn connect_in(path: &Path) -> Result<Handle, CapError> {
    let home = File::open("/proc/thread-self/ns/net")
        .map_err(|e| CapError::Io(format!("cannot open this thread's network namespace: {e}")))?;
    enter_netns(path)?;
    let handle = connect();
    rustix::thread::move_into_link_name_space(
        home.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| {
        CapError::Io(format!(
            "cannot return to the call's network namespace: {e}"
        ))
    })?;
    handle
}

/// `f_type` of nsfs, the filesystem of namespace files.
pub(crate) const NSFS_MAGIC: i64 = 0x6e73_6673;

/// This process's own network namespace: a handle the runtime trusts.
pub const PROCESS_NETNS: &str = "/proc/self/ns/net";

/// Opens the namespace file `path` for `setns`, only if it is one.
///
/// A named namespace is looked at before it is opened: never through a
/// symlink (`O_NOFOLLOW`), and only a file of nsfs is opened for reading, so
/// a FIFO, a device or a regular file planted in the namespace directory
/// neither blocks nor has effects. Paths under `/proc/self/` are handles the
/// runtime holds (a namespace it opened and checked, or its own) and are
/// followed.
pub fn open_netns(path: &Path) -> Result<OwnedFd, CapError> {
    let not_netns = || CapError::NotFound(format!("{} is not a network namespace", path.display()));
    if path.starts_with("/proc/self/") {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| CapError::NotFound(format!("{}: {e}", path.display())))?;
        return match rustix::fs::fstatfs(&fd) {
            Ok(st) if st.f_type == NSFS_MAGIC => Ok(fd),
            _ => Err(not_netns()),
        };
    }
    let flags = OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let probe = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
        Errno::NOENT => CapError::NotFound(format!(
            "network namespace {} does not exist",
            path.display()
        )),
        e => CapError::Io(format!(
            "cannot open network namespace {}: {e}",
            path.display()
        )),
    })?;
    match rustix::fs::fstatfs(&probe) {
        Ok(st) if st.f_type == NSFS_MAGIC => {}
        _ => return Err(not_netns()),
    }
    rustix::fs::open(
        format!("/proc/self/fd/{}", probe.as_raw_fd()),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| CapError::Io(format!("cannot open {}: {e}", path.display())))
}

/// Whether two namespace handles are the same namespace.
pub fn same_netns(a: impl AsFd, b: impl AsFd) -> Result<bool, CapError> {
    let id = |fd: BorrowedFd<'_>| {
        rustix::fs::fstat(fd)
            .map(|st| (st.st_dev, st.st_ino))
            .map_err(|e| CapError::Io(format!("cannot stat a network namespace: {e}")))
    };
    Ok(id(a.as_fd())? == id(b.as_fd())?)
}

/// Whether the namespace file `path` is the namespace the calling thread is in.
fn is_current_netns(path: &Path) -> Result<bool, CapError> {
    let current = File::open("/proc/thread-self/ns/net")
        .map_err(|e| CapError::Io(format!("cannot open this thread's network namespace: {e}")))?;
    same_netns(open_netns(path)?, current)
}

/// Moves the calling thread into the network namespace file `path` (`setns`).
fn enter_netns(path: &Path) -> Result<(), CapError> {
    let file = open_netns(path)?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| {
        if e == Errno::INVAL {
            CapError::NotFound(format!("{} is not a network namespace", path.display()))
        } else {
            CapError::Io(format!(
                "cannot enter network namespace {}: {e}{}",
                path.display(),
                netns::needs_sys_admin(e)
            ))
        }
    })
}

/// The errno of a netlink error reply, if `err` is one.
fn errno(err: &rtnetlink::Error) -> Option<Errno> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg
            .code
            .map(|code| Errno::from_raw_os_error(code.get().saturating_neg())),
        _ => None,
    }
}

/// Maps a netlink failure of `what` to a [`CapError`]; `kind` names the link
/// kind for `Unsupported`, when the call creates a link.
fn nl_error(what: &str, kind: Option<&str>, err: &rtnetlink::Error) -> CapError {
    match errno(err) {
        Some(e) if e == Errno::OPNOTSUPP => match kind {
            Some(kind) => CapError::Unsupported(format!(
                "{what}: this kernel does not support links of type {kind}"
            )),
            None => CapError::Unsupported(format!("{what}: operation not supported")),
        },
        Some(e) if e == Errno::EXIST => CapError::Conflict(format!("{what}: already exists")),
        Some(e) if e == Errno::NODEV || e == Errno::NOENT || e == Errno::SRCH => {
            CapError::NotFound(format!("{what}: no such object"))
        }
        Some(e) if e == Errno::INVAL || e == Errno::RANGE => {
            CapError::InvalidArgument(format!("{what}: the kernel refused the request ({e})"))
        }
        Some(e) => CapError::Io(format!("{what}: {e}")),
        None => CapError::Io(format!("{what}: {err}")),
    }
}

/// Refuses a link name the kernel would refuse, with a clear message.
fn check_ifname(name: &str) -> Result<(), CapError> {
    // Names come from guests through the capability: refuse them before any
    // netlink request is built, by the capability's own rules.
    super::scope::interface_name_problem(name)
        .map_or(Ok(()), |why| Err(CapError::InvalidArgument(why)))
}
