//! Plan and apply agree on every sample: each sample action in
//! `sample-actions/` runs in plan mode, then in apply mode on the same fresh
//! host, and the plan's effects (capability, action, target, detail, diff)
//! are the apply's; a plan after the apply is empty (the host is as the
//! action wants it).
//!
//! Each host is a scratch host root, set up as the sample's own end-to-end
//! test does: network samples work in named namespaces under that root (a
//! stand-in for the host's own namespace, never the machine's), and
//! restart-on-change restarts a unit of a systemd the test boots with
//! `systemd-nspawn`. Needs root, network namespaces and `systemd-container`
//! (as network.rs, overlay.rs and services.rs do).
//!
//! One difference is expected and checked apart: a services effect's detail
//! is the job's result in apply mode (`result done`) and `planned` in plan
//! mode — a plan cannot know how a job will end. Its diff (the unit's
//! active state before → after) is compared like every other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hostaction_runtime::RunReport;
use hostaction_runtime::effects::{Effect, Mode};
use hostaction_tests::systemd::{Systemd, Unit};
use hostaction_tests::{Host, probe_results, request, workspace};
use serde_json::{Value, json};

/// A sample's file (`grants.yaml`, `params.json`).
fn sample_file(sample: &str, name: &str) -> String {
    std::fs::read_to_string(workspace().join("sample-actions").join(sample).join(name)).unwrap()
}

/// The sample's own params.
fn sample_params(sample: &str) -> Value {
    serde_json::from_str(&sample_file(sample, "params.json")).unwrap()
}

fn run(host: &Host, sample: &str, params: &Value, grant: &str, mode: Mode) -> RunReport {
    let mut req = request(params, grant);
    req.mode = mode;
    let report = host.runtime.run(&host.load(sample), req).unwrap();
    assert!(
        report.status.is_success(),
        "{sample} ({mode:?}): {report:#?}"
    );
    assert_eq!(report.effects_dropped, 0, "{sample}");
    report
}

/// What an effect says, plan and apply alike: a services job's detail is
/// its result only once it ran (see the module doc).
fn shown(effect: &Effect) -> (&str, &str, String, String, Option<String>) {
    let detail = if effect.capability == "services" && effect.applied {
        assert!(effect.detail.starts_with("result "), "{}", effect.detail);
        "planned".to_owned()
    } else {
        effect.detail.clone()
    };
    (
        effect.capability,
        effect.action,
        effect.target.clone(),
        detail,
        effect.diff.clone(),
    )
}

/// Plans `sample`, applies it, and plans it again on the same host: the
/// first plan is the apply's effects, the last is empty. Returns the apply.
fn plan_and_apply_agree(host: &Host, sample: &str, params: &Value, grant: &str) -> RunReport {
    let plan = run(host, sample, params, grant, Mode::Plan);
    assert!(plan.effects.iter().all(|e| !e.applied), "{sample}");
    let apply = run(host, sample, params, grant, Mode::Apply);
    assert!(apply.changed(), "{sample}: a fresh host needs changes");
    let planned: Vec<_> = plan.effects.iter().map(shown).collect();
    let applied: Vec<_> = apply.effects.iter().map(shown).collect();
    assert_eq!(planned, applied, "{sample}: the plan is not what apply did");
    let again = run(host, sample, params, grant, Mode::Plan);
    assert!(
        again.effects.is_empty(),
        "{sample}: a plan after the apply is not empty: {:#?}",
        again.effects
    );
    apply
}

#[test]
fn cni_install() {
    let sample = "cni-install";
    let host = Host::new();
    plan_and_apply_agree(
        &host,
        sample,
        &sample_params(sample),
        &sample_file(sample, "grants.yaml"),
    );
}

#[test]
fn cni_conflist() {
    let sample = "cni-conflist";
    let host = Host::new();
    plan_and_apply_agree(
        &host,
        sample,
        &sample_params(sample),
        &sample_file(sample, "grants.yaml"),
    );
}

#[test]
fn host_facts() {
    // The files the sample reads, as on a Debian host (c.rs).
    let sample = "host-facts";
    let host = Host::new();
    host.write(
        "/usr/lib/os-release",
        "NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
    );
    host.write("/etc/hostname", "node-1\n");
    std::os::unix::fs::symlink("../usr/lib/os-release", host.path("/etc/os-release")).unwrap();
    host.write("/etc/machine-id", "0123456789abcdef0123456789abcdef\n");
    plan_and_apply_agree(
        &host,
        sample,
        &sample_params(sample),
        &sample_file(sample, "grants.yaml"),
    );
}

/// Makes the named namespace `name` under the host root, standing in for the
/// host's own (as js.rs and overlay.rs do).
fn stand_in_host(host: &Host, name: &str) {
    let report = host
        .run(
            "netprobe",
            &json!({"ops": [{"op": "ensure-netns", "name": name}]}),
            &format!("network:\n  netns: [{name}]\n"),
        )
        .unwrap();
    assert_eq!(probe_results(&report), [json!({"ok": true})], "{report:#?}");
}

/// A new link is described alike in plan and apply: with the settings it
/// is made with (not only those the kernel's defaults lacked), a veth's peer
/// namespace by its name.
#[test]
fn netns_bridge() {
    // params.json's `hostNetns: null` is the machine's own namespace: the
    // stand-in `js-host` instead (the grant's `js-*`).
    let sample = "netns-bridge";
    let host = Host::new();
    stand_in_host(&host, "js-host");
    let mut params = sample_params(sample);
    params["hostNetns"] = json!("js-host");
    plan_and_apply_agree(&host, sample, &params, &sample_file(sample, "grants.yaml"));
}

/// A vxlan made on a bridge that only the plan has made is described as
/// apply describes it (its VNI, remote and device).
#[test]
fn vxlan_overlay() {
    // params.json's `netns: null` is the machine's own namespace: the
    // stand-in `ovl-h1` instead, with a veth underlay to `ovl-h2` for the
    // vxlan to sit on, made by the test (overlay.rs's; this kernel has no
    // dummy links).
    let sample = "vxlan-overlay";
    let host = Host::new();
    let underlay = json!({"ops": [
        {"op": "ensure-netns", "name": "ovl-h1"},
        {"op": "ensure-netns", "name": "ovl-h2"},
        {"op": "ensure-link", "netns": "ovl-h1", "name": "ve-ovl-ul",
         "kind": {"type": "veth", "peer": "ve-ovl-ul", "peer_netns": "ovl-h2"}, "up": true},
        {"op": "ensure-address", "netns": "ovl-h1", "device": "ve-ovl-ul", "address": "192.168.50.1/24"},
    ]});
    let underlay_grant = "network:\n  netns: [ovl-h1, ovl-h2]\n  interfaces: [ve-ovl-ul]\n  \
                          kinds: [veth]\n  addresses: [192.168.50.0/24]\n";
    let report = host.run("netprobe", &underlay, underlay_grant).unwrap();
    for r in probe_results(&report) {
        assert_eq!(r["ok"], true, "{r}");
    }
    let mut params = sample_params(sample);
    params["netns"] = json!("ovl-h1");
    params["vxlan"]["device"] = json!("ve-ovl-ul");
    plan_and_apply_agree(&host, sample, &params, &sample_file(sample, "grants.yaml"));
}

#[test]
fn restart_on_change() {
    // The sample's unit, containerd.service, is a stand-in service of a
    // systemd the test boots (the sample's grant names it).
    let sample = "restart-on-change";
    let systemd = Systemd::boot(
        &[Unit {
            name: "containerd.service",
            contents: "[Service]\nExecStart=/bin/sleep infinity\n",
            enabled: true,
        }],
        &[],
    );
    let host = Host::with_bus(Some(systemd.address()));
    let before = systemd.main_pid("containerd.service");
    assert_ne!(before, 0);
    let apply = plan_and_apply_agree(
        &host,
        sample,
        &sample_params(sample),
        &sample_file(sample, "grants.yaml"),
    );
    assert!(
        apply.effects.iter().any(|e| e.action == "restart"),
        "{:#?}",
        apply.effects
    );
    assert_ne!(systemd.main_pid("containerd.service"), before);
}
