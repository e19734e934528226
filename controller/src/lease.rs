//! Leader election on a coordination.k8s.io/v1 Lease, the way client-go's
//! `leaderelection` does it (kube 5 has none built in): only one controller
//! replica may create runs at a time.
//!
//! Every write is a `replace` carrying the `resourceVersion` last read, so
//! of two replicas writing at once one gets 409 Conflict and tries again
//! later. A lease held by another is taken over only once its record has
//! not changed for `lease_duration` on this process's own clock; the
//! holder's `renewTime` is never compared with the local clock, since
//! clocks skew.
//!
//! Why not the `kube-lease-manager` crate: its 0.13.1 does build with our
//! kube 5.0.0 / k8s-openapi 0.29, but it judges a lease expired by the
//! holder's `renewTime` plus its duration against the local wall clock (a
//! replica whose clock runs ahead takes over a live lease), and it has no
//! renew deadline: a leader whose renewals fail keeps reporting itself
//! leader past the lease's expiry, while another replica may take over, so
//! two would create runs. It also panics on timings it refuses. This file
//! keeps client-go's rules instead, and `tests/tests/all/cluster.rs` checks
//! them with two real replicas on a real kube-apiserver.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Which lease to hold, who we are, and the election's timings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease object's name.
    pub name: String,
    /// The Lease object's namespace.
    pub namespace: String,
    /// This replica's identity, written as `holderIdentity`; unique per
    /// replica (the pod name).
    pub identity: String,
    /// How long a record must stay unchanged before another replica may
    /// take the lease over.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up; shorter
    /// than `lease_duration`, so it stops before anyone may take over.
    pub renew_deadline: Duration,
    /// The pause between two attempts to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// Refuses timings under which two replicas could both act as leader.
    ///
    /// # Errors
    /// [`LeaseError::Config`] naming the rule broken (and its flag).
    pub fn check(&self) -> Result<(), LeaseError> {
        if self.identity.is_empty() {
            return Err(LeaseError::Config("identity (--identity) is empty"));
        }
        if self.retry_period.is_zero() {
            return Err(LeaseError::Config("retry_period (--retry-period) is zero"));
        }
        if self.renew_deadline <= self.retry_period {
            return Err(LeaseError::Config(
                "renew_deadline (--renew-deadline) must be longer than retry_period (--retry-period)",
            ));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(LeaseError::Config(
                "lease_duration (--lease-duration) must be longer than renew_deadline (--renew-deadline)",
            ));
        }
        Ok(())
    }

    /// `lease_duration` in whole seconds, rounded up, as the Lease records it.
    fn duration_seconds(&self) -> i32 {
        let d = self.lease_duration;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX).max(1)
    }
}

/// Why leader election cannot start.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The configuration cannot guarantee a single leader.
    #[error("lease config: {0}")]
    Config(&'static str),
}

/// Campaigns for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: Arc<LeaseConfig>,
}

impl LeaderElector {
    /// An elector for `config.name` in `config.namespace`.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config: Arc::new(config),
        }
    }

    /// Waits (retrying every `retry_period`) until this process holds the
    /// lease; then keeps renewing it every `retry_period` in a background
    /// task until the [`Leadership`] is lost, released or dropped.
    ///
    /// API errors are logged and retried, not returned: a missing RBAC rule
    /// or an API server restart may be fixed while we wait.
    pub async fn acquire(&self) -> Result<Leadership, LeaseError> {
        self.config.check()?;
        let config = &self.config;
        let mut election = Election {
            api: self.api.clone(),
            config: config.clone(),
            observed: None,
            ours: None,
        };
        let mut waiting_on: Option<String> = None;
        let acquired_at = loop {
            let started = Instant::now();
            let attempt = election.try_acquire_or_renew();
            match tokio::time::timeout(config.renew_deadline, attempt).await {
                Ok(Ok(Attempt::Held)) => break started,
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    if waiting_on.as_deref() != Some(holder.as_str()) {
                        tracing::info!(
                            lease = %config.name, namespace = %config.namespace, %holder,
                            "lease held by another replica; waiting"
                        );
                        waiting_on = Some(holder);
                    }
                }
                Ok(Err(e)) => log_failure(config, "acquiring", &e),
                Err(_) => tracing::warn!(
                    lease = %config.name, namespace = %config.namespace,
                    "acquiring lease: API request timed out"
                ),
            }
            tokio::time::sleep(config.retry_period).await;
        };
        tracing::info!(
            lease = %config.name, namespace = %config.namespace, identity = %config.identity,
            "acquired leadership"
        );
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(keep_renewing(election, acquired_at, lost_tx));
        Ok(Leadership {
            api: self.api.clone(),
            config: config.clone(),
            renewer,
            lost,
        })
    }
}

/// Holding the lease. Dropping it stops the renewals (the lease then
/// expires); [`Leadership::release`] hands it over at once.
pub struct Leadership {
    api: Api<Lease>,
    config: Arc<LeaseConfig>,
    renewer: JoinHandle<()>,
    lost: watch::Receiver<bool>,
}

impl Leadership {
    /// Resolves when leadership is lost: renewal did not succeed within
    /// `renew_deadline`, or another identity holds the lease. The holder
    /// must stop acting as leader at once.
    pub async fn lost(&mut self) {
        // An error means the renew task is gone, which also ends leadership.
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Whether the lease is still ours as far as this process knows.
    pub fn is_leader(&self) -> bool {
        !*self.lost.borrow() && !self.renewer.is_finished()
    }

    /// Stops renewing and gives the lease up (`holderIdentity` cleared,
    /// `leaseDurationSeconds` 1, like client-go's `ReleaseOnCancel`), so a
    /// successor need not wait for it to expire. Failures are logged: the
    /// lease then simply expires.
    pub async fn release(mut self) {
        self.renewer.abort();
        // Wait for the task to stop, so no renewal lands after the release.
        let _ = (&mut self.renewer).await;
        let config = &self.config;
        let released = tokio::time::timeout(config.renew_deadline, give_up(&self.api, config));
        match released.await {
            Ok(Ok(true)) => tracing::info!(
                lease = %config.name, namespace = %config.namespace, identity = %config.identity,
                "released leadership"
            ),
            Ok(Ok(false)) => tracing::debug!(
                lease = %config.name, namespace = %config.namespace,
                "lease no longer ours; nothing to release"
            ),
            Ok(Err(e)) => tracing::warn!(
                lease = %config.name, namespace = %config.namespace, error = %e,
                "could not release lease; it will expire"
            ),
            Err(_) => tracing::warn!(
                lease = %config.name, namespace = %config.namespace,
                "releasing lease timed out; it will expire"
            ),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// What one attempt found.
enum Attempt {
    /// The lease is ours (acquired or renewed).
    Held,
    /// Another identity holds the lease and its record is still changing.
    HeldBy(String),
}

/// The state one campaign carries between attempts.
struct Election {
    api: Api<Lease>,
    config: Arc<LeaseConfig>,
    /// The lease's spec as last read, and when this process saw it change:
    /// expiry is judged by our clock, never by the holder's `renewTime`.
    observed: Option<(LeaseSpec, Instant)>,
    /// The lease as we last wrote it, while we hold it: a renewal replaces
    /// it without reading first, and its `resourceVersion` makes the write
    /// fail if anyone changed the lease in between.
    ours: Option<Lease>,
}

impl Election {
    /// One round of client-go's `tryAcquireOrRenew`.
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        if let Some(ours) = self.ours.take() {
            match self.write(ours, false).await {
                Ok(()) => return Ok(Attempt::Held),
                Err(e) => tracing::debug!(
                    lease = %self.config.name, error = %e,
                    "renewing from the cached lease failed; reading it"
                ),
            }
        }
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            self.create().await?;
            return Ok(Attempt::Held);
        };
        // Taken after the read: the record changed no later than this, so
        // its holder stops leading no later than this plus its renew deadline.
        let now = Instant::now();
        let spec = current.spec.clone().unwrap_or_default();
        let changed_at = match &self.observed {
            Some((seen, at)) if *seen == spec => *at,
            _ => {
                self.observed = Some((spec.clone(), now));
                now
            }
        };
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        let mine = holder == self.config.identity;
        // An empty holder means the lease was released.
        if !holder.is_empty() && !mine && now < changed_at + self.config.lease_duration {
            return Ok(Attempt::HeldBy(holder.to_owned()));
        }
        self.write(current, !mine).await?;
        Ok(Attempt::Held)
    }

    /// Writes `lease` back as ours, renewed; `take_over` also makes us its
    /// holder and counts a transition.
    async fn write(&mut self, mut lease: Lease, take_over: bool) -> Result<(), kube::Error> {
        // Wall-clock times are for people and other clients to read; this
        // process decides on its monotonic clock.
        let now = MicroTime(Timestamp::now());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if take_over {
            spec.holder_identity = Some(self.config.identity.clone());
            spec.acquire_time = Some(now.clone());
            let transitions = spec.lease_transitions.unwrap_or(0);
            spec.lease_transitions = Some(transitions.saturating_add(1));
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(self.config.duration_seconds());
        let written = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await?;
        self.remember(written);
        Ok(())
    }

    /// Creates the absent lease with us as its first holder.
    async fn create(&mut self) -> Result<(), kube::Error> {
        let now = MicroTime(Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_duration_seconds: Some(self.config.duration_seconds()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        let created = self.api.create(&PostParams::default(), &lease).await?;
        self.remember(created);
        Ok(())
    }

    fn remember(&mut self, lease: Lease) {
        self.observed = Some((lease.spec.clone().unwrap_or_default(), Instant::now()));
        self.ours = Some(lease);
    }
}

/// Renews every `retry_period` until a renewal fails to land within
/// `renew_deadline` of the last one, or another identity holds the lease;
/// then flags `lost`.
async fn keep_renewing(mut election: Election, acquired_at: Instant, lost: watch::Sender<bool>) {
    let config = election.config.clone();
    // When the last successful write was sent: the server may have
    // committed it at any moment after, so others cannot take over before
    // this plus lease_duration, and we stop well before that.
    let mut renewed_at = acquired_at;
    loop {
        tokio::time::sleep(config.retry_period).await;
        let deadline = renewed_at + config.renew_deadline;
        let started = Instant::now();
        if started >= deadline {
            tracing::warn!(
                lease = %config.name, namespace = %config.namespace, identity = %config.identity,
                "lost leadership: lease not renewed within the renew deadline"
            );
            break;
        }
        let attempt = election.try_acquire_or_renew();
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(Attempt::Held)) => renewed_at = started,
            Ok(Ok(Attempt::HeldBy(holder))) => {
                tracing::warn!(
                    lease = %config.name, namespace = %config.namespace, %holder,
                    "lost leadership: another replica holds the lease"
                );
                break;
            }
            Ok(Err(e)) => log_failure(&config, "renewing", &e),
            Err(_) => {
                tracing::warn!(
                    lease = %config.name, namespace = %config.namespace, identity = %config.identity,
                    "lost leadership: renewal still pending at the renew deadline"
                );
                break;
            }
        }
    }
    lost.send_replace(true);
}

/// Clears the holder if the lease is still ours; whether it was.
async fn give_up(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(false);
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(false);
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    api.replace(&config.name, &PostParams::default(), &lease)
        .await?;
    Ok(true)
}

/// Conflicts are the expected outcome of a race with another replica; other
/// failures deserve a warning.
fn log_failure(config: &LeaseConfig, doing: &str, e: &kube::Error) {
    let race = matches!(e, kube::Error::Api(s) if s.is_conflict() || s.is_already_exists());
    if race {
        tracing::debug!(
            lease = %config.name, namespace = %config.namespace, error = %e,
            "{doing} lease: another replica wrote it first"
        );
    } else {
        tracing::warn!(
            lease = %config.name, namespace = %config.namespace, error = %e,
            "{doing} lease failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use serde_json::json;

    type ApiHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
    type Reply = tower_test::mock::SendResponse<Response<Body>>;

    const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/ctl";
    const LEASES_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases";

    fn config() -> LeaseConfig {
        LeaseConfig {
            lease_duration: Duration::from_millis(200),
            renew_deadline: Duration::from_millis(100),
            retry_period: Duration::from_millis(50),
            ..LeaseConfig::new("ctl", "ns", "me")
        }
    }

    fn elector() -> (LeaderElector, ApiHandle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        (LeaderElector::new(client, config()), handle)
    }

    /// The next request: its method, path and Lease body (if any).
    async fn next(api: &mut ApiHandle) -> (Method, String, Option<Lease>, Reply) {
        // Fails fast (in paused time) instead of hanging when none comes.
        let waiting = tokio::time::timeout(Duration::from_secs(5), api.next_request());
        let (request, reply) = waiting.await.ok().flatten().expect("a request");
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.expect("request body").to_bytes();
        let lease =
            (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).expect("a Lease body"));
        (parts.method, parts.uri.path().to_owned(), lease, reply)
    }

    fn respond(reply: Reply, status: StatusCode, body: &serde_json::Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        let response = Response::builder()
            .status(status)
            .body(Body::from(bytes))
            .expect("response");
        reply.send_response(response);
    }

    /// Answers with a failure `Status`, as the API server does.
    fn refuse(reply: Reply, code: StatusCode, reason: &str) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "code": code.as_u16(), "message": reason,
        });
        respond(reply, code, &status);
    }

    /// The API server's copy of `lease` at `resource_version`.
    fn stored(mut lease: Lease, resource_version: u32) -> serde_json::Value {
        lease.metadata.resource_version = Some(resource_version.to_string());
        serde_json::to_value(lease).expect("json")
    }

    fn held_by(holder: Option<&str>, renewed_second: u32, transitions: i32) -> Lease {
        let renewed: Timestamp = format!("2025-01-01T00:00:{renewed_second:02}Z")
            .parse()
            .expect("timestamp");
        Lease {
            metadata: ObjectMeta {
                name: Some("ctl".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(1),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    fn spec(lease: &Option<Lease>) -> &LeaseSpec {
        lease
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .expect("a lease spec")
    }

    /// Answers GET 404 then POST, as for a lease nobody has created yet.
    async fn grant_by_create(api: &mut ApiHandle) {
        let (method, path, _, reply) = next(api).await;
        assert_eq!((method, path.as_str()), (Method::GET, LEASE_PATH));
        refuse(reply, StatusCode::NOT_FOUND, "NotFound");
        let (method, path, lease, reply) = next(api).await;
        assert_eq!((method, path.as_str()), (Method::POST, LEASES_PATH));
        respond(reply, StatusCode::CREATED, &stored(lease.expect("body"), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn absent_lease_is_created_and_then_renewed() {
        let (elector, mut api) = elector();
        let acquiring = tokio::spawn(async move { elector.acquire().await });

        let (method, path, _, reply) = next(&mut api).await;
        assert_eq!((method, path.as_str()), (Method::GET, LEASE_PATH));
        refuse(reply, StatusCode::NOT_FOUND, "NotFound");

        let (method, path, lease, reply) = next(&mut api).await;
        assert_eq!((method, path.as_str()), (Method::POST, LEASES_PATH));
        let created = spec(&lease);
        assert_eq!(created.holder_identity.as_deref(), Some("me"));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.lease_duration_seconds, Some(1));
        assert!(created.acquire_time.is_some() && created.renew_time.is_some());
        respond(
            reply,
            StatusCode::CREATED,
            &stored(lease.clone().expect("body"), 1),
        );

        let leadership = acquiring.await.expect("join").expect("acquired");
        assert!(leadership.is_leader());

        // Each renewal replaces the lease we wrote last, guarded by its
        // version, and keeps us leader well past the lease's duration.
        let lease_duration = leadership.config.lease_duration;
        let start = Instant::now();
        let mut version = 1;
        while start.elapsed() < lease_duration * 3 {
            let (method, path, renewed, reply) = next(&mut api).await;
            assert_eq!((method, path.as_str()), (Method::PUT, LEASE_PATH));
            let renewed_lease = renewed.clone().expect("body");
            let expected = version.to_string();
            let written = renewed_lease.metadata.resource_version.as_deref();
            assert_eq!(written, Some(expected.as_str()));
            assert_eq!(spec(&renewed).holder_identity.as_deref(), Some("me"));
            assert_eq!(spec(&renewed).lease_transitions, Some(0));
            version += 1;
            respond(reply, StatusCode::OK, &stored(renewed_lease, version));
        }
        assert!(leadership.is_leader());
    }

    #[tokio::test(start_paused = true)]
    async fn lease_of_another_is_taken_over_only_after_it_stops_changing() {
        let (elector, mut api) = elector();
        let lease_duration = elector.config.lease_duration;
        let acquiring = tokio::spawn(async move { elector.acquire().await });

        // A live holder: every read shows a new renewal, for longer than
        // lease_duration; nothing but reads may happen.
        let start = Instant::now();
        let mut second = 0;
        while start.elapsed() < lease_duration * 2 {
            let (method, path, _, reply) = next(&mut api).await;
            assert_eq!((method, path.as_str()), (Method::GET, LEASE_PATH));
            second += 1;
            respond(
                reply,
                StatusCode::OK,
                &stored(held_by(Some("other"), second, 3), second),
            );
        }
        assert!(!acquiring.is_finished());

        // The holder died: its record stays the same from now on.
        let dead = stored(held_by(Some("other"), 59, 3), 100);
        let (method, _, _, reply) = next(&mut api).await;
        assert_eq!(method, Method::GET);
        let stopped_at = Instant::now();
        respond(reply, StatusCode::OK, &dead);
        let (taken, reply) = loop {
            let (method, _, lease, reply) = next(&mut api).await;
            if method == Method::PUT {
                break (lease, reply);
            }
            assert_eq!(method, Method::GET);
            respond(reply, StatusCode::OK, &dead);
        };
        let waited = stopped_at.elapsed();
        assert!(waited >= lease_duration, "took over after {waited:?}");
        assert!(waited < lease_duration * 2, "took over after {waited:?}");

        let taken_lease = taken.clone().expect("body");
        assert_eq!(
            taken_lease.metadata.resource_version.as_deref(),
            Some("100")
        );
        assert_eq!(spec(&taken).holder_identity.as_deref(), Some("me"));
        assert_eq!(spec(&taken).lease_transitions, Some(4));
        assert!(spec(&taken).acquire_time.is_some());
        respond(reply, StatusCode::OK, &stored(taken_lease, 101));

        let leadership = acquiring.await.expect("join").expect("acquired");
        assert!(leadership.is_leader());
    }

    #[tokio::test(start_paused = true)]
    async fn conflict_on_take_over_is_retried() {
        let (elector, mut api) = elector();
        let acquiring = tokio::spawn(async move { elector.acquire().await });

        // Released lease: free at once, but another replica wins the write.
        let (method, _, _, reply) = next(&mut api).await;
        assert_eq!(method, Method::GET);
        respond(reply, StatusCode::OK, &stored(held_by(None, 1, 1), 5));
        let (method, _, lease, reply) = next(&mut api).await;
        assert_eq!(method, Method::PUT);
        assert_eq!(spec(&lease).lease_transitions, Some(2));
        refuse(reply, StatusCode::CONFLICT, "Conflict");
        assert!(!acquiring.is_finished());

        let (method, _, _, reply) = next(&mut api).await;
        assert_eq!(method, Method::GET);
        respond(reply, StatusCode::OK, &stored(held_by(None, 2, 1), 6));
        let (method, _, lease, reply) = next(&mut api).await;
        assert_eq!(method, Method::PUT);
        let lease = lease.expect("body");
        assert_eq!(lease.metadata.resource_version.as_deref(), Some("6"));
        respond(reply, StatusCode::OK, &stored(lease, 7));

        let leadership = acquiring.await.expect("join").expect("acquired");
        assert!(leadership.is_leader());
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_lose_leadership_at_the_renew_deadline() {
        let (elector, mut api) = elector();
        let config = elector.config.clone();
        let acquiring = tokio::spawn(async move { elector.acquire().await });
        grant_by_create(&mut api).await;
        let mut leadership = acquiring.await.expect("join").expect("acquired");
        let acquired_at = Instant::now();

        let failing = tokio::spawn(async move {
            while let Some((_, reply)) = api.next_request().await {
                refuse(reply, StatusCode::INTERNAL_SERVER_ERROR, "InternalError");
            }
        });
        tokio::time::timeout(Duration::from_secs(1), leadership.lost())
            .await
            .expect("leadership lost");
        let held = acquired_at.elapsed();
        assert!(held >= config.renew_deadline, "lost after {held:?}");
        assert!(held < config.lease_duration, "lost after {held:?}");
        assert!(!leadership.is_leader());
        drop(leadership);
        failing.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn another_holder_found_on_renewal_loses_leadership() {
        let (elector, mut api) = elector();
        let acquiring = tokio::spawn(async move { elector.acquire().await });
        grant_by_create(&mut api).await;
        let mut leadership = acquiring.await.expect("join").expect("acquired");

        let (method, _, _, reply) = next(&mut api).await;
        assert_eq!(method, Method::PUT);
        refuse(reply, StatusCode::CONFLICT, "Conflict");
        let (method, _, _, reply) = next(&mut api).await;
        assert_eq!(method, Method::GET);
        respond(
            reply,
            StatusCode::OK,
            &stored(held_by(Some("other"), 1, 1), 9),
        );

        tokio::time::timeout(Duration::from_secs(1), leadership.lost())
            .await
            .expect("leadership lost");
        assert!(!leadership.is_leader());
    }

    #[tokio::test(start_paused = true)]
    async fn release_clears_the_holder() {
        let (elector, mut api) = elector();
        let acquiring = tokio::spawn(async move { elector.acquire().await });
        grant_by_create(&mut api).await;
        let leadership = acquiring.await.expect("join").expect("acquired");

        let releasing = tokio::spawn(leadership.release());
        let (method, _, _, reply) = next(&mut api).await;
        assert_eq!(method, Method::GET);
        respond(reply, StatusCode::OK, &stored(held_by(Some("me"), 1, 0), 2));
        let (method, _, lease, reply) = next(&mut api).await;
        assert_eq!(method, Method::PUT);
        assert_eq!(spec(&lease).holder_identity, None);
        assert_eq!(spec(&lease).lease_duration_seconds, Some(1));
        respond(reply, StatusCode::OK, &stored(lease.expect("body"), 3));
        releasing.await.expect("released");
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_leadership_stops_renewals() {
        let (elector, mut api) = elector();
        let acquiring = tokio::spawn(async move { elector.acquire().await });
        grant_by_create(&mut api).await;
        let leadership = acquiring.await.expect("join").expect("acquired");
        drop(leadership);

        let quiet = tokio::time::timeout(Duration::from_secs(1), api.next_request()).await;
        assert!(!matches!(quiet, Ok(Some(_))), "a request after drop");
    }

    #[tokio::test]
    async fn timings_that_allow_two_leaders_are_refused() {
        let (mut elector, _api) = elector();
        let mut bad = config();
        bad.renew_deadline = bad.lease_duration;
        elector.config = Arc::new(bad);
        assert!(matches!(
            elector.acquire().await,
            Err(LeaseError::Config(_))
        ));
    }
}
