//! `hostaction new`: the project of each language builds with the commands
//! its README documents (run verbatim from the README), and the component it
//! builds runs through the real engine with the project's own params and
//! grant: it writes its file, and a second run changes nothing.
//!
//! Needs each language's toolchain, which `scripts/build-guests.sh` installs:
//! componentize-py (pip), node and npm (componentize-js is installed from npm
//! into the project), clang-19 with wasi-libc, and for Rust either rustup's
//! wasm32-wasip2 target or Debian's rustc-web with wasm-component-ld.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use hostaction_runtime::grant::{EffectiveGrant, Grant, GrantDocument};
use hostaction_runtime::{RunRequest, RunStatus};
use hostaction_tests::{Host, hostaction_bin};

#[test]
fn rust_project_builds_and_runs() {
    // On a machine without rustup's target, the README's second recipe.
    let rustup_target = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2"));
    let heading = if rustup_target {
        "## Build"
    } else {
        "### Without the rustup target"
    };
    scaffold_build_and_run("rust", "rusty-action", heading);
}

#[test]
fn python_project_builds_and_runs() {
    scaffold_build_and_run("python", "py-action", "## Build");
}

#[test]
fn js_project_builds_and_runs() {
    scaffold_build_and_run("js", "js-action", "## Build");
}

#[test]
fn c_project_builds_and_runs() {
    scaffold_build_and_run("c", "c-action", "## Build");
}

#[test]
fn bad_names_and_busy_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let new = |args: &[&str]| {
        Command::new(hostaction_bin())
            .arg("new")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = new(&["--lang", "python", "My_Action"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("action name \"My_Action\""), "{err}");

    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/notes.txt"), "mine").unwrap();
    let out = new(&["--lang", "c", "taken"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("taken/notes.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("taken")).unwrap().count(),
        1
    );
}

/// `hostaction new --lang LANG NAME` in a scratch directory, the README's
/// commands under `heading`, then two runs of `NAME.wasm`.
fn scaffold_build_and_run(lang: &str, name: &str, heading: &str) {
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(hostaction_bin())
        .args(["new", "--lang", lang, name])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "hostaction new: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let project = work.path().join(name);
    let readme = std::fs::read_to_string(project.join("README.md")).unwrap();
    let script = sh_block_under(&readme, heading);
    let built = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "the README's build commands failed:\n{script}\n{}\n{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let module = project.join(format!("{name}.wasm"));
    assert!(module.exists(), "{} was not built", module.display());

    let params = std::fs::read_to_string(project.join("params.json")).unwrap();
    let grant = Grant::parse(
        &std::fs::read_to_string(project.join("grants.yaml")).unwrap(),
        "grants.yaml",
    )
    .unwrap();
    let host = Host::new();
    // The host root is empty: the action makes the file's directory itself.
    let path: serde_json::Value = serde_json::from_str(&params).unwrap();
    let path = path["path"].as_str().expect("params.json has a path");
    let loaded = host.runtime.load_file(&module).unwrap();
    let run = || {
        let request = RunRequest::new(params.clone(), EffectiveGrant::new(&grant, None).unwrap());
        host.runtime.run(&loaded, request).unwrap()
    };
    let first = run();
    assert_eq!(first.status, RunStatus::Succeeded, "{first:#?}");
    assert!(first.changed(), "{first:#?}");
    assert!(host.path(path).is_file(), "{path} was not written");
    let second = run();
    assert_eq!(second.status, RunStatus::Succeeded, "{second:#?}");
    assert!(
        !second.changed(),
        "the second run changed something: {second:#?}"
    );
}

/// The first ```sh block after the line starting with `heading` in a README.
fn sh_block_under(readme: &str, heading: &str) -> String {
    let after = readme
        .lines()
        .skip_while(|l| !l.starts_with(heading))
        .skip_while(|l| l.trim_end() != "```sh")
        .skip(1);
    let block: Vec<&str> = after.take_while(|l| l.trim_end() != "```").collect();
    assert!(!block.is_empty(), "no ```sh block under {heading:?}");
    block.join("\n")
}
