//! Links the `hostaction` binary with packed relative relocations (DT_RELR,
//! `-z pack-relative-relocs`): a position-independent executable of this
//! size carries ~65 000 relative relocations, 1.5 MiB as RELA entries and
//! 18 KiB packed, which keeps the agent's image (images/, its budget 40 MiB
//! unpacked) within budget without a slower release profile. Only the link
//! of this binary changes: no dependency is rebuilt.
//!
//! glibc reads DT_RELR from 2.36 on, and the linker makes the binary require
//! it (`GLIBC_ABI_DT_RELR`), so the flag is passed only for a native build
//! on glibc 2.36 or newer; `HOSTACTION_PACK_RELATIVE_RELOCS=0` leaves it out
//! (a binary for hosts with an older glibc).

use std::process::Command;

/// The first glibc that applies DT_RELR relocations.
const GLIBC_WITH_RELR: (u32, u32) = (2, 36);

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=HOSTACTION_PACK_RELATIVE_RELOCS");
    if std::env::var("HOSTACTION_PACK_RELATIVE_RELOCS").as_deref() == Ok("0") {
        return;
    }
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let native = var("TARGET") == var("HOST");
    if !native || var("CARGO_CFG_TARGET_OS") != "linux" || var("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    if glibc_version().is_some_and(|version| version >= GLIBC_WITH_RELR) {
        println!("cargo:rustc-link-arg-bin=hostaction=-Wl,-z,pack-relative-relocs");
    }
}

/// This host's glibc, from `ldd --version` (its first line ends with it:
/// `ldd (Debian GLIBC 2.36-9+deb12u10) 2.36`); None when that is not glibc's.
fn glibc_version() -> Option<(u32, u32)> {
    let out = Command::new("ldd").arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let first = text.lines().next()?;
    if !first.contains("GLIBC") && !first.contains("GNU libc") {
        return None;
    }
    let (major, minor) = first.rsplit(' ').next()?.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}
