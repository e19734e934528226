//! A real systemd for the services tests: booted with `systemd-nspawn` on the
//! host's own root (volatile, private network), with the test's units, and
//! its system bus bound to a directory of the test (the recipe in
//! TOOLCHAIN.md). Needs root and `systemd-container`; `.ci/run` installs it.
//! The container is shut down when the value is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a boot may take before the test fails (it takes ~1 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// A booted systemd.
pub struct Systemd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// One container at a time per process: nspawn places each under the
    /// caller's cgroup, where two would share their units' cgroups.
    _turn: MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A unit file for [`Systemd::boot`]: its name, contents, and whether it is
/// started at boot (`multi-user.target.wants`).
pub struct Unit<'a> {
    /// File name, e.g. `ha-test.service`.
    pub name: &'a str,
    /// Contents of the unit file.
    pub contents: &'a str,
    /// Started at boot.
    pub enabled: bool,
}

impl Systemd {
    /// Boots systemd with `units` in its `/etc/systemd/system` and `aliases`
    /// (alias name, unit it points to) as symlinks there. Inside, the
    /// directory [`Systemd::state`] is `/run/ha-state`, for units to leave
    /// traces in.
    pub fn boot(units: &[Unit<'_>], aliases: &[(&str, &str)]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // A test that failed while holding it leaves it poisoned: still ours.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().expect("systemd scratch dir");
        let etc = dir.path().join("units");
        for sub in ["multi-user.target.wants", "sockets.target.wants"] {
            std::fs::create_dir_all(etc.join(sub)).expect("unit dirs");
        }
        for d in ["bus", "state"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("bus and state dirs");
        }
        let link = |target: &str, at: PathBuf| {
            std::os::unix::fs::symlink(target, at).expect("unit symlink");
        };
        link(
            "/lib/systemd/system/dbus.socket",
            etc.join("sockets.target.wants/dbus.socket"),
        );
        // Without this mask the boot waits for first-boot questions.
        link("/dev/null", etc.join("systemd-firstboot.service"));
        for unit in units {
            std::fs::write(etc.join(unit.name), unit.contents).expect("unit file");
            if unit.enabled {
                link(
                    &format!("../{}", unit.name),
                    etc.join("multi-user.target.wants").join(unit.name),
                );
            }
        }
        for (alias, unit) in aliases {
            link(unit, etc.join(alias));
        }
        let name = format!(
            "ha-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let log = std::fs::File::create(dir.path().join("nspawn.log")).expect("nspawn log");
        let child = Command::new("systemd-nspawn")
            .args([
                "-D",
                "/",
                "--volatile=yes",
                "-b",
                "--register=no",
                "--keep-unit",
            ])
            .args(["--private-network", "-M", &name, "--console=passive"])
            .arg(format!(
                "--bind={}:/run/dbus",
                dir.path().join("bus").display()
            ))
            .arg(format!(
                "--bind={}:/run/ha-state",
                dir.path().join("state").display()
            ))
            .arg(format!("--bind-ro={}:/etc/systemd/system", etc.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start systemd-nspawn (apt-get install systemd-container)");
        let systemd = Systemd {
            dir,
            child: Some(child),
            _turn: turn,
        };
        systemd.wait_running();
        systemd
    }

    /// Waits until systemd says `SystemState=running` (or `degraded`).
    fn wait_running(&self) {
        let start = Instant::now();
        loop {
            let state = self.busctl(&[
                "get-property",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "SystemState",
            ]);
            if matches!(
                state.as_deref(),
                Some("s \"running\"") | Some("s \"degraded\"")
            ) {
                return;
            }
            if start.elapsed() > BOOT_TIMEOUT {
                let log =
                    std::fs::read_to_string(self.dir.path().join("nspawn.log")).unwrap_or_default();
                panic!("systemd did not boot in {BOOT_TIMEOUT:?} (state {state:?}):\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The container's PID 1 (systemd), as this machine numbers it: what
    /// `nsenter -t` takes to run a command inside, such as `systemctl`.
    pub fn leader_pid(&self) -> Option<u32> {
        let nspawn = self.child.as_ref()?.id();
        let children =
            std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// The D-Bus address of its system bus.
    pub fn address(&self) -> String {
        format!("unix:path={}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("bus/system_bus_socket")
    }

    /// The host side of the container's `/etc/systemd/system` (read-only
    /// inside), to change a unit file under a running systemd.
    pub fn units(&self) -> PathBuf {
        self.dir.path().join("units")
    }

    /// The directory units see as `/run/ha-state`.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A file units wrote under `/run/ha-state` (empty when missing).
    pub fn trace(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join("state").join(name)).unwrap_or_default()
    }

    /// Runs `busctl --system ARGS` against this systemd (the independent
    /// observer); its trimmed stdout on success.
    pub fn busctl(&self, args: &[&str]) -> Option<String> {
        if !self.socket().exists() {
            return None;
        }
        let out = Command::new("busctl")
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.address())
            .arg("--system")
            .args(args)
            .output()
            .expect("run busctl");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A unit's property as busctl prints it (`s "active"`, `u 1234`).
    pub fn property(&self, unit: &str, interface: &str, property: &str) -> String {
        let path = self
            .busctl(&[
                "call",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "LoadUnit",
                "s",
                unit,
            ])
            .expect("LoadUnit");
        let path = path.trim_start_matches("o ").trim_matches('"').to_owned();
        self.busctl(&[
            "get-property",
            "org.freedesktop.systemd1",
            &path,
            &format!("org.freedesktop.systemd1.{interface}"),
            property,
        ])
        .expect("get-property")
    }

    /// The main PID of a service, 0 when it has none.
    pub fn main_pid(&self, unit: &str) -> u32 {
        let v = self.property(unit, "Service", "MainPID");
        v.trim_start_matches("u ").parse().expect("MainPID")
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM makes nspawn shut the container down (≤ 1.4 s here).
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
