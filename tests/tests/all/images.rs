//! The container images the manifests run (images/*.Containerfile, built by
//! scripts/build-images.sh with Debian's buildah, no daemon, FROM scratch):
//! built with `--no-build` from the release binaries this `cargo test
//! --workspace` built, into a scratch directory, then checked as a node and
//! a registry see them: OCI layouts tagged with the workspace version, the
//! entrypoint the manifests rely on, the sizes within budget, a root
//! filesystem holding the stripped binary, exactly the libraries `ldd` names
//! and the CA bundle (the binary runs from it, and the agent pulls a module
//! with it — not without the bundle), no wasmtime in the controller; pushed
//! to a real registry (Debian's docker-registry on 127.0.0.1, plain HTTP)
//! and read back with skopeo.
//!
//! Needs root (buildah's chroot isolation; `chroot` to run the binaries)
//! and buildah, skopeo and umoci (scripts/install-test-deps.sh).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hostaction_tests::output_text as text;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hostaction_tests::registry::Registry;
use hostaction_tests::{hostaction_bin, workspace};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MIB: u64 = 1024 * 1024;
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{command:?}:\n{}", text(&out));
    out
}

/// The directory `cargo test --release` built the binaries in (target/).
fn target_dir() -> PathBuf {
    hostaction_bin()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .to_owned()
}

/// `scripts/build-images.sh --no-build ARGS` on the binaries of `target`.
fn build_images(target: &Path, args: &[&str]) -> Output {
    Command::new(workspace().join("scripts/build-images.sh"))
        .arg("--no-build")
        .args(args)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(algorithm).join(hex)
}

/// An OCI layout's manifest tagged VERSION: (its digest, the manifest, the
/// config, bytes a registry stores: manifest + config + layer blobs).
fn image(layout: &Path) -> (String, Value, Value, u64) {
    assert_eq!(
        read_json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = read_json(&layout.join("index.json"));
    let tagged: Vec<&Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["annotations"]["org.opencontainers.image.ref.name"] == VERSION)
        .collect();
    assert_eq!(tagged.len(), 1, "one manifest tagged {VERSION}: {index}");
    let digest = tagged[0]["digest"].as_str().unwrap().to_owned();
    let manifest_path = blob(layout, &digest);
    let manifest = read_json(&manifest_path);
    let config = read_json(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let mut stored = std::fs::metadata(&manifest_path).unwrap().len()
        + std::fs::metadata(blob(layout, manifest["config"]["digest"].as_str().unwrap()))
            .unwrap()
            .len();
    for layer in manifest["layers"].as_array().unwrap() {
        stored += std::fs::metadata(blob(layout, layer["digest"].as_str().unwrap()))
            .unwrap()
            .len();
    }
    (digest, manifest, config, stored)
}

/// The libraries `ldd` names for `binary` (absolute paths), as the image
/// must hold them.
fn ldd_libraries(binary: &Path) -> BTreeSet<String> {
    let out = run(Command::new("ldd").arg(binary));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some((*path).to_owned()),
                [path, ..] if path.starts_with('/') => Some((*path).to_owned()),
                _ => None,
            }
        })
        .collect()
}

/// Every regular file under `root`, as an absolute path inside it; panics on
/// anything that is neither a file nor a directory (no symlinks, devices).
fn files(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let kind = std::fs::symlink_metadata(&path).unwrap().file_type();
            if kind.is_dir() {
                walk(root, &path, out);
            } else {
                assert!(kind.is_file(), "{} is not a regular file", path.display());
                out.insert(format!("/{}", path.strip_prefix(root).unwrap().display()));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Both images built, checked, unpacked, run and pushed to a real registry.
#[test]
fn both_images_build_from_scratch_within_budget_and_push_to_a_registry() {
    let registry = Registry::plain();
    let out_dir = tempfile::tempdir().unwrap();
    let prefix = format!("{}/hostaction", registry.addr());
    let target = target_dir();
    let out = build_images(
        &target,
        &[
            "--out",
            out_dir.path().to_str().unwrap(),
            "--registry",
            &prefix,
            "--plain-http",
        ],
    );
    assert!(out.status.success(), "build-images.sh:\n{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let sizes = read_json(&out_dir.path().join("sizes.json"));

    for (name, budget_mib, entrypoint, user) in [
        ("hostaction", 40, "/hostaction", ""),
        (
            "hostaction-controller",
            25,
            "/hostaction-controller",
            "65532:65532",
        ),
    ] {
        let layout = out_dir.path().join(name);
        let (digest, manifest, config, stored) = image(&layout);

        // What the manifests rely on: the binary as the entrypoint (the
        // DaemonSet's args start with `agent`), the controller's user.
        assert_eq!(
            manifest["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(config["os"], "linux");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!([entrypoint])
        );
        assert!(config["config"]["Cmd"].is_null(), "{config}");
        assert_eq!(config["config"]["User"].as_str().unwrap_or(""), user);
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], name);
        assert_eq!(labels["org.opencontainers.image.version"], VERSION);
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        assert_eq!(
            manifest["layers"].as_array().unwrap().len(),
            1,
            "{manifest}"
        );

        // Sizes: printed, written, within budget; the compressed size is
        // what the layout stores.
        let entry = &sizes[name];
        let unpacked = entry["unpacked"].as_u64().unwrap();
        let compressed = entry["compressed"].as_u64().unwrap();
        assert_eq!(compressed, stored, "{name}: {entry}");
        assert_eq!(entry["budget"].as_u64().unwrap(), budget_mib * MIB);
        assert!(
            unpacked <= budget_mib * MIB,
            "{name} is {unpacked} bytes unpacked"
        );
        assert!(compressed < unpacked, "{name}: {entry}");
        assert!(
            stdout.contains(&format!("{name}:{VERSION} ")),
            "{name} size not printed:\n{stdout}"
        );

        // The root filesystem: the binary, exactly the libraries ldd names
        // for it, the CA bundle; nothing else.
        let rootfs = out_dir.path().join(format!("{name}-rootfs"));
        run(Command::new("umoci")
            .args(["raw", "unpack", "--image"])
            .arg(format!("{}:{VERSION}", layout.display()))
            .arg(&rootfs));
        let binary = target.join("release").join(name);
        let mut expected = ldd_libraries(&binary);
        expected.insert(entrypoint.to_owned());
        expected.insert(CA_BUNDLE.to_owned());
        assert_eq!(files(&rootfs), expected, "{name}'s root filesystem");
        for lib in ldd_libraries(&binary) {
            assert_eq!(
                std::fs::read(rootfs.join(&lib[1..])).unwrap(),
                std::fs::read(&lib).unwrap(),
                "{name}: {lib} is the host's"
            );
        }
        let shipped = std::fs::read(rootfs.join(&entrypoint[1..])).unwrap();
        assert!(
            (shipped.len() as u64) < std::fs::metadata(&binary).unwrap().len(),
            "{name} is stripped"
        );
        let sections = run(Command::new("readelf")
            .arg("-SW")
            .arg(rootfs.join(&entrypoint[1..])));
        assert!(
            !String::from_utf8_lossy(&sections.stdout).contains(".symtab"),
            "{name} keeps its symbol table"
        );
        // The binary runs from the image's root alone (its loader and
        // libraries are all there).
        let ran = run(Command::new("chroot")
            .arg(&rootfs)
            .args([entrypoint, "--version"]));
        assert_eq!(
            String::from_utf8_lossy(&ran.stdout).trim(),
            format!("{name} {VERSION}")
        );
        if name == "hostaction" {
            agent_pulls_from_its_root(&rootfs, registry.addr());
        }
        // The controller carries no wasmtime; the agent does (the check
        // looks for the right thing).
        assert_eq!(
            contains(&shipped, b"wasmtime"),
            name == "hostaction",
            "{name}: wasmtime in the binary"
        );

        // Pushed: the registry serves the same manifest and config.
        let reference = format!("docker://{prefix}/{name}:{VERSION}");
        let inspect = run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &reference,
        ]));
        let pushed: Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(
            pushed["config"]["digest"], manifest["config"]["digest"],
            "{name}"
        );
        assert_eq!(pushed["layers"], manifest["layers"], "{name}");
        let inspect =
            run(Command::new("skopeo").args(["inspect", "--tls-verify=false", &reference]));
        let pushed: Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(pushed["Digest"], digest.as_str(), "{name}: {pushed}");
        assert_eq!(
            pushed["Labels"]["org.opencontainers.image.version"],
            VERSION
        );
    }
}

/// The agent, run from its image's root (a chroot on the host's loopback),
/// pulls a module from the registry: its registry client needs the CA bundle
/// the image ships even for plain HTTP (rustls' platform verifier is built
/// first), and without it fails before any request.
fn agent_pulls_from_its_root(rootfs: &Path, registry: &str) {
    let reference = format!("{registry}/actions/probe:v1");
    let push = Command::new(hostaction_bin())
        .args(["push"])
        .arg(hostaction_tests::guest("probe"))
        .args([&reference, "--plain-http"])
        .env_remove("DOCKER_CONFIG")
        .env("HOME", rootfs)
        .output()
        .unwrap();
    assert!(push.status.success(), "push:\n{}", text(&push));
    let pull = || {
        Command::new("chroot")
            .arg(rootfs)
            .args([
                "/hostaction",
                "--cache-dir",
                "/cache",
                "pull",
                &reference,
                "--plain-http",
            ])
            .env_remove("DOCKER_CONFIG")
            .env_remove("SSL_CERT_FILE")
            .env_remove("SSL_CERT_DIR")
            .env("HOME", "/")
            .output()
            .unwrap()
    };
    let bundle = rootfs.join(&CA_BUNDLE[1..]);
    let aside = rootfs.join("ca-bundle-aside");
    std::fs::rename(&bundle, &aside).unwrap();
    let without = pull();
    std::fs::rename(&aside, &bundle).unwrap();
    assert!(!without.status.success(), "{}", text(&without));
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("No CA certificates"),
        "{}",
        text(&without)
    );
    let with = pull();
    assert!(
        with.status.success(),
        "pull in the image's root:\n{}",
        text(&with)
    );
    assert!(rootfs.join("cache").is_dir());
}

/// A controller binary that carries wasmtime is refused, and no image is
/// written for it.
#[test]
fn a_controller_binary_carrying_wasmtime_is_refused() {
    let target = tempfile::tempdir().unwrap();
    let release = target.path().join("release");
    std::fs::create_dir(&release).unwrap();
    // The all-in-one CLI, which links wasmtime, in the controller's place.
    std::fs::copy(hostaction_bin(), release.join("hostaction-controller")).unwrap();
    let out_dir = target.path().join("images");
    let out = build_images(
        target.path(),
        &[
            "--only",
            "hostaction-controller",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("carries wasmtime"),
        "{}",
        text(&out)
    );
    assert!(!out_dir.join("hostaction-controller").exists());
}

/// An image over its budget is never pushed: the controller's binary with
/// 30 MiB more in it (an allocated section `strip` keeps) fails the build,
/// and the registry is left without it.
#[test]
fn an_image_over_its_budget_is_not_pushed() {
    let registry = Registry::plain();
    let target = tempfile::tempdir().unwrap();
    let release = target.path().join("release");
    std::fs::create_dir(&release).unwrap();
    let pad = target.path().join("pad");
    std::fs::write(&pad, vec![0x5a_u8; 30 * MIB as usize]).unwrap();
    run(Command::new("objcopy")
        .arg("--add-section")
        .arg(format!(".pad={}", pad.display()))
        .args(["--set-section-flags", ".pad=alloc,load,contents,readonly"])
        .arg(target_dir().join("release/hostaction-controller"))
        .arg(release.join("hostaction-controller")));
    let prefix = format!("{}/hostaction", registry.addr());
    let out_dir = target.path().join("images");
    let out = build_images(
        target.path(),
        &[
            "--only",
            "hostaction-controller",
            "--out",
            out_dir.to_str().unwrap(),
            "--registry",
            &prefix,
            "--plain-http",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("over its budget"), "{}", text(&out));
    assert!(!stderr.contains("pushing"), "{}", text(&out));
    let reference = format!("docker://{prefix}/hostaction-controller:{VERSION}");
    let inspect = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw", &reference])
        .output()
        .unwrap();
    assert!(!inspect.status.success(), "pushed:\n{}", text(&inspect));
}
