//! How much of a name pattern (`*`, `?`, as [`glob`] matches them) a list of
//! other patterns allows: the grant's interface, namespace and unit patterns
//! against the node policy's.
//!
//! Exact, not a guess from the patterns' text: both sides are turned into
//! automata over the characters they name (plus one character neither
//! names) and explored together, breadth first, until a name only the
//! pattern matches and a name both match are found, or every state has been
//! seen. The example names found are checked again with the engine's own
//! [`glob`]; if one ever disagreed, the answer would be [`Coverage::Undecided`]
//! rather than a wrong claim.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};

use hostaction_runtime::grant::glob;

/// Work allowed for one comparison (pattern positions stepped over): far
/// more than real patterns need (a few hundred), and a bound on what 64
/// patterns of 256 bytes could make it cost.
pub const MAX_STEPS: usize = 2_000_000;

/// Work allowed for all the comparisons of one inspect together (a few
/// seconds): a grant and a policy of 64 hostile patterns each ask for
/// thousands of comparisons (each of the grant's against each of the
/// policy's), which at [`MAX_STEPS`] each would take an hour.
pub const MAX_TOTAL_STEPS: usize = 20_000_000;

thread_local! {
    /// Steps left to the comparisons run inside [`with_budget`] on this
    /// thread (outside it, each comparison has [`MAX_STEPS`]).
    static LEFT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Runs `f` with at most `steps` steps for all its comparisons; the ones
/// left when they are spent are [`Coverage::Undecided`].
pub fn with_budget<R>(steps: usize, f: impl FnOnce() -> R) -> R {
    let before = LEFT.with(|l| l.replace(steps));
    let out = f();
    LEFT.with(|l| l.set(before));
    out
}

/// How much of `pattern` the `others` allow: a name (never empty) is allowed
/// when one of `others` matches it too. Spends the steps it took from the
/// budget of [`with_budget`].
pub fn coverage(pattern: &str, others: &[&str]) -> Coverage {
    let left = LEFT.with(Cell::get);
    let mut steps = 0;
    let answer = explore(pattern, others, MAX_STEPS.min(left), &mut steps);
    LEFT.with(|l| l.set(left.saturating_sub(steps)));
    answer
}

/// What the other patterns leave of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    /// Every name the pattern matches, one of the others matches too.
    Covered,
    /// Some names only the pattern matches (`refused`), some both (`kept`).
    Partly {
        /// A name both match.
        kept: String,
        /// A name the pattern matches and none of the others does.
        refused: String,
    },
    /// No name the pattern matches is matched by any of the others.
    Nothing {
        /// A name the pattern matches (when it matches any).
        refused: Option<String>,
    },
    /// Not decided within [`MAX_STEPS`].
    Undecided,
}

/// One pattern as an automaton: its characters, and whether its wildcards
/// may match `\` ([`glob`] lets a wildcard match a systemd escape only when
/// the pattern itself has one).
struct Pattern {
    chars: Vec<char>,
    backslash: bool,
}

impl Pattern {
    fn new(text: &str) -> Self {
        Self {
            chars: text.chars().collect(),
            backslash: text.contains('\\'),
        }
    }

    /// Adds the positions reachable by letting `*` match nothing.
    fn close(&self, states: &mut Vec<usize>) {
        let mut i = 0;
        while let Some(&j) = states.get(i) {
            if self.chars.get(j) == Some(&'*') && !states.contains(&(j + 1)) {
                states.push(j + 1);
            }
            i += 1;
        }
        states.sort_unstable();
        states.dedup();
    }

    /// The positions after reading `c` at position `j`.
    fn step(&self, j: usize, c: char, out: &mut Vec<usize>) {
        match self.chars.get(j) {
            Some('*') if c != '\\' || self.backslash => out.push(j),
            Some('?') if c != '\\' || self.backslash => out.push(j + 1),
            Some(&l) if l == c && l != '*' && l != '?' => out.push(j + 1),
            _ => {}
        }
    }

    fn accepts(&self, states: &[usize]) -> bool {
        states.contains(&self.chars.len())
    }
}

/// A state of the joint automaton: whether a character has been read (no
/// name is empty: the engine refuses empty names before matching), the
/// pattern's positions, and each other pattern's (by index).
type State = (bool, Vec<usize>, Vec<(usize, usize)>);

/// [`coverage`] within `limit` steps, counted in `steps`.
fn explore(pattern: &str, others: &[&str], limit: usize, steps: &mut usize) -> Coverage {
    let me = Pattern::new(pattern);
    let them: Vec<Pattern> = others.iter().map(|o| Pattern::new(o)).collect();
    let alphabet = alphabet(std::iter::once(pattern).chain(others.iter().copied()));

    let mut start_me = vec![0];
    me.close(&mut start_me);
    let mut start_them = Vec::new();
    for (k, p) in them.iter().enumerate() {
        let mut s = vec![0];
        p.close(&mut s);
        start_them.extend(s.into_iter().map(|j| (k, j)));
    }
    // Each state seen, with the state and character it was reached from.
    let mut seen: HashMap<State, Option<(State, char)>> = HashMap::new();
    let mut queue = VecDeque::new();
    let start: State = (false, start_me, start_them);
    seen.insert(start.clone(), None);
    queue.push_back(start);
    let (mut kept, mut refused) = (None, None);
    while let Some(state) = queue.pop_front() {
        if state.0 && me.accepts(&state.1) {
            let allowed = state.2.iter().any(|&(k, j)| j == them[k].chars.len());
            let slot = if allowed { &mut kept } else { &mut refused };
            if slot.is_none() {
                *slot = Some(word(&seen, &state));
            }
            if kept.is_some() && refused.is_some() {
                break;
            }
        }
        for &c in &alphabet {
            *steps += state.1.len() + state.2.len() + 1;
            if *steps > limit {
                return Coverage::Undecided;
            }
            let mut next_me = Vec::new();
            for &j in &state.1 {
                me.step(j, c, &mut next_me);
            }
            if next_me.is_empty() {
                continue;
            }
            me.close(&mut next_me);
            let mut next_them = Vec::new();
            for &(k, j) in &state.2 {
                let mut s = Vec::new();
                them[k].step(j, c, &mut s);
                them[k].close(&mut s);
                next_them.extend(s.into_iter().map(|j| (k, j)));
            }
            next_them.sort_unstable();
            next_them.dedup();
            let next = (true, next_me, next_them);
            if !seen.contains_key(&next) {
                seen.insert(next.clone(), Some((state.clone(), c)));
                queue.push_back(next);
            }
        }
    }
    let matched = |name: &str| others.iter().any(|o| glob(o, name));
    // Each example is checked with the engine's matcher before it is shown.
    match (kept, refused) {
        (_, None) => Coverage::Covered,
        (None, Some(r)) if glob(pattern, &r) && !matched(&r) => {
            Coverage::Nothing { refused: Some(r) }
        }
        (Some(k), Some(r))
            if glob(pattern, &k) && matched(&k) && glob(pattern, &r) && !matched(&r) =>
        {
            Coverage::Partly {
                kept: k,
                refused: r,
            }
        }
        _ => Coverage::Undecided,
    }
}

/// One character the patterns do not name (standing for all the others,
/// first, so examples favour it), never a wildcard nor `\`; then the
/// characters they name.
fn alphabet<'a>(patterns: impl Iterator<Item = &'a str>) -> Vec<char> {
    let mut chars: Vec<char> = patterns
        .flat_map(str::chars)
        .filter(|&c| c != '*' && c != '?')
        .collect();
    chars.sort_unstable();
    chars.dedup();
    let other = ('a'..='z')
        .chain('0'..='9')
        .chain((0x100..=0x10ffff).filter_map(char::from_u32))
        .find(|c| !chars.contains(c));
    other.into_iter().chain(chars).collect()
}

/// The characters read from the start to `state`.
fn word(seen: &HashMap<State, Option<(State, char)>>, state: &State) -> String {
    let mut out = Vec::new();
    let mut at = state;
    while let Some(Some((from, c))) = seen.get(at) {
        out.push(*c);
        at = from;
    }
    out.iter().rev().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_pattern_inside_a_wider_one_is_covered() {
        assert_eq!(coverage("vx-*", &["*"]), Coverage::Covered);
        assert_eq!(coverage("vx-*", &["vx*"]), Coverage::Covered);
        assert_eq!(coverage("vx-blue", &["br-*", "vx-???e"]), Coverage::Covered);
        assert_eq!(coverage("a?", &["a*"]), Coverage::Covered);
        // Together, not one alone: `a*` is `a` plus `a?*`.
        assert_eq!(coverage("a*", &["a", "a?*"]), Coverage::Covered);
    }

    #[test]
    fn a_wider_pattern_is_partly_taken_with_examples_the_engine_agrees_on() {
        let Coverage::Partly { kept, refused } = coverage("*", &["vx-*", "br-*"]) else {
            panic!("not partly");
        };
        assert!(glob("vx-*", &kept) || glob("br-*", &kept), "{kept}");
        assert!(
            !glob("vx-*", &refused) && !glob("br-*", &refused),
            "{refused}"
        );
        // `?` is one character, `*` any run: `a*` is wider than `a?`.
        assert!(matches!(coverage("a*", &["a?"]), Coverage::Partly { .. }));
    }

    #[test]
    fn disjoint_patterns_leave_nothing() {
        assert_eq!(
            coverage("eth*", &["vx-*"]),
            Coverage::Nothing {
                refused: Some("eth".into())
            }
        );
        // Names are never empty: `*` against `?*` is covered, and examples
        // have a character.
        assert_eq!(coverage("*", &["?*"]), Coverage::Covered);
        assert_eq!(
            coverage("*", &["vx-*"]),
            Coverage::Partly {
                kept: "vx-".into(),
                refused: "a".into()
            }
        );
        assert_eq!(
            coverage("x", &[]),
            Coverage::Nothing {
                refused: Some("x".into())
            }
        );
    }

    #[test]
    fn comparisons_share_one_budget() {
        let hostile = format!("*a{}", "?".repeat(200));
        // Alone, a comparison is still decided; once the budget is spent,
        // every later one is undecided, however easy.
        with_budget(1_000, || {
            assert_eq!(coverage(&hostile, &["*"]), Coverage::Undecided);
            assert_eq!(coverage("a", &["*"]), Coverage::Undecided);
        });
        assert_eq!(coverage("a", &["*"]), Coverage::Covered);
    }

    #[test]
    fn systemd_escapes_are_only_matched_where_the_pattern_spells_one() {
        // glob: `modprobe@*.service` does not match `modprobe@\x2e.service`,
        // so a grant with an escape is not covered by a policy without one.
        assert!(matches!(
            coverage("modprobe@\\x2d*.service", &["modprobe@*.service"]),
            Coverage::Nothing { .. }
        ));
        assert_eq!(
            coverage("modprobe@*.service", &["modprobe@*.service"]),
            Coverage::Covered
        );
        assert!(matches!(
            coverage("a\\*", &["a\\x*"]),
            Coverage::Partly { .. }
        ));
    }

    #[test]
    fn every_answer_agrees_with_the_engine_on_short_names() {
        let patterns = [
            "*", "a*", "*a", "a?", "?", "a*b", "ab", "*b*", "a\\*", "??*",
        ];
        // Every name of 1 to 3 characters over a, b, \ and one other.
        let mut names = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = names
                .iter()
                .flat_map(|n| ['a', 'b', '\\', 'z'].map(|c| format!("{n}{c}")))
                .collect();
            names.extend(longer);
        }
        names.retain(|n| !n.is_empty());
        names.sort();
        names.dedup();
        for g in patterns {
            for others in [&["a*"][..], &["*b", "a"], &["?"], &[], &["a\\*", "b*"]] {
                let both = names
                    .iter()
                    .any(|n| glob(g, n) && others.iter().any(|o| glob(o, n)));
                let only = names
                    .iter()
                    .any(|n| glob(g, n) && !others.iter().any(|o| glob(o, n)));
                match coverage(g, others) {
                    Coverage::Covered => assert!(!only, "{g} {others:?}"),
                    Coverage::Partly { .. } => {}
                    Coverage::Nothing { .. } => assert!(!both, "{g} {others:?}"),
                    Coverage::Undecided => panic!("{g} {others:?} undecided"),
                }
                if only && both {
                    assert!(
                        matches!(coverage(g, others), Coverage::Partly { .. }),
                        "{g} {others:?}"
                    );
                }
            }
        }
    }
}
