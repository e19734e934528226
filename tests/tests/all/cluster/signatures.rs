//! Issue 18 on a cluster: the real controller and agent against the API
//! server, with a node policy that lists the one key it trusts. The run of
//! the signed module succeeds and its status names the key; the run of an
//! unsigned one fails before it starts, and its status says why.

use super::*;

#[test]
fn a_node_runs_only_what_its_policy_s_key_signed_and_the_status_names_the_key() {
    let mut cluster = Cluster::new();
    let signed = cluster.push("probe");
    let unsigned = cluster.push("host-facts");
    let dir = cluster.dir.path().to_owned();
    let (key, public) = (dir.join("sign.pem"), dir.join("sign.pub"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            key.to_str().unwrap(),
        ],
        vec![
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        assert!(
            Command::new("openssl")
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }
    let out = Command::new(hostaction_bin())
        .args([
            "sign",
            &signed,
            "--plain-http",
            "--key",
            key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "sign: {out:?}");
    let pem = serde_json::to_string(&std::fs::read_to_string(&public).unwrap()).unwrap();
    let policy = format!("{CNI_POLICY}verify: {{keys: [{pem}]}}\n");
    cluster.add_node("v1", json!({"role": "worker"}), true);
    cluster.start_agent("v1", None, Some(&policy));

    for (name, module) in [("signed", &signed), ("unsigned", &unsigned)] {
        cluster.apply(
            name,
            json!({
                "module": module,
                "params": {"ops": []},
                "grants": serde_json::from_str::<Value>(CNI_GRANT).unwrap(),
                "nodeSelector": {"matchLabels": {"role": "worker"}},
                "timeoutSeconds": 30,
            }),
        );
    }
    cluster.wait("signed", 120, "both runs end", |c| {
        ["signed", "unsigned"].iter().all(|a| {
            c.runs(a)
                .get("v1")
                .is_some_and(|r| matches!(phase(r), "Succeeded" | "Failed"))
        })
    });
    let ran = cluster.runs("signed").remove("v1").unwrap();
    let status = &ran["status"];
    assert_eq!(phase(&ran), "Succeeded", "{status:#}");
    assert_eq!(status["verification"], "Verified", "{status:#}");
    assert!(
        status["signatureKey"]
            .as_str()
            .unwrap()
            .starts_with("sha256:"),
        "{status:#}"
    );
    let refused = cluster.runs("unsigned").remove("v1").unwrap();
    let message = refused["status"]["message"].as_str().unwrap();
    assert_eq!(phase(&refused), "Failed", "{refused:#}");
    assert!(
        message.contains("untrusted module") && message.contains("not signed"),
        "{message}"
    );
}
