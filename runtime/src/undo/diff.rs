//! The diff an effect carries: a unified diff for text, sizes and digests
//! for binary contents, `before → after` for attributes. Each is capped at
//! [`MAX_DIFF_BYTES`] (and charged to the run's effects budget with its
//! effect).

use super::files::{digest, short};

/// Longest diff one effect carries; past it the diff is cut and says so.
pub const MAX_DIFF_BYTES: usize = 4 << 10;
/// Largest side a unified diff is computed for (diffing costs time in the
/// run); bigger contents get sizes and digests.
pub const MAX_TEXT_DIFF_INPUT: usize = 64 << 10;

/// The diff of a file's contents and mode: unified when both sides are
/// UTF-8 text, else sizes and digests.
pub fn contents(path: &str, before: Option<(&[u8], u32)>, after: Option<(&[u8], u32)>) -> String {
    let mode = |side: Option<(&[u8], u32)>| side.map(|(_, m)| format!("{m:04o}"));
    let mut out = String::new();
    if mode(before) != mode(after) {
        out.push_str(&format!(
            "mode {} → {}\n",
            mode(before).unwrap_or_else(|| "none".into()),
            mode(after).unwrap_or_else(|| "none".into())
        ));
    }
    let (old, new) = (
        before.map_or(&[][..], |b| b.0),
        after.map_or(&[][..], |a| a.0),
    );
    if before.is_some() && after.is_some() && old == new {
        return cap(out);
    }
    match (std::str::from_utf8(old), std::str::from_utf8(new)) {
        (Ok(old_text), Ok(new_text))
            if old.len().max(new.len()) <= MAX_TEXT_DIFF_INPUT
                && !old_text.contains('\0')
                && !new_text.contains('\0') =>
        {
            let (a, b) = (
                if before.is_some() {
                    format!("a{path}")
                } else {
                    "/dev/null".into()
                },
                if after.is_some() {
                    format!("b{path}")
                } else {
                    "/dev/null".into()
                },
            );
            let diff = similar::TextDiff::from_lines(old_text, new_text);
            out.push_str(
                &diff
                    .unified_diff()
                    .context_radius(3)
                    .header(&a, &b)
                    .to_string(),
            );
        }
        _ => {
            let side = |s: Option<(&[u8], u32)>| match s {
                None => "none".to_owned(),
                Some((bytes, _)) => format!("{} bytes {}", bytes.len(), short(&digest(bytes))),
            };
            out.push_str(&format!("binary: {} → {}\n", side(before), side(after)));
        }
    }
    cap(out)
}

/// `what before → after`, for attributes.
pub fn attribute(
    what: &str,
    before: impl std::fmt::Display,
    after: impl std::fmt::Display,
) -> String {
    format!("{what} {before} → {after}")
}

/// Cuts a diff at [`MAX_DIFF_BYTES`] (on a character boundary) and says so.
pub fn cap(mut diff: String) -> String {
    if diff.len() <= MAX_DIFF_BYTES {
        return diff;
    }
    let total = diff.len();
    let mut at = MAX_DIFF_BYTES;
    while !diff.is_char_boundary(at) {
        at -= 1;
    }
    diff.truncate(at);
    diff.push_str(&format!("\n[diff cut: {} of {total} bytes shown]\n", at));
    diff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_a_unified_diff_and_binary_is_sizes_and_digests() {
        let d = contents(
            "/etc/x.conf",
            Some((b"a\nb\n", 0o644)),
            Some((b"a\nc\n", 0o644)),
        );
        assert!(
            d.contains("--- a/etc/x.conf") && d.contains("-b\n") && d.contains("+c\n"),
            "{d}"
        );
        let d = contents("/x", None, Some((b"hi\n", 0o755)));
        assert!(
            d.starts_with("mode none → 0755\n") && d.contains("--- /dev/null"),
            "{d}"
        );
        let d = contents(
            "/bin/x",
            Some((b"\x7fELF\0", 0o755)),
            Some((b"\x7fELF\0\x01", 0o755)),
        );
        assert!(
            d.starts_with("binary: 5 bytes sha256:") && d.contains("→ 6 bytes"),
            "{d}"
        );
    }

    #[test]
    fn long_diffs_are_cut_and_say_so() {
        let big = "é".repeat(10_000);
        let d = contents("/x", None, Some((big.as_bytes(), 0o644)));
        assert!(
            d.len() < MAX_DIFF_BYTES + 100 && d.contains("[diff cut:"),
            "{}",
            d.len()
        );
    }
}
