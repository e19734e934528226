//! `hostaction new`: writes a buildable action project in one language — its
//! world, typed params, a grant, example params and a README saying how to
//! build, inspect, run and push it. The templates live beside this file, one
//! folder per language; every project also gets the contract (`wit/`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hostaction_runtime::{Error, Result};

/// The languages an action can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust with the hostaction SDK (vendored into the project).
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    Js,
    /// C, with wit-bindgen's C bindings, clang and wasi-libc.
    C,
}

/// One file of a project: its path in the project and its contents.
type Template = (&'static str, Contents);

/// A template's contents.
#[derive(Clone, Copy)]
enum Contents {
    /// Text in which `{{name}}` and `{{name_snake}}` are replaced.
    Text(&'static str),
    /// Bytes written as they are (a generated object file).
    Binary(&'static [u8]),
}

/// A text template: the file `$file` (relative to this folder), written to
/// the project as `$path`.
macro_rules! template {
    ($path:literal => $file:literal) => {
        ($path, Contents::Text(include_str!($file)))
    };
}

/// The contract, written to every project's `wit/`.
const WIT: &[Template] = &[
    template!("wit/files.wit" => "../../../wit/files.wit"),
    template!("wit/log.wit" => "../../../wit/log.wit"),
    template!("wit/network.wit" => "../../../wit/network.wit"),
    template!("wit/payload.wit" => "../../../wit/payload.wit"),
    template!("wit/services.wit" => "../../../wit/services.wit"),
    template!("wit/types.wit" => "../../../wit/types.wit"),
    template!("wit/worlds.wit" => "../../../wit/worlds.wit"),
];

const RUST: &[Template] = &[
    template!("Cargo.toml" => "rust/Cargo.toml.in"),
    template!("src/lib.rs" => "rust/src/lib.rs"),
    template!("README.md" => "rust/README.md"),
    template!("grants.yaml" => "rust/grants.yaml"),
    template!("params.json" => "rust/params.json"),
    template!(".gitignore" => "rust/gitignore"),
    // The SDK, until it is published: its sources as they are in sdk/.
    template!("sdk/Cargo.toml" => "rust/sdk.Cargo.toml.in"),
    template!("sdk/src/lib.rs" => "../../../sdk/src/lib.rs"),
    template!("sdk/src/__private.rs" => "../../../sdk/src/__private.rs"),
    template!("sdk/src/error.rs" => "../../../sdk/src/error.rs"),
    template!("sdk/src/files.rs" => "../../../sdk/src/files.rs"),
    template!("sdk/src/log.rs" => "../../../sdk/src/log.rs"),
    template!("sdk/src/outcome.rs" => "../../../sdk/src/outcome.rs"),
    template!("sdk/src/payload.rs" => "../../../sdk/src/payload.rs"),
];

const PYTHON: &[Template] = &[
    template!("app.py" => "python/app.py"),
    template!("README.md" => "python/README.md"),
    template!("grants.yaml" => "python/grants.yaml"),
    template!("params.json" => "python/params.json"),
    template!(".gitignore" => "python/gitignore"),
];

const JS: &[Template] = &[
    template!("app.js" => "js/app.js"),
    template!("package.json" => "js/package.json"),
    template!("README.md" => "js/README.md"),
    template!("grants.yaml" => "js/grants.yaml"),
    template!("params.json" => "js/params.json"),
    template!(".gitignore" => "js/gitignore"),
];

const C: &[Template] = &[
    template!("action.c" => "c/action.c"),
    template!("Makefile" => "c/Makefile"),
    template!("README.md" => "c/README.md"),
    template!("grants.yaml" => "c/grants.yaml"),
    template!("params.json" => "c/params.json"),
    template!(".gitignore" => "c/gitignore"),
    // The C SDK and the generated bindings of `files-action`, as in sdk/c.
    template!("sdk/hostaction.h" => "../../../sdk/c/hostaction.h"),
    template!("sdk/hostaction.c" => "../../../sdk/c/hostaction.c"),
    template!("sdk/hostaction_json.h" => "../../../sdk/c/hostaction_json.h"),
    template!("sdk/hostaction_json.c" => "../../../sdk/c/hostaction_json.c"),
    template!("sdk/bindings/files_action.h" => "../../../sdk/c/bindings/files_action.h"),
    template!("sdk/bindings/files_action.c" => "../../../sdk/c/bindings/files_action.c"),
    (
        "sdk/bindings/files_action_component_type.o",
        Contents::Binary(include_bytes!(
            "../../../sdk/c/bindings/files_action_component_type.o"
        )),
    ),
];

impl Lang {
    fn templates(self) -> &'static [Template] {
        match self {
            Lang::Rust => RUST,
            Lang::Python => PYTHON,
            Lang::Js => JS,
            Lang::C => C,
        }
    }
}

/// Longest action name: it becomes a file, crate and repository name.
const MAX_NAME: usize = 63;

/// Checks an action name: lowercase ASCII letters, digits and single `-`
/// between them, starting with a letter (a valid crate, package, file and
/// OCI repository name in every language).
pub fn check_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::Usage(format!(
            "action name {name:?} {why}; use lowercase letters, digits and `-`, \
             starting with a letter (e.g. `install-cni`)"
        )))
    };
    if name.is_empty() || name.len() > MAX_NAME {
        return bad(&format!("must be 1 to {MAX_NAME} characters"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("does not start with a lowercase letter");
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return bad(&format!("contains {c:?}"));
    }
    if name.ends_with('-') || name.contains("--") {
        return bad("has a `-` at the end or two in a row");
    }
    Ok(())
}

/// Writes the project for `name` in `lang` to `dir`, which must not exist or
/// be empty. The files are written to a temporary directory beside `dir` and
/// moved into place at once, so a failure leaves nothing half-written.
/// Returns the paths written, relative to `dir`.
pub fn create(lang: Lang, name: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    check_name(name)?;
    let host = |what: &str, path: &Path, e: std::io::Error| {
        Error::Host(format!("{what} {}: {e}", path.display()))
    };
    let empty = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(host("reading", dir, e)),
    };
    if !empty {
        return Err(Error::Usage(format!(
            "{} exists and is not empty; choose another directory or name",
            dir.display()
        )));
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".hostaction-new-")
        // An ordinary directory once moved into place: the umask decides.
        .permissions(std::fs::Permissions::from_mode(0o777))
        .tempdir_in(&parent)
        .map_err(|e| host("creating a directory in", &parent, e))?;
    let snake = name.replace('-', "_");
    let mut written = Vec::new();
    for (path, contents) in WIT.iter().chain(lang.templates()) {
        let target = staging.path().join(path);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(|e| host("creating", p, e))?;
        }
        let written_ok = match contents {
            Contents::Text(text) => std::fs::write(
                &target,
                text.replace("{{name}}", name)
                    .replace("{{name_snake}}", &snake),
            ),
            Contents::Binary(bytes) => std::fs::write(&target, bytes),
        };
        written_ok.map_err(|e| host("writing", &target, e))?;
        written.push(PathBuf::from(path));
    }
    // An empty directory that exists is replaced; anything else stays.
    let _ = std::fs::remove_dir(dir);
    let staged = staging.keep();
    std::fs::rename(&staged, dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        host("moving the project to", dir, e)
    })?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    /// Every file of `dir` (relative to the workspace), sorted.
    fn files_in(dir: &str) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut names: Vec<String> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn every_wit_and_sdk_file_is_embedded() {
        let embedded = |prefix: &str, from: &[Template]| {
            let mut names: Vec<String> = from
                .iter()
                .filter_map(|(p, _)| p.strip_prefix(prefix))
                .map(str::to_owned)
                .collect();
            names.sort();
            names
        };
        assert_eq!(embedded("wit/", WIT), files_in("wit"));
        assert_eq!(embedded("sdk/src/", RUST), files_in("sdk/src"));
    }

    #[test]
    fn vendored_sdk_pins_the_workspace_versions() {
        let workspace = include_str!("../../../Cargo.toml");
        let sdk = include_str!("rust/sdk.Cargo.toml.in");
        let project = include_str!("rust/Cargo.toml.in");
        for (dep, template) in [
            ("wit-bindgen", sdk),
            ("serde ", sdk),
            ("serde_json", sdk),
            ("serde ", project),
        ] {
            let pin = |text: &str| {
                let line = text
                    .lines()
                    .find(|l| l.starts_with(dep))
                    .unwrap_or_else(|| panic!("no {dep} in {text}"));
                // The first quoted string: `dep = { version = "=1.2.3", ... }`.
                let version = line.split('"').nth(1).unwrap();
                version.trim_start_matches('=').to_owned()
            };
            assert_eq!(pin(template), pin(workspace), "{dep}");
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "install-cni", "v2-overlay"] {
            check_name(good).unwrap();
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "Caps",
            "2fast",
            "a_b",
            "a--b",
            "a-",
            "../x",
            long.as_str(),
        ] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("action name"), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_a_directory_that_is_not_empty_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep"), "mine").unwrap();
        let err = create(Lang::Rust, "demo", dir.path()).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn writes_the_project_with_its_name() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("my-action");
        let written = create(Lang::Rust, "my-action", &dir).unwrap();
        assert!(written.contains(&PathBuf::from("src/lib.rs")));
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"my-action\""), "{cargo}");
        let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(readme.contains("release/my_action.wasm"), "{readme}");
        assert!(!readme.contains("{{"), "a placeholder is left: {readme}");
        assert!(dir.join("wit/worlds.wit").exists());
        // Nothing but the project is left beside it.
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
        // The mode any new directory gets here (the umask's), not a private one.
        std::fs::create_dir(parent.path().join("plain")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&dir), mode(&parent.path().join("plain")));
    }
}
