//! The agent as a real container: the agent image's rootfs run by runc with
//! an OCI spec generated from `manifests/agent-daemonset.yaml` itself
//! ([`hostaction_tests::oci_spec`]): uid 0, NET_ADMIN only, no new
//! privileges, a read-only root, the runtime's default seccomp profile, the
//! host network — a scratch namespace standing in for the node's, never the
//! machine's own — and the manifest's hostPath volumes under a scratch host
//! root. Static mode runs cni-install and vxlan-overlay in it; the
//! named-netns patch (`manifests/patches/agent-named-netns.yaml`) is the
//! documented variant; and the container is shown to be refused what its
//! mounts and capabilities do not give, the host unchanged after each.
//!
//! Needs root, runc (Debian's 1.1.5), umoci and what
//! `scripts/build-images.sh` needs (the agent image), util-linux (`unshare`, `nsenter`,
//! `mount`), iproute2, systemd-container (the services test) and the
//! control plane of `scripts/build-control-plane.sh` (the cluster test). Test-only additions to the generated
//! spec, each named where it is made: the static manifests directory
//! (`/etc/hostaction-manifests`), the built guests (`/guests`) and the probe
//! binary (`/probe`), all bind-mounted read-only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hostaction_tests::output_text as text;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use hostaction_tests::oci_spec::{self, Node};
use hostaction_tests::{Host, workspace};
use serde_json::{Value, json};

/// How long one container may run before it is killed (a cold compile of
/// a guest on a loaded 2-core machine takes tens of seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Where the test mounts its static-mode manifests in the container.
const MANIFESTS_IN_CONTAINER: &str = "/etc/hostaction-manifests";

/// The agent image's rootfs, unpacked once per test process into
/// `target/tmp/agent-rootfs/PID` (a static is never dropped: a temporary
/// directory would be left behind by every run); a dead process's is
/// removed here, and its containers deleted.
fn rootfs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-rootfs");
        std::fs::create_dir_all(&base).unwrap();
        for entry in std::fs::read_dir(&base).unwrap().flatten() {
            let pid = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        delete_orphaned_containers();
        let dir = base.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        image_rootfs(&workspace().join("scripts/build-images.sh"), &dir);
        dir.join("rootfs")
    })
}

/// The prefix of this module's runc container ids: `PREFIX<test pid>-<dir>`.
const CONTAINER_PREFIX: &str = "hostaction-test-";

/// Deletes (killing them) the containers of test processes that are gone:
/// a test killed midway (SIGKILL) leaves its container running, and the
/// named-netns variant's is a privileged agent.
fn delete_orphaned_containers() {
    let list = sh("runc", &["list", "--quiet"]);
    for id in list.lines() {
        let pid = id
            .strip_prefix(CONTAINER_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = Command::new("runc")
                .args(["delete", "--force", id])
                .status();
        }
    }
}

/// The agent image itself: built from the release binary by
/// `scripts/build-images.sh --no-build` into `dir/images`, unpacked with
/// umoci into `dir/rootfs`.
fn image_rootfs(script: &Path, dir: &Path) {
    let images = dir.join("images");
    sh(
        script.to_str().unwrap(),
        &[
            "--no-build",
            "--only",
            "hostaction",
            "--out",
            images.to_str().unwrap(),
        ],
    );
    let image = format!(
        "{}:{}",
        images.join("hostaction").display(),
        env!("CARGO_PKG_VERSION")
    );
    let rootfs = dir.join("rootfs");
    sh(
        "umoci",
        &["raw", "unpack", "--image", &image, rootfs.to_str().unwrap()],
    );
}

/// Runs `program args` and asserts it succeeded.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace bind-mounted on a file, made with `unshare --net=FILE`.
struct Netns(PathBuf);

impl Netns {
    fn new(path: PathBuf) -> Self {
        std::fs::write(&path, "").unwrap();
        sh("unshare", &[&format!("--net={}", path.display()), "true"]);
        let ns = Self(path);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec![format!("--net={}", self.0.display()), "ip".into()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        sh("nsenter", &all)
    }

    /// The links: name → kind (`ip -j -d link`).
    fn links(&self) -> BTreeMap<String, Value> {
        let v: Value = serde_json::from_str(&self.ip(&["-j", "-d", "link", "show"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|l| (l["ifname"].as_str().unwrap().to_owned(), l.clone()))
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A scratch node and the agent's container on it: the bundle, the scratch
/// host root (its /var/run/netns a shared mount, as `ip netns` leaves it),
/// and the scratch namespace standing in for the node's.
/// Fields drop in this order: the node's namespace is unmounted before its
/// file's directory is removed (else the removal stops at the mount point
/// and leaves the whole directory behind).
struct Pod {
    node: Netns,
    host: Host,
    dir: tempfile::TempDir,
    spec: Value,
    id: String,
}

impl Pod {
    /// The pod of `manifests/agent-daemonset.yaml`, with the patch files
    /// `patches` (paths under the workspace) applied.
    fn new(patches: &[&str]) -> Self {
        let text =
            std::fs::read_to_string(workspace().join("manifests/agent-daemonset.yaml")).unwrap();
        let mut docs = oci_spec::documents(&text).unwrap();
        for p in patches {
            oci_spec::patch(
                &mut docs,
                &std::fs::read_to_string(workspace().join(p)).unwrap(),
            )
            .unwrap();
        }
        Self::of(&docs)
    }

    /// The pod of the manifest documents `docs`.
    fn of(docs: &[Value]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new();
        // A node with D-Bus (the dbus volume is `type: Directory`).
        std::fs::create_dir_all(host.path("/run/dbus")).unwrap();
        let netns_dir = host.path("/var/run/netns");
        std::fs::create_dir_all(&netns_dir).unwrap();
        let d = netns_dir.to_str().unwrap();
        sh("mount", &["--bind", d, d]);
        sh("mount", &["--make-shared", d]);
        let node = Netns::new(dir.path().join("node-netns"));
        // The node's underlay, for the vxlan.
        node.ip(&[
            "link", "add", "ul0", "type", "veth", "peer", "name", "ul0-peer",
        ]);
        node.ip(&["address", "add", "192.168.50.1/24", "dev", "ul0"]);
        node.ip(&["link", "set", "ul0", "up"]);

        let mut spec = oci_spec::generate(
            docs,
            "hostaction-agent",
            &Node {
                name: "node-a",
                netns: &node.0,
                host_root: host.root.path(),
                pod_dir: &dir.path().join("pod"),
            },
        )
        .unwrap();
        spec["root"]["path"] = json!(rootfs());
        let id = format!(
            "{CONTAINER_PREFIX}{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .trim_start_matches('.')
        );
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        // Test-only: the static manifests and the built guests.
        let mut pod = Self {
            node,
            host,
            dir,
            spec,
            id,
        };
        let manifests = pod.dir.path().join("manifests");
        pod.mount(MANIFESTS_IN_CONTAINER, &manifests);
        pod.mount("/guests", &workspace().join("target/guests"));
        pod
    }

    /// Adds a read-only bind mount (test-only, not from the manifest).
    fn mount(&mut self, destination: &str, source: &Path) {
        self.spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": destination, "type": "bind", "source": source,
            "options": ["rbind", "rprivate", "ro"],
        }));
    }

    /// The process as static mode: the manifest's args with `--node-name`
    /// (and its env) replaced by the manifests directory, one pass.
    fn static_mode(&mut self) {
        let process = &mut self.spec["process"];
        let mut args: Vec<Value> = process["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| !a.as_str().unwrap().starts_with("--node-name="))
            .cloned()
            .collect();
        args.extend([
            json!(format!("--manifests={MANIFESTS_IN_CONTAINER}")),
            json!("--once"),
        ]);
        process["args"] = json!(args);
        let env: Vec<Value> = process["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| !e.as_str().unwrap().starts_with("NODE_NAME="))
            .cloned()
            .collect();
        process["env"] = json!(env);
    }

    fn manifest(&self, file: &str, text: &str) {
        std::fs::write(self.dir.path().join("manifests").join(file), text).unwrap();
    }

    /// `runc run` of the spec, written into the pod's bundle, stdin closed.
    fn runc_run(&self) -> Command {
        let bundle = self.dir.path().join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&self.spec).unwrap(),
        )
        .unwrap();
        let mut command = Command::new("runc");
        command
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&self.id)
            .stdin(Stdio::null());
        command
    }

    /// Runs the container to its end (`runc run`), killed after
    /// [`RUN_TIMEOUT`].
    fn run(&self) -> Output {
        let child = self
            .runc_run()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let id = self.id.clone();
        let (done, timed_out) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if timed_out.recv_timeout(RUN_TIMEOUT).is_err() {
                let _ = Command::new("runc").args(["kill", &id, "KILL"]).status();
            }
        });
        let out = child.wait_with_output().unwrap();
        let _ = done.send(());
        watchdog.join().unwrap();
        out
    }

    /// Starts the container (`runc run`) without waiting; the Pod's drop
    /// kills it.
    fn start(&self, log: &Path) -> std::process::Child {
        let log = std::fs::File::create(log).unwrap();
        self.runc_run()
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// The static agent's state file (in the cache volume, an emptyDir).
    fn state(&self) -> Value {
        let path = self
            .dir
            .path()
            .join("pod/empty-dir/cache/static-state.json");
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}

fn cni_install() -> String {
    r#"apiVersion: hostaction.dev/v1alpha1
kind: HostAction
metadata:
  name: cni
spec:
  module: /guests/cni-install.wasm
  params: {name: podnet}
  grants:
    files:
      write: [/etc/cni/net.d, /opt/cni/bin]
"#
    .into()
}

/// vxlan-overlay in the node's own namespace (`netns: null`), its workload
/// namespace `work`.
fn vxlan_overlay(work: &str) -> String {
    format!(
        r#"apiVersion: hostaction.dev/v1alpha1
kind: HostAction
metadata:
  name: overlay
spec:
  module: /guests/vxlan-overlay.wasm
  params:
    netns: null
    vxlan: {{vni: 42, local: 192.168.50.1, remote: 192.168.50.2, device: ul0}}
    workload: {{netns: {work}, address: 10.244.0.1/24}}
  grants:
    network:
      netns: [host, "ovl-*"]
      interfaces: ["br-ovl", "vx-ovl", "ve-ovl*", "ul0"]
      kinds: [bridge, vxlan, veth]
      addresses: [10.244.0.0/16]
      ownedOnly: true
"#
    )
}

fn status<'a>(state: &'a Value, action: &str) -> &'a Value {
    &state["actions"][action]["status"]
}

#[test]
fn the_daemonsets_container_runs_cni_install_in_static_mode() {
    let mut pod = Pod::new(&[]);
    pod.static_mode();
    pod.manifest("cni.yaml", &cni_install());
    let out = pod.run();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let state = pod.state();
    assert_eq!(status(&state, "cni")["phase"], "Succeeded", "{state:#}");
    let conf = pod.host.path("/etc/cni/net.d/10-podnet.conflist");
    assert!(conf.is_file(), "{}", text(&out));
    assert!(std::fs::read_to_string(conf).unwrap().contains("podnet"));
    assert!(
        pod.host
            .path("/opt/cni/bin/hostaction-cni-install.version")
            .is_file()
    );
}

/// The manifest's documents, the named-netns patch applied to the
/// documents of `kinds` only.
fn patched(kinds: &[&str]) -> Vec<Value> {
    let text = std::fs::read_to_string(workspace().join("manifests/agent-daemonset.yaml")).unwrap();
    let mut docs = oci_spec::documents(&text).unwrap();
    let patch =
        std::fs::read_to_string(workspace().join("manifests/patches/agent-named-netns.yaml"))
            .unwrap();
    let wanted: Vec<Value> = oci_spec::documents(&patch)
        .unwrap()
        .into_iter()
        .filter(|d| kinds.iter().any(|k| d["kind"] == *k))
        .collect();
    let wanted: Vec<String> = wanted
        .iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap())
        .collect();
    oci_spec::patch(&mut docs, &wanted.join("---\n")).unwrap();
    docs
}

/// The DaemonSet's container as shipped: the host's own namespace only. The
/// node policy refuses the workload namespace before anything touches it;
/// with a policy that gives it, the kernel does (no CAP_SYS_ADMIN), and the
/// run says so.
#[test]
fn the_shipped_container_shapes_the_hosts_namespace_and_is_refused_a_named_one() {
    let mut pod = Pod::new(&[]);
    pod.static_mode();
    pod.manifest("cni.yaml", &cni_install());
    pod.manifest("overlay.yaml", &vxlan_overlay("ovl-work"));
    let out = pod.run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let state = pod.state();
    assert_eq!(status(&state, "cni")["phase"], "Succeeded", "{state:#}");
    assert_eq!(status(&state, "overlay")["phase"], "Failed", "{state:#}");
    let message = status(&state, "overlay")["message"].as_str().unwrap();
    assert!(
        message.contains("netns ovl-work") && message.contains("permission denied"),
        "{message}"
    );
    // The failed run was rolled back (the default): the host's side of the
    // overlay, made before the refusal, is gone from the node's namespace.
    let links = pod.node.links();
    for link in ["br-ovl", "vx-ovl", "ve-ovl"] {
        assert!(!links.contains_key(link), "{link}: {links:#?}");
    }
    let rollback = &status(&state, "overlay")["rollback"];
    assert!(rollback["restored"].as_i64().unwrap() >= 2, "{state:#}");
    assert!(rollback.get("failed").is_none(), "{state:#}");
    assert!(!pod.host.netns("ovl-work").exists());

    // The policy widened, the container not: the kernel refuses.
    let mut pod = Pod::of(&patched(&["ConfigMap"]));
    pod.static_mode();
    pod.manifest("overlay.yaml", &vxlan_overlay("ovl-work"));
    let out = pod.run();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let state = pod.state();
    let message = status(&state, "overlay")["message"].as_str().unwrap();
    assert!(message.contains("CAP_SYS_ADMIN"), "{message}");
    assert!(!is_netns(&pod.host.netns("ovl-work")));
}

/// Whether `path` is a network namespace seen from the machine.
fn is_netns(path: &Path) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={}", path.display()))
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// The workload namespace's side, seen from the machine.
fn assert_workload_side(pod: &Pod) {
    let work = Netns(pod.host.netns("ovl-work"));
    let links = work.links();
    assert_eq!(links["ve-ovl-w"]["linkinfo"]["info_kind"], "veth");
    assert!(
        work.ip(&["-j", "address", "show", "dev", "ve-ovl-w"])
            .contains("10.244.0.1")
    );
    std::mem::forget(work); // the Host's drop detaches it
    let node = pod.node.links();
    assert_eq!(node["ve-ovl"]["master"], "br-ovl");
}

/// The documented variant (manifests/patches/agent-named-netns.yaml):
/// privileged, /var/run/netns Bidirectional: vxlan-overlay makes its
/// workload namespace, and the host sees it.
#[test]
fn the_named_netns_variant_runs_vxlan_overlay_with_its_workload_namespace() {
    let mut pod = Pod::new(&["manifests/patches/agent-named-netns.yaml"]);
    pod.static_mode();
    pod.manifest("overlay.yaml", &vxlan_overlay("ovl-work"));
    let out = pod.run();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(status(&pod.state(), "overlay")["phase"], "Succeeded");
    assert!(is_netns(&pod.host.netns("ovl-work")));
    assert_workload_side(&pod);
}

/// What the kernel needs, below Kubernetes' rule that Bidirectional means
/// privileged: NET_ADMIN and SYS_ADMIN, the default seccomp profile, and
/// /var/run/netns shared. With HostToContainer instead the namespace is
/// made in the container's view only: the run succeeds, the host never sees
/// it, and it is gone with the container — why the patch needs Bidirectional.
#[test]
fn net_admin_and_sys_admin_with_shared_netns_is_the_kernels_minimum() {
    let unprivileged = |propagation: &str| {
        let mut docs = patched(&["ConfigMap", "DaemonSet"]);
        let ds = docs.iter_mut().find(|d| d["kind"] == "DaemonSet").unwrap();
        let c = &mut ds["spec"]["template"]["spec"]["containers"][0];
        c["securityContext"]["privileged"] = json!(false);
        c["securityContext"]["allowPrivilegeEscalation"] = json!(false);
        for m in c["volumeMounts"].as_array_mut().unwrap() {
            if m["name"] == "netns" {
                m["mountPropagation"] = json!(propagation);
            }
        }
        let mut pod = Pod::of(&docs);
        let caps = &pod.spec["process"]["capabilities"]["bounding"];
        assert_eq!(*caps, json!(["CAP_NET_ADMIN", "CAP_SYS_ADMIN"]));
        assert!(pod.spec["linux"]["seccomp"].is_object());
        pod.static_mode();
        pod.manifest("overlay.yaml", &vxlan_overlay("ovl-work"));
        let out = pod.run();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        pod
    };
    let pod = unprivileged("Bidirectional");
    assert!(is_netns(&pod.host.netns("ovl-work")));
    assert_workload_side(&pod);

    let pod = unprivileged("HostToContainer");
    assert!(!is_netns(&pod.host.netns("ovl-work")));
    // The kernel frees a namespace asynchronously once its last user is
    // gone: the host end of the pair goes with it.
    let started = std::time::Instant::now();
    while pod.node.links().contains_key("ve-ovl") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the workload namespace outlived its container"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Everything a refusal test checks is unchanged: the scratch host root,
/// the node's namespace, the machine's own links and loaded modules.
#[derive(Debug, PartialEq)]
struct World {
    host: String,
    node_links: Vec<String>,
    machine_links: String,
    modules: String,
}

/// Every entry under `root` with its type, mode, owner, size, inode and
/// mtime (`find -printf`; namespace files are not read, only listed).
fn tree(root: &Path) -> String {
    let mut lines: Vec<String> = sh(
        "find",
        &[
            root.to_str().unwrap(),
            "-printf",
            "%P %y %m %U:%G %s %i %T@\\n",
        ],
    )
    .lines()
    .map(str::to_owned)
    .collect();
    lines.sort();
    lines.join("\n")
}

fn world(pod: &Pod) -> World {
    World {
        host: tree(pod.host.root.path()),
        node_links: pod.node.links().into_keys().collect(),
        machine_links: sh("ip", &["-o", "link", "show"])
            .lines()
            .filter(|l| !l.contains("veth") && !l.contains("@"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            .collect::<Vec<_>>()
            .join(","),
        // A kernel without module support has no /proc/modules: nothing
        // can be loaded there, and that is what is compared.
        modules: std::fs::read_to_string("/proc/modules")
            .unwrap_or_else(|e| format!("no /proc/modules: {e}")),
    }
}

/// Runs the probe with `ops` in the DaemonSet's container (the agent's
/// process replaced; the probe bind-mounted read-only at /probe, test-only)
/// and returns op → its result (`ok` or `errno=N`), after asserting the
/// host unchanged.
fn probe(ops: &[&str], prepare: impl FnOnce(&Pod)) -> BTreeMap<String, String> {
    let mut pod = Pod::new(&[]);
    pod.mount("/probe", Path::new(env!("CARGO_BIN_EXE_container-probe")));
    pod.spec["process"]["args"] = json!(
        std::iter::once("/probe")
            .chain(ops.iter().copied())
            .collect::<Vec<_>>()
    );
    prepare(&pod);
    let before = world(&pod);
    let out = pod.run();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(world(&pod), before, "the host changed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(op, r)| (op.to_owned(), r.to_owned()))
        .collect()
}

fn expect(results: &BTreeMap<String, String>, want: &[(&str, &str)]) {
    let want: BTreeMap<String, String> = want
        .iter()
        .map(|(o, r)| ((*o).to_owned(), (*r).to_owned()))
        .collect();
    assert_eq!(*results, want);
}

const EPERM: &str = "errno=1";
const EACCES: &str = "errno=13";
const EROFS: &str = "errno=30";

#[test]
fn the_container_cannot_write_outside_its_mounts() {
    let ops = [
        "write:/etc/probe",
        "write:/hostaction",
        "write:/host/etc/probe",
        "write:/host/opt/probe",
        "write:/host/var/run/probe",
        "write:/etc/hostaction/policy.yaml",
        // Read-only host mounts: the agent only connects to the bus and
        // looks at the namespaces (else root could replace the host's
        // system_bus_socket).
        "write:/host/run/dbus/probe",
        "write:/host/var/run/netns/probe",
        "write:/proc/sys/net/ipv4/ip_forward",
        "write:/sys/kernel/uevent_helper",
        // The emptyDir is writable: the refusals above are the mounts'.
        "write:/var/cache/hostaction/probe",
    ];
    let results = probe(&ops, |_| {});
    let mut want: Vec<(&str, &str)> = ops[..10].iter().map(|o| (*o, EROFS)).collect();
    want.push((ops[10], "ok"));
    expect(&results, &want);
}

/// EPERM from both layers on a kernel with modules: no CAP_SYS_MODULE and
/// the runtime's seccomp profile. On a kernel built without module support
/// (as some CI machines are: no /proc/modules, root itself gets ENOSYS) the
/// EPERM is seccomp's alone.
#[test]
fn the_container_cannot_load_a_kernel_module() {
    let results = probe(&["finit_module", "init_module"], |_| {});
    expect(&results, &[("finit_module", EPERM), ("init_module", EPERM)]);
}

#[test]
fn the_container_cannot_mount() {
    let results = probe(&["mount-tmpfs", "remount-root-rw", "unshare-mount"], |_| {});
    expect(
        &results,
        &[
            ("mount-tmpfs", EPERM),
            ("remount-root-rw", EPERM),
            ("unshare-mount", EPERM),
        ],
    );
}

#[test]
fn the_container_cannot_enter_or_make_another_network_namespace() {
    let results = probe(&["setns:/host/var/run/netns/other", "unshare-net"], |pod| {
        // A namespace of the host's, visible through the netns mount.
        std::mem::forget(Netns::new(pod.host.netns("other")));
    });
    expect(
        &results,
        &[
            ("setns:/host/var/run/netns/other", EPERM),
            ("unshare-net", EPERM),
        ],
    );
}

/// uid 0 without the other capabilities: no chown, no device nodes, no raw
/// sockets, no hostname, no reading another user's file on a host mount.
#[test]
fn the_container_is_root_without_roots_other_capabilities() {
    let ops = [
        "chown:/var/cache/hostaction/owned",
        "mknod:/var/cache/hostaction/null",
        "raw-socket",
        "sethostname",
        "read:/host/opt/cni/bin/secret",
    ];
    let results = probe(&ops, |pod| {
        let secret = pod.host.path("/opt/cni/bin/secret");
        std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
        std::fs::write(&secret, "key").unwrap();
        sh("chown", &["1000:1000", secret.to_str().unwrap()]);
        sh("chmod", &["600", secret.to_str().unwrap()]);
    });
    expect(
        &results,
        &[
            (ops[0], EPERM),
            (ops[1], EPERM),
            (ops[2], EPERM),
            (ops[3], EPERM),
            (ops[4], EACCES),
        ],
    );
}

/// Makes 127.0.0.1:`port` in the namespace `netns` lead to 127.0.0.1:`port`
/// on the machine: the listener is made by a thread that entered the
/// namespace (a socket stays in the namespace it was made in), the
/// connections onwards by threads in the machine's own. For the test
/// process's life.
fn relay(netns: &Path, port: u16) {
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::AsFd;
    let ns = std::fs::File::open(netns).unwrap();
    let listener = std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        TcpListener::bind(("127.0.0.1", port)).unwrap()
    })
    .join()
    .unwrap();
    std::thread::spawn(move || {
        for inner in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(outer) = TcpStream::connect(("127.0.0.1", port)) else {
                    return;
                };
                let pipe = |mut from: TcpStream, mut to: TcpStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    })
                };
                let a = pipe(inner.try_clone().unwrap(), outer.try_clone().unwrap());
                let b = pipe(outer, inner);
                let _ = (a.join(), b.join());
            });
        }
    });
}

/// Pushes a built guest to `registry`; returns its reference pinned by
/// digest.
fn push(registry: &hostaction_tests::registry::Registry, guest: &str, cache: &Path) -> String {
    let out = sh(
        hostaction_tests::hostaction_bin().to_str().unwrap(),
        &[
            "--cache-dir",
            cache.to_str().unwrap(),
            "push",
            hostaction_tests::guest(guest).to_str().unwrap(),
            &format!("{}/actions/{guest}:v1", registry.addr()),
            "--plain-http",
        ],
    );
    out.trim().to_owned()
}

/// The DaemonSet's container as a cluster agent: in-cluster config (the
/// ServiceAccount directory with a TokenRequest token of the manifests'
/// `hostaction-agent`, bound to a Pod on the node, RBAC and the admission
/// policy from `manifests/` applied), the API server and the registry
/// reached through relays into the node's namespace. The real controller
/// (a machine process, its own account's token) makes the runs: cni-install
/// succeeds; vxlan-overlay fails as the shipped policy says it must (its
/// workload namespace is a named one).
#[tokio::test(flavor = "multi_thread")]
async fn the_daemonsets_container_is_a_cluster_agent_against_the_real_api_server() {
    cluster_agent(&[]).await;
}

/// The same with the documented named-netns variant
/// (manifests/patches/agent-named-netns.yaml): both actions succeed, and
/// the machine sees the workload namespace the cluster agent made.
#[tokio::test(flavor = "multi_thread")]
async fn the_named_netns_variant_is_a_cluster_agent_running_vxlan_overlay() {
    cluster_agent(&["manifests/patches/agent-named-netns.yaml"]).await;
}

/// The DaemonSet's container, `patches` applied, as a cluster agent: runs
/// cni-install and vxlan-overlay from HostActions the real controller rolls
/// out; vxlan-overlay succeeds only where the patches give named namespaces.
async fn cluster_agent(patches: &[&str]) {
    use hostaction_crds::HostAction;
    use hostaction_tests::kube_control_plane::{
        ControlPlane, create_ready_node, service_account_token,
    };
    use k8s_openapi::api::core::v1::Pod as KubePod;
    use kube::api::{Api, PostParams};

    let plane = ControlPlane::start();
    plane.apply_and_wait_for_crds(&workspace().join("manifests"));
    let admin = plane.client();
    create_ready_node(&admin, "node-a", json!({"kubernetes.io/os": "linux"}))
        .await
        .unwrap();
    let kube_pod: KubePod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent-node-a", "namespace": "hostaction-system"},
        "spec": {"serviceAccountName": "hostaction-agent", "nodeName": "node-a",
                 "containers": [{"name": "agent", "image": "registry.example/hostaction/hostaction:0.1.0"}]},
    }))
    .unwrap();
    let kube_pod = Api::<KubePod>::namespaced(admin.clone(), "hostaction-system")
        .create(&PostParams::default(), &kube_pod)
        .await
        .unwrap();
    let agent_token = service_account_token(
        &admin,
        "hostaction-system",
        "hostaction-agent",
        Some(&kube_pod),
    )
    .await
    .unwrap();
    let controller_token =
        service_account_token(&admin, "hostaction-system", "hostaction-controller", None)
            .await
            .unwrap();

    let registry = hostaction_tests::registry::Registry::plain();
    let work = tempfile::tempdir().unwrap();
    let cni = push(&registry, "cni-install", &work.path().join("push-cache"));
    let overlay = push(&registry, "vxlan-overlay", &work.path().join("push-cache"));

    // The container: the manifest's args, plus --plain-http (test-only: the
    // test's registry is plain HTTP), and what a kubelet gives a pod.
    let mut pod = Pod::new(patches);
    let named = !patches.is_empty();
    let api_port: u16 = plane.url().rsplit(':').next().unwrap().parse().unwrap();
    let registry_port: u16 = registry.addr().rsplit(':').next().unwrap().parse().unwrap();
    let sa = work.path().join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("token"), &agent_token).unwrap();
    std::fs::copy(plane.dir().join("serving-ca.crt"), sa.join("ca.crt")).unwrap();
    std::fs::write(sa.join("namespace"), "hostaction-system").unwrap();
    pod.mount("/var/run/secrets/kubernetes.io/serviceaccount", &sa);
    let process = &mut pod.spec["process"];
    process["args"]
        .as_array_mut()
        .unwrap()
        .push(json!("--plain-http"));
    let env = process["env"].as_array_mut().unwrap();
    env.push(json!("KUBERNETES_SERVICE_HOST=127.0.0.1"));
    env.push(json!(format!("KUBERNETES_SERVICE_PORT={api_port}")));
    relay(&pod.node.0, api_port);
    relay(&pod.node.0, registry_port);
    let agent_log = work.path().join("agent.log");
    let mut agent = pod.start(&agent_log);

    // The real controller, with its own account's token.
    let kubeconfig = plane.token_kubeconfig("controller", &controller_token);
    let controller_log = work.path().join("controller.log");
    let mut controller = Command::new(hostaction_tests::controller_bin())
        .args([
            "--lease-namespace",
            "hostaction-system",
            "--plain-http",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&controller_log).unwrap())
        .stderr(std::fs::File::create(work.path().join("controller.err")).unwrap())
        .spawn()
        .unwrap();

    let actions: Api<HostAction> = Api::all(admin.clone());
    let action = |name: &str, module: &str, params: Value, grants: Value| -> HostAction {
        serde_json::from_value(json!({
            "apiVersion": "hostaction.dev/v1alpha1", "kind": "HostAction",
            "metadata": {"name": name},
            "spec": {"module": module, "params": params, "grants": grants},
        }))
        .unwrap()
    };
    let cni_action = action(
        "cni",
        &cni,
        json!({"name": "podnet"}),
        json!({"files": {"write": ["/etc/cni/net.d", "/opt/cni/bin"]}}),
    );
    let overlay_doc: Value = serde_yaml_ng::from_str(&vxlan_overlay("ovl-work")).unwrap();
    let overlay_action = action(
        "overlay",
        &overlay,
        overlay_doc["spec"]["params"].clone(),
        overlay_doc["spec"]["grants"].clone(),
    );
    for a in [&cni_action, &overlay_action] {
        actions.create(&PostParams::default(), a).await.unwrap();
    }

    let logs = || {
        format!(
            "agent:\n{}\ncontroller:\n{}",
            std::fs::read_to_string(&agent_log).unwrap_or_default(),
            std::fs::read_to_string(&controller_log).unwrap_or_default()
        )
    };
    let started = std::time::Instant::now();
    loop {
        let counts = |a: HostAction| {
            a.status
                .map(|s| (s.counts.succeeded, s.counts.failed))
                .unwrap_or_default()
        };
        let cni_counts = counts(actions.get("cni").await.unwrap());
        let overlay_counts = counts(actions.get("overlay").await.unwrap());
        let overlay_expected = if named { (1, 0) } else { (0, 1) };
        if cni_counts == (1, 0) && overlay_counts == overlay_expected {
            break;
        }
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "cni {cni_counts:?}, overlay {overlay_counts:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(pod.host.path("/etc/cni/net.d/10-podnet.conflist").is_file());
    if named {
        assert_workload_side(&pod);
    } else {
        let runs: Api<hostaction_crds::HostActionRun> = Api::all(admin.clone());
        let failed = runs.get("overlay.node-a.g1").await.unwrap();
        let message = failed.status.unwrap().message.unwrap_or_default();
        assert!(
            message.contains("netns ovl-work") && message.contains("permission denied"),
            "{message}"
        );
    }
    // Made by the run that succeeded; rolled back with the run that failed.
    assert_eq!(pod.node.links().contains_key("vx-ovl"), named);
    let logs = logs();
    // A 403 as the API server's answer, not three digits of a timestamp.
    assert!(
        !logs.contains("Forbidden")
            && !["(403)", "403 ", "\"code\":403"]
                .iter()
                .any(|c| logs.contains(c)),
        "{logs}"
    );

    let _ = controller.kill();
    let _ = controller.wait();
    drop(pod); // runc delete --force
    let _ = agent.wait();
}

/// `services` in the shipped container: the D-Bus directory mount and uid 0
/// are all it takes (no capability: systemd lets a bus peer of its own uid
/// manage units). The node's D-Bus is a systemd booted by the test
/// (`hostaction_tests::systemd`): its bus directory is the hostPath
/// `/run/dbus` here.
#[test]
fn the_shipped_container_restarts_a_unit_over_the_mounted_bus() {
    use hostaction_tests::systemd::{Systemd, Unit};
    let systemd = Systemd::boot(
        &[Unit {
            name: "containerd.service",
            contents: "[Service]\nExecStart=/bin/sh -c 'echo $$$$ >> /run/ha-state/starts; exec sleep infinity'\n",
            enabled: true,
        }],
        &[],
    );
    let starts = |n: usize| {
        let started = std::time::Instant::now();
        loop {
            let count = systemd.trace("starts").lines().count();
            if count >= n || started.elapsed() > Duration::from_secs(30) {
                return count;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(starts(1), 1);

    let mut pod = Pod::new(&[]);
    let address = systemd.address();
    let bus_dir = Path::new(address.trim_start_matches("unix:path="))
        .parent()
        .unwrap()
        .to_owned();
    let dbus = pod.spec["mounts"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["destination"] == "/host/run/dbus")
        .unwrap();
    dbus["source"] = json!(bus_dir);
    pod.static_mode();
    pod.manifest(
        "svc.yaml",
        r#"apiVersion: hostaction.dev/v1alpha1
kind: HostAction
metadata:
  name: svc
spec:
  module: /guests/svcprobe.wasm
  params:
    ops: [{op: restart, unit: containerd.service, timeout_ms: 10000}]
  grants:
    services:
      units: [containerd.service]
"#,
    );
    let out = pod.run();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let state = pod.state();
    assert_eq!(status(&state, "svc")["phase"], "Succeeded", "{state:#}");
    assert_eq!(starts(2), 2, "restarted: {state:#}");
}
