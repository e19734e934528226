//! The network capability: links, addresses, routes and named network
//! namespaces. So far the host backend ([`netlink`]) and the guest-input and
//! grant-scope checks ([`scope`]); the WIT `network` interface is not linked
//! yet, so a component importing it is still refused at load.

pub mod netlink;
pub mod scope;
