//! Sample action: installs CNI plugin binaries shipped in its artifact's
//! payload, a CNI network configuration (a `.conflist` with a `bridge`
//! plugin, `host-local` IPAM and `portmap`) and a set of files under the CNI
//! binary directory, idempotently.
//!
//! This is the kind of work a privileged DaemonSet does today; as an action it
//! imports only `log` and `files`, and its grant names only the two
//! directories it writes. A second run with the same params changes nothing.
//! See README.md for the params and the grant.

use std::net::IpAddr;

use hostaction_sdk::{Outcome, files, log, payload};
use serde::Deserialize;
use serde_json::json;

/// Permission bits of the directories the action ensures.
const DIR_MODE: u32 = 0o755;
/// Permission bits of the conflist.
const CONF_MODE: u32 = 0o644;
/// Permission bits of an installed plugin binary.
const BINARY_MODE: u32 = 0o755;

/// The action's params (JSON, camelCase); every field has a default.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Params {
    /// CNI network name (`name` in the conflist).
    #[serde(default = "default_name")]
    name: String,
    /// Name of the Linux bridge the `bridge` plugin creates.
    #[serde(default = "default_bridge")]
    bridge: String,
    /// Pod subnet in CIDR notation, IPv4 or IPv6.
    #[serde(default = "default_subnet")]
    subnet: String,
    /// `cniVersion` written into the conflist.
    #[serde(default = "default_cni_version")]
    cni_version: String,
    /// Directory the conflist goes into.
    #[serde(default = "default_conf_dir")]
    conf_dir: String,
    /// Directory the files go into.
    #[serde(default = "default_bin_dir")]
    bin_dir: String,
    /// File name of the conflist; `10-<name>.conflist` when absent.
    #[serde(default)]
    conf_file: Option<String>,
    /// Files to install under `binDir`.
    #[serde(default = "default_files")]
    files: Vec<FileSpec>,
    /// Payload files to install under `binDir` as executables; every payload
    /// file when absent.
    #[serde(default)]
    binaries: Option<Vec<String>>,
    /// Whether the bridge masquerades traffic leaving the subnet (`ipMasq`).
    #[serde(default = "default_true")]
    ip_masq: bool,
    /// Where `host-local` keeps its leases (`dataDir`); its default
    /// (`/var/lib/cni/networks`) when absent.
    #[serde(default)]
    ipam_data_dir: Option<String>,
}

/// One file to install under `binDir`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileSpec {
    /// File name (no `/`).
    name: String,
    /// Contents, as UTF-8 text.
    contents: String,
    /// Permission bits; 0o644 when absent.
    #[serde(default = "default_file_mode")]
    mode: u32,
}

fn default_name() -> String {
    "hostaction".into()
}
fn default_bridge() -> String {
    "cni0".into()
}
fn default_subnet() -> String {
    "10.88.0.0/16".into()
}
fn default_cni_version() -> String {
    "1.0.0".into()
}
fn default_conf_dir() -> String {
    "/etc/cni/net.d".into()
}
fn default_bin_dir() -> String {
    "/opt/cni/bin".into()
}
fn default_true() -> bool {
    true
}
fn default_file_mode() -> u32 {
    0o644
}
fn default_files() -> Vec<FileSpec> {
    vec![FileSpec {
        name: "hostaction-cni-install.version".into(),
        contents: format!("hostaction-cni-install {}\n", env!("CARGO_PKG_VERSION")),
        mode: default_file_mode(),
    }]
}

fn run(params: Params) -> Result<Outcome, String> {
    validate(&params)?;
    let conf_file = params
        .conf_file
        .clone()
        .unwrap_or_else(|| format!("10-{}.conflist", params.name));
    let conf_path = join(&params.conf_dir, &conf_file);
    let conflist = conflist(&params)?;

    // Directories first: a missing one is created, an existing one keeps its
    // contents. Their own changes count as changes of the run.
    let mut changed_paths = Vec::new();
    for dir in [&params.conf_dir, &params.bin_dir] {
        if files::ensure_dir(dir, DIR_MODE).map_err(|e| format!("ensure dir {dir}: {e}"))? {
            changed_paths.push(dir.clone());
        }
    }

    if files::ensure_file(&conf_path, conflist.as_bytes(), CONF_MODE)
        .map_err(|e| format!("write {conf_path}: {e}"))?
    {
        log::info(&format!("wrote {conf_path}"));
        changed_paths.push(conf_path.clone());
    }

    for file in &params.files {
        let path = join(&params.bin_dir, &file.name);
        if files::ensure_file(&path, file.contents.as_bytes(), file.mode)
            .map_err(|e| format!("write {path}: {e}"))?
        {
            log::info(&format!("wrote {path}"));
            changed_paths.push(path);
        }
    }

    let binaries = match &params.binaries {
        Some(names) => names.clone(),
        None => payload::files().into_iter().map(|f| f.name).collect(),
    };
    for name in &binaries {
        let bytes = payload::read(name).map_err(|e| format!("payload {name}: {e}"))?;
        let path = join(&params.bin_dir, name);
        if files::ensure_file(&path, &bytes, BINARY_MODE)
            .map_err(|e| format!("install {path}: {e}"))?
        {
            log::info(&format!("installed {path} ({} bytes)", bytes.len()));
            changed_paths.push(path);
        }
    }

    let count = params.files.len();
    let noun = if count == 1 { "file" } else { "files" };
    let changed = !changed_paths.is_empty();
    let detail = if changed {
        format!("changed: {}", changed_paths.join(", "))
    } else {
        "nothing changed".into()
    };
    Ok(Outcome::changed(changed)
        .message(format!(
            "conflist, {} plugin binaries and {count} {noun} in place ({detail})",
            binaries.len()
        ))
        .fact("conflist", conf_path)
        .fact("binaries", binaries.join(","))
        .fact("files", count.to_string())
        .fact("changed", changed_paths.join(",")))
}

/// Checks the params before anything is touched; each error names its field.
fn validate(p: &Params) -> Result<(), String> {
    // The CNI spec: alphanumerics, `_`, `.`, `-`, starting with an alphanumeric.
    let name_ok = p
        .name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && p.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !name_ok {
        return Err(format!(
            "invalid params: name {:?}: a CNI network name holds letters, digits, '_', '.' \
             and '-', and starts with a letter or digit",
            p.name
        ));
    }
    // Linux interface names: 1 to 15 bytes, no '/', ':', whitespace.
    if p.bridge.is_empty()
        || p.bridge.len() > 15
        || p.bridge
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        || p.bridge == "."
        || p.bridge == ".."
    {
        return Err(format!(
            "invalid params: bridge {:?}: not a valid interface name (1-15 bytes, no '/', ':' \
             or spaces)",
            p.bridge
        ));
    }
    parse_cidr(&p.subnet).map_err(|why| format!("invalid params: subnet {:?}: {why}", p.subnet))?;
    if p.cni_version.is_empty()
        || !p
            .cni_version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.')
    {
        return Err(format!(
            "invalid params: cniVersion {:?}: expected a version like \"1.0.0\"",
            p.cni_version
        ));
    }
    for (field, dir) in [("confDir", &p.conf_dir), ("binDir", &p.bin_dir)] {
        if !dir.starts_with('/') {
            return Err(format!(
                "invalid params: {field} {dir:?}: must be an absolute path"
            ));
        }
    }
    if let Some(conf_file) = &p.conf_file {
        check_file_name("confFile", conf_file)?;
    }
    for (i, file) in p.files.iter().enumerate() {
        check_file_name(&format!("files[{i}].name"), &file.name)?;
        if file.mode > 0o7777 {
            return Err(format!(
                "invalid params: files[{i}].mode {:#o}: permission bits must be at most 0o7777",
                file.mode
            ));
        }
    }
    for (i, name) in p.binaries.iter().flatten().enumerate() {
        check_file_name(&format!("binaries[{i}]"), name)?;
    }
    if let Some(dir) = &p.ipam_data_dir
        && !dir.starts_with('/')
    {
        return Err(format!(
            "invalid params: ipamDataDir {dir:?}: must be an absolute path"
        ));
    }
    let mut names: Vec<&str> = p.files.iter().map(|f| f.name.as_str()).collect();
    names.extend(p.binaries.iter().flatten().map(String::as_str));
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "invalid params: {:?} is listed twice (files and binaries share binDir)",
            w[0]
        ));
    }
    Ok(())
}

/// A plain file name: not empty, no `/`, not `.` or `..`, no NUL.
fn check_file_name(field: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!(
            "invalid params: {field} {name:?}: must be a plain file name (no '/', not '.' or '..')"
        ));
    }
    Ok(())
}

/// Parses `addr/prefix` and checks the prefix fits the address family.
fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| "expected CIDR notation like 10.88.0.0/16".to_string())?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("prefix {prefix:?} is not a number"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("prefix /{prefix} is longer than /{max}"));
    }
    Ok((addr, prefix))
}

/// Joins a directory and a file name with exactly one `/`.
fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// The conflist, pretty-printed; keys come out in a fixed order, so the bytes
/// are the same for the same params, which keeps re-runs unchanged.
fn conflist(p: &Params) -> Result<String, String> {
    let mut ipam = json!({
        "type": "host-local",
        "ranges": [[{ "subnet": p.subnet }]],
        "routes": [{ "dst": default_route(&p.subnet) }],
    });
    if let Some(dir) = &p.ipam_data_dir {
        ipam["dataDir"] = json!(dir);
    }
    let doc = json!({
        "cniVersion": p.cni_version,
        "name": p.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": p.bridge,
                "isGateway": true,
                "ipMasq": p.ip_masq,
                "hairpinMode": true,
                "ipam": ipam,
            },
            {
                "type": "portmap",
                "capabilities": { "portMappings": true },
            },
        ],
    });
    let mut text =
        serde_json::to_string_pretty(&doc).map_err(|e| format!("encode conflist: {e}"))?;
    text.push('\n');
    Ok(text)
}

/// The default route of the subnet's address family.
fn default_route(subnet: &str) -> &'static str {
    match parse_cidr(subnet) {
        Ok((IpAddr::V6(_), _)) => "::/0",
        _ => "0.0.0.0/0",
    }
}

hostaction_sdk::action!(run);

#[cfg(test)]
mod tests {
    use super::*;

    fn params(json: &str) -> Params {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_validate_and_render() {
        let p = params("{}");
        validate(&p).unwrap();
        let text = conflist(&p).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["name"], "hostaction");
        assert_eq!(
            doc["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.88.0.0/16"
        );
        assert_eq!(doc["plugins"][1]["capabilities"]["portMappings"], true);
        assert_eq!(text, conflist(&p).unwrap());
    }

    #[test]
    fn bad_params_name_the_field() {
        let err = validate(&params(r#"{"subnet": "10.88.0.0/33"}"#)).unwrap_err();
        assert!(err.contains("subnet"), "{err}");
        let err = validate(&params(r#"{"name": "a b"}"#)).unwrap_err();
        assert!(err.contains("name"), "{err}");
        let err = validate(&params(
            r#"{"files": [{"name": "../x", "contents": "", "mode": 420}]}"#,
        ))
        .unwrap_err();
        assert!(err.contains("files[0].name"), "{err}");
        let err = validate(&params(r#"{"confFile": ".."}"#)).unwrap_err();
        assert!(err.contains("confFile"), "{err}");
        validate(&params(r#"{"subnet": "fd00:10::/64"}"#)).unwrap();
        assert!(serde_json::from_str::<Params>(r#"{"bogus": 1}"#).is_err());
    }
}
