//! A real Kubernetes control plane for the tests: etcd and kube-apiserver built
//! from source by `scripts/build-control-plane.sh`, started on free 127.0.0.1
//! ports in a temporary directory, with certificates generated here.
//!
//! [`ControlPlane::start`] gives a control plane that is stopped when
//! dropped; a module whose tests share one keeps it in a `static` of its own
//! (its tests use a name prefix or a namespace each), never dropped: its
//! processes end with the test binary, and its directory is removed by the
//! next test binary that starts one. Every process is started by one
//! long-lived thread with a parent-death signal (SIGKILL), so a test binary
//! that exits or is killed takes its etcd and kube-apiserver with it; a
//! dropped [`ControlPlane`] kills them by pid. The binaries come from
//! `$HOSTACTION_CONTROL_PLANE_BIN` when set (a directory holding `etcd`,
//! `kube-apiserver`, `kubectl` and `kube-controller-manager`), else from the
//! script (`--with-controller-manager`; it builds only
//! what its cache lacks: ~11 min the first time, a moment after).
//!
//! kube-apiserver can be stopped and started again over the same etcd
//! ([`ControlPlane::stop_apiserver`], [`ControlPlane::restart_apiserver`]),
//! and its audit log lists every write to hostaction objects
//! ([`ControlPlane::audit_events`]), to count them.
//!
//! Identities: an admin (`CN=admin`, `O=system:masters`) and, from
//! [`ControlPlane::user_config`], any user with at most one group, by client
//! certificates of the client CA. ServiceAccount tokens work too: the
//! apiserver signs them with an ECDSA P-256 key (issuer `https://127.0.0.1:PORT`).
//! Only a test that starts kube-controller-manager
//! ([`ControlPlane::start_controller_manager`], its garbage collector alone)
//! has garbage collection by owner references; there is never namespace
//! deletion or a `default` ServiceAccount.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// How long kube-apiserver may take to report `/readyz` (a loaded 2-core
/// machine took 3 s; the first start after a build reads 100 MB from disk).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts at starting, each on newly chosen ports (a free port found here
/// may be taken by another process before etcd or kube-apiserver binds it).
const START_ATTEMPTS: usize = 3;
/// The audit policy: the writes to hostaction objects, at `Metadata` level
/// (who, what, the answer's code; no bodies), once each; nothing else.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
  resources:
  - group: hostaction.dev
    resources: [hostactions, hostactions/status, hostactionruns, hostactionruns/status]
- level: None
";

/// etcd and kube-apiserver, running.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    ca_der: Vec<u8>,
    client_ca: Issuer<'static, KeyPair>,
    admin: (PathBuf, PathBuf),
    kubeconfig: PathBuf,
    /// kube-apiserver's arguments, to start it again after
    /// [`ControlPlane::stop_apiserver`].
    apiserver_args: Vec<String>,
    /// kube-apiserver (unless stopped), then etcd: killed in that order.
    children: Mutex<Vec<Child>>,
    /// kube-controller-manager, once [`ControlPlane::start_controller_manager`]
    /// started it; killed first.
    controller_manager: Mutex<Option<Child>>,
}

impl ControlPlane {
    /// Starts a control plane of its own (etcd, then kube-apiserver) and waits
    /// until kube-apiserver is ready.
    ///
    /// # Panics
    /// When the binaries cannot be built or a process does not start; the
    /// message holds the end of its log.
    pub fn start() -> ControlPlane {
        let bin = bin_dir().to_path_buf();
        let base = std::env::temp_dir().join("hostaction-control-plane");
        own_base_dir(&base).unwrap_or_else(|e| panic!("{e}"));
        remove_stale_dirs(&base);
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix(&format!("{}-", std::process::id()))
                .tempdir_in(&base)
                .expect("control-plane temp dir");
            match Self::try_start(dir, &bin) {
                Ok(plane) => return plane,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "the control plane did not start ({START_ATTEMPTS} attempts):\n{}",
            failures.join("\n---\n")
        );
    }

    fn try_start(dir: tempfile::TempDir, bin: &Path) -> Result<ControlPlane, String> {
        let d = dir.path();
        let (etcd_port, peer_port, port) = (free_port(), free_port(), free_port());

        // Certificates: a serving CA and kube-apiserver's certificate for
        // 127.0.0.1/localhost; a client CA and the admin's certificate; the
        // ServiceAccount token signing key.
        let (serving_ca_pem, serving_ca_der, serving_ca) = new_ca("hostaction-test-serving-ca");
        let (client_ca_pem, _, client_ca) = new_ca("hostaction-test-client-ca");
        let serving_key = KeyPair::generate().expect("serving key");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).expect("SANs");
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving = params
            .signed_by(&serving_key, &serving_ca)
            .expect("serving cert");
        let sa_key = KeyPair::generate().expect("service-account key");
        write(d, "serving-ca.crt", &serving_ca_pem);
        write(d, "client-ca.crt", &client_ca_pem);
        write(d, "serving.crt", &serving.pem());
        write(d, "serving.key", &serving_key.serialize_pem());
        // kube-apiserver reads public keys (not PKCS#8 private ones) for
        // verification and a private key for signing.
        write(d, "sa.pub", &sa_key.public_key_pem());
        write(d, "sa.key", &sa_key.serialize_pem());
        let admin = issue_client_cert(d, &client_ca, "admin", Some("system:masters"));

        let mut children = Vec::new();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.arg("--name=test")
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            // Test data: durability across a machine crash is not needed.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        children.push(spawn_logged(etcd, &d.join("etcd.log"))?);
        let started = Instant::now();
        let etcd_health = SocketAddr::from(([127, 0, 0, 1], etcd_port));
        loop {
            if http_get_ok(etcd_health, "/health") {
                break;
            }
            if let Some(status) = children[0].try_wait().ok().flatten() {
                return Err(stop_with(children, d, "etcd", &format!("exited: {status}")));
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(stop_with(children, d, "etcd", "not healthy in time"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }

        let file = |name: &str| d.join(name).display().to_string();
        write(d, "audit-policy.yaml", AUDIT_POLICY);
        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", file("serving.crt")),
            format!("--tls-private-key-file={}", file("serving.key")),
            format!("--client-ca-file={}", file("client-ca.crt")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer=https://127.0.0.1:{port}"),
            format!("--service-account-key-file={}", file("sa.pub")),
            format!("--service-account-signing-key-file={}", file("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            // No kubelet, no Service endpoints for the apiserver itself.
            "--endpoint-reconciler-type=none".into(),
            // Without kube-controller-manager no `default` ServiceAccount exists,
            // which this plugin would require of every Pod.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            // Writes to hostaction objects, one line each (`audit_events`);
            // blocking mode: a request's line is written before its answer.
            format!("--audit-policy-file={}", file("audit-policy.yaml")),
            format!("--audit-log-path={}", file("audit.log")),
            "--audit-log-mode=blocking".into(),
            "--audit-log-format=json".into(),
        ];
        let mut apiserver = Command::new(bin.join("kube-apiserver"));
        apiserver.args(&apiserver_args);
        children.insert(0, spawn_logged(apiserver, &d.join("kube-apiserver.log"))?);

        let kubeconfig = d.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, port, &d.join("serving-ca.crt"), &admin);
        let plane = ControlPlane {
            bin: bin.to_path_buf(),
            port,
            ca_der: serving_ca_der,
            client_ca,
            admin,
            kubeconfig,
            apiserver_args,
            children: Mutex::new(children),
            controller_manager: Mutex::new(None),
            dir,
        };
        match plane.wait_ready() {
            Ok(()) => Ok(plane),
            Err(why) => {
                let children = std::mem::take(&mut *plane.children.lock().expect("children"));
                Err(stop_with(
                    children,
                    plane.dir.path(),
                    "kube-apiserver",
                    &why,
                ))
            }
        }
    }

    /// Waits until kube-apiserver answers `/readyz`; why not, if it exits or
    /// takes longer than [`READY_TIMEOUT`].
    fn wait_ready(&self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let ready = self.kubectl(&["get", "--raw=/readyz", "--request-timeout=5s"]);
            if ready.status.success() {
                return Ok(());
            }
            let exited = self.children.lock().expect("children")[0]
                .try_wait()
                .ok()
                .flatten();
            if let Some(status) = exited {
                return Err(format!("exited: {status}"));
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "not ready in {READY_TIMEOUT:?}: {}",
                    String::from_utf8_lossy(&ready.stderr).trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills kube-apiserver (SIGKILL, by pid) and keeps etcd: every client
    /// then gets connection refused until [`ControlPlane::restart_apiserver`].
    ///
    /// # Panics
    /// When kube-apiserver is already stopped.
    pub fn stop_apiserver(&self) {
        let mut children = self.children.lock().expect("children");
        assert_eq!(children.len(), 2, "kube-apiserver is not running");
        kill_all(vec![children.remove(0)]);
    }

    /// Starts kube-apiserver again, with the same arguments and port (its
    /// log goes on in the same file), over the same etcd, and waits until
    /// it is ready.
    ///
    /// # Panics
    /// When it is running, or does not start or get ready.
    pub fn restart_apiserver(&self) {
        {
            let mut children = self.children.lock().expect("children");
            assert_eq!(children.len(), 1, "kube-apiserver is running");
            let mut apiserver = Command::new(self.bin.join("kube-apiserver"));
            apiserver.args(&self.apiserver_args);
            let log = self.dir.path().join("kube-apiserver.log");
            let child = spawn_logged(apiserver, &log).unwrap_or_else(|e| panic!("{e}"));
            children.insert(0, child);
        }
        if let Err(why) = self.wait_ready() {
            let log = std::fs::read_to_string(self.dir.path().join("kube-apiserver.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("kube-apiserver restarted but {why}:\n{}", tail.join("\n"));
        }
    }

    /// Starts kube-controller-manager with only its garbage collector (it
    /// deletes objects whose owners are gone, by `ownerReferences`), as the
    /// admin, serving nothing. Start it after the CRDs are established: it
    /// discovers resources at start (and every 30 s after).
    ///
    /// # Panics
    /// When it was not built (`scripts/build-control-plane.sh
    /// --with-controller-manager`), is already running, or does not start.
    pub fn start_controller_manager(&self) {
        let binary = self.bin.join("kube-controller-manager");
        assert!(
            binary.exists(),
            "{} is missing: run scripts/build-control-plane.sh --with-controller-manager",
            binary.display()
        );
        let mut running = self.controller_manager.lock().expect("controller manager");
        assert!(running.is_none(), "kube-controller-manager is running");
        let mut kcm = Command::new(binary);
        kcm.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--controllers=garbage-collector-controller")
            .arg("--leader-elect=false")
            .arg("--secure-port=0");
        let log = self.dir.path().join("kube-controller-manager.log");
        *running = Some(spawn_logged(kcm, &log).unwrap_or_else(|e| panic!("{e}")));
    }

    /// The audit log's events so far (one JSON object per request, at
    /// `ResponseComplete`): every create, update, patch and delete of
    /// HostActions and HostActionRuns (and their status), answered 2xx or
    /// refused, with `verb`, `objectRef` (`resource`, `subresource`,
    /// `name`) and `responseStatus.code`. Nothing else is audited.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let log = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        log.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The directory holding the binaries (`etcd`, `kube-apiserver`, `kubectl`).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The control plane's temporary directory (certificates, logs, etcd data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubeconfig file for the admin (`system:masters`), for kubectl and
    /// the `hostaction` binary (`$KUBECONFIG`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes `DIR/NAME.kubeconfig`, which authenticates with the bearer
    /// `token` only (a ServiceAccount's, as a pod has it), and returns its path.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir().join(format!("{name}.kubeconfig"));
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": self.url(),
                "certificate-authority": self.dir().join("serving-ca.crt"),
            }}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": name}}],
            "current-context": "test",
        });
        std::fs::write(&path, config.to_string()).expect("write a token kubeconfig");
        path
    }

    /// A client configuration for the admin.
    pub fn config(&self) -> kube::Config {
        self.config_with(&self.admin)
    }

    /// A client for the admin (`system:masters`: every right; RBAC does not
    /// apply to it). Call it inside a tokio runtime.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("a kube client for the control plane")
    }

    /// A client configuration for user `name` in `group` (no group: only
    /// `system:authenticated`), by a client certificate; RBAC decides what it
    /// may do.
    pub fn user_config(&self, name: &str, group: Option<&str>) -> kube::Config {
        let identity = issue_client_cert(self.dir.path(), &self.client_ca, name, group);
        self.config_with(&identity)
    }

    /// A client configuration that authenticates with a bearer `token` only
    /// (a ServiceAccount token from the TokenRequest API): no client
    /// certificate, which the API server would try first.
    pub fn token_config(&self, token: &str) -> kube::Config {
        static TOKENS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = self.dir.path().join(format!("token-{n}"));
        std::fs::write(&file, token).expect("write a token file");
        let mut config = kube::Config::new(self.url().parse().expect("control-plane URL"));
        config.root_cert = Some(vec![self.ca_der.clone()]);
        config.auth_info.token_file = Some(file.display().to_string());
        config
    }

    fn config_with(&self, (cert, key): &(PathBuf, PathBuf)) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("control-plane URL"));
        config.root_cert = Some(vec![self.ca_der.clone()]);
        config.auth_info.client_certificate = Some(cert.display().to_string());
        config.auth_info.client_key = Some(key.display().to_string());
        config
    }

    /// Runs the control plane's kubectl as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run kubectl")
    }

    /// `kubectl apply --server-side -f PATH` (a file, or a directory of
    /// manifests applied in name order, as a user applies them), then waits
    /// until the hostaction CRDs are established; kubectl's output of the
    /// apply.
    pub fn apply_and_wait_for_crds(&self, path: &Path) -> String {
        let out = self.kubectl_ok(&["apply", "--server-side", "-f", &path.to_string_lossy()]);
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/hostactions.hostaction.dev",
            "crd/hostactionruns.hostaction.dev",
        ]);
        out
    }

    /// Like [`ControlPlane::kubectl`], and panics (with kubectl's output)
    /// unless it succeeds; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pids of the processes this control plane runs (kube-apiserver
    /// unless stopped, then etcd).
    pub fn pids(&self) -> Vec<u32> {
        let children = self.children.lock().expect("children");
        children.iter().map(Child::id).collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let controller_manager = match self.controller_manager.get_mut() {
            Ok(running) => running.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        kill_all(controller_manager.into_iter().collect());
        let children = match self.children.get_mut() {
            Ok(children) => std::mem::take(children),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        kill_all(children);
    }
}

/// Now, as Kubernetes writes times (RFC 3339, UTC, whole seconds).
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Creates Node `name` with `labels` and makes it Ready through the status
/// subresource, as a kubelet would (none runs behind it).
pub async fn create_ready_node(
    client: &kube::Client,
    name: &str,
    labels: serde_json::Value,
) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
    }))
    .map_err(|e| format!("node {name}: {e}"))?;
    nodes
        .create(&PostParams::default(), &node)
        .await
        .map_err(|e| format!("create node {name}: {e}"))?;
    let ready = serde_json::json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "no kubelet: a test's node",
        "lastHeartbeatTime": now(),
        "lastTransitionTime": now(),
    }]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(ready))
        .await
        .map_err(|e| format!("make node {name} Ready: {e}"))?;
    Ok(())
}

/// A token (valid an hour) of ServiceAccount `namespace/account` from the
/// TokenRequest API, bound to `pod` (its name and uid) when given: then the
/// API server puts the pod's node in the identity
/// (`authentication.kubernetes.io/node-name`), which the admission policy
/// checks.
pub async fn service_account_token(
    client: &kube::Client,
    namespace: &str,
    account: &str,
    pod: Option<&Pod>,
) -> Result<String, String> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            bound_object_ref: pod.map(|pod| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(|e| format!("a token of {namespace}/{account}: {e}"))?;
    answer
        .status
        .map(|status| status.token)
        .ok_or_else(|| format!("a token of {namespace}/{account}: no status"))
}

/// The binaries' directory: `$HOSTACTION_CONTROL_PLANE_BIN`, else the one
/// `scripts/build-control-plane.sh` prints (its last line), built once per
/// test binary.
pub fn bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(dir) = std::env::var_os("HOSTACTION_CONTROL_PLANE_BIN") {
            return PathBuf::from(dir);
        }
        let script = crate::workspace().join("scripts/build-control-plane.sh");
        let out = Command::new(&script)
            .arg("--with-controller-manager")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({})",
            script.display(),
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = stdout.lines().last().unwrap_or_default().trim();
        assert!(
            !dir.is_empty(),
            "{} printed no bin directory",
            script.display()
        );
        PathBuf::from(dir)
    })
}

/// A self-signed CA: its PEM, its DER and the issuer that signs with it.
fn new_ca(name: &str) -> (String, Vec<u8>, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("CA cert");
    (cert.pem(), cert.der().to_vec(), Issuer::new(params, key))
}

/// A client certificate (`CN=name`, `O=group`) and its key, written to
/// `dir`; returns their paths.
fn issue_client_cert(
    dir: &Path,
    ca: &Issuer<'static, KeyPair>,
    name: &str,
    group: Option<&str>,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("client key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
    params.distinguished_name.push(DnType::CommonName, name);
    if let Some(group) = group {
        params
            .distinguished_name
            .push(DnType::OrganizationName, group);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, ca).expect("client cert");
    let stem: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let (cert_path, key_path) = (
        dir.join(format!("user-{stem}.crt")),
        dir.join(format!("user-{stem}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).expect("write client cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write client key");
    (cert_path, key_path)
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents).unwrap_or_else(|e| panic!("write {name}: {e}"));
}

fn write_kubeconfig(path: &Path, port: u16, ca: &Path, (cert, key): &(PathBuf, PathBuf)) {
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": format!("https://127.0.0.1:{port}"),
            "certificate-authority": ca,
        }}],
        "users": [{"name": "admin", "user": {"client-certificate": cert, "client-key": key}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        "current-context": "test",
    });
    std::fs::write(path, config.to_string()).expect("write kubeconfig");
}

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A plain HTTP/1.0 GET answered with 200 (etcd's `/health`).
fn http_get_ok(addr: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.take(4096).read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

/// Starts `cmd` with its output appended to `log`, from the keeper thread.
#[allow(unsafe_code)]
fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child, String> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // one prctl system call (async-signal-safe; no allocation, no locks).
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    spawn_from_keeper(cmd).map_err(|e| format!("start {program}: {e}"))
}

/// Spawns `cmd` from one thread that lives as long as the test binary. The
/// parent-death signal fires when the *thread* that forked the child ends,
/// and test threads end with their test while the shared control plane
/// outlives them.
fn spawn_from_keeper(cmd: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("control-plane-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("start the keeper thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    keeper
        .lock()
        .expect("keeper")
        .send((cmd, reply))
        .map_err(|_| std::io::Error::other("the keeper thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the keeper thread is gone"))?
}

/// Kills the processes by pid (SIGKILL) and reaps them.
fn kill_all(children: Vec<Child>) {
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Kills the processes started so far and describes the failure of `what`
/// with the end of its log.
fn stop_with(children: Vec<Child>, dir: &Path, what: &str, why: &str) -> String {
    kill_all(children);
    let log = std::fs::read_to_string(dir.join(format!("{what}.log"))).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("{what} {why}; the end of its log:\n{}", tail.join("\n"))
}

/// Creates `base` (mode 0700) unless it exists, and checks that it is a
/// directory (not a symlink) owned by this user: the tests run as root and
/// [`remove_stale_dirs`] deletes under it, so a `base` another user planted
/// in the shared temporary directory (a symlink to `/etc`, say) must not be
/// used.
fn own_base_dir(base: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(base) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", base.display())),
    }
    let meta = std::fs::symlink_metadata(base).map_err(|e| format!("{}: {e}", base.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.file_type().is_dir() || meta.uid() != me {
        return Err(format!(
            "{} is not a directory of this user's (uid {me}): not used",
            base.display()
        ));
    }
    Ok(())
}

/// Removes the directories of control planes whose test binary is gone
/// (a shared control plane's directory outlives it: statics are not dropped).
fn remove_stale_dirs(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        // Only `PID-...` names are this harness's; anything else is left.
        let Some(pid) = name
            .to_string_lossy()
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_planted_base_dir_is_not_used_and_only_pid_dirs_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::create_dir_all(victim.join("ssh")).unwrap();
        let planted = tmp.path().join("planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let refused = own_base_dir(&planted).unwrap_err();
        assert!(
            refused.contains("not a directory of this user's"),
            "{refused}"
        );

        let base = tmp.path().join("base");
        own_base_dir(&base).unwrap();
        own_base_dir(&base).unwrap();
        std::fs::create_dir_all(base.join("ssh")).unwrap();
        std::fs::create_dir_all(base.join("4000000000-gone")).unwrap();
        let mine = base.join(format!("{}-alive", std::process::id()));
        std::fs::create_dir_all(&mine).unwrap();
        remove_stale_dirs(&base);
        assert!(base.join("ssh").exists());
        assert!(mine.exists());
        assert!(!base.join("4000000000-gone").exists());
        assert!(victim.join("ssh").exists());
    }
}
