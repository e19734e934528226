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

/// The MTU the kernel gives a veth's peer made without one (Ethernet's).
const VETH_PEER_MTU: u32 = 1500;

/// What a plan-mode run recorded as made.
#[derive(Debug, Default)]
pub struct Planned {
    netns: BTreeSet<String>,
    links: BTreeMap<(Ns, String), Link>,
    /// (namespace, device, what): addresses and routes on planned links.
    on_links: BTreeSet<(Ns, String, String)>,
    /// What the above hold, as [`Planned::bytes`] counts it.
    bytes: usize,
}

/// What each planned namespace, link, address or route costs besides its
/// names: the map entry and its allocations.
const ENTRY_OVERHEAD: usize = 128;
/// Room counted for a link's kind and master, whatever they are now (both
/// are short: a kind name, an interface name).
const LINK_FIELDS: usize = 32;

fn ns_len(ns: &Ns) -> usize {
    ns.as_ref().map_or(0, String::len)
}

fn link_cost((ns, name): &(Ns, String)) -> usize {
    ns_len(ns) + name.len() + LINK_FIELDS + ENTRY_OVERHEAD
}

fn on_link_cost((ns, device, what): &(Ns, String, String)) -> usize {
    ns_len(ns) + device.len() + what.len() + ENTRY_OVERHEAD
}

impl Planned {
    /// The memory the plan holds, by its names plus a fixed overhead per
    /// entry: what the run's plan budget is charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

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

    /// A planned link, as the plan has it so far.
    pub fn link(&self, ns: &Ns, name: &str) -> Option<&Link> {
        self.links.get(&(ns.clone(), name.to_owned()))
    }

    /// Whether a call on `ns` and `name` must be answered from the plan.
    pub fn covers(&self, ns: &Ns, name: &str) -> bool {
        self.in_planned_ns(ns) || self.has_link(ns, name)
    }

    /// Records a namespace; false when it was already planned.
    pub fn add_netns(&mut self, name: &str) -> bool {
        let added = self.netns.insert(name.to_owned());
        if added {
            self.bytes += name.len() + ENTRY_OVERHEAD;
        }
        added
    }

    /// Forgets a planned namespace and everything in it; false when it was
    /// not planned.
    pub fn remove_netns(&mut self, name: &str) -> bool {
        let ns = Some(name.to_owned());
        let mut freed = 0;
        self.links.retain(|key, _| {
            let keep = key.0 != ns;
            if !keep {
                freed += link_cost(key);
            }
            keep
        });
        self.on_links.retain(|key| {
            let keep = key.0 != ns;
            if !keep {
                freed += on_link_cost(key);
            }
            keep
        });
        let removed = self.netns.remove(name);
        if removed {
            freed += name.len() + ENTRY_OVERHEAD;
        }
        self.bytes = self.bytes.saturating_sub(freed);
        removed
    }

    /// Records `link` (made — `created` says how —, or brought to these
    /// settings), and a veth's peer (its namespace and name) with it; returns
    /// what that changes, empty when the plan already has it so.
    pub fn ensure_link(
        &mut self,
        ns: &Ns,
        name: &str,
        want: Link,
        created: &str,
        peer: Option<(Ns, String)>,
    ) -> Vec<String> {
        if let Some(key) = peer {
            let cost = link_cost(&key);
            if let std::collections::btree_map::Entry::Vacant(entry) = self.links.entry(key) {
                // As the kernel makes a peer: down, at Ethernet's MTU (the
                // settings asked are set on the link, not on its peer).
                entry.insert(Link {
                    kind: "veth".into(),
                    mtu: Some(VETH_PEER_MTU),
                    up: Some(false),
                    master: None,
                });
                self.bytes += cost;
            }
        }
        let key = (ns.clone(), name.to_owned());
        let mut changes = Vec::new();
        let have = match self.links.get_mut(&key) {
            Some(have) => have,
            None => {
                changes.push(created.to_owned());
                self.bytes += link_cost(&key);
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
        let mut freed = 0;
        self.on_links.retain(|key| {
            let keep = !(key.0 == *ns && key.1 == name);
            if !keep {
                freed += on_link_cost(key);
            }
            keep
        });
        let key = (ns.clone(), name.to_owned());
        let removed = self.links.remove(&key).is_some();
        if removed {
            freed += link_cost(&key);
        }
        self.bytes = self.bytes.saturating_sub(freed);
        removed
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
        let cost = on_link_cost(&key);
        if add {
            let added = self.on_links.insert(key);
            if added {
                self.bytes += cost;
            }
            added
        } else {
            let removed = self.on_links.remove(&key);
            if removed {
                self.bytes = self.bytes.saturating_sub(cost);
            }
            removed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_counts_what_it_holds_and_frees_what_it_forgets() {
        let mut plan = Planned::default();
        let ns = Some("blue".to_owned());
        assert!(plan.add_netns("blue"));
        assert!(!plan.add_netns("blue"));
        let one_ns = plan.bytes();
        assert!(one_ns >= ENTRY_OVERHEAD);
        let want = Link {
            kind: "veth".into(),
            ..Link::default()
        };
        plan.ensure_link(
            &ns,
            "a",
            want.clone(),
            "create veth",
            Some((None, "b".into())),
        );
        let with_links = plan.bytes();
        // "blue" + "a", and the peer "b" in the host namespace.
        assert_eq!(
            with_links,
            one_ns + 2 * (LINK_FIELDS + ENTRY_OVERHEAD) + 4 + 1 + 1
        );
        // The same link again holds nothing more.
        plan.ensure_link(&ns, "a", want, "create veth", None);
        assert_eq!(plan.bytes(), with_links);
        assert!(plan.on_link(&ns, "a", "10.0.0.1/24".into(), true));
        assert!(!plan.on_link(&ns, "a", "10.0.0.1/24".into(), true));
        assert!(plan.bytes() > with_links);
        assert!(plan.remove_link(&None, "b"));
        assert!(plan.remove_netns("blue"));
        assert_eq!(plan.bytes(), 0);
    }

    #[test]
    fn empty_names_are_not_free() {
        let mut plan = Planned::default();
        for i in 0..100 {
            plan.on_link(&None, "", i.to_string(), true);
        }
        assert!(plan.bytes() >= 100 * ENTRY_OVERHEAD);
    }
}
