//! Module signatures (issue 18), against a real docker-registry on
//! 127.0.0.1 and the real cosign CLI (built by scripts/build-cosign.sh from
//! the Go module proxy; `HOSTACTION_COSIGN` names it): hostaction verifies
//! what cosign signs, cosign verifies what hostaction signs, and every way
//! a signature can fail is refused before the run, exit 5, with nothing
//! recorded as verified.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use hostaction_tests::guest;
use hostaction_tests::output_text as text;
use hostaction_tests::registry::Registry;
use serde_json::Value;

use super::oci::{Node, json_of, push, skopeo};

/// The cosign binary: `HOSTACTION_COSIGN`, else built (cached) by the script.
fn cosign() -> PathBuf {
    if let Some(path) = std::env::var_os("HOSTACTION_COSIGN") {
        return PathBuf::from(path);
    }
    let root = hostaction_tests::workspace();
    let out = Command::new(root.join("scripts/build-cosign.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/build-cosign.sh:\n{}",
        text(&out)
    );
    PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim(),
    )
}

/// Runs cosign in `dir` with `env` (and an empty key password), expecting
/// success.
fn cosign_ok(cosign: &Path, dir: &Path, env: &[(&str, &str)], args: &[&str]) {
    let out = Command::new(cosign)
        .args(args)
        .envs(env.iter().copied())
        .env("COSIGN_PASSWORD", "")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "cosign {args:?}:\n{}", text(&out));
}

/// An openssl-made key pair (`ec` P-256 or `ed25519`): private PKCS#8 and
/// public PEM files.
fn openssl_keys(dir: &Path, name: &str, kind: &str) -> (String, String) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let mut genpkey = Command::new("openssl");
    genpkey.args(["genpkey", "-out"]).arg(&private);
    match kind {
        "ec" => genpkey.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        _ => genpkey.args(["-algorithm", "ed25519"]),
    };
    assert!(genpkey.status().unwrap().success());
    let out = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(out.success());
    (
        private.to_str().unwrap().to_owned(),
        public.to_str().unwrap().to_owned(),
    )
}

/// Pushes the probe to `tagged` (a plain registry), signed with `key`;
/// returns its reference by digest, checking the output names the
/// signature's `.sig` tag.
fn push_signed(node: &Node, tagged: &str, key: &str) -> String {
    let module = guest("probe");
    let args = [
        "push",
        module.to_str().unwrap(),
        tagged,
        "--plain-http",
        "--sign-key",
        key,
    ];
    let out = node.ok(&args);
    let pinned = out.lines().next().unwrap().trim().to_owned();
    let digest = pinned.rsplit_once('@').unwrap().1;
    assert!(
        out.contains(&format!("sha256-{}.sig", &digest[7..])),
        "{out}"
    );
    pinned
}

/// Runs the probe by `reference` with `extra` flags; the output.
fn run(node: &Node, reference: &str, extra: &[&str]) -> std::process::Output {
    let grant = node.probe_grant();
    let mut args = vec![
        "run",
        reference,
        "--plain-http",
        "--grants",
        &grant,
        "--params",
        r#"{"ops": []}"#,
        "--output",
        "json",
    ];
    args.extend_from_slice(extra);
    node.cli(&args)
}

/// Runs and expects a refusal (exit 5, kind `untrusted`) naming `check`.
fn refused(node: &Node, reference: &str, extra: &[&str], check: &str) {
    let out = run(node, reference, extra);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let error = json_of(&String::from_utf8(out.stdout.clone()).unwrap());
    assert_eq!(error["error"]["kind"], "untrusted", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(check), "{check:?} in {message}");
}

fn provenance(report: &Value) -> &Value {
    &report["report"]["provenance"]
}

#[test]
fn hostaction_signs_verifies_and_refuses_each_failed_check_before_the_run() {
    let registry = Registry::plain();
    let node = Node::new();
    let (key, public) = openssl_keys(node.path("").as_path(), "ec", "ec");
    let (_, other_public) = openssl_keys(node.path("").as_path(), "ed", "ed25519");
    let repo = format!("{}/tests/signed", registry.addr());

    // Pushed and signed; run with its key: verified, the key named.
    let signed = push_signed(&node, &format!("{repo}:v1"), &key);
    let digest = signed.rsplit_once('@').unwrap().1.to_owned();
    let report = json_of(
        &String::from_utf8(run(&node, &signed, &["--verify-key", &public]).stdout).unwrap(),
    );
    assert_eq!(provenance(&report)["verification"], "verified", "{report}");
    let fingerprint = provenance(&report)["key"].as_str().unwrap().to_owned();
    assert!(fingerprint.starts_with("sha256:"));
    assert_eq!(node.store().verified_by(&digest), vec![fingerprint.clone()]);
    // Warm: the store's record, the registry not asked (it is stopped below).
    // Without a policy: not required.
    let report = json_of(&node.ok(&[
        "run",
        &signed,
        "--plain-http",
        "--grants",
        &node.probe_grant(),
        "--params",
        r#"{"ops": []}"#,
        "--output",
        "json",
    ]));
    assert_eq!(provenance(&report)["verification"], "not-required");

    // Another key only.
    let fresh = Node::new();
    refused(
        &fresh,
        &signed,
        &["--verify-key", &other_public],
        "does not verify with any trusted key",
    );
    // Unsigned.
    let (unsigned, unsigned_digest) = push(
        &fresh,
        &guest("host-facts"),
        &format!("{repo}:unsigned"),
        &[],
    );
    refused(&fresh, &unsigned, &["--verify-key", &public], "not signed");
    assert!(fresh.store().verified_by(&unsigned_digest).is_empty());
    // A signature over another digest: the signed artifact's signature
    // copied to the unsigned one's tag.
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &format!("docker://{repo}:sha256-{}.sig", &digest[7..]),
        &format!("docker://{repo}:sha256-{}.sig", &unsigned_digest[7..]),
    ]);
    refused(
        &fresh,
        &unsigned,
        &["--verify-key", &public],
        "over another digest",
    );
    assert!(fresh.store().verified_by(&unsigned_digest).is_empty());
    // A file cannot be verified.
    refused(
        &fresh,
        guest("probe").to_str().unwrap(),
        &["--require-signature", "--verify-key", &public],
        "module file",
    );
    // Required without keys fails closed.
    refused(&fresh, &signed, &["--require-signature"], "no verify.keys");
    // A node that requires signatures without naming keys: an action cannot
    // bring its own (the hostile review's finding).
    let policy = fresh.path("required.yaml");
    std::fs::write(
        &policy,
        "files: {write: [/srv]}\nverify: {required: true}\n",
    )
    .unwrap();
    let policy = policy.to_str().unwrap();
    refused(
        &fresh,
        &signed,
        &["--policy", policy, "--verify-key", &public],
        "cannot add keys",
    );
    // Keys in a node policy require a signature, `required` or not.
    let keyed = fresh.path("keyed.yaml");
    let pem = serde_json::to_string(&std::fs::read_to_string(&public).unwrap()).unwrap();
    std::fs::write(
        &keyed,
        format!("files: {{write: [/srv]}}\nverify: {{keys: [{pem}]}}\n"),
    )
    .unwrap();
    let keyed = keyed.to_str().unwrap();
    refused(
        &fresh,
        &unsigned,
        &["--policy", keyed],
        "over another digest",
    );
    // A second key's signature is added beside the first: both verify.
    let (second, second_public) = openssl_keys(node.path("").as_path(), "second", "ed25519");
    node.ok(&["sign", &signed, "--key", &second, "--plain-http"]);
    for key in [&public, &second_public] {
        let out = run(&Node::new(), &signed, &["--verify-key", key]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }

    // The registry cannot serve the signature: the artifact is in the
    // store (pulled without a policy), the registry is gone.
    let cached = Node::new();
    cached.ok(&["pull", &signed, "--plain-http"]);
    drop(registry);
    refused(
        &cached,
        &signed,
        &["--verify-key", &public, "--retries", "0"],
        "cannot serve its signature",
    );
    assert!(cached.store().verified_by(&digest).is_empty());
    // The node that verified it before runs it warm, registry or not.
    let report = json_of(
        &String::from_utf8(run(&node, &signed, &["--verify-key", &public]).stdout).unwrap(),
    );
    assert_eq!(provenance(&report)["key"], fingerprint.as_str());
}

#[test]
fn a_tampered_payload_is_refused() {
    let registry = Registry::plain();
    let node = Node::new();
    let (key, public) = openssl_keys(node.path("").as_path(), "k", "ed25519");
    let repo = format!("{}/tests/tampered", registry.addr());
    let (pinned, digest) = push(&node, &guest("probe"), &format!("{repo}:v1"), &[]);
    node.ok(&["sign", &pinned, "--key", &key, "--plain-http"]);
    // Every payload blob of the signature: rewritten in the registry's storage.
    let manifest = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{repo}:sha256-{}.sig", &digest[7..]))
        .output()
        .unwrap();
    let manifest: Value = serde_json::from_slice(&manifest.stdout).unwrap();
    let payload = manifest["layers"][0]["digest"].as_str().unwrap();
    let data = registry.blob_data(payload);
    let bytes = std::fs::read(&data).unwrap();
    let tampered = String::from_utf8(bytes).unwrap().replace(
        "cosign container image signature",
        "cosign container image signaturf",
    );
    std::fs::write(&data, tampered).unwrap();
    refused(
        &Node::new(),
        &pinned,
        &["--verify-key", &public, "--retries", "0"],
        "altered",
    );
}

#[test]
fn cosign_verifies_what_hostaction_signs_and_hostaction_what_cosign_signs() {
    let cosign = cosign();
    let registry = Registry::plain();
    let node = Node::new();
    let dir = node.path("");
    let repo = format!("{}/tests/interop", registry.addr());
    for kind in ["ec", "ed25519"] {
        // hostaction signs; cosign verifies.
        let (key, public) = openssl_keys(&dir, &format!("h-{kind}"), kind);
        let (pinned, _) = push(&node, &guest("probe"), &format!("{repo}:{kind}"), &[]);
        node.ok(&["sign", &pinned, "--key", &key, "--plain-http"]);
        let verify = ["verify", "--key", &public, "--insecure-ignore-tlog=true"];
        cosign_ok(
            &cosign,
            &dir,
            &[],
            &[&verify[..], &["--allow-insecure-registry", &pinned]].concat(),
        );
    }
    // cosign signs (its own key format); hostaction verifies with its public key.
    cosign_ok(&cosign, &dir, &[], &["generate-key-pair"]);
    let (pinned, _) = push(&node, &guest("probe"), &format!("{repo}:by-cosign"), &[]);
    let sign = ["sign", "--key", "cosign.key", "--tlog-upload=false", "-y"];
    cosign_ok(
        &cosign,
        &dir,
        &[],
        &[&sign[..], &["--allow-insecure-registry", &pinned]].concat(),
    );
    let report = json_of(
        &String::from_utf8(
            run(
                &Node::new(),
                &pinned,
                &["--verify-key", dir.join("cosign.pub").to_str().unwrap()],
            )
            .stdout,
        )
        .unwrap(),
    );
    assert_eq!(provenance(&report)["verification"], "verified", "{report}");
}

/// Static mode follows the node policy's `verify` section: a signed
/// artifact runs and its state says by which key; an unsigned one fails
/// before it runs, and the state says which check failed.
#[test]
fn static_mode_runs_only_what_the_node_policy_s_keys_signed() {
    let registry = Registry::plain();
    let node = Node::new();
    let (key, public) = openssl_keys(node.path("").as_path(), "k", "ec");
    let repo = format!("{}/tests/static", registry.addr());
    let signed = push_signed(&node, &format!("{repo}:signed"), &key);
    let (unsigned, _) = push(
        &node,
        &guest("host-facts"),
        &format!("{repo}:unsigned"),
        &[],
    );
    let manifests = node.path("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::create_dir_all(node.path("root/srv")).unwrap();
    for (name, module, grants) in [
        ("signed", &signed, "{files: {write: [/srv]}}"),
        ("unsigned", &unsigned, "{}"),
    ] {
        std::fs::write(
            manifests.join(format!("{name}.yaml")),
            format!(
                "apiVersion: hostaction.dev/v1alpha1\nkind: HostAction\nmetadata: {{name: {name}}}\n\
                 spec:\n  module: {module}\n  params: {{ops: []}}\n  grants: {grants}\n"
            ),
        )
        .unwrap();
    }
    let keys = serde_json::to_string(&[std::fs::read_to_string(&public).unwrap()]).unwrap();
    let policy = node.path("policy.yaml");
    std::fs::write(
        &policy,
        format!("files: {{write: [/srv]}}\nverify: {{required: true, keys: {keys}}}\n"),
    )
    .unwrap();
    let state = node.path("state.json");
    let out = node.cli(&[
        "agent",
        "--manifests",
        manifests.to_str().unwrap(),
        "--host-root",
        node.path("root").to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--plain-http",
        "--once",
    ]);
    let state: Value = serde_json::from_slice(&std::fs::read(&state).unwrap())
        .unwrap_or_else(|e| panic!("{e}:\n{}", text(&out)));
    let ran = &state["actions"]["signed"]["status"];
    assert_eq!(ran["phase"], "Succeeded", "{state:#}\n{}", text(&out));
    assert_eq!(ran["verification"], "Verified", "{state:#}");
    assert!(ran["signatureKey"].as_str().unwrap().starts_with("sha256:"));
    let refused = &state["actions"]["unsigned"]["status"];
    assert_eq!(refused["phase"], "Failed", "{state:#}");
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("untrusted module") && message.contains("not signed"),
        "{message}"
    );
}

/// The same interop over TLS with basic auth: hostaction with `--ca-file`
/// and a docker config, cosign with `SSL_CERT_FILE` and `DOCKER_CONFIG`.
#[test]
fn cosign_and_hostaction_interoperate_on_a_tls_registry_with_auth() {
    let cosign = cosign();
    let registry = Registry::tls_with_auth("signer", "s3cret");
    let node = Node::new();
    let dir = node.path("");
    let docker = dir.join("docker");
    let config = registry.write_docker_config(&docker, "signer", "s3cret");
    let ca = registry.ca_pem().unwrap().to_str().unwrap().to_owned();
    let tls = [
        "--ca-file",
        &ca,
        "--registry-config",
        config.to_str().unwrap(),
    ];
    let repo = format!("{}/tests/tls", registry.addr());
    let env = [
        ("SSL_CERT_FILE", ca.as_str()),
        ("DOCKER_CONFIG", docker.to_str().unwrap()),
    ];
    let cosign_cmd = |args: &[&str]| cosign_ok(&cosign, &dir, &env, args);
    // hostaction pushes and signs; cosign verifies.
    let (key, public) = openssl_keys(&dir, "tls", "ec");
    let (module, tagged) = (guest("probe"), format!("{repo}:v1"));
    let mut args = vec![
        "push",
        module.to_str().unwrap(),
        &tagged,
        "--sign-key",
        &key,
    ];
    args.extend_from_slice(&tls);
    let out = node.ok(&args);
    let pinned = out.lines().next().unwrap().trim().to_owned();
    cosign_cmd(&[
        "verify",
        "--key",
        &public,
        "--insecure-ignore-tlog=true",
        &pinned,
    ]);
    // cosign signs too; hostaction verifies each key's signature.
    cosign_cmd(&["generate-key-pair"]);
    cosign_cmd(&[
        "sign",
        "--key",
        "cosign.key",
        "--tlog-upload=false",
        "-y",
        &pinned,
    ]);
    for key in [public.as_str(), dir.join("cosign.pub").to_str().unwrap()] {
        let grant = node.probe_grant();
        let mut args = vec![
            "run",
            &pinned,
            "--grants",
            &grant,
            "--params",
            r#"{"ops": []}"#,
            "--output",
            "json",
            "--verify-key",
            key,
        ];
        args.extend_from_slice(&tls);
        let report = json_of(&Node::new().ok(&args));
        assert_eq!(provenance(&report)["verification"], "verified", "{report}");
    }
}
