//! Host-level tests of the `services` capability: the host functions called
//! on a view, without any Wasm guest and without systemd. A stand-in for
//! systemd resolves names as told (aliases included) and counts what it is
//! asked, so each test can say that a refused call never reached it.

use std::collections::HashMap;
use std::sync::Mutex;

use zbus::OwnedObjectPath;

use super::*;
use crate::bindings::hostaction::host::services::Host as _;
use crate::capabilities::testing::{self, effects, past_deadline};
use crate::undo::Undone;

/// systemd as a test tells it to be.
#[derive(Default)]
struct FakeUnits {
    /// Alias → the unit systemd says it names.
    aliases: HashMap<&'static str, &'static str>,
    /// How jobs end (default: `done` on the unit asked).
    end: Option<JobEnd>,
    /// What `status` says (default: active, running, pid 42).
    now: Option<Status>,
    /// What was asked of it: `resolve NAME`, `restart UNIT`, `daemon-reload`.
    asked: Mutex<Vec<String>>,
}

/// A unit's live state for [`FakeUnits::now`].
fn state(active: &str, exit_us: u64, enter_us: u64) -> Status {
    Status {
        active_state: active.into(),
        sub_state: if undo::running(active) {
            "running"
        } else {
            "dead"
        }
        .into(),
        main_pid: None,
        active_since_us: None,
        invocation_id: "0123456789abcdef0123456789abcdef".into(),
        inactive_exit_mono_us: exit_us,
        inactive_enter_mono_us: enter_us,
    }
}

impl FakeUnits {
    fn ask(&self, what: String) {
        self.asked.lock().expect("asked").push(what);
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("asked").clone()
    }
}

impl Units for FakeUnits {
    fn resolve(&self, name: &str, _deadline: Instant) -> Result<ResolvedUnit, CapError> {
        self.ask(format!("resolve {name}"));
        let id = self.aliases.get(name).copied().unwrap_or(name);
        Ok(ResolvedUnit {
            id: id.to_owned(),
            path: OwnedObjectPath::try_from("/org/freedesktop/systemd1/unit/x").expect("path"),
            load_state: if id.starts_with("missing") {
                "not-found".into()
            } else {
                "loaded".into()
            },
        })
    }

    fn job(
        &self,
        kind: JobKind,
        unit: &str,
        _wait: Duration,
        _deadline: Instant,
    ) -> Result<JobEnd, CapError> {
        self.ask(format!("{} {unit}", kind.name()));
        Ok(self.end.clone().unwrap_or(JobEnd::Finished {
            result: "done".into(),
            unit: unit.to_owned(),
        }))
    }

    fn status(&self, unit: &ResolvedUnit, _deadline: Instant) -> Result<Status, CapError> {
        self.ask(format!("status {}", unit.id));
        Ok(self.now.clone().unwrap_or(Status {
            active_state: "active".into(),
            sub_state: "running".into(),
            main_pid: Some(42),
            active_since_us: None,
            invocation_id: String::new(),
            inactive_exit_mono_us: 0,
            inactive_enter_mono_us: 0,
        }))
    }

    fn daemon_reload(&self, _deadline: Instant) -> Result<(), CapError> {
        self.ask("daemon-reload".into());
        Ok(())
    }
}

struct Fixture {
    units: Arc<FakeUnits>,
    ctx: ServicesCtx,
    shared: Shared,
}

impl Fixture {
    fn new(grant: &str, policy: Option<&str>, mode: Mode, units: FakeUnits) -> Self {
        let units = Arc::new(units);
        Self {
            ctx: ServicesCtx::new(testing::grant(grant, policy), Arc::clone(&units) as _),
            units,
            shared: testing::shared(mode),
        }
    }

    fn apply(grant: &str) -> Self {
        Self::new(grant, None, Mode::Apply, FakeUnits::default())
    }

    fn view(&mut self) -> ServicesView<'_> {
        ServicesView {
            ctx: &mut self.ctx,
            shared: &mut self.shared,
        }
    }

    /// The jobs systemd was asked to run (not the lookups).
    fn jobs(&self) -> Vec<String> {
        jobs(&self.units)
    }
}

/// The jobs `units` was asked to run (not the lookups).
fn jobs(units: &FakeUnits) -> Vec<String> {
    units
        .asked()
        .into_iter()
        .filter(|a| !a.starts_with("resolve ") && !a.starts_with("status "))
        .collect()
}

const CONTAINERD: &str = "services: {units: [containerd.service]}";
const WAIT: u32 = 1000;

fn denied<T: std::fmt::Debug>(result: Result<T, CapError>) -> String {
    match result {
        Err(CapError::PermissionDenied(m)) => m,
        other => panic!("expected permission-denied, got {other:?}"),
    }
}

#[test]
fn grant_without_a_services_section_is_denied() {
    let mut f = Fixture::apply("files: {read: [/etc]}");
    let why = denied(f.view().restart("containerd.service".into(), WAIT));
    assert!(why.contains("no services section"), "{why}");
    assert!(f.units.asked().is_empty());
}

#[test]
fn unit_outside_the_grants_patterns_is_denied_and_no_job_runs() {
    let mut f = Fixture::apply(CONTAINERD);
    let why = denied(f.view().restart("sshd.service".into(), WAIT));
    assert!(why.contains("grant's services.units"), "{why}");
    assert!(f.jobs().is_empty());
    assert!(effects(&mut f.shared).is_empty());
}

#[test]
fn alias_of_an_ungranted_unit_is_denied() {
    // The pattern is checked against the unit systemd resolves the name to.
    let units = FakeUnits {
        aliases: HashMap::from([("containerd.service", "sshd.service")]),
        ..FakeUnits::default()
    };
    let mut f = Fixture::new(CONTAINERD, None, Mode::Apply, units);
    let why = denied(f.view().stop("containerd.service".into(), WAIT));
    assert!(why.contains("systemd's sshd.service"), "{why}");
    assert!(f.jobs().is_empty());
}

#[test]
fn alias_of_a_granted_unit_runs_the_job_on_the_canonical_name() {
    let units = FakeUnits {
        aliases: HashMap::from([("cri.service", "containerd.service")]),
        ..FakeUnits::default()
    };
    let mut f = Fixture::new(CONTAINERD, None, Mode::Apply, units);
    let result = f
        .view()
        .restart("cri.service".into(), WAIT)
        .expect("restart");
    assert_eq!(result, JobResult::Done);
    assert_eq!(f.jobs(), ["restart containerd.service"]);
    let effects = effects(&mut f.shared);
    assert_eq!(
        (
            effects[0].action,
            effects[0].target.as_str(),
            effects[0].detail.as_str()
        ),
        ("restart", "containerd.service", "result done")
    );
}

#[test]
fn pattern_matches_template_instances_of_its_unit_type_only() {
    let mut f = Fixture::apply("services: {units: [\"getty@*.service\"]}");
    f.view()
        .start("getty@tty1.service".into(), WAIT)
        .expect("instance");
    denied(f.view().start("getty@tty1.socket".into(), WAIT));
    assert_eq!(f.jobs(), ["start getty@tty1.service"]);
}

#[test]
fn node_policy_narrows_the_grant() {
    let mut f = Fixture::new(
        "services: {units: [containerd.service, kubelet.service]}",
        Some(CONTAINERD),
        Mode::Apply,
        FakeUnits::default(),
    );
    let why = denied(f.view().restart("kubelet.service".into(), WAIT));
    assert!(why.contains("node policy's services.units"), "{why}");
    assert!(f.jobs().is_empty());
}

#[test]
fn hostile_unit_name_is_an_invalid_argument_and_never_reaches_systemd() {
    let mut f = Fixture::apply("services: {units: [\"*\"]}");
    for bad in ["../x.service", "a b.service", "x@.service", "kubelet"] {
        match f.view().restart(bad.into(), WAIT) {
            Err(CapError::InvalidArgument(_)) => {}
            other => panic!("{bad:?}: expected invalid-argument, got {other:?}"),
        }
    }
    assert!(f.units.asked().is_empty());
}

#[test]
fn zero_timeout_is_an_invalid_argument() {
    let mut f = Fixture::apply(CONTAINERD);
    match f.view().restart("containerd.service".into(), 0) {
        Err(CapError::InvalidArgument(m)) => assert!(m.contains("timeout-ms"), "{m}"),
        other => panic!("expected invalid-argument, got {other:?}"),
    }
    assert!(f.units.asked().is_empty());
}

#[test]
fn missing_unit_is_not_found_and_no_job_runs() {
    let mut f = Fixture::apply("services: {units: [\"*.service\"]}");
    match f.view().start("missing.service".into(), WAIT) {
        Err(CapError::NotFound(_)) => {}
        other => panic!("expected not-found, got {other:?}"),
    }
    assert!(f.jobs().is_empty());
}

#[test]
fn plan_mode_records_the_job_and_runs_none() {
    let mut f = Fixture::new(CONTAINERD, None, Mode::Plan, FakeUnits::default());
    let result = f
        .view()
        .restart("containerd.service".into(), WAIT)
        .expect("plan");
    assert_eq!(result, JobResult::Done);
    assert!(f.jobs().is_empty());
    let effects = effects(&mut f.shared);
    assert_eq!(
        (
            effects[0].action,
            effects[0].detail.as_str(),
            effects[0].applied
        ),
        ("restart", "planned", false)
    );
}

#[test]
fn plan_mode_scope_is_checked_as_in_apply_mode() {
    let mut f = Fixture::new(CONTAINERD, None, Mode::Plan, FakeUnits::default());
    denied(f.view().restart("sshd.service".into(), WAIT));
    assert!(effects(&mut f.shared).is_empty());
}

#[test]
fn job_systemd_ran_on_another_unit_is_a_conflict_and_still_recorded() {
    let units = FakeUnits {
        end: Some(JobEnd::Finished {
            result: "done".into(),
            unit: "other.service".into(),
        }),
        ..FakeUnits::default()
    };
    let mut f = Fixture::new(CONTAINERD, None, Mode::Apply, units);
    match f.view().restart("containerd.service".into(), WAIT) {
        Err(CapError::Conflict(m)) => assert!(m.contains("other.service"), "{m}"),
        other => panic!("expected conflict, got {other:?}"),
    }
    assert_eq!(effects(&mut f.shared).len(), 1);
}

#[test]
fn job_still_running_at_its_timeout_is_a_timeout_and_still_recorded() {
    let units = FakeUnits {
        end: Some(JobEnd::Running(Duration::from_millis(WAIT.into()))),
        ..FakeUnits::default()
    };
    let mut f = Fixture::new(CONTAINERD, None, Mode::Apply, units);
    match f.view().restart("containerd.service".into(), WAIT) {
        Err(CapError::Timeout(_)) => {}
        other => panic!("expected timeout, got {other:?}"),
    }
    let effects = effects(&mut f.shared);
    assert!(
        effects[0].detail.starts_with("still running"),
        "{effects:?}"
    );
}

#[test]
fn status_names_the_canonical_unit() {
    let units = FakeUnits {
        aliases: HashMap::from([("cri.service", "containerd.service")]),
        ..FakeUnits::default()
    };
    let mut f = Fixture::new(CONTAINERD, None, Mode::Apply, units);
    let status = f.view().status("cri.service".into()).expect("status");
    assert_eq!(
        (status.name.as_str(), status.main_pid),
        ("containerd.service", Some(42))
    );
    assert!(effects(&mut f.shared).is_empty());
}

#[test]
fn daemon_reload_without_the_grant_is_denied() {
    let mut f = Fixture::apply(CONTAINERD);
    let why = denied(f.view().daemon_reload());
    assert!(why.contains("in the grant"), "{why}");
    assert!(f.units.asked().is_empty());
}

#[test]
fn daemon_reload_granted_but_not_by_the_node_policy_is_denied() {
    let mut f = Fixture::new(
        "services: {units: [containerd.service], daemonReload: true}",
        Some(CONTAINERD),
        Mode::Apply,
        FakeUnits::default(),
    );
    let why = denied(f.view().daemon_reload());
    assert!(why.contains("node policy"), "{why}");
    assert!(f.units.asked().is_empty());
}

#[test]
fn daemon_reload_granted_runs_and_is_recorded() {
    let mut f = Fixture::apply("services: {units: [containerd.service], daemonReload: true}");
    f.view().daemon_reload().expect("reload");
    assert_eq!(f.units.asked(), ["daemon-reload"]);
    assert_eq!(effects(&mut f.shared)[0].action, "daemon-reload");
}

#[test]
fn call_after_the_deadline_traps_before_asking_systemd() {
    let mut f = Fixture::apply(CONTAINERD);
    f.shared = past_deadline(Mode::Apply);
    let err = f
        .view()
        .restart("containerd.service".into(), WAIT)
        .expect_err("past the deadline");
    assert!(testing::is_deadline(&err), "{err:?}");
    assert!(f.units.asked().is_empty());
}

#[test]
fn default_bus_address_escapes_the_host_roots_path() {
    let address = systemd::unix_address(std::path::PathBuf::from("/host root,x/run/dbus/sock"));
    assert_eq!(address, "unix:path=/host%20root%2cx/run/dbus/sock");
    assert!(address.parse::<zbus::Address>().is_ok());
}

#[test]
fn unit_names_follow_systemds_rules() {
    for good in [
        "containerd.service",
        "getty@tty1.service",
        "x-y_z:1.socket",
        "a\\x2db.mount",
    ] {
        assert_eq!(unit_name_problem(good), None, "{good}");
    }
    for bad in [
        "",
        "containerd",
        ".service",
        "a b.service",
        "../x.service",
        "a/b.service",
        "x@.service",
        "@x.service",
        "a@b@c.service",
        "kubelet.service\n",
    ] {
        assert!(unit_name_problem(bad).is_some(), "{bad:?}");
    }
    assert!(unit_name_problem(&format!("{}.service", "a".repeat(250))).is_some());
}

#[test]
fn plan_and_apply_carry_the_active_state_diff() {
    let stopped = || FakeUnits {
        now: Some(state("inactive", 0, 0)),
        ..FakeUnits::default()
    };
    let mut plan = Fixture::new(CONTAINERD, None, Mode::Plan, stopped());
    plan.view()
        .start("containerd.service".into(), WAIT)
        .expect("plan");
    plan.view()
        .try_restart("containerd.service".into(), WAIT)
        .expect("plan");
    let planned = effects(&mut plan.shared);
    assert_eq!(
        planned[0].diff.as_deref(),
        Some("active-state inactive → active")
    );
    // try-restart leaves a stopped unit stopped.
    assert_eq!(
        planned[1].diff.as_deref(),
        Some("active-state inactive → inactive")
    );
    // Apply reads the state after (the fake's stays inactive).
    let mut apply = Fixture::new(CONTAINERD, None, Mode::Apply, stopped());
    apply
        .view()
        .stop("containerd.service".into(), WAIT)
        .expect("stop");
    assert_eq!(
        effects(&mut apply.shared)[0].diff.as_deref(),
        Some("active-state inactive → inactive")
    );
}

/// A journaled start or stop of `containerd.service`, from `before`, whose
/// job's window is `from..=to` (µs of this boot's monotonic clock).
fn journaled(started: bool, before: &str, from: u64, to: u64) -> ServiceUndo {
    let unit = "containerd.service".to_owned();
    let before = UnitState::of(&state(before, 0, 0));
    let mut window = Window::starting_now(Duration::ZERO);
    (window.from_us, window.to_us) = (from, to);
    if started {
        ServiceUndo::Started {
            unit,
            before,
            window,
        }
    } else {
        ServiceUndo::Stopped {
            unit,
            before,
            window,
        }
    }
}

fn undo_with(undo: &ServiceUndo, now: Status) -> (Undone, Vec<String>) {
    let units = FakeUnits {
        now: Some(now),
        ..FakeUnits::default()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    (undo.undo_on(&units, deadline), jobs(&units))
}

#[test]
fn a_start_is_undone_by_a_stop_only_while_the_runs_activation_is_current() {
    let undo = journaled(true, "inactive", 1000, 2000);
    // Started by the run's job: stopped again.
    assert_eq!(
        undo_with(&undo, state("active", 1500, 0)),
        (Undone::Restored, vec!["stop containerd.service".to_owned()])
    );
    // Started again after the run: someone else's; left.
    let (undone, jobs) = undo_with(&undo, state("active", 5000, 0));
    assert!(
        matches!(&undone, Undone::Conflict(m) if m.contains("after the run's")),
        "{undone:?}"
    );
    assert!(jobs.is_empty());
    // Stopped already: as before.
    assert_eq!(
        undo_with(&undo, state("inactive", 1500, 3000)),
        (Undone::Unchanged, vec![])
    );
    // On its way down: left.
    let (undone, jobs) = undo_with(&undo, state("deactivating", 1500, 0));
    assert!(matches!(undone, Undone::Conflict(_)), "{undone:?}");
    assert!(jobs.is_empty());
    // A start of a unit that was running changed nothing.
    let noop = journaled(true, "active", 1000, 2000);
    assert_eq!(
        undo_with(&noop, state("active", 1500, 0)),
        (Undone::Unchanged, vec![])
    );
}

#[test]
fn a_stop_is_undone_by_a_start_only_while_the_runs_stop_is_current() {
    let undo = journaled(false, "active", 1000, 2000);
    assert_eq!(
        undo_with(&undo, state("inactive", 0, 1500)),
        (
            Undone::Restored,
            vec!["start containerd.service".to_owned()]
        )
    );
    let (undone, jobs) = undo_with(&undo, state("failed", 0, 9000));
    assert!(matches!(undone, Undone::Conflict(_)), "{undone:?}");
    assert!(jobs.is_empty());
    assert_eq!(
        undo_with(&undo, state("active", 3000, 1500)),
        (Undone::Unchanged, vec![])
    );
}

#[test]
fn a_window_of_another_boot_holds_nothing() {
    let mut undo = journaled(true, "inactive", 1000, 2000);
    if let ServiceUndo::Started { window, .. } = &mut undo {
        window.boot_id = "another-boot".into();
    }
    let (undone, jobs) = undo_with(&undo, state("active", 1500, 0));
    assert!(matches!(undone, Undone::Conflict(_)), "{undone:?}");
    assert!(jobs.is_empty());
}

#[test]
fn restart_and_daemon_reload_carry_their_diffs() {
    let mut f = Fixture::new(
        "services: {units: [containerd.service], daemonReload: true}",
        None,
        Mode::Apply,
        FakeUnits::default(),
    );
    f.view()
        .restart("containerd.service".into(), WAIT)
        .expect("restart");
    f.view().daemon_reload().expect("reload");
    let effects = effects(&mut f.shared);
    assert_eq!(
        effects[0].diff.as_deref(),
        Some("active-state active → active")
    );
    assert_eq!(effects[1].diff.as_deref(), Some("unit files reread"));
}
