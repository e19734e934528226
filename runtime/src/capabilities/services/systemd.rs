//! The services capability's host backend: systemd's manager over D-Bus, with
//! zbus. One connection per runtime, made on first use and made again after
//! it breaks; calls run on a small tokio runtime of their own, bounded by the
//! caller's deadline. Properties are read live (no proxy cache): a cached
//! `MainPID` would be the old process's right after a restart.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zbus::OwnedObjectPath;
use zbus::proxy::CacheProperties;
use zbus::{Connection, proxy};

use crate::capabilities::CapError;

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    /// Asks systemd to send its signals (`JobRemoved`) to this client.
    fn subscribe(&self) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn try_restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    /// `systemctl daemon-reload`.
    fn reload(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_enter_timestamp(&self) -> zbus::Result<u64>;
    /// 128 random bits systemd draws at each start: tells one run of a unit
    /// from the next.
    #[zbus(property, name = "InvocationID")]
    fn invocation_id(&self) -> zbus::Result<Vec<u8>>;
    #[zbus(property)]
    fn inactive_exit_timestamp_monotonic(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn inactive_enter_timestamp_monotonic(&self) -> zbus::Result<u64>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
}

/// A unit job: what `systemctl restart|start|stop|reload|try-restart` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// `RestartUnit`.
    Restart,
    /// `StartUnit`.
    Start,
    /// `StopUnit`.
    Stop,
    /// `ReloadUnit`.
    Reload,
    /// `TryRestartUnit`.
    TryRestart,
}

impl JobKind {
    /// The effect's name (`restart`, `try-restart`, ...).
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Restart => "restart",
            JobKind::Start => "start",
            JobKind::Stop => "stop",
            JobKind::Reload => "reload",
            JobKind::TryRestart => "try-restart",
        }
    }
}

/// How a job that systemd took ended, as far as this call saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    /// systemd's `JobRemoved`: the result and the unit the job ran on.
    Finished {
        /// `done`, `failed`, `timeout`, ...
        result: String,
        /// The unit's name as systemd reports it.
        unit: String,
    },
    /// Still running after this long; left to finish.
    Running(Duration),
    /// The connection closed before the job's end was seen.
    Lost,
}

/// A unit as systemd resolved a requested name.
#[derive(Debug, Clone)]
pub struct ResolvedUnit {
    /// The canonical name (`Id`): an alias resolves to the unit it names.
    pub id: String,
    /// The unit's object path.
    pub path: OwnedObjectPath,
    /// `loaded`, `not-found`, `masked`, `error`, ...
    pub load_state: String,
}

/// A unit's live state.
#[derive(Debug, Clone)]
pub struct Status {
    /// `active`, `inactive`, `failed`, ...
    pub active_state: String,
    /// `running`, `exited`, `dead`, ...
    pub sub_state: String,
    /// The main process, for a service that has one.
    pub main_pid: Option<u32>,
    /// When the unit last became active, µs since the epoch.
    pub active_since_us: Option<u64>,
    /// The current (or last) start's `InvocationID`, in hex; empty if none.
    pub invocation_id: String,
    /// When the unit last left the inactive state (a start began),
    /// `CLOCK_MONOTONIC` µs; 0 if never.
    pub inactive_exit_mono_us: u64,
    /// When the unit last became inactive or failed (a stop ended),
    /// `CLOCK_MONOTONIC` µs; 0 if never.
    pub inactive_enter_mono_us: u64,
}

/// The D-Bus address of the unix socket at `socket`.
pub fn unix_address(socket: PathBuf) -> String {
    use zbus::address::transport::{Transport, Unix, UnixSocket};
    zbus::Address::from(Transport::Unix(Unix::new(UnixSocket::File(socket)))).to_string()
}

/// systemd at one D-Bus address.
pub struct Systemd {
    address: String,
    /// The runtime the connection's tasks run on, started on first use.
    runtime: OnceLock<Result<tokio::runtime::Runtime, String>>,
    /// The connection (subscribed to signals), once made.
    connection: Mutex<Option<Connection>>,
}

impl Systemd {
    /// The client of systemd's bus on the host at `host_root`: `system_bus`
    /// if given, else the host root's `/run/dbus/system_bus_socket` (its
    /// D-Bus address written by zbus, which escapes the path's bytes).
    pub fn for_host(host_root: &Path, system_bus: Option<String>) -> Self {
        Self::new(
            system_bus
                .unwrap_or_else(|| unix_address(host_root.join("run/dbus/system_bus_socket"))),
        )
    }

    /// A client for the bus at `address` (`unix:path=/run/dbus/system_bus_socket`);
    /// nothing starts and nothing is connected until the first call.
    pub fn new(address: String) -> Self {
        Systemd {
            address,
            runtime: OnceLock::new(),
            connection: Mutex::new(None),
        }
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, CapError> {
        self.runtime
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("hostaction-dbus")
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| CapError::Io(format!("cannot start the D-Bus runtime: {e}")))
    }

    /// Runs `call` with the connection, giving up at `deadline`. A broken
    /// connection is dropped so the next call makes a new one.
    ///
    /// On a thread of its own: the caller may itself be on a tokio runtime
    /// (an agent's), where `block_on` is not allowed.
    fn with<T: Send>(
        &self,
        deadline: Instant,
        call: impl AsyncFnOnce(&Connection) -> Result<T, CapError> + Send,
    ) -> Result<T, CapError> {
        let runtime = self.runtime()?;
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("hostaction-dbus-call".into())
                .spawn_scoped(scope, || self.on(runtime, deadline, call))
                .map_err(|e| CapError::Io(format!("cannot start the D-Bus thread: {e}")))?
                .join()
                .map_err(|_| CapError::Io("the D-Bus thread panicked".into()))?
        })
    }

    fn on<T>(
        &self,
        runtime: &tokio::runtime::Runtime,
        deadline: Instant,
        call: impl AsyncFnOnce(&Connection) -> Result<T, CapError>,
    ) -> Result<T, CapError> {
        let left = deadline.saturating_duration_since(Instant::now());
        runtime.block_on(async {
            let work = async {
                let connection = self.connect().await?;
                let result = call(&connection).await;
                if let Err(CapError::Io(_)) = &result
                    && connection.is_closed()
                {
                    self.forget(&connection);
                }
                result
            };
            tokio::time::timeout(left, work).await.unwrap_or_else(|_| {
                Err(CapError::Timeout(format!(
                    "systemd at {} did not answer before the run's deadline",
                    self.address
                )))
            })
        })
    }

    async fn connect(&self) -> Result<Connection, CapError> {
        if let Some(c) = self.lock()?.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let unreachable = |e: zbus::Error| {
            CapError::Io(format!(
                "cannot reach systemd's bus at {}: {e}",
                self.address
            ))
        };
        let connection = zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .map_err(unreachable)?;
        ManagerProxy::new(&connection)
            .await
            .map_err(unreachable)?
            .subscribe()
            .await
            .map_err(unreachable)?;
        *self.lock()? = Some(connection.clone());
        Ok(connection)
    }

    fn forget(&self, broken: &Connection) {
        if let Ok(mut slot) = self.connection.lock()
            && slot
                .as_ref()
                .is_some_and(|c| c.unique_name() == broken.unique_name())
        {
            *slot = None;
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Option<Connection>>, CapError> {
        self.connection
            .lock()
            .map_err(|_| CapError::Io("the D-Bus connection lock is poisoned".into()))
    }

    /// Asks systemd what `name` is: its canonical name (aliases and template
    /// instances resolved by systemd itself) and its load state. Equal to
    /// `systemctl show -p Id,LoadState NAME`.
    pub fn resolve(&self, name: &str, deadline: Instant) -> Result<ResolvedUnit, CapError> {
        self.with(deadline, async |c| {
            let path = ManagerProxy::new(c)
                .await
                .map_err(bus_error)?
                .load_unit(name)
                .await
                .map_err(|e| unit_error(name, e))?;
            let unit = unit_proxy(c, &path).await?;
            Ok(ResolvedUnit {
                id: unit.id().await.map_err(bus_error)?,
                load_state: unit.load_state().await.map_err(bus_error)?,
                path,
            })
        })
    }

    /// Runs a job on `unit` (a canonical name) and waits up to `wait` (and
    /// never past `deadline`) for systemd's `JobRemoved`. An error means
    /// systemd did not take the job.
    pub fn job(
        &self,
        kind: JobKind,
        unit: &str,
        wait: Duration,
        deadline: Instant,
    ) -> Result<JobEnd, CapError> {
        let wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        self.with(deadline, async |c| {
            let manager = ManagerProxy::new(c).await.map_err(bus_error)?;
            // Listen before asking: the job may end before the reply arrives.
            let mut removed = manager.receive_job_removed().await.map_err(bus_error)?;
            let mode = "replace";
            let job = match kind {
                JobKind::Restart => manager.restart_unit(unit, mode).await,
                JobKind::Start => manager.start_unit(unit, mode).await,
                JobKind::Stop => manager.stop_unit(unit, mode).await,
                JobKind::Reload => manager.reload_unit(unit, mode).await,
                JobKind::TryRestart => manager.try_restart_unit(unit, mode).await,
            }
            .map_err(|e| unit_error(unit, e))?;
            let ended = async {
                while let Some(signal) = removed.next().await {
                    let args = signal.args().map_err(bus_error)?;
                    if args.job == job {
                        return Ok(JobEnd::Finished {
                            result: args.result,
                            unit: args.unit,
                        });
                    }
                }
                Ok(JobEnd::Lost)
            };
            tokio::time::timeout(wait, ended)
                .await
                .unwrap_or(Ok(JobEnd::Running(wait)))
        })
    }

    /// The live state of the unit at `path`. Equal to `systemctl show -p
    /// ActiveState,SubState,MainPID,ActiveEnterTimestamp,InvocationID,
    /// InactiveExitTimestampMonotonic,InactiveEnterTimestampMonotonic`.
    pub fn status(&self, unit: &ResolvedUnit, deadline: Instant) -> Result<Status, CapError> {
        self.with(deadline, async |c| {
            let proxy = unit_proxy(c, &unit.path).await?;
            let service = ServiceProxy::builder(c)
                .path(unit.path.clone())
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(bus_error)?;
            let main_pid = async {
                match unit.id.ends_with(".service") {
                    true => service
                        .main_pid()
                        .await
                        .map(|p| Some(p).filter(|p| *p != 0)),
                    false => Ok(None),
                }
            };
            // Asked all at once, answered in one round trip's time (a job
            // reads them before and after: 14 calls in turn took 2.5 ms).
            let (active_state, sub_state, main_pid, since, invocation_id, exit, enter) =
                tokio::try_join!(
                    proxy.active_state(),
                    proxy.sub_state(),
                    main_pid,
                    proxy.active_enter_timestamp(),
                    proxy.invocation_id(),
                    proxy.inactive_exit_timestamp_monotonic(),
                    proxy.inactive_enter_timestamp_monotonic(),
                )
                .map_err(bus_error)?;
            Ok(Status {
                active_state,
                sub_state,
                main_pid,
                active_since_us: Some(since).filter(|t| *t != 0),
                invocation_id: invocation_id.iter().map(|b| format!("{b:02x}")).collect(),
                inactive_exit_mono_us: exit,
                inactive_enter_mono_us: enter,
            })
        })
    }

    /// Makes systemd reread its unit files (`systemctl daemon-reload`).
    pub fn daemon_reload(&self, deadline: Instant) -> Result<(), CapError> {
        self.with(deadline, async |c| {
            ManagerProxy::new(c)
                .await
                .map_err(bus_error)?
                .reload()
                .await
                .map_err(bus_error)
        })
    }
}

async fn unit_proxy(
    c: &Connection,
    path: &OwnedObjectPath,
) -> Result<UnitProxy<'static>, CapError> {
    UnitProxy::builder(c)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(bus_error)
}

/// A failed call on the bus.
fn bus_error(e: zbus::Error) -> CapError {
    CapError::Io(format!("systemd: {e}"))
}

/// A failed call about `unit`, by systemd's error name.
fn unit_error(unit: &str, e: zbus::Error) -> CapError {
    if let zbus::Error::MethodError(name, message, _) = &e {
        let message = message.clone().unwrap_or_default();
        // `permission-denied` is the grant's word: a host-side refusal is
        // `io`, with what to do about it.
        return match name.as_str() {
            "org.freedesktop.systemd1.NoSuchUnit" => {
                CapError::NotFound(format!("unit {unit}: {message}"))
            }
            "org.freedesktop.systemd1.UnitMasked"
            | "org.freedesktop.systemd1.LoadFailed"
            | "org.freedesktop.systemd1.JobTypeNotApplicable"
            | "org.freedesktop.systemd1.OnlyByDependency"
            | "org.freedesktop.systemd1.TransactionIsDestructive"
            | "org.freedesktop.systemd1.TransactionJobsConflicting"
            | "org.freedesktop.systemd1.TransactionOrderIsCyclic"
            | "org.freedesktop.systemd1.UnitInactive"
            | "org.freedesktop.systemd1.BadUnitSetting" => {
                CapError::Conflict(format!("unit {unit}: {message}"))
            }
            "org.freedesktop.DBus.Error.InvalidArgs" => {
                CapError::InvalidArgument(format!("unit {unit}: {message}"))
            }
            "org.freedesktop.DBus.Error.AccessDenied"
            | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => {
                CapError::Io(format!(
                    "unit {unit}: systemd refused this process ({message}); the runtime must \
                     run as root"
                ))
            }
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner" => CapError::Io(format!(
                "unit {unit}: systemd is not on this bus ({message})"
            )),
            _ => CapError::Io(format!("unit {unit}: {name}: {message}")),
        };
    }
    bus_error(e)
}
