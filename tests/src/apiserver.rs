//! A Kubernetes API-server **test double**: an in-process HTTP/1 server that
//! answers the subset of the kube-apiserver REST API that hostaction's
//! controller and agents use (through kube-rs), so end-to-end tests and the
//! 1000-node benchmark can run where no real kube-apiserver can. It is not a
//! Kubernetes implementation; it keeps everything in memory and runs on its
//! own thread with its own tokio runtime.
//!
//! # Resources
//!
//! Table-driven (`DEFS`): core `v1` `nodes`, `namespaces` (cluster-scoped,
//! with `/status`) and `events` (namespaced); `events.k8s.io/v1` `events`;
//! `coordination.k8s.io/v1` `leases`; `hostaction.dev/v1alpha1`
//! `hostactions` and `hostactionruns` (cluster-scoped, with `/status`). Any
//! other path is a 404 `Status`. `GET /version`, `/healthz`, `/api`, `/apis`
//! and `/api/v1`, `/apis/{group}/{version}` (legacy discovery) answer too.
//!
//! # What it honours
//!
//! - One global `resourceVersion` counter; every stored change bumps it.
//!   Objects carry `uid`, `resourceVersion`, `creationTimestamp` and
//!   `generation` (1 on create; bumped when anything outside `metadata` — and
//!   `status`, for kinds with a status subresource — changes, and when a
//!   deletion with finalizers sets `deletionTimestamp`). A write that changes
//!   nothing stores nothing and sends no event.
//! - GET, LIST (all namespaces or one) with `labelSelector` (`=`, `==`, `!=`,
//!   `in (..)`, `notin (..)`, `key`, `!key`) and `fieldSelector`
//!   (`metadata.name`, `metadata.namespace` and a few per-kind fields such as
//!   `spec.nodeName` of runs; `=`, `==`, `!=`), and metadata-only answers
//!   (`Accept: ...;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1`, which
//!   kube's `metadata_watcher` and `Controller::owns` ask for).
//! - WATCH (`watch=true`): a chunked stream of one JSON event per line. With a
//!   `resourceVersion` it replays the retained changes after it (the last
//!   100 000), else it starts with an `ADDED` per current object; then it
//!   streams live changes. An object that stops (starts) matching the
//!   selectors is `DELETED` (`ADDED`) for that watch. A `resourceVersion`
//!   older than the retained history (see [`ApiServer::compact`]) gets one
//!   `ERROR` event with a 410 `Expired` `Status`, then the stream ends.
//!   `timeoutSeconds` ends the stream; `allowWatchBookmarks` gets a
//!   `BOOKMARK` every two seconds; `sendInitialEvents=true` gets the initial
//!   `ADDED` events then a bookmark annotated `k8s.io/initial-events-end`.
//!   A watch that falls 100 000 events behind is ended (the client resumes).
//! - POST (`generateName`, 409 `AlreadyExists`, `status` dropped for custom
//!   kinds with a status subresource), PUT (409 `Conflict` on a stale
//!   `resourceVersion`; unconditional when it is absent), PATCH (merge,
//!   strategic merge treated as merge, JSON patch with `test`, server-side
//!   apply treated as a merge that creates a missing object and needs a
//!   `fieldManager`), and `/status` (only `status` changes there; the main
//!   resource keeps the stored `status`). `dryRun` answers without storing.
//! - DELETE with finalizers sets `deletionTimestamp` once; the write that
//!   empties the finalizers removes the object. A removed object's
//!   dependents (by `ownerReferences` uid) are garbage-collected at once, as
//!   background propagation does (an owner reference to a live other owner
//!   is only dropped); `propagationPolicy: Orphan` leaves them alone. DELETE
//!   preconditions (`uid`, `resourceVersion`) are checked.
//! - Errors are `Status` objects (`NotFound`, `AlreadyExists`, `Conflict`,
//!   `Invalid`, `BadRequest`, `MethodNotAllowed`, `ServiceUnavailable`,
//!   `UnsupportedMediaType`), so kube decodes them as `kube::Error::Api`.
//! - Refusals on demand: [`ApiServer::refuse_status_writes`] answers the
//!   status writes of one object with a chosen code (all of them, or those
//!   over a size), as an admission policy or schema validation would;
//!   [`ApiServer::writes_to`] counts write requests per object.
//!
//! # What it does not
//!
//! No authentication, authorization, admission (no CEL rules, no
//! ValidatingAdmissionPolicy, no namespace existence check), schema
//! validation or defaulting, no `managedFields` or apply conflict tracking
//! (apply is a merge of the given fields: it never removes fields a manager
//! stopped owning, and it replaces lists rather than merging them by key),
//! no strategic-merge list semantics or directives, no `limit`/`continue`
//! paging (a list returns everything, with no continue token), no
//! `resourceVersion` semantics on GET/LIST (always the latest), no
//! delete-collection, no foreground deletion (treated as background), no
//! graceful deletion periods, no aggregated discovery, no protobuf, no
//! HTTP/2, no TLS. Core and `events.k8s.io` events are stored separately.
//! Garbage collection is synchronous and only follows removals (a dependent
//! created after its owner is gone stays). Deleting a namespace does not
//! delete what is in it.
//!
//! # Cost
//!
//! State is behind one mutex, held only for in-memory work. A change is
//! handed (under that lock, so in order) only to the watches whose selector
//! may match it: watches are indexed by one equality requirement (a label
//! or field `=`), so 1000 agents each watching `hostaction.dev/node=NAME`
//! cost one lookup per change, not 1000 selector checks. Each stored object
//! is serialized once and its bytes are shared by every list and watch.
//!
//! kube's default client retries 503 answers (up to 15 times with growing
//! back-off): set `default_retry = false` on the [`kube::Config`] to see a
//! 503 from [`ApiServer::set_available`] at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use json_patch::PatchOperation;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot, watch};

/// Changes kept for watches that resume from a `resourceVersion`.
const HISTORY_LIMIT: usize = 100_000;
/// Events a watch may fall behind before it is ended.
const WATCH_QUEUE: usize = 100_000;
/// How often a watch that allows bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(2);
/// The longest a watch stays open (and the default when no timeout is asked).
const MAX_WATCH: Duration = Duration::from_secs(1800);
/// Bytes a watch stream batches into one chunk.
const CHUNK: usize = 64 * 1024;

/// One kind of resource the double serves.
#[derive(Debug)]
struct Def {
    /// API group (`""` for core).
    group: &'static str,
    /// API version.
    version: &'static str,
    /// Resource (plural) name, as in the URL.
    plural: &'static str,
    /// Singular name (discovery).
    singular: &'static str,
    /// Kind.
    kind: &'static str,
    /// Whether objects live in a namespace.
    namespaced: bool,
    /// Whether it has a `/status` subresource.
    status: bool,
    /// Whether a create keeps the `status` it is given (built-in kinds) or
    /// drops it (custom resources with a status subresource).
    keep_status_on_create: bool,
    /// Field-selector fields beyond `metadata.name` and `metadata.namespace`.
    fields: &'static [&'static str],
}

impl Def {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `hostactions.hostaction.dev`, `nodes`: how errors name the resource.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn field_supported(&self, field: &str) -> bool {
        field == "metadata.name" || field == "metadata.namespace" || self.fields.contains(&field)
    }
}

/// The resources served.
const DEFS: &[Def] = &[
    Def {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        status: true,
        keep_status_on_create: true,
        fields: &["status.phase"],
    },
    Def {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        status: true,
        keep_status_on_create: true,
        fields: &["spec.unschedulable"],
    },
    Def {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        status: false,
        keep_status_on_create: true,
        fields: &[
            "involvedObject.apiVersion",
            "involvedObject.fieldPath",
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.resourceVersion",
            "involvedObject.uid",
            "reason",
            "reportingComponent",
            "type",
        ],
    },
    Def {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        status: false,
        keep_status_on_create: true,
        fields: &[
            "regarding.apiVersion",
            "regarding.fieldPath",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "regarding.resourceVersion",
            "regarding.uid",
            "reason",
            "reportingController",
            "type",
        ],
    },
    Def {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        status: false,
        keep_status_on_create: true,
        fields: &[],
    },
    Def {
        group: "hostaction.dev",
        version: "v1alpha1",
        plural: "hostactions",
        singular: "hostaction",
        kind: "HostAction",
        namespaced: false,
        status: true,
        keep_status_on_create: false,
        fields: &[],
    },
    Def {
        group: "hostaction.dev",
        version: "v1alpha1",
        plural: "hostactionruns",
        singular: "hostactionrun",
        kind: "HostActionRun",
        namespaced: false,
        status: true,
        keep_status_on_create: false,
        fields: &["spec.nodeName"],
    },
];

fn def_index(api_version: &str, kind: &str) -> Option<usize> {
    DEFS.iter()
        .position(|d| d.kind == kind && d.api_version() == api_version)
}

/// Counts of the write requests clients sent (POST, PUT, PATCH, DELETE).
#[derive(Clone, Debug, Default)]
pub struct Writes {
    /// Writes answered 2xx.
    pub total: u64,
    /// Per `"{verb} {resource}[/status]"` (`create`, `update`, `patch`,
    /// `delete`), e.g. `"patch hostactionruns/status"`; writes answered
    /// otherwise are under `"rejected {verb} {resource}"` and not in `total`.
    pub by: BTreeMap<String, u64>,
}

impl Writes {
    /// The count under `key` (0 when absent).
    pub fn get(&self, key: &str) -> u64 {
        self.by.get(key).copied().unwrap_or(0)
    }

    fn record(&mut self, key: String, ok: bool) {
        if ok {
            self.total += 1;
            *self.by.entry(key).or_default() += 1;
        } else {
            *self.by.entry(format!("rejected {key}")).or_default() += 1;
        }
    }
}

/// How the double answers writes to one object's status subresource, as an
/// API server whose admission or validation refuses them would (see
/// [`ApiServer::refuse_status_writes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP code of the `Status` answered: 403 (`Forbidden`, an
    /// admission policy), 413 (`RequestEntityTooLarge`), 422 (`Invalid`),
    /// 429 (`TooManyRequests`), 500 (`InternalError`), or any other.
    pub code: u16,
    /// Refuse only bodies longer than this many bytes (0: every write).
    pub over_bytes: usize,
}

/// The API-server double. Dropping it stops the server (its thread and
/// runtime); open connections are then closed.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Binds 127.0.0.1:0 and serves on its own thread with its own
    /// multi-thread tokio runtime (so sync tests and tests spawning CLI
    /// processes can use it as well as async ones).
    pub fn start() -> std::io::Result<ApiServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("apiserver-double")
            .enable_all()
            .build()?;
        // A deep accept queue: a thousand agents connect at once.
        let listener = {
            let _in_runtime = runtime.enter();
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            socket.listen(4096)?
        };
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new());
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("apiserver-double".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    runtime.block_on(serve(listener, shared, stopped));
                    // Dropping the runtime drops every connection task.
                    drop(runtime);
                }
            })?;
        Ok(ApiServer {
            shared,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client configuration for the server (default namespace `default`,
    /// no auth, kube's default retry of 503s on).
    pub fn config(&self) -> kube::Config {
        let uri = hyper::Uri::builder()
            .scheme("http")
            .authority(self.addr.to_string())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        kube::Config::new(uri)
    }

    /// A client for the server.
    ///
    /// # Panics
    /// Outside a tokio runtime (kube's client spawns its buffer task there).
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("a kube client for the API-server double")
    }

    /// Writes a kubeconfig (JSON, which is YAML) with one cluster (`server`:
    /// [`ApiServer::url`]), a user with no auth, a context and the current
    /// context: `kube::Config::from_kubeconfig`, `Config::infer` with
    /// `KUBECONFIG` and kubectl read it.
    pub fn write_kubeconfig(&self, path: &Path) -> std::io::Result<()> {
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "apiserver-double", "cluster": {"server": self.url()}}],
            "users": [{"name": "apiserver-double", "user": {}}],
            "contexts": [{
                "name": "apiserver-double",
                "context": {"cluster": "apiserver-double", "user": "apiserver-double", "namespace": "default"},
            }],
            "current-context": "apiserver-double",
            "preferences": {},
        });
        let text = serde_json::to_vec_pretty(&config).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }

    /// `false`: every request gets a 503 `ServiceUnavailable` `Status` and
    /// every open watch ends at once; `true`: serving again, state intact.
    pub fn set_available(&self, up: bool) {
        let mut st = self.shared.lock();
        st.available = up;
        if !up {
            for watchers in &mut st.watchers {
                *watchers = Watchers::default();
            }
        }
        self.shared.avail.send_replace(up);
    }

    /// Seeds or replaces an object directly (`apiVersion` and `kind` decide
    /// the resource; a namespaced one without a namespace goes to
    /// `default`): `uid`, `resourceVersion`, `creationTimestamp` and
    /// `generation` are filled in (kept from the stored object on a
    /// replace), `status` is stored as given, watches get the event. Not
    /// counted as a write; works while unavailable. Returns the stored object.
    ///
    /// # Panics
    /// When the kind is not served or the object has no name.
    pub fn insert(&self, object: Value) -> Value {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let res = def_index(api_version, kind)
            .unwrap_or_else(|| panic!("the API-server double does not serve {api_version} {kind}"));
        self.shared.lock().insert_direct(res, object).value.clone()
    }

    /// Removes an object directly (a `DELETED` event; its dependents are
    /// garbage-collected; finalizers are not waited for). Not counted as a
    /// write. Whether it was there.
    pub fn remove(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> bool {
        let Some(res) = def_index(api_version, kind) else {
            return false;
        };
        let ns = scope_ns(res, namespace);
        self.shared
            .lock()
            .remove_now(res, &ns, name, None, true)
            .is_some()
    }

    /// The stored object, if any.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let res = def_index(api_version, kind)?;
        let ns = scope_ns(res, namespace);
        let st = self.shared.lock();
        st.objects[res]
            .get(&(ns, name.to_owned()))
            .map(|o| o.value.clone())
    }

    /// Every stored object of a kind, all namespaces, by namespace and name.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some(res) = def_index(api_version, kind) else {
            return Vec::new();
        };
        let st = self.shared.lock();
        st.objects[res].values().map(|o| o.value.clone()).collect()
    }

    /// From now on, refuses writes to the status of `resource` (plural,
    /// e.g. `hostactionruns`) `name` as `refusal` says (`None`: takes them
    /// again). Refused writes are counted as rejected and store nothing.
    pub fn refuse_status_writes(&self, resource: &str, name: &str, refusal: Option<Refusal>) {
        let key = (resource.to_owned(), name.to_owned());
        let mut st = self.shared.lock();
        match refusal {
            Some(refusal) => st.refusals.insert(key, refusal),
            None => st.refusals.remove(&key),
        };
    }

    /// Write requests to one object so far, answered 2xx or not, per
    /// `"{verb} {resource}[/status] {name}"`, e.g.
    /// `"patch hostactionruns/status cni.n1.g1"`.
    pub fn writes_to(&self) -> BTreeMap<String, u64> {
        self.shared.lock().writes_to.clone()
    }

    /// Counts of client write requests so far.
    pub fn writes(&self) -> Writes {
        self.shared.lock().writes.clone()
    }

    /// Watches open now (all resources): a dropped client watch goes away.
    pub fn watches(&self) -> usize {
        self.shared
            .lock()
            .watchers
            .iter()
            .map(|w| w.regs.len())
            .sum()
    }

    /// Forgets the watch history: a watch from an older `resourceVersion`
    /// than the current one then gets the 410 `ERROR` event (open watches
    /// go on).
    pub fn compact(&self) {
        let mut st = self.shared.lock();
        st.history.clear();
        st.floor = st.rv;
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The storage namespace of an object of `res` (`""` for cluster-scoped).
fn scope_ns(res: usize, namespace: Option<&str>) -> String {
    if DEFS[res].namespaced {
        namespace.unwrap_or("default").to_owned()
    } else {
        String::new()
    }
}

// ---------------------------------------------------------------------------
// State

struct Shared {
    state: Mutex<State>,
    avail: watch::Sender<bool>,
}

impl Shared {
    fn new() -> Self {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64);
        Self {
            state: Mutex::new(State {
                available: true,
                rv: 0,
                floor: 0,
                objects: DEFS.iter().map(|_| BTreeMap::new()).collect(),
                uids: HashMap::new(),
                dependents: HashMap::new(),
                history: VecDeque::new(),
                watchers: DEFS.iter().map(|_| Watchers::default()).collect(),
                next_watch: 0,
                counter: 0,
                seed,
                writes: Writes::default(),
                writes_to: BTreeMap::new(),
                refusals: BTreeMap::new(),
            }),
            avail: watch::Sender::new(true),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A stored object, its JSON serialized at most once.
struct Obj {
    value: Value,
    json: OnceLock<Bytes>,
    meta: OnceLock<Bytes>,
}

impl Obj {
    fn new(value: Value) -> Arc<Self> {
        Arc::new(Self {
            value,
            json: OnceLock::new(),
            meta: OnceLock::new(),
        })
    }

    /// The object's JSON, or its `PartialObjectMetadata`.
    fn body(&self, meta_only: bool) -> &Bytes {
        if meta_only {
            self.meta.get_or_init(|| {
                to_bytes(&json!({
                    "apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadata",
                    "metadata": self.value["metadata"],
                }))
            })
        } else {
            self.json.get_or_init(|| to_bytes(&self.value))
        }
    }

    fn meta_str(&self, key: &str) -> &str {
        self.value["metadata"][key].as_str().unwrap_or_default()
    }
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One stored change, as watches see it.
struct Change {
    rv: u64,
    res: usize,
    kind: ChangeKind,
    /// The object before (modified, deleted).
    old: Option<Arc<Obj>>,
    /// The object after (for a deletion: its last state, at the deletion's
    /// resourceVersion).
    obj: Arc<Obj>,
}

/// What a watch stream sends.
enum Item {
    Event(&'static str, Arc<Obj>),
    /// A bookmark at a resourceVersion; whether it ends the initial events.
    Bookmark(u64, bool),
    /// The 410 for a too old resourceVersion; ends the stream.
    Expired(String),
}

/// One open watch.
struct Reg {
    ns: Option<String>,
    sel: Selector,
    tx: mpsc::Sender<Item>,
    bookmarks: bool,
    key: Option<String>,
}

impl Reg {
    fn matches(&self, obj: &Obj) -> bool {
        self.ns
            .as_deref()
            .is_none_or(|ns| obj.meta_str("namespace") == ns)
            && self.sel.matches(&obj.value)
    }

    /// The event this watch gets for a change, if any.
    fn event(&self, change: &Change) -> Option<&'static str> {
        match change.kind {
            ChangeKind::Added => self.matches(&change.obj).then_some("ADDED"),
            ChangeKind::Deleted => (self.matches(&change.obj)
                || change.old.as_ref().is_some_and(|o| self.matches(o)))
            .then_some("DELETED"),
            ChangeKind::Modified => {
                let before = change.old.as_ref().is_some_and(|o| self.matches(o));
                match (before, self.matches(&change.obj)) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }
    }
}

/// The open watches of one resource, indexed by one equality requirement
/// of their selectors so a change reaches only the watches it may concern.
#[derive(Default)]
struct Watchers {
    regs: HashMap<u64, Reg>,
    by_key: HashMap<String, Vec<u64>>,
    unindexed: Vec<u64>,
}

impl Watchers {
    fn add(&mut self, id: u64, reg: Reg) {
        match &reg.key {
            Some(key) => self.by_key.entry(key.clone()).or_default().push(id),
            None => self.unindexed.push(id),
        }
        self.regs.insert(id, reg);
    }

    fn remove(&mut self, id: u64) {
        let Some(reg) = self.regs.remove(&id) else {
            return;
        };
        match reg.key {
            Some(key) => {
                if let Some(ids) = self.by_key.get_mut(&key) {
                    ids.retain(|&i| i != id);
                    if ids.is_empty() {
                        self.by_key.remove(&key);
                    }
                }
            }
            None => self.unindexed.retain(|&i| i != id),
        }
    }
}

type Key = (usize, String, String);

/// What a new watch sends first, and its registration and live feed (none
/// when it ends after the first part).
type OpenedWatch = (VecDeque<Item>, Option<(u64, mpsc::Receiver<Item>)>);

struct State {
    available: bool,
    rv: u64,
    /// Changes after this resourceVersion are in `history`.
    floor: u64,
    /// Per resource: (namespace or "", name) → object.
    objects: Vec<BTreeMap<(String, String), Arc<Obj>>>,
    uids: HashMap<String, Key>,
    /// Owner uid → objects whose ownerReferences name it.
    dependents: HashMap<String, BTreeSet<Key>>,
    history: VecDeque<Change>,
    watchers: Vec<Watchers>,
    next_watch: u64,
    counter: u64,
    seed: u64,
    writes: Writes,
    /// Write requests per object (see [`ApiServer::writes_to`]).
    writes_to: BTreeMap<String, u64>,
    /// Status writes refused on demand, by (resource plural, name).
    refusals: BTreeMap<(String, String), Refusal>,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The object map of `v`, making `v` one if it is not.
fn as_map(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("made an object above"),
    }
}

fn meta_mut(v: &mut Value) -> &mut Map<String, Value> {
    as_map(as_map(v).entry("metadata").or_insert_with(|| json!({})))
}

fn set_or_remove(v: &mut Value, key: &str, value: Option<&Value>) {
    let m = as_map(v);
    match value {
        Some(x) => {
            m.insert(key.to_owned(), x.clone());
        }
        None => {
            m.remove(key);
        }
    }
}

fn finalizers(v: &Value) -> Vec<&str> {
    v["metadata"]["finalizers"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn deleting(v: &Value) -> bool {
    !v["metadata"]["deletionTimestamp"].is_null()
}

fn owner_uids(v: &Value) -> Vec<String> {
    v["metadata"]["ownerReferences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["uid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Drops what Go's `omitempty` would not serialize: nulls and empty
/// collections in `metadata`.
fn normalize(v: &mut Value) {
    let m = meta_mut(v);
    m.retain(|_, x| !x.is_null());
    for key in ["labels", "annotations"] {
        if let Some(Value::Object(map)) = m.get_mut(key) {
            map.retain(|_, x| !x.is_null());
            if map.is_empty() {
                m.remove(key);
            }
        }
    }
    for key in ["finalizers", "ownerReferences", "managedFields"] {
        if m.get(key)
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
        {
            m.remove(key);
        }
    }
}

/// Whether anything outside metadata (and status, for kinds with a status
/// subresource) differs: a change that bumps the generation.
fn spec_changed(def: &Def, a: &Value, b: &Value) -> bool {
    let pick = |v: &Value| -> BTreeMap<String, Value> {
        v.as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| match k.as_str() {
                        "metadata" | "apiVersion" | "kind" => false,
                        "status" => !def.status,
                        _ => true,
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    pick(a) != pick(b)
}

fn generation(v: &Value) -> i64 {
    v["metadata"]["generation"].as_i64().unwrap_or(1)
}

impl State {
    fn new_uid(&mut self) -> String {
        self.counter += 1;
        let x = splitmix(self.seed ^ self.counter);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            x >> 32,
            (x >> 16) & 0xffff,
            x & 0xfff,
            (x >> 52) & 0xfff,
            self.counter & 0xffff_ffff_ffff
        )
    }

    fn generated_name(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.counter += 1;
        let mut x = splitmix(self.seed ^ self.counter.rotate_left(17));
        let mut name = prefix.to_owned();
        for _ in 0..5 {
            name.push(char::from(ALPHABET[(x % ALPHABET.len() as u64) as usize]));
            x /= ALPHABET.len() as u64;
        }
        name
    }

    fn object(&self, res: usize, ns: &str, name: &str) -> Option<Arc<Obj>> {
        self.objects[res]
            .get(&(ns.to_owned(), name.to_owned()))
            .cloned()
    }

    fn index(&mut self, res: usize, obj: &Obj) {
        let key: Key = (
            res,
            obj.meta_str("namespace").to_owned(),
            obj.meta_str("name").to_owned(),
        );
        let uid = obj.meta_str("uid");
        if !uid.is_empty() {
            self.uids.insert(uid.to_owned(), key.clone());
        }
        for owner in owner_uids(&obj.value) {
            self.dependents
                .entry(owner)
                .or_default()
                .insert(key.clone());
        }
    }

    fn unindex(&mut self, res: usize, obj: &Obj) {
        let key: Key = (
            res,
            obj.meta_str("namespace").to_owned(),
            obj.meta_str("name").to_owned(),
        );
        let uid = obj.meta_str("uid");
        if self.uids.get(uid) == Some(&key) {
            self.uids.remove(uid);
        }
        for owner in owner_uids(&obj.value) {
            if let Some(set) = self.dependents.get_mut(&owner) {
                set.remove(&key);
                if set.is_empty() {
                    self.dependents.remove(&owner);
                }
            }
        }
    }

    /// Records a change and hands it to the watches it concerns.
    fn record(&mut self, res: usize, kind: ChangeKind, old: Option<Arc<Obj>>, obj: Arc<Obj>) {
        let change = Change {
            rv: self.rv,
            res,
            kind,
            old,
            obj,
        };
        self.fan_out(&change);
        self.history.push_back(change);
        while self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                self.floor = dropped.rv;
            }
        }
    }

    fn fan_out(&mut self, change: &Change) {
        let def = &DEFS[change.res];
        let watchers = &mut self.watchers[change.res];
        if watchers.regs.is_empty() {
            return;
        }
        let mut candidates = watchers.unindexed.clone();
        if !watchers.by_key.is_empty() {
            let mut keys = index_keys(def, &change.obj.value);
            if let Some(old) = &change.old {
                keys.extend(index_keys(def, &old.value));
            }
            for key in keys {
                if let Some(ids) = watchers.by_key.get(&key) {
                    candidates.extend_from_slice(ids);
                }
            }
            candidates.sort_unstable();
            candidates.dedup();
        }
        let mut dead = Vec::new();
        for id in candidates {
            let Some(reg) = watchers.regs.get(&id) else {
                continue;
            };
            let Some(kind) = reg.event(change) else {
                continue;
            };
            if reg
                .tx
                .try_send(Item::Event(kind, change.obj.clone()))
                .is_err()
            {
                // Gone, or too far behind: end it; the client resumes from
                // the last resourceVersion it saw.
                dead.push(id);
            }
        }
        for id in dead {
            watchers.remove(id);
        }
    }

    /// Stores `value` (a new resourceVersion) and sends its event.
    fn store(&mut self, res: usize, mut value: Value) -> Arc<Obj> {
        self.rv += 1;
        meta_mut(&mut value).insert("resourceVersion".into(), self.rv.to_string().into());
        let obj = Obj::new(value);
        let key = (
            obj.meta_str("namespace").to_owned(),
            obj.meta_str("name").to_owned(),
        );
        let old = self.objects[res].insert(key, obj.clone());
        if let Some(old) = &old {
            self.unindex(res, old);
        }
        self.index(res, &obj);
        let kind = if old.is_some() {
            ChangeKind::Modified
        } else {
            ChangeKind::Added
        };
        self.record(res, kind, old, obj.clone());
        obj
    }

    /// Removes an object (its last state `last`, else as stored) with a
    /// DELETED event; garbage-collects its dependents when `gc`.
    fn remove_now(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        last: Option<Value>,
        gc: bool,
    ) -> Option<Arc<Obj>> {
        let obj = self.remove_raw(res, ns, name, last)?;
        if gc {
            self.collect_garbage(obj.meta_str("uid").to_owned());
        }
        Some(obj)
    }

    fn remove_raw(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        last: Option<Value>,
    ) -> Option<Arc<Obj>> {
        let old = self.objects[res].remove(&(ns.to_owned(), name.to_owned()))?;
        self.unindex(res, &old);
        self.rv += 1;
        let mut value = last.unwrap_or_else(|| old.value.clone());
        meta_mut(&mut value).insert("resourceVersion".into(), self.rv.to_string().into());
        let obj = Obj::new(value);
        self.record(res, ChangeKind::Deleted, Some(old), obj.clone());
        Some(obj)
    }

    /// Background garbage collection after `owner` is gone: a dependent
    /// with another live owner loses only that owner reference; one with
    /// finalizers gets its deletionTimestamp; others are removed (and so on
    /// down the ownership graph).
    fn collect_garbage(&mut self, owner: String) {
        let mut work = vec![owner];
        while let Some(uid) = work.pop() {
            if uid.is_empty() {
                continue;
            }
            let dependents = self.dependents.remove(&uid).unwrap_or_default();
            for (res, ns, name) in dependents {
                let Some(obj) = self.object(res, &ns, &name) else {
                    continue;
                };
                let owners = owner_uids(&obj.value);
                if !owners.contains(&uid) {
                    continue;
                }
                let others_alive = owners
                    .iter()
                    .any(|o| *o != uid && self.uids.contains_key(o));
                if others_alive {
                    let mut value = obj.value.clone();
                    if let Some(Value::Array(refs)) =
                        meta_mut(&mut value).get_mut("ownerReferences")
                    {
                        refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
                    }
                    normalize(&mut value);
                    self.store(res, value);
                } else if !finalizers(&obj.value).is_empty() {
                    if !deleting(&obj.value) {
                        let value = self.mark_deleted(&obj.value);
                        self.store(res, value);
                    }
                } else if let Some(gone) = self.remove_raw(res, &ns, &name, None) {
                    work.push(gone.meta_str("uid").to_owned());
                }
            }
        }
    }

    /// `value` with deletionTimestamp set (and its generation bumped, as
    /// the apiserver does).
    fn mark_deleted(&self, value: &Value) -> Value {
        let mut value = value.clone();
        let next = generation(&value) + 1;
        let m = meta_mut(&mut value);
        m.insert("deletionTimestamp".into(), now().into());
        m.insert("deletionGracePeriodSeconds".into(), 0.into());
        m.insert("generation".into(), next.into());
        value
    }

    /// Sets apiVersion, kind and the scope's namespace.
    fn shape(&self, res: usize, value: &mut Value, ns: &str) {
        let def = &DEFS[res];
        let m = as_map(value);
        m.insert("apiVersion".into(), def.api_version().into());
        m.insert("kind".into(), def.kind.into());
        let meta = meta_mut(value);
        if def.namespaced {
            meta.insert("namespace".into(), ns.into());
        } else {
            meta.remove("namespace");
        }
    }

    // --- the verbs ---

    fn create(
        &mut self,
        res: usize,
        ns: &str,
        mut value: Value,
        dry: bool,
    ) -> Result<Arc<Obj>, ApiError> {
        let def = &DEFS[res];
        if !value.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        if def.namespaced {
            let given = value["metadata"]["namespace"].as_str().unwrap_or_default();
            if !given.is_empty() && given != ns {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        let name = match value["metadata"]["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => match value["metadata"]["generateName"].as_str() {
                Some(prefix) if !prefix.is_empty() => {
                    let prefix = prefix.to_owned();
                    loop {
                        let candidate = self.generated_name(&prefix);
                        if self.object(res, ns, &candidate).is_none() {
                            break candidate;
                        }
                    }
                }
                _ => {
                    return Err(ApiError::invalid(
                        def,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        if self.object(res, ns, &name).is_some() {
            return Err(ApiError::already_exists(def, &name));
        }
        if def.status && !def.keep_status_on_create {
            as_map(&mut value).remove("status");
        }
        self.shape(res, &mut value, ns);
        let uid = self.new_uid();
        let m = meta_mut(&mut value);
        m.insert("name".into(), name.into());
        m.insert("uid".into(), uid.into());
        m.insert("creationTimestamp".into(), now().into());
        m.insert("generation".into(), 1.into());
        for key in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(key);
        }
        normalize(&mut value);
        if dry {
            return Ok(Obj::new(value));
        }
        Ok(self.store(res, value))
    }

    /// The common end of every update: keeps what the server owns,
    /// computes the generation, stores (or removes, when the last finalizer
    /// of a deleted object went) unless nothing changed.
    fn commit_update(
        &mut self,
        res: usize,
        old: &Arc<Obj>,
        mut new: Value,
        dry: bool,
    ) -> Result<Arc<Obj>, ApiError> {
        let def = &DEFS[res];
        if !new.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        let name = old.meta_str("name").to_owned();
        let ns = old.meta_str("namespace").to_owned();
        self.shape(res, &mut new, &ns);
        {
            let m = meta_mut(&mut new);
            for key in [
                "name",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match old.value["metadata"].get(key) {
                    Some(v) => m.insert(key.to_owned(), v.clone()),
                    None => m.remove(key),
                };
            }
        }
        normalize(&mut new);
        if deleting(&old.value) {
            let before = finalizers(&old.value);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    def,
                    &name,
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if spec_changed(def, &old.value, &new) {
            meta_mut(&mut new).insert("generation".into(), (generation(&old.value) + 1).into());
        }
        if new == old.value {
            return Ok(old.clone());
        }
        if dry {
            return Ok(Obj::new(new));
        }
        if deleting(&new) && finalizers(&new).is_empty() {
            return Ok(self
                .remove_now(res, &ns, &name, Some(new), true)
                .unwrap_or_else(|| old.clone()));
        }
        Ok(self.store(res, new))
    }

    fn update(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        body: Value,
        status: bool,
        dry: bool,
    ) -> Result<Arc<Obj>, ApiError> {
        let def = &DEFS[res];
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        let given = body["metadata"]["name"].as_str().unwrap_or_default();
        if !given.is_empty() && given != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({given}) does not match the name on the URL ({name})"
            )));
        }
        let old = self
            .object(res, ns, name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        let rv = body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !rv.is_empty() && rv != old.meta_str("resourceVersion") {
            return Err(ApiError::conflict(def, name, MODIFIED));
        }
        let uid = body["metadata"]["uid"].as_str().unwrap_or_default();
        if !uid.is_empty() && uid != old.meta_str("uid") {
            return Err(ApiError::conflict(
                def,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old.meta_str("uid")
                ),
            ));
        }
        let new = if status {
            let mut n = old.value.clone();
            set_or_remove(&mut n, "status", body.get("status"));
            n
        } else {
            let mut n = body;
            if def.status {
                set_or_remove(&mut n, "status", old.value.get("status"));
            }
            n
        };
        self.commit_update(res, &old, new, dry)
    }

    fn patch(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        patch: &PatchBody,
        status: bool,
        dry: bool,
    ) -> Result<(StatusCode, Arc<Obj>), ApiError> {
        let def = &DEFS[res];
        let Some(old) = self.object(res, ns, name) else {
            return match patch {
                PatchBody::Apply(v) if !status => {
                    let mut v = v.clone();
                    let given = v["metadata"]["name"].as_str().unwrap_or_default();
                    if !given.is_empty() && given != name {
                        return Err(ApiError::bad_request(format!(
                            "the name of the object ({given}) does not match the name on the URL ({name})"
                        )));
                    }
                    meta_mut(&mut v).insert("name".into(), name.into());
                    self.create(res, ns, v, dry)
                        .map(|o| (StatusCode::CREATED, o))
                }
                _ => Err(ApiError::not_found(def, name)),
            };
        };
        let mut doc = old.value.clone();
        patch
            .apply(&mut doc)
            .map_err(|e| ApiError::invalid(def, name, &e))?;
        let rv = doc["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default();
        if !rv.is_empty() && rv != old.meta_str("resourceVersion") {
            return Err(ApiError::conflict(def, name, MODIFIED));
        }
        let new = if status {
            let mut n = old.value.clone();
            set_or_remove(&mut n, "status", doc.get("status"));
            n
        } else {
            if def.status {
                set_or_remove(&mut doc, "status", old.value.get("status"));
            }
            doc
        };
        self.commit_update(res, &old, new, dry)
            .map(|o| (StatusCode::OK, o))
    }

    fn delete(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<Arc<Obj>, ApiError> {
        let def = &DEFS[res];
        let old = self
            .object(res, ns, name)
            .ok_or_else(|| ApiError::not_found(def, name))?;
        if let Some(uid) = &opts.uid
            && uid != old.meta_str("uid")
        {
            return Err(ApiError::conflict(
                def,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old.meta_str("uid")
                ),
            ));
        }
        if let Some(rv) = &opts.rv
            && rv != old.meta_str("resourceVersion")
        {
            return Err(ApiError::conflict(
                def,
                name,
                &format!(
                    "Precondition failed: the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
                    old.meta_str("resourceVersion")
                ),
            ));
        }
        if !finalizers(&old.value).is_empty() {
            if deleting(&old.value) {
                return Ok(old);
            }
            let value = self.mark_deleted(&old.value);
            if opts.dry {
                return Ok(Obj::new(value));
            }
            return Ok(self.store(res, value));
        }
        if opts.dry {
            return Ok(old);
        }
        Ok(self
            .remove_now(res, ns, name, None, !opts.orphan)
            .unwrap_or(old))
    }

    fn insert_direct(&mut self, res: usize, mut value: Value) -> Arc<Obj> {
        let def = &DEFS[res];
        let ns = if def.namespaced {
            match value["metadata"]["namespace"].as_str() {
                Some(ns) if !ns.is_empty() => ns.to_owned(),
                _ => "default".to_owned(),
            }
        } else {
            String::new()
        };
        let name = match value["metadata"]["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => match value["metadata"]["generateName"].as_str() {
                Some(prefix) if !prefix.is_empty() => {
                    let prefix = prefix.to_owned();
                    self.generated_name(&prefix)
                }
                _ => panic!("ApiServer::insert: the object has no metadata.name"),
            },
        };
        self.shape(res, &mut value, &ns);
        meta_mut(&mut value).insert("name".into(), name.clone().into());
        let old = self.object(res, &ns, &name);
        let uid = self.new_uid();
        {
            let m = meta_mut(&mut value);
            let from_old = |key: &str| {
                old.as_ref()
                    .and_then(|o| o.value["metadata"].get(key).cloned())
            };
            for (key, fresh) in [
                ("uid", Value::from(uid)),
                ("creationTimestamp", now().into()),
            ] {
                if m.get(key).is_none_or(Value::is_null) {
                    m.insert(key.into(), from_old(key).unwrap_or(fresh));
                }
            }
            if m.get("generation").is_none_or(Value::is_null) {
                let generation = match &old {
                    Some(o) => generation(&o.value),
                    None => 1,
                };
                m.insert("generation".into(), generation.into());
            }
        }
        if let Some(o) = &old
            && value["metadata"]["generation"] == o.value["metadata"]["generation"]
            && spec_changed(def, &o.value, &value)
        {
            meta_mut(&mut value).insert("generation".into(), (generation(&o.value) + 1).into());
        }
        normalize(&mut value);
        if let Some(o) = &old {
            meta_mut(&mut value).insert(
                "resourceVersion".into(),
                o.value["metadata"]["resourceVersion"].clone(),
            );
            if value == o.value {
                return o.clone();
            }
        }
        self.store(res, value)
    }

    /// Opens a watch.
    fn start_watch(
        &mut self,
        res: usize,
        ns: Option<String>,
        sel: Selector,
        from: Option<u64>,
        bookmarks: bool,
        initial_end: bool,
    ) -> Result<OpenedWatch, ApiError> {
        if !self.available {
            return Err(ApiError::unavailable());
        }
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let reg = Reg {
            key: sel.index_key(),
            ns,
            sel,
            tx,
            bookmarks,
        };
        let mut first = VecDeque::new();
        match from {
            Some(rv) if !initial_end => {
                if rv < self.floor {
                    first.push_back(Item::Expired(format!(
                        "too old resource version: {rv} ({})",
                        self.floor
                    )));
                    return Ok((first, None));
                }
                let start = self.history.partition_point(|c| c.rv <= rv);
                for change in self.history.range(start..) {
                    if change.res != res {
                        continue;
                    }
                    if let Some(kind) = reg.event(change) {
                        first.push_back(Item::Event(kind, change.obj.clone()));
                    }
                }
            }
            _ => {
                for obj in self.objects[res].values() {
                    if reg.matches(obj) {
                        first.push_back(Item::Event("ADDED", obj.clone()));
                    }
                }
                if initial_end {
                    first.push_back(Item::Bookmark(self.rv, true));
                }
            }
        }
        self.next_watch += 1;
        let id = self.next_watch;
        self.watchers[res].add(id, reg);
        Ok((first, Some((id, rx))))
    }

    fn send_bookmarks(&mut self) {
        let rv = self.rv;
        for watchers in &mut self.watchers {
            let mut dead = Vec::new();
            for (id, reg) in &watchers.regs {
                if reg.bookmarks
                    && let Err(mpsc::error::TrySendError::Closed(_)) =
                        reg.tx.try_send(Item::Bookmark(rv, false))
                {
                    dead.push(*id);
                }
            }
            for id in dead {
                watchers.remove(id);
            }
        }
    }
}

const MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// The keys under which watches may be indexed that an object matches.
fn index_keys(def: &Def, v: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(labels) = v["metadata"]["labels"].as_object() {
        for (k, val) in labels {
            if let Some(val) = val.as_str() {
                keys.push(format!("l:{k}={val}"));
            }
        }
    }
    for field in ["metadata.name", "metadata.namespace"]
        .iter()
        .chain(def.fields)
    {
        keys.push(format!("f:{field}={}", field_value(v, &pointer(field))));
    }
    keys
}

// ---------------------------------------------------------------------------
// Selectors

enum LabelReq {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

struct FieldReq {
    field: String,
    pointer: String,
    value: String,
    equal: bool,
}

#[derive(Default)]
struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

fn pointer(field: &str) -> String {
    format!("/{}", field.replace('.', "/"))
}

/// A field's value as a field selector compares it (`""` when absent).
fn field_value(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

impl Selector {
    fn parse(def: &Def, labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        let mut sel = Selector::default();
        for term in split_top(labels.unwrap_or_default()) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let bad = || ApiError::bad_request(format!("unable to parse requirement: {term:?}"));
            let req = if let Some(open) = term.find('(') {
                let close = term
                    .rfind(')')
                    .filter(|&c| c + 1 == term.len())
                    .ok_or_else(bad)?;
                let head: Vec<&str> = term[..open].split_whitespace().collect();
                let [key, op] = head[..] else {
                    return Err(bad());
                };
                let values: Vec<String> = term[open + 1..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
                    .collect();
                match op {
                    "in" => LabelReq::In(key.to_owned(), values),
                    "notin" => LabelReq::NotIn(key.to_owned(), values),
                    _ => return Err(bad()),
                }
            } else if let Some(key) = term.strip_prefix('!') {
                LabelReq::NotExists(key.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelReq::NotIn(k.trim().to_owned(), vec![v.trim().to_owned()])
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                LabelReq::In(k.trim().to_owned(), vec![v.trim().to_owned()])
            } else if term.contains(['<', '>', ' ']) {
                return Err(bad());
            } else {
                LabelReq::Exists(term.to_owned())
            };
            let key = match &req {
                LabelReq::In(k, _)
                | LabelReq::NotIn(k, _)
                | LabelReq::Exists(k)
                | LabelReq::NotExists(k) => k,
            };
            if !valid_key(key) {
                return Err(bad());
            }
            sel.labels.push(req);
        }
        for term in fields.unwrap_or_default().split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{term}'; can't understand '{term}'"
                )));
            };
            let field = field.trim();
            if !def.field_supported(field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            sel.fields.push(FieldReq::new(field, value.trim(), equal));
        }
        Ok(sel)
    }

    fn matches(&self, v: &Value) -> bool {
        let labels = v["metadata"]["labels"].as_object();
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.labels.iter().all(|req| match req {
            LabelReq::In(k, vals) => label(k).is_some_and(|l| vals.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vals) => label(k).is_none_or(|l| vals.iter().all(|v| v != l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        }) && self
            .fields
            .iter()
            .all(|f| (field_value(v, &f.pointer) == f.value) == f.equal)
    }

    /// One equality requirement every matching object has: the watch's key
    /// in the fan-out index.
    fn index_key(&self) -> Option<String> {
        self.labels
            .iter()
            .find_map(|req| match req {
                LabelReq::In(k, vals) if vals.len() == 1 => Some(format!("l:{k}={}", vals[0])),
                _ => None,
            })
            .or_else(|| {
                self.fields
                    .iter()
                    .find(|f| f.equal)
                    .map(|f| format!("f:{}={}", f.field, f.value))
            })
    }
}

impl FieldReq {
    fn new(field: &str, value: &str, equal: bool) -> Self {
        Self {
            field: field.to_owned(),
            pointer: pointer(field),
            value: value.to_owned(),
            equal,
        }
    }
}

// ---------------------------------------------------------------------------
// Patches

enum PatchBody {
    /// Merge (RFC 7386), and strategic merge treated as merge.
    Merge(Value),
    /// JSON patch (RFC 6902).
    Json(Vec<PatchOperation>),
    /// Server-side apply, treated as a merge.
    Apply(Value),
}

impl PatchBody {
    fn parse(content_type: &str, body: &[u8]) -> Result<Self, ApiError> {
        match content_type {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                Ok(Self::Merge(parse_json(body)?))
            }
            "application/json-patch+json" => serde_json::from_slice::<json_patch::Patch>(body)
                .map(|p| Self::Json(p.0))
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}"))),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                let value = serde_json::from_slice::<Value>(body).or_else(|_| {
                    serde_yaml_ng::from_slice::<Value>(body)
                        .map_err(|e| ApiError::bad_request(format!("invalid apply patch: {e}")))
                })?;
                if !value.is_object() {
                    return Err(ApiError::bad_request("an apply patch must be an object"));
                }
                Ok(Self::Apply(value))
            }
            other => Err(ApiError {
                code: 415,
                reason: "UnsupportedMediaType",
                message: format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
                details: None,
            }),
        }
    }

    fn apply(&self, doc: &mut Value) -> Result<(), String> {
        match self {
            Self::Merge(p) | Self::Apply(p) => {
                json_patch::merge(doc, p);
                Ok(())
            }
            Self::Json(ops) => {
                for op in ops {
                    // Like the apiserver's JSON patch, a `test` for null
                    // passes on an absent path (kube's finalizer helper
                    // relies on it).
                    if let PatchOperation::Test(t) = op
                        && t.value.is_null()
                        && doc.pointer(t.path.as_str()).is_none()
                    {
                        continue;
                    }
                    json_patch::patch_unsafe(doc, std::slice::from_ref(op))
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

struct DeleteOpts {
    uid: Option<String>,
    rv: Option<String>,
    orphan: bool,
    dry: bool,
}

impl DeleteOpts {
    fn parse(body: &[u8], query: &Query) -> Result<Self, ApiError> {
        let v = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            parse_json(body)?
        };
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let policy = v["propagationPolicy"]
            .as_str()
            .or_else(|| query.get("propagationPolicy"))
            .unwrap_or_default();
        Ok(Self {
            uid: text(&v["preconditions"]["uid"]),
            rv: text(&v["preconditions"]["resourceVersion"]),
            orphan: policy == "Orphan" || v["orphanDependents"] == true,
            dry: v["dryRun"].as_array().is_some_and(|a| !a.is_empty())
                || query.get("dryRun").is_some_and(|d| !d.is_empty()),
        })
    }
}

// ---------------------------------------------------------------------------
// Errors

struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn details(def: &Def, name: &str) -> Option<Value> {
        Some(json!({"name": name, "group": def.group, "kind": def.plural}))
    }

    fn not_found(def: &Def, name: &str) -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: format!("{} {name:?} not found", def.qualified()),
            details: Self::details(def, name),
        }
    }

    fn already_exists(def: &Def, name: &str) -> Self {
        Self {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} {name:?} already exists", def.qualified()),
            details: Self::details(def, name),
        }
    }

    fn conflict(def: &Def, name: &str, why: &str) -> Self {
        Self {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} {name:?}: {why}",
                def.qualified()
            ),
            details: Self::details(def, name),
        }
    }

    fn invalid(def: &Def, name: &str, why: &str) -> Self {
        let kind = if def.group.is_empty() {
            def.kind.to_owned()
        } else {
            format!("{}.{}", def.kind, def.group)
        };
        Self {
            code: 422,
            reason: "Invalid",
            message: format!("{kind} {name:?} is invalid: {why}"),
            details: Self::details(def, name),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    fn not_found_path() -> Self {
        Self {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: None,
        }
    }

    fn method_not_allowed() -> Self {
        Self {
            code: 405,
            reason: "MethodNotAllowed",
            message: "the server does not allow this method on the requested resource".into(),
            details: None,
        }
    }

    fn refused(refusal: Refusal, def: &Def, name: &str) -> Self {
        let reason = match refusal.code {
            403 => "Forbidden",
            413 => "RequestEntityTooLarge",
            422 => "Invalid",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            _ => "Unknown",
        };
        Self {
            code: refusal.code,
            reason,
            message: format!(
                "{} {name:?}: status write refused by the test double ({})",
                def.qualified(),
                refusal.code
            ),
            details: Self::details(def, name),
        }
    }

    fn unavailable() -> Self {
        Self {
            code: 503,
            reason: "ServiceUnavailable",
            message: "the server is currently unable to handle the request".into(),
            details: None,
        }
    }

    fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            as_map(&mut status).insert("details".into(), details.clone());
        }
        status
    }

    fn response(&self) -> Response<Body> {
        respond(
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            to_bytes(&self.to_json()),
        )
    }
}

// ---------------------------------------------------------------------------
// HTTP

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn respond(status: StatusCode, bytes: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(bytes).boxed_unsync());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut every = tokio::time::interval(BOOKMARK_INTERVAL);
            loop {
                every.tick().await;
                shared.lock().send_bookmarks();
            }
        }
    });
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors, most likely: let some go.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(shared, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

/// A parsed query string.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Self {
        Self(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// `application/x-www-form-urlencoded` decoding.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a request goes.
enum Route {
    Version,
    Health,
    ApiVersions,
    ApiGroups,
    Resources(&'static str, &'static str),
    Target(Target),
    NotFound,
}

struct Target {
    res: usize,
    ns: Option<String>,
    name: Option<String>,
    status: bool,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Route::Version,
        ["healthz" | "readyz" | "livez", ..] => return Route::Health,
        ["api"] => return Route::ApiVersions,
        ["apis"] => return Route::ApiGroups,
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    let find = |plural: &str| {
        DEFS.iter()
            .position(|d| d.group == group && d.version == version && d.plural == plural)
    };
    if rest.is_empty() {
        return match DEFS
            .iter()
            .find(|d| d.group == group && d.version == version)
        {
            Some(d) => Route::Resources(d.group, d.version),
            None => Route::NotFound,
        };
    }
    if let ["namespaces", ns, plural, tail @ ..] = rest
        && let Some(res) = find(plural)
        && DEFS[res].namespaced
    {
        return target(res, Some(ns), tail);
    }
    let [plural, tail @ ..] = rest else {
        return Route::NotFound;
    };
    match find(plural) {
        Some(res) if !DEFS[res].namespaced || tail.is_empty() => target(res, None, tail),
        _ => Route::NotFound,
    }
}

fn target(res: usize, ns: Option<&str>, tail: &[&str]) -> Route {
    let (name, status) = match tail {
        [] => (None, false),
        [name] => (Some(*name), false),
        [name, "status"] if DEFS[res].status => (Some(*name), true),
        _ => return Route::NotFound,
    };
    Route::Target(Target {
        res,
        ns: ns.map(str::to_owned),
        name: name.map(str::to_owned),
        status,
    })
}

fn write_verb(method: &Method) -> Option<&'static str> {
    match *method {
        Method::POST => Some("create"),
        Method::PUT => Some("update"),
        Method::PATCH => Some("patch"),
        Method::DELETE => Some("delete"),
        _ => None,
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query().unwrap_or_default());
    let header = |name: hyper::header::HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let meta_only = header(ACCEPT).contains("as=PartialObjectMetadata");
    let content_type = header(CONTENT_TYPE)
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let route = route(parts.uri.path());
    let name = match &route {
        Route::Target(t) => t.name.clone(),
        _ => None,
    };
    let count_key = write_verb(&parts.method).map(|verb| match &route {
        Route::Target(t) => format!(
            "{verb} {}{}",
            DEFS[t.res].plural,
            if t.status { "/status" } else { "" }
        ),
        _ => format!("{verb} {}", parts.uri.path()),
    });
    let response = if !*shared.avail.borrow() {
        ApiError::unavailable().response()
    } else {
        let bytes = if count_key.is_some() {
            match body.collect().await {
                Ok(collected) => Ok(collected.to_bytes()),
                Err(e) => Err(ApiError::bad_request(format!("reading the body: {e}"))),
            }
        } else {
            Ok(Bytes::new())
        };
        let refusal = match (&route, &bytes) {
            (Route::Target(t), Ok(bytes)) if t.status && count_key.is_some() => {
                t.name.as_ref().and_then(|name| {
                    let key = (DEFS[t.res].plural.to_owned(), name.clone());
                    let refusal = shared.lock().refusals.get(&key).copied()?;
                    (bytes.len() > refusal.over_bytes)
                        .then(|| ApiError::refused(refusal, &DEFS[t.res], name))
                })
            }
            _ => None,
        };
        match (refusal, bytes) {
            (Some(refusal), _) => refusal.response(),
            (None, Ok(bytes)) => dispatch(
                &shared,
                &parts.method,
                route,
                &query,
                &bytes,
                &content_type,
                meta_only,
            )
            .unwrap_or_else(|e| e.response()),
            (None, Err(e)) => e.response(),
        }
    };
    if let Some(key) = count_key {
        let mut st = shared.lock();
        if let Some(name) = name {
            *st.writes_to.entry(format!("{key} {name}")).or_default() += 1;
        }
        st.writes.record(key, response.status().is_success());
    }
    response
}

fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    route: Route,
    query: &Query,
    body: &[u8],
    content_type: &str,
    meta_only: bool,
) -> Result<Response<Body>, ApiError> {
    let discovery = |value: Value| {
        if *method == Method::GET {
            Ok(respond(StatusCode::OK, to_bytes(&value)))
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    let t = match route {
        Route::Version => return discovery(version_json()),
        Route::Health => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"ok")).boxed_unsync());
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return Ok(r);
        }
        Route::ApiVersions => {
            return discovery(json!({
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [],
            }));
        }
        Route::ApiGroups => return discovery(groups_json()),
        Route::Resources(group, version) => return discovery(resources_json(group, version)),
        Route::NotFound => return Err(ApiError::not_found_path()),
        Route::Target(t) => t,
    };
    let def = &DEFS[t.res];
    let ns = t.ns.clone().unwrap_or_default();
    let dry = query.get("dryRun").is_some_and(|d| !d.is_empty());
    let object = |status: StatusCode, obj: &Obj| respond(status, obj.body(meta_only).clone());
    match (t.name.as_deref(), method) {
        (None, &Method::GET) => {
            if query.flag("watch") {
                start_watch(shared, &t, query, meta_only)
            } else {
                list(shared, &t, query, meta_only)
            }
        }
        (Some(_), &Method::GET) if query.flag("watch") && !t.status => {
            start_watch(shared, &t, query, meta_only)
        }
        (None, &Method::POST) => {
            if def.namespaced && t.ns.is_none() {
                return Err(ApiError::method_not_allowed());
            }
            let value = parse_json(body)?;
            let obj = shared.lock().create(t.res, &ns, value, dry)?;
            Ok(object(StatusCode::CREATED, &obj))
        }
        (Some(name), &Method::GET) => {
            let obj = shared
                .lock()
                .object(t.res, &ns, name)
                .ok_or_else(|| ApiError::not_found(def, name))?;
            Ok(object(StatusCode::OK, &obj))
        }
        (Some(name), &Method::PUT) => {
            let value = parse_json(body)?;
            let obj = shared
                .lock()
                .update(t.res, &ns, name, value, t.status, dry)?;
            Ok(object(StatusCode::OK, &obj))
        }
        (Some(name), &Method::PATCH) => {
            let patch = PatchBody::parse(content_type, body)?;
            if matches!(patch, PatchBody::Apply(_))
                && query.get("fieldManager").is_none_or(str::is_empty)
            {
                return Err(ApiError::invalid(
                    def,
                    name,
                    "fieldManager: Required value: is required for apply patch",
                ));
            }
            let (status, obj) = shared
                .lock()
                .patch(t.res, &ns, name, &patch, t.status, dry)?;
            Ok(object(status, &obj))
        }
        (Some(name), &Method::DELETE) if !t.status => {
            let opts = DeleteOpts::parse(body, query)?;
            let obj = shared.lock().delete(t.res, &ns, name, &opts)?;
            Ok(object(StatusCode::OK, &obj))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn list(
    shared: &Arc<Shared>,
    t: &Target,
    query: &Query,
    meta_only: bool,
) -> Result<Response<Body>, ApiError> {
    let def = &DEFS[t.res];
    let sel = Selector::parse(def, query.get("labelSelector"), query.get("fieldSelector"))?;
    let (rv, items) = {
        let st = shared.lock();
        let items: Vec<Arc<Obj>> = st.objects[t.res]
            .values()
            .filter(|o| {
                t.ns.as_deref()
                    .is_none_or(|ns| o.meta_str("namespace") == ns)
            })
            .filter(|o| sel.matches(&o.value))
            .cloned()
            .collect();
        (st.rv, items)
    };
    let (api_version, kind) = if meta_only {
        (
            "meta.k8s.io/v1".to_owned(),
            "PartialObjectMetadataList".to_owned(),
        )
    } else {
        (def.api_version(), format!("{}List", def.kind))
    };
    let mut buf = Vec::with_capacity(256 + items.len() * 1024);
    buf.extend_from_slice(
        format!(
            r#"{{"apiVersion":"{api_version}","kind":"{kind}","metadata":{{"resourceVersion":"{rv}"}},"items":["#
        )
        .as_bytes(),
    );
    for (i, obj) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(obj.body(meta_only));
    }
    buf.extend_from_slice(b"]}");
    Ok(respond(StatusCode::OK, Bytes::from(buf)))
}

fn start_watch(
    shared: &Arc<Shared>,
    t: &Target,
    query: &Query,
    meta_only: bool,
) -> Result<Response<Body>, ApiError> {
    let def = &DEFS[t.res];
    let mut sel = Selector::parse(def, query.get("labelSelector"), query.get("fieldSelector"))?;
    if let Some(name) = &t.name {
        sel.fields.push(FieldReq::new("metadata.name", name, true));
    }
    let rv = query.get("resourceVersion").unwrap_or_default();
    let from = if rv.is_empty() || rv == "0" {
        None
    } else {
        Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?,
        )
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(MAX_WATCH, Duration::from_secs)
        .min(MAX_WATCH);
    let (first, live) = shared.lock().start_watch(
        t.res,
        t.ns.clone(),
        sel,
        from,
        query.flag("allowWatchBookmarks"),
        query.flag("sendInitialEvents"),
    )?;
    let (guard, rx) = match live {
        Some((id, rx)) => (
            Some(WatchGuard {
                shared: shared.clone(),
                res: t.res,
                id,
            }),
            Some(rx),
        ),
        None => (None, None),
    };
    let stream = WatchStream {
        first,
        rx,
        _guard: guard,
        avail: shared.avail.subscribe(),
        deadline: Box::pin(tokio::time::sleep(timeout)),
        def,
        meta_only,
        done: false,
    };
    let body = StreamBody::new(futures_util::stream::unfold(stream, |mut s| async move {
        let chunk = s.next_chunk().await?;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), s))
    }));
    let mut response = Response::new(body.boxed_unsync());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Unregisters a watch when its stream goes.
struct WatchGuard {
    shared: Arc<Shared>,
    res: usize,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shared.lock().watchers[self.res].remove(self.id);
    }
}

struct WatchStream {
    first: VecDeque<Item>,
    rx: Option<mpsc::Receiver<Item>>,
    _guard: Option<WatchGuard>,
    avail: watch::Receiver<bool>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    def: &'static Def,
    meta_only: bool,
    done: bool,
}

enum Next {
    Avail(bool),
    End,
    Item(Option<Item>),
}

impl WatchStream {
    /// Appends an item's line; whether it ends the stream.
    fn write(&self, item: &Item, buf: &mut Vec<u8>) -> bool {
        match item {
            Item::Event(kind, obj) => {
                buf.extend_from_slice(b"{\"type\":\"");
                buf.extend_from_slice(kind.as_bytes());
                buf.extend_from_slice(b"\",\"object\":");
                buf.extend_from_slice(obj.body(self.meta_only));
                buf.extend_from_slice(b"}\n");
                false
            }
            Item::Bookmark(rv, initial_end) => {
                let mut object = json!({
                    "apiVersion": self.def.api_version(),
                    "kind": self.def.kind,
                    "metadata": {"resourceVersion": rv.to_string()},
                });
                if *initial_end {
                    meta_mut(&mut object).insert(
                        "annotations".into(),
                        json!({"k8s.io/initial-events-end": "true"}),
                    );
                }
                buf.extend_from_slice(&to_bytes(&json!({"type": "BOOKMARK", "object": object})));
                buf.push(b'\n');
                false
            }
            Item::Expired(message) => {
                let status = ApiError {
                    code: 410,
                    reason: "Expired",
                    message: message.clone(),
                    details: None,
                };
                buf.extend_from_slice(&to_bytes(
                    &json!({"type": "ERROR", "object": status.to_json()}),
                ));
                buf.push(b'\n');
                true
            }
        }
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done || !*self.avail.borrow() {
                self.done = true;
                return None;
            }
            let mut buf = Vec::new();
            while let Some(item) = self.first.pop_front() {
                if self.write(&item, &mut buf) {
                    self.done = true;
                    break;
                }
                if buf.len() >= CHUNK {
                    break;
                }
            }
            if !buf.is_empty() {
                return Some(Bytes::from(buf));
            }
            let Some(rx) = self.rx.as_mut() else {
                self.done = true;
                return None;
            };
            let next = tokio::select! {
                biased;
                changed = self.avail.changed() => Next::Avail(changed.is_ok()),
                () = self.deadline.as_mut() => Next::End,
                item = rx.recv() => Next::Item(item),
            };
            match next {
                Next::Avail(open) => {
                    if !open {
                        self.done = true;
                    }
                }
                Next::End | Next::Item(None) => {
                    self.done = true;
                    return None;
                }
                Next::Item(Some(item)) => {
                    self.first.push_back(item);
                    // Batch what is already queued.
                    while self.first.len() < 256 {
                        match self.rx.as_mut().map(mpsc::Receiver::try_recv) {
                            Some(Ok(item)) => self.first.push_back(item),
                            _ => break,
                        }
                    }
                }
            }
        }
    }
}

fn version_json() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-hostaction-test-double",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn groups_json() -> Value {
    let mut groups: Vec<Value> = Vec::new();
    let mut seen = BTreeSet::new();
    for d in DEFS.iter().filter(|d| !d.group.is_empty()) {
        if seen.insert((d.group, d.version)) {
            let gv = json!({"groupVersion": d.api_version(), "version": d.version});
            groups.push(json!({"name": d.group, "versions": [gv], "preferredVersion": gv}));
        }
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resources_json(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for d in DEFS
        .iter()
        .filter(|d| d.group == group && d.version == version)
    {
        resources.push(json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        }));
        if d.status {
            resources.push(json!({
                "name": format!("{}/status", d.plural),
                "singularName": "",
                "namespaced": d.namespaced,
                "kind": d.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}
