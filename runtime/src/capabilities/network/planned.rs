//! Plan mode's memory of what a run would have made: namespaces, links (with
//! their settings) and addresses and routes on them. Calls that build on
//! something only planned are answered from here, without the kernel, and
//! answer as a real run would (a second identical call changes nothing).

use std::collections::{BTreeMap, BTreeSet};

/// A namespace as calls name it: `None` is the host's own.
pub type Ns = Option<String>;

/// A planned link.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub kind: String,
    pub mtu: Option<u32>,
    pub up: Option<bool>,
    pub master: Option<String>,
}

/// What a plan-mode run recorded as made.
#[derive(Debug, Default)]
pub struct Planned {
    netns: BTreeSet<String>,
    links: BTreeMap<(Ns, String), Link>,
    /// (namespace, device, what): addresses and routes on planned links.
    on_links: BTreeSet<(Ns, String, String)>,
}

impl Planned {
    /// Whether the named namespace is only planned.
    pub fn has_netns(&self, name: &str) -> bool {
        self.netns.contains(name)
    }

    /// The planned namespaces.
    pub fn netns_names(&self) -> impl Iterator<Item = &String> {
        self.netns.iter()
    }

    /// Whether `ns` is only planned (its links then are too).
    pub fn in_planned_ns(&self, ns: &Ns) -> bool {
        ns.as_deref().is_some_and(|n| self.has_netns(n))
    }

    /// Whether the link is only planned (made by an earlier call of this run).
    pub fn has_link(&self, ns: &Ns, name: &str) -> bool {
        self.links.contains_key(&(ns.clone(), name.to_owned()))
    }

    /// Whether a call on `ns` and `name` must be answered from the plan.
    pub fn covers(&self, ns: &Ns, name: &str) -> bool {
        self.in_planned_ns(ns) || self.has_link(ns, name)
    }

    /// Records a namespace; false when it was already planned.
    pub fn add_netns(&mut self, name: &str) -> bool {
        self.netns.insert(name.to_owned())
    }

    /// Forgets a planned namespace and everything in it; false when it was
    /// not planned.
    pub fn remove_netns(&mut self, name: &str) -> bool {
        let ns = Some(name.to_owned());
        self.links.retain(|(n, _), _| *n != ns);
        self.on_links.retain(|(n, _, _)| *n != ns);
        self.netns.remove(name)
    }

    /// Records `link` (made, or brought to these settings), and a veth's
    /// peer (its namespace and name) with it; returns what that changes,
    /// empty when the plan already has it so.
    pub fn ensure_link(
        &mut self,
        ns: &Ns,
        name: &str,
        want: Link,
        peer: Option<(Ns, String)>,
    ) -> Vec<String> {
        if let Some(key) = peer {
            self.links.entry(key).or_insert_with(|| Link {
                kind: "veth".into(),
                ..Link::default()
            });
        }
        let key = (ns.clone(), name.to_owned());
        let mut changes = Vec::new();
        let have = match self.links.get_mut(&key) {
            Some(have) => have,
            None => {
                changes.push(format!("create {}", want.kind));
                self.links.entry(key).or_insert_with(|| Link {
                    kind: want.kind.clone(),
                    ..Link::default()
                })
            }
        };
        if let Some(mtu) = want.mtu.filter(|m| have.mtu != Some(*m)) {
            have.mtu = Some(mtu);
            changes.push(format!("mtu {mtu}"));
        }
        if let Some(master) = want.master.filter(|m| have.master.as_ref() != Some(m)) {
            changes.push(format!("master {master}"));
            have.master = Some(master);
        }
        if let Some(up) = want.up.filter(|u| have.up.unwrap_or(false) != *u) {
            have.up = Some(up);
            changes.push(if up { "up" } else { "down" }.to_owned());
        }
        changes
    }

    /// Forgets a planned link; false when it was not planned.
    pub fn remove_link(&mut self, ns: &Ns, name: &str) -> bool {
        self.on_links
            .retain(|(n, dev, _)| !(n == ns && dev == name));
        self.links.remove(&(ns.clone(), name.to_owned())).is_some()
    }

    /// The planned links of a namespace.
    pub fn links_in(&self, ns: &Ns) -> impl Iterator<Item = (&String, &Link)> {
        self.links
            .iter()
            .filter(move |((n, _), _)| n == ns)
            .map(|((_, name), link)| (name, link))
    }

    /// Records (`add`) or forgets an address or route on a planned link;
    /// returns whether that changes the plan.
    pub fn on_link(&mut self, ns: &Ns, device: &str, what: String, add: bool) -> bool {
        let key = (ns.clone(), device.to_owned(), what);
        if add {
            self.on_links.insert(key)
        } else {
            self.on_links.remove(&key)
        }
    }
}
