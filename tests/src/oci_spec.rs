//! An OCI runtime spec (runc's `config.json`) generated from the agent's
//! DaemonSet in `manifests/agent-daemonset.yaml` itself, as a kubelet with
//! CRI-O would make it, so that a test runs the agent with exactly the
//! privileges the manifest gives: its args and env, uid 0, the capabilities,
//! no new privileges, the read-only root, the runtime's default seccomp
//! profile, the host network (here: a scratch namespace standing in for the
//! node's) and the volumes (here: under a scratch host root).
//!
//! What a kubelet adds and this leaves out: cgroup limits other than memory,
//! rlimits (the runtime's own are inherited),
//! the pod's /etc/hosts and resolv.conf, a service-account token (the cluster
//! test mounts one itself), and a privileged container's host devices.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec};
use serde::Deserialize;
use serde_json::{Value, json};

/// The containers-common default seccomp profile: what CRI-O and podman apply
/// for `seccompProfile: {type: RuntimeDefault}` (Debian's containers-common).
pub const RUNTIME_DEFAULT_SECCOMP: &str = "/usr/share/containers/seccomp.json";

/// Every capability Linux 6.x knows, by number: a privileged container's set.
const ALL_CAPS: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// CRI-O's default capabilities (`default_capabilities` in crio.conf), the
/// set a container starts from before its `drop` and `add`.
const RUNTIME_DEFAULT_CAPS: [&str; 10] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
    "CAP_SYS_CHROOT",
];

/// Where the node's resources are in the test: what a kubelet would take
/// from the node itself.
pub struct Node<'a> {
    /// The node's name (`spec.nodeName`, for `fieldRef`s).
    pub name: &'a str,
    /// The node's network namespace file, for `hostNetwork: true`.
    pub netns: &'a Path,
    /// The node's root: hostPath `P` is `host_root/P`.
    pub host_root: &'a Path,
    /// Where ConfigMap and emptyDir volumes are made (a kubelet's pod dir).
    pub pod_dir: &'a Path,
}

/// The documents of a manifest file (`---` separated), as YAML values.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).map_err(|e| format!("manifest: {e}")))
        .filter(|doc| !matches!(doc, Ok(Value::Null)))
        .collect()
}

/// Applies a patch file's documents to `docs`, each to the document of the
/// same kind and name, as a strategic merge patch does for these fields:
/// maps merge, a list of maps merges item by item on `mountPath` (a
/// volumeMount) or `name`, anything else is replaced.
pub fn patch(docs: &mut [Value], patch_text: &str) -> Result<(), String> {
    for p in documents(patch_text)? {
        let target = docs
            .iter_mut()
            .find(|d| d["kind"] == p["kind"] && d["metadata"]["name"] == p["metadata"]["name"])
            .ok_or_else(|| format!("patch: no {} {} to patch", p["kind"], p["metadata"]["name"]))?;
        merge(target, &p);
    }
    Ok(())
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if p.iter().all(|i| merge_key(i).is_some()) => {
            for item in p {
                match t.iter_mut().find(|i| merge_key(i) == merge_key(item)) {
                    Some(existing) => merge(existing, item),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// A list item's merge key: `mountPath` for a volumeMount (Kubernetes'
/// `patchMergeKey`: two mounts of one volume are two items), else `name`.
fn merge_key(item: &Value) -> Option<&Value> {
    item.get("mountPath").or_else(|| item.get("name"))
}

/// The document of `kind` named `name`.
fn find<T: serde::de::DeserializeOwned>(
    docs: &[Value],
    kind: &str,
    name: &str,
) -> Result<T, String> {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .ok_or_else(|| format!("no {kind} {name} in the manifest"))?;
    serde_json::from_value(doc.clone()).map_err(|e| format!("{kind} {name}: {e}"))
}

/// The runtime spec of the DaemonSet `daemonset`'s first container on `node`.
/// Makes the volumes' scratch directories and files (as a kubelet does):
/// hostPath directories under the host root (`DirectoryOrCreate`),
/// ConfigMap files and emptyDirs under the pod dir.
pub fn generate(docs: &[Value], daemonset: &str, node: &Node<'_>) -> Result<Value, String> {
    let ds: DaemonSet = find(docs, "DaemonSet", daemonset)?;
    let raw = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet" && d["metadata"]["name"] == daemonset)
        .ok_or_else(|| format!("no DaemonSet {daemonset} in the manifest"))?;
    refuse_unmodelled(&raw["spec"]["template"]["spec"])?;
    let pod: PodSpec = ds
        .spec
        .and_then(|s| s.template.spec)
        .ok_or("DaemonSet without a pod template spec")?;
    let container = pod.containers.first().ok_or("pod without containers")?;
    let sc = container.security_context.clone().unwrap_or_default();
    let privileged = sc.privileged == Some(true);

    let caps = capabilities(container, privileged);
    let env = env(container, node)?;
    let args = container
        .args
        .iter()
        .flatten()
        .map(|a| expand(a, &env))
        .collect::<Vec<_>>();
    let mut command = container
        .command
        .clone()
        .unwrap_or_else(|| vec!["/hostaction".into()]);
    command.extend(args);

    let seccomp = match sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) {
        _ if privileged => None, // privileged containers run unconfined
        Some("RuntimeDefault") => Some(seccomp(&caps)?),
        Some("Unconfined") | None => None,
        Some(other) => return Err(format!("seccompProfile type {other} is not modelled")),
    };

    let (mounts, rootfs_propagation) = mounts(docs, &pod, container, node, privileged)?;
    let network = if pod.host_network == Some(true) {
        json!({"type": "network", "path": node.netns})
    } else {
        json!({"type": "network"})
    };
    let memory = container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| quantity_bytes(&q.0))
        .transpose()?;

    let mut linux = json!({
        "namespaces": [{"type": "pid"}, network, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
        "resources": {"devices": [{"allow": false, "access": "rwm"}]},
        "rootfsPropagation": rootfs_propagation,
    });
    if let Some(bytes) = memory {
        linux["resources"]["memory"] = json!({"limit": bytes});
    }
    if let Some(seccomp) = seccomp {
        linux["seccomp"] = seccomp;
    }
    if !privileged {
        linux["maskedPaths"] = json!([
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi"
        ]);
        linux["readonlyPaths"] = json!([
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]);
    }
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    Ok(json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": sc.run_as_user.unwrap_or(0), "gid": sc.run_as_group.unwrap_or(0)},
            "args": command,
            "env": env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
                "inheritable": [], "ambient": [],
            },
            // allowPrivilegeEscalation: false is no_new_privs (unset: true).
            "noNewPrivileges": sc.allow_privilege_escalation == Some(false),
        },
        "root": {"path": "rootfs", "readonly": sc.read_only_root_filesystem == Some(true)},
        "hostname": node.name,
        "mounts": mounts,
        "linux": linux,
    }))
}

/// What the pod spec may hold: what [`generate`] translates, and what gives
/// a container no privilege (scheduling, DNS, probes, ports). Each list is
/// `(field, the value it may also have when not translated)`: `None` for a
/// field translated whatever its value.
const POD_FIELDS: &[(&str, Option<&str>)] = &[
    ("containers", None),
    ("volumes", None),
    ("hostNetwork", None),
    ("serviceAccountName", None),
    ("serviceAccount", None),
    ("automountServiceAccountToken", None),
    ("dnsPolicy", None),
    ("priorityClassName", None),
    ("tolerations", None),
    ("nodeSelector", None),
    ("affinity", None),
    ("terminationGracePeriodSeconds", None),
    ("hostPID", Some("false")),
    ("hostIPC", Some("false")),
    ("hostUsers", Some("true")),
    ("shareProcessNamespace", Some("false")),
    ("securityContext", Some("{}")),
];
const CONTAINER_FIELDS: &[(&str, Option<&str>)] = &[
    ("name", None),
    ("image", None),
    ("imagePullPolicy", None),
    ("command", None),
    ("args", None),
    ("env", None),
    ("resources", None),
    ("securityContext", None),
    ("volumeMounts", None),
    ("ports", None),
    ("livenessProbe", None),
    ("readinessProbe", None),
    ("startupProbe", None),
    ("terminationMessagePath", None),
    ("terminationMessagePolicy", None),
];
const SECURITY_CONTEXT_FIELDS: &[(&str, Option<&str>)] = &[
    ("privileged", None),
    ("allowPrivilegeEscalation", None),
    ("readOnlyRootFilesystem", None),
    ("runAsUser", None),
    ("runAsGroup", None),
    ("capabilities", None),
    ("seccompProfile", None),
    ("runAsNonRoot", Some("false")),
    ("procMount", Some("\"Default\"")),
];
const VOLUME_MOUNT_FIELDS: &[(&str, Option<&str>)] = &[
    ("name", None),
    ("mountPath", None),
    ("readOnly", None),
    ("mountPropagation", None),
    ("recursiveReadOnly", Some("\"Disabled\"")),
];
const VOLUME_FIELDS: &[(&str, Option<&str>)] = &[
    ("name", None),
    ("hostPath", None),
    ("configMap", None),
    ("emptyDir", None),
];
const HOST_PATH_FIELDS: &[(&str, Option<&str>)] = &[("path", None), ("type", None)];
const CONFIG_MAP_FIELDS: &[(&str, Option<&str>)] = &[("name", None)];
const EMPTY_DIR_FIELDS: &[(&str, Option<&str>)] = &[("sizeLimit", None), ("medium", None)];

/// Refuses, by name, a field of the pod spec that [`generate`] would
/// otherwise drop (`hostPID: true`, a pod securityContext, `subPath`,
/// `procMount: Unmasked`, an init container, ...): a spec silently missing
/// one would make the container tests prove less than they say.
fn refuse_unmodelled(pod: &Value) -> Result<(), String> {
    only(pod, "spec.template.spec", POD_FIELDS)?;
    let containers = pod["containers"].as_array().map_or(&[][..], Vec::as_slice);
    if containers.len() != 1 {
        return Err(format!(
            "spec.template.spec.containers: {} containers, only one is modelled",
            containers.len()
        ));
    }
    let c = &containers[0];
    let at = "spec.template.spec.containers[0]";
    only(c, at, CONTAINER_FIELDS)?;
    let sc = &c["securityContext"];
    only(
        sc,
        &format!("{at}.securityContext"),
        SECURITY_CONTEXT_FIELDS,
    )?;
    only(
        &sc["capabilities"],
        &format!("{at}.securityContext.capabilities"),
        &[("add", None), ("drop", None)],
    )?;
    for (i, vm) in c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        only(vm, &format!("{at}.volumeMounts[{i}]"), VOLUME_MOUNT_FIELDS)?;
    }
    for (i, v) in pod["volumes"].as_array().into_iter().flatten().enumerate() {
        let at = format!("spec.template.spec.volumes[{i}]");
        only(v, &at, VOLUME_FIELDS)?;
        only(&v["hostPath"], &format!("{at}.hostPath"), HOST_PATH_FIELDS)?;
        only(
            &v["configMap"],
            &format!("{at}.configMap"),
            CONFIG_MAP_FIELDS,
        )?;
        only(&v["emptyDir"], &format!("{at}.emptyDir"), EMPTY_DIR_FIELDS)?;
        match v["hostPath"]["type"].as_str() {
            None | Some("") | Some("Directory") | Some("DirectoryOrCreate") => {}
            Some(other) => return Err(format!("{at}.hostPath.type {other} is not modelled")),
        }
    }
    Ok(())
}

/// Every key of the object `v` (absent or null: none) is in `allowed`, or
/// has the value `allowed` gives it.
fn only(v: &Value, at: &str, allowed: &[(&str, Option<&str>)]) -> Result<(), String> {
    for (key, value) in v.as_object().into_iter().flatten() {
        let ok = allowed.iter().any(|(k, default)| {
            *k == key
                && default
                    .is_none_or(|d| serde_json::from_str::<Value>(d).ok().as_ref() == Some(value))
        });
        if !ok {
            return Err(format!(
                "{at}.{key}: {value} is not modelled by the spec generator (refused, not dropped)"
            ));
        }
    }
    Ok(())
}

/// The container's capabilities: the runtime's defaults (all when
/// privileged), minus `drop` (`ALL` drops every one), plus `add`.
fn capabilities(container: &Container, privileged: bool) -> BTreeSet<String> {
    let declared = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.clone())
        .unwrap_or_default();
    let name = |c: &String| format!("CAP_{}", c.trim_start_matches("CAP_"));
    let mut caps: BTreeSet<String> = if privileged {
        // Every capability the runtime has to give (this machine's bounding
        // set may lack some: runc fails on a capability it does not hold).
        let bounding = runtime_bounding_set();
        ALL_CAPS
            .iter()
            .enumerate()
            .filter(|(bit, _)| bounding & (1 << bit) != 0)
            .map(|(_, c)| (*c).to_owned())
            .collect()
    } else {
        RUNTIME_DEFAULT_CAPS
            .iter()
            .map(|c| (*c).to_owned())
            .collect()
    };
    if !privileged {
        for d in declared.drop.iter().flatten() {
            if d == "ALL" {
                caps.clear();
            } else {
                caps.remove(&name(d));
            }
        }
    }
    caps.extend(declared.add.iter().flatten().map(name));
    caps
}

/// This process's capability bounding set (`CapBnd`), which runc, run by
/// it, cannot exceed; all bits if unreadable.
fn runtime_bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX)
}

/// The container's env, `fieldRef: spec.nodeName` resolved to the node's
/// name; PATH first, as the image's config would give it.
fn env(container: &Container, node: &Node<'_>) -> Result<Vec<(String, String)>, String> {
    let mut env = vec![(
        "PATH".to_owned(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
    )];
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("spec.nodeName") => node.name.to_owned(),
                other => {
                    return Err(format!(
                        "env {}: valueFrom {other:?} is not modelled",
                        var.name
                    ));
                }
            },
            (None, None) => String::new(),
        };
        env.push((var.name.clone(), value));
    }
    Ok(env)
}

/// `$(NAME)` in an arg, replaced by NAME's value (Kubernetes' expansion).
fn expand(arg: &str, env: &[(String, String)]) -> String {
    env.iter()
        .fold(arg.to_owned(), |a, (k, v)| a.replace(&format!("$({k})"), v))
}

/// `512Mi`, `2Gi`, `1000`: bytes.
fn quantity_bytes(q: &str) -> Result<u64, String> {
    let (digits, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = digits.parse().map_err(|_| format!("quantity {q:?}"))?;
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => return Err(format!("quantity {q:?}: unit not modelled")),
    };
    Ok(n << shift)
}

/// The default mounts of runc's spec, then the container's volumeMounts, and
/// the rootfs propagation their `mountPropagation` needs (as CRI-O sets it).
fn mounts(
    docs: &[Value],
    pod: &PodSpec,
    container: &Container,
    node: &Node<'_>,
    privileged: bool,
) -> Result<(Vec<Value>, &'static str), String> {
    let sys = if privileged { "rw" } else { "ro" };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", sys]}),
    ];
    let mut rootfs_propagation = "rprivate";
    for vm in container.volume_mounts.iter().flatten() {
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == vm.name)
            .ok_or_else(|| format!("volumeMount {}: no such volume", vm.name))?;
        let source: PathBuf = if let Some(hp) = &volume.host_path {
            let dir = node.host_root.join(hp.path.trim_start_matches('/'));
            match hp.type_.as_deref() {
                Some("DirectoryOrCreate") => std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("hostPath {}: {e}", dir.display()))?,
                Some("Directory") if !dir.is_dir() => {
                    return Err(format!(
                        "hostPath {} (type Directory) is missing",
                        dir.display()
                    ));
                }
                _ => {}
            }
            dir
        } else if let Some(cm) = &volume.config_map {
            let map: ConfigMap = find(docs, "ConfigMap", &cm.name)?;
            let dir = node.pod_dir.join("configmap").join(&volume.name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for (key, value) in map.data.iter().flatten() {
                std::fs::write(dir.join(key), value)
                    .map_err(|e| format!("configMap {key}: {e}"))?;
            }
            dir
        } else if volume.empty_dir.is_some() {
            let dir = node.pod_dir.join("empty-dir").join(&volume.name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            dir
        } else {
            return Err(format!(
                "volume {}: only hostPath, configMap and emptyDir are modelled",
                volume.name
            ));
        };
        let propagation = match vm.mount_propagation.as_deref() {
            None | Some("None") => "rprivate",
            Some("HostToContainer") => {
                if rootfs_propagation == "rprivate" {
                    rootfs_propagation = "rslave";
                }
                "rslave"
            }
            Some("Bidirectional") => {
                rootfs_propagation = "rshared";
                "rshared"
            }
            Some(other) => return Err(format!("mountPropagation {other}")),
        };
        let mut options = vec!["rbind", propagation];
        // A configMap volume is always read-only, as the kubelet mounts it.
        if vm.read_only == Some(true) || volume.config_map.is_some() {
            options.push("ro");
        }
        mounts.push(json!({
            "destination": vm.mount_path, "type": "bind", "source": source, "options": options,
        }));
    }
    Ok((mounts, rootfs_propagation))
}

/// The runtime default seccomp profile in the OCI spec's form, for a
/// container with `caps` on x86_64: the containers-common profile (CRI-O's
/// and podman's default) with the rules that apply kept: those whose
/// `includes.caps` the container has all of and `excludes.caps` none of,
/// and whose arches include x86_64's.
fn seccomp(caps: &BTreeSet<String>) -> Result<Value, String> {
    let text = std::fs::read_to_string(RUNTIME_DEFAULT_SECCOMP)
        .map_err(|e| format!("{RUNTIME_DEFAULT_SECCOMP} (containers-common): {e}"))?;
    let profile: Value =
        serde_json::from_str(&text).map_err(|e| format!("{RUNTIME_DEFAULT_SECCOMP}: {e}"))?;
    Ok(seccomp_from_profile(&profile, caps))
}

/// See [`seccomp`]: the conversion itself.
pub fn seccomp_from_profile(profile: &Value, caps: &BTreeSet<String>) -> Value {
    const ARCHES: [&str; 2] = ["amd64", "x86_64"]; // Go's and the kernel's name
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut rules = Vec::new();
    for rule in profile["syscalls"].as_array().into_iter().flatten() {
        let inc_caps = strings(&rule["includes"]["caps"]);
        let exc_caps = strings(&rule["excludes"]["caps"]);
        let inc_arch = strings(&rule["includes"]["arches"]);
        let exc_arch = strings(&rule["excludes"]["arches"]);
        if !inc_caps.iter().all(|c| caps.contains(c))
            || exc_caps.iter().any(|c| caps.contains(c))
            || (!inc_arch.is_empty() && !inc_arch.iter().any(|a| ARCHES.contains(&a.as_str())))
            || exc_arch.iter().any(|a| ARCHES.contains(&a.as_str()))
        {
            continue;
        }
        let mut out = json!({"names": rule["names"], "action": rule["action"]});
        if rule["args"].as_array().is_some_and(|a| !a.is_empty()) {
            out["args"] = rule["args"].clone();
        }
        if let Some(ret) = rule.get("errnoRet") {
            out["errnoRet"] = ret.clone();
        }
        rules.push(out);
    }
    let mut spec = json!({
        "defaultAction": profile["defaultAction"],
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    });
    if let Some(ret) = profile.get("defaultErrnoRet") {
        spec["defaultErrnoRet"] = ret.clone();
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> String {
        std::fs::read_to_string(crate::workspace().join("manifests/agent-daemonset.yaml"))
            .expect("manifest")
    }

    fn spec_of(text: &str, patch_text: Option<&str>) -> (Value, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        // The node's D-Bus directory (the dbus volume is `type: Directory`).
        std::fs::create_dir_all(dir.path().join("host/run/dbus")).expect("dbus dir");
        let mut docs = documents(text).expect("documents");
        if let Some(p) = patch_text {
            patch(&mut docs, p).expect("patch");
        }
        let node = Node {
            name: "node-a",
            netns: Path::new("/run/test-node-netns"),
            host_root: &dir.path().join("host"),
            pod_dir: &dir.path().join("pod"),
        };
        let spec = generate(&docs, "hostaction-agent", &node).expect("spec");
        (spec, dir)
    }

    fn mount<'a>(spec: &'a Value, dest: &str) -> &'a Value {
        spec["mounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["destination"] == dest))
            .unwrap_or_else(|| panic!("no mount at {dest}: {spec:#}"))
    }

    #[test]
    fn the_spec_follows_the_daemonsets_security_context_and_volumes() {
        let (spec, dir) = spec_of(&manifest(), None);
        let p = &spec["process"];
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(p["capabilities"][set], json!(["CAP_NET_ADMIN"]), "{set}");
        }
        for set in ["inheritable", "ambient"] {
            assert_eq!(p["capabilities"][set], json!([]), "{set}");
        }
        assert_eq!(p["noNewPrivileges"], true);
        assert_eq!(p["user"]["uid"], 0);
        assert_eq!(spec["root"]["readonly"], true);
        assert!(
            p["args"]
                .as_array()
                .expect("args")
                .contains(&json!("--node-name=node-a"))
        );
        assert!(
            p["env"]
                .as_array()
                .expect("env")
                .contains(&json!("NODE_NAME=node-a"))
        );
        let namespaces = &spec["linux"]["namespaces"];
        assert!(
            namespaces
                .as_array()
                .expect("ns")
                .contains(&json!({"type": "network", "path": "/run/test-node-netns"}))
        );
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 512 << 20);

        let host = dir.path().join("host");
        let cni = mount(&spec, "/host/opt/cni");
        assert_eq!(cni["source"], json!(host.join("opt/cni")));
        assert!(host.join("opt/cni").is_dir(), "DirectoryOrCreate");
        assert_eq!(
            mount(&spec, "/host/var/run/netns")["options"],
            json!(["rbind", "rslave", "ro"])
        );
        assert_eq!(
            mount(&spec, "/host/run/dbus")["options"],
            json!(["rbind", "rprivate", "ro"])
        );
        assert_eq!(spec["linux"]["rootfsPropagation"], "rslave");
        let policy = mount(&spec, "/etc/hostaction");
        assert_eq!(policy["options"], json!(["rbind", "rprivate", "ro"]));
        let policy_file = Path::new(policy["source"].as_str().expect("source")).join("policy.yaml");
        let policy_text = std::fs::read_to_string(policy_file).expect("policy from the ConfigMap");
        assert!(policy_text.contains("netns: [host]"), "{policy_text}");

        // Seccomp: the profile's rules for a NET_ADMIN-only container.
        let seccomp = &spec["linux"]["seccomp"];
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        let rules_for = |name: &str| -> Vec<Value> {
            seccomp["syscalls"]
                .as_array()
                .expect("syscalls")
                .iter()
                .filter(|r| r["names"].as_array().expect("names").contains(&json!(name)))
                .map(|r| r["action"].clone())
                .collect()
        };
        assert_eq!(rules_for("finit_module"), [json!("SCMP_ACT_ERRNO")]);
        assert_eq!(rules_for("bpf"), [json!("SCMP_ACT_ERRNO")]);
        assert_eq!(rules_for("arch_prctl"), [json!("SCMP_ACT_ALLOW")]);
        assert!(rules_for("s390_runtime_instr").is_empty());
    }

    /// A field the generator does not translate is refused by name, never
    /// dropped: each of these would give the real pod more (or other)
    /// privileges than the generated spec.
    #[test]
    fn a_field_the_generator_does_not_model_is_refused_by_name() {
        let cases = [
            (
                "hostNetwork: true",
                "hostNetwork: true\n      hostPID: true",
                "hostPID",
            ),
            (
                "hostNetwork: true",
                "hostNetwork: true\n      hostIPC: true",
                "hostIPC",
            ),
            (
                "hostNetwork: true",
                "hostNetwork: true\n      hostUsers: false",
                "hostUsers",
            ),
            (
                "hostNetwork: true",
                "hostNetwork: true\n      securityContext: {runAsUser: 1000}",
                "spec.template.spec.securityContext",
            ),
            (
                "hostNetwork: true",
                "hostNetwork: true\n      initContainers: [{name: i, image: x}]",
                "initContainers",
            ),
            (
                "runAsUser: 0",
                "runAsUser: 0\n            procMount: Unmasked",
                "procMount",
            ),
            (
                "runAsUser: 0",
                "runAsUser: 0\n            seLinuxOptions: {type: spc_t}",
                "seLinuxOptions",
            ),
            (
                "runAsUser: 0",
                "runAsUser: 0\n            appArmorProfile: {type: Unconfined}",
                "appArmorProfile",
            ),
            (
                "runAsUser: 0",
                "runAsUser: 0\n            runAsNonRoot: true",
                "runAsNonRoot",
            ),
            (
                "mountPath: /host/opt/cni}",
                "mountPath: /host/opt/cni, subPath: bin}",
                "subPath",
            ),
            (
                "path: /opt/cni, type: DirectoryOrCreate}",
                "path: /opt/cni, type: Socket}",
                "hostPath.type Socket",
            ),
            (
                "configMap: {name: hostaction-node-policy}",
                "configMap: {name: hostaction-node-policy, items: [{key: a, path: b}]}",
                "configMap.items",
            ),
            (
                "- name: agent\n",
                "- name: agent\n          workingDir: /tmp\n",
                "workingDir",
            ),
        ];
        for (from, to, field) in cases {
            let text = manifest();
            assert!(text.contains(from), "{from}");
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::create_dir_all(dir.path().join("host/run/dbus")).expect("dbus dir");
            let docs = documents(&text.replacen(from, to, 1)).expect("documents");
            let node = Node {
                name: "node-a",
                netns: Path::new("/run/test-node-netns"),
                host_root: &dir.path().join("host"),
                pod_dir: &dir.path().join("pod"),
            };
            let err = generate(&docs, "hostaction-agent", &node).expect_err(field);
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    /// A patch adding a second mount of a volume adds it (volumeMounts merge
    /// on mountPath), rather than moving the first.
    #[test]
    fn a_patch_merges_volume_mounts_on_their_mount_path() {
        let patch_text = "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: hostaction-agent}\n\
            spec:\n  template:\n    spec:\n      containers:\n      - name: agent\n        \
            volumeMounts:\n        - {name: netns, mountPath: /host/run/netns}\n";
        let (spec, _dir) = spec_of(&manifest(), Some(patch_text));
        mount(&spec, "/host/run/netns");
        assert_eq!(
            mount(&spec, "/host/var/run/netns")["options"],
            json!(["rbind", "rslave", "ro"])
        );
    }

    #[test]
    fn a_changed_manifest_changes_the_spec() {
        let changed = manifest()
            .replace("add: [NET_ADMIN]", "add: [NET_ADMIN, SYS_ADMIN]")
            .replace(
                "readOnlyRootFilesystem: true",
                "readOnlyRootFilesystem: false",
            )
            .replace(
                "mountPath: /host/opt/cni}",
                "mountPath: /host/opt/cni, readOnly: true}",
            );
        let (spec, _dir) = spec_of(&changed, None);
        assert_eq!(
            spec["process"]["capabilities"]["bounding"],
            json!(["CAP_NET_ADMIN", "CAP_SYS_ADMIN"])
        );
        assert_eq!(spec["root"]["readonly"], false);
        assert_eq!(
            mount(&spec, "/host/opt/cni")["options"],
            json!(["rbind", "rprivate", "ro"])
        );
        let bpf: Vec<&Value> = spec["linux"]["seccomp"]["syscalls"]
            .as_array()
            .expect("syscalls")
            .iter()
            .filter(|r| {
                r["names"]
                    .as_array()
                    .expect("names")
                    .contains(&json!("bpf"))
            })
            .map(|r| &r["action"])
            .collect();
        assert_eq!(bpf, [&json!("SCMP_ACT_ALLOW")], "SYS_ADMIN's rules");
    }

    #[test]
    fn the_named_netns_patch_makes_the_container_privileged_with_bidirectional_netns() {
        let patch_text = std::fs::read_to_string(
            crate::workspace().join("manifests/patches/agent-named-netns.yaml"),
        )
        .expect("patch");
        let (spec, dir) = spec_of(&manifest(), Some(&patch_text));
        let caps = spec["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("caps");
        assert!(caps.contains(&json!("CAP_SYS_ADMIN")) && caps.contains(&json!("CAP_NET_ADMIN")));
        assert!(
            spec["linux"].get("seccomp").is_none(),
            "privileged: unconfined"
        );
        assert_eq!(
            mount(&spec, "/host/var/run/netns")["options"],
            json!(["rbind", "rshared"])
        );
        assert_eq!(spec["linux"]["rootfsPropagation"], "rshared");
        let marks = mount(&spec, "/host/var/run/hostaction");
        assert_eq!(
            marks["source"],
            json!(dir.path().join("host/var/run/hostaction"))
        );
        let policy = mount(&spec, "/etc/hostaction");
        let text = std::fs::read_to_string(
            Path::new(policy["source"].as_str().expect("source")).join("policy.yaml"),
        )
        .expect("policy");
        assert!(text.contains("ovl-*"), "{text}");
        drop(dir);
    }
}
