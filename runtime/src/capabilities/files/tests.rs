//! Host-level tests of the `files` capability: the host functions called on a
//! view over a temporary host root, without any Wasm guest. Every escape is
//! tried against a file outside the granted directory (or outside the host
//! root) that must stay as it was.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::capabilities::PLAN_BYTES;
use crate::capabilities::payload::PayloadFile;
use crate::capabilities::testing::{self, effects, past_deadline};
use crate::effects::Mode as RunMode;

/// A host root in a temporary directory, a grant, and a run's state.
struct Fixture {
    root: tempfile::TempDir,
    ctx: FilesCtx,
    shared: Shared,
}

impl Fixture {
    /// A run in `mode` under `grant` (a grant document), with `/data` made
    /// under the host root and a secret file beside it.
    fn new(grant: &str, mode: RunMode) -> Self {
        Self::with_payload(grant, mode, Payload::default())
    }

    fn with_payload(grant: &str, mode: RunMode, payload: Payload) -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("data")).expect("data");
        std::fs::write(root.path().join("secret"), b"secret").expect("secret");
        let host_root = Arc::new(HostRoot::open(root.path()).expect("host root"));
        let ctx = FilesCtx::new(testing::grant(grant, None), host_root, Arc::new(payload));
        Self {
            root,
            ctx,
            shared: testing::shared(mode),
        }
    }

    fn apply(grant: &str) -> Self {
        Self::new(grant, RunMode::Apply)
    }

    fn view(&mut self) -> FilesView<'_> {
        FilesView {
            ctx: &mut self.ctx,
            shared: &mut self.shared,
        }
    }

    /// Where a host path is on this machine.
    fn at(&self, path: &str) -> PathBuf {
        self.root.path().join(path.trim_start_matches('/'))
    }

    fn secret_intact(&self) -> bool {
        std::fs::read(self.at("/secret")).ok().as_deref() == Some(b"secret".as_slice())
    }
}

const WRITE_DATA: &str = "files: {write: [/data]}";

fn denied<T: std::fmt::Debug>(result: Result<T, CapError>) -> String {
    match result {
        Err(CapError::PermissionDenied(m)) => m,
        other => panic!("expected permission-denied, got {other:?}"),
    }
}

fn invalid<T: std::fmt::Debug>(result: Result<T, CapError>) -> String {
    match result {
        Err(CapError::InvalidArgument(m)) => m,
        other => panic!("expected invalid-argument, got {other:?}"),
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).expect("stat").mode() & 0o7777
}

// Scope: what the grant covers.

#[test]
fn read_outside_every_granted_directory_is_denied() {
    let mut f = Fixture::apply(WRITE_DATA);
    let why = denied(files::Host::read_file(&mut f.view(), "/secret".into()));
    assert!(
        why.contains("outside the directories granted for read"),
        "{why}"
    );
}

#[test]
fn write_to_a_directory_granted_only_for_read_is_denied() {
    let mut f = Fixture::apply("files: {read: [/data]}");
    denied(files::Host::ensure_file(
        &mut f.view(),
        "/data/x".into(),
        b"x".to_vec(),
        0o644,
    ));
    assert!(!f.at("/data/x").exists());
}

#[test]
fn sibling_whose_name_extends_a_granted_directory_is_outside_it() {
    let mut f = Fixture::apply(WRITE_DATA);
    std::fs::create_dir(f.at("/data2")).expect("data2");
    denied(files::Host::ensure_file(
        &mut f.view(),
        "/data2/x".into(),
        b"x".to_vec(),
        0o644,
    ));
    assert!(!f.at("/data2/x").exists());
}

#[test]
fn write_into_a_directory_granted_only_for_read_beneath_a_writable_one_is_allowed() {
    // The most specific granted directory decides, for each access on its own.
    let mut f = Fixture::apply("files: {read: [/data/ro], write: [/data]}");
    std::fs::create_dir(f.at("/data/ro")).expect("ro");
    let changed =
        files::Host::ensure_file(&mut f.view(), "/data/ro/x".into(), b"x".to_vec(), 0o644)
            .expect("write");
    assert!(changed);
}

#[test]
fn relative_path_is_an_invalid_argument() {
    let mut f = Fixture::apply(WRITE_DATA);
    invalid(files::Host::read_file(&mut f.view(), "data/x".into()));
}

#[test]
fn dotdot_path_is_an_invalid_argument_and_writes_nothing() {
    let mut f = Fixture::apply(WRITE_DATA);
    invalid(files::Host::ensure_file(
        &mut f.view(),
        "/data/../secret".into(),
        b"pwned".to_vec(),
        0o644,
    ));
    assert!(f.secret_intact());
}

#[test]
fn call_after_the_deadline_traps_before_touching_anything() {
    let mut f = Fixture::apply(WRITE_DATA);
    f.shared = past_deadline(RunMode::Apply);
    let err = files::Host::ensure_file(&mut f.view(), "/data/x".into(), b"x".to_vec(), 0o644)
        .expect_err("past the deadline");
    assert!(testing::is_deadline(&err), "{err:?}");
    assert!(!f.at("/data/x").exists());
}

// Escapes: the kernel refuses what leaves the granted directory.

#[test]
fn write_through_symlink_out_of_root_is_denied() {
    let mut f = Fixture::apply(WRITE_DATA);
    let outside = tempfile::tempdir().expect("outside");
    symlink(outside.path(), f.at("/data/out")).expect("symlink");
    denied(files::Host::ensure_file(
        &mut f.view(),
        "/data/out/x".into(),
        b"x".to_vec(),
        0o644,
    ));
    assert!(!outside.path().join("x").exists());
}

#[test]
fn write_through_relative_symlink_leaving_the_granted_directory_is_denied() {
    let mut f = Fixture::apply(WRITE_DATA);
    symlink("..", f.at("/data/up")).expect("symlink");
    let why = denied(files::Host::ensure_file(
        &mut f.view(),
        "/data/up/secret".into(),
        b"pwned".to_vec(),
        0o644,
    ));
    assert!(
        why.contains("resolves outside the granted directory"),
        "{why}"
    );
    assert!(f.secret_intact());
}

#[test]
fn read_through_leaf_symlink_leaving_the_granted_directory_is_denied() {
    let mut f = Fixture::apply(WRITE_DATA);
    symlink("../secret", f.at("/data/s")).expect("symlink");
    denied(files::Host::read_file(&mut f.view(), "/data/s".into()));
}

#[test]
fn read_through_absolute_symlink_is_denied() {
    let mut f = Fixture::apply(WRITE_DATA);
    symlink("/secret", f.at("/data/s")).expect("symlink");
    denied(files::Host::read_file(&mut f.view(), "/data/s".into()));
}

#[test]
fn leaf_symlink_is_not_replaced_nor_written_through() {
    let mut f = Fixture::apply(WRITE_DATA);
    symlink("x", f.at("/data/link")).expect("symlink");
    std::fs::write(f.at("/data/x"), b"old").expect("x");
    let why = denied(files::Host::ensure_file(
        &mut f.view(),
        "/data/link".into(),
        b"new".to_vec(),
        0o644,
    ));
    assert!(why.contains("is a symlink"), "{why}");
    assert_eq!(std::fs::read(f.at("/data/x")).expect("x"), b"old");
    assert!(f.at("/data/link").is_symlink());
}

#[test]
fn file_with_another_hard_link_is_not_replaced() {
    let mut f = Fixture::apply(WRITE_DATA);
    std::fs::hard_link(f.at("/secret"), f.at("/data/linked")).expect("hard link");
    let why = denied(files::Host::ensure_file(
        &mut f.view(),
        "/data/linked".into(),
        b"pwned".to_vec(),
        0o644,
    ));
    assert!(why.contains("hard links"), "{why}");
    assert!(f.secret_intact());
}

#[test]
fn file_with_another_hard_link_is_not_read() {
    let mut f = Fixture::apply(WRITE_DATA);
    std::fs::hard_link(f.at("/secret"), f.at("/data/linked")).expect("hard link");
    denied(files::Host::read_file(&mut f.view(), "/data/linked".into()));
}

#[test]
fn remove_through_symlinked_parent_is_denied() {
    let mut f = Fixture::apply(WRITE_DATA);
    symlink("..", f.at("/data/up")).expect("symlink");
    denied(files::Host::remove(&mut f.view(), "/data/up/secret".into()));
    assert!(f.secret_intact());
}

#[test]
fn ensure_dir_through_symlink_out_of_root_is_denied() {
    let mut f = Fixture::apply(WRITE_DATA);
    let outside = tempfile::tempdir().expect("outside");
    symlink(outside.path(), f.at("/data/out")).expect("symlink");
    denied(files::Host::ensure_dir(
        &mut f.view(),
        "/data/out/new".into(),
        0o755,
    ));
    assert!(!outside.path().join("new").exists());
}

#[test]
fn list_dir_through_symlink_out_of_the_granted_directory_is_denied() {
    let mut f = Fixture::apply(WRITE_DATA);
    symlink("..", f.at("/data/up")).expect("symlink");
    denied(files::Host::list_dir(&mut f.view(), "/data/up".into()));
}

#[test]
fn absolute_symlink_to_a_granted_directory_resolves_inside_the_host_root() {
    // The node's own symlinks (`/var/run` → `/run`) are followed as if the
    // host root were `/`: never to the machine's root.
    let mut f = Fixture::apply("files: {write: [/link]}");
    std::fs::create_dir(f.at("/real")).expect("real");
    symlink("/real", f.at("/link")).expect("symlink");
    files::Host::ensure_file(&mut f.view(), "/link/x".into(), b"x".to_vec(), 0o644).expect("write");
    assert_eq!(std::fs::read(f.at("/real/x")).expect("x"), b"x");
    assert!(!Path::new("/real/x").exists());
}

#[test]
fn fifo_is_not_opened_for_reading() {
    let mut f = Fixture::apply(WRITE_DATA);
    let data = rustix::fs::open(f.at("/data"), OFlags::DIRECTORY, Mode::empty()).expect("data");
    rustix::fs::mknodat(&data, "fifo", FileType::Fifo, Mode::from_raw_mode(0o644), 0)
        .expect("mkfifo");
    match files::Host::read_file(&mut f.view(), "/data/fifo".into()) {
        Err(CapError::Conflict(m)) => assert!(m.contains("not a regular file"), "{m}"),
        other => panic!("expected conflict, got {other:?}"),
    }
}

// Modes.

#[test]
fn mode_writable_by_others_is_refused() {
    let mut f = Fixture::apply(WRITE_DATA);
    invalid(files::Host::ensure_file(
        &mut f.view(),
        "/data/x".into(),
        b"x".to_vec(),
        0o646,
    ));
    assert!(!f.at("/data/x").exists());
}

#[test]
fn setuid_bit_is_refused() {
    let mut f = Fixture::apply(WRITE_DATA);
    invalid(files::Host::ensure_file(
        &mut f.view(),
        "/data/x".into(),
        b"x".to_vec(),
        0o4755,
    ));
}

#[test]
fn group_writable_mode_without_the_grant_is_denied() {
    let mut f = Fixture::apply(WRITE_DATA);
    denied(files::Host::ensure_dir(
        &mut f.view(),
        "/data/d".into(),
        0o775,
    ));
    let mut f = Fixture::apply("files: {write: [/data], groupWritable: true}");
    assert!(files::Host::ensure_dir(&mut f.view(), "/data/d".into(), 0o775).expect("mkdir"));
    assert_eq!(mode_of(&f.at("/data/d")), 0o775);
}

#[test]
fn executable_mode_on_contents_not_in_the_payload_is_denied_when_the_grant_says_so() {
    let mut f = Fixture::apply("files: {write: [/data], executable: false}");
    let why = denied(files::Host::ensure_file(
        &mut f.view(),
        "/data/tool".into(),
        b"#!/bin/sh\n".to_vec(),
        0o755,
    ));
    assert!(why.contains("executable"), "{why}");
    assert!(!f.at("/data/tool").exists());
}

#[test]
fn executable_mode_on_a_payload_files_contents_is_allowed() {
    let dir = tempfile::tempdir().expect("payload dir");
    let path = dir.path().join("tool");
    std::fs::write(&path, b"\x7fELF").expect("payload file");
    let payload = Payload::new(vec![PayloadFile {
        name: "tool".into(),
        size: 4,
        digest: hostaction_distribution::artifact::sha256(b"\x7fELF"),
        file: Arc::new(std::fs::File::open(&path).expect("open")),
        path,
    }]);
    let mut f = Fixture::with_payload(
        "files: {write: [/data], executable: false}",
        RunMode::Apply,
        payload,
    );
    files::Host::ensure_file(
        &mut f.view(),
        "/data/tool".into(),
        b"\x7fELF".to_vec(),
        0o755,
    )
    .expect("payload contents may be executable");
    assert_eq!(mode_of(&f.at("/data/tool")), 0o755);
}

#[test]
fn granted_directory_mode_is_never_changed() {
    let mut f = Fixture::apply(WRITE_DATA);
    std::fs::set_permissions(f.at("/data"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    denied(files::Host::ensure_dir(
        &mut f.view(),
        "/data".into(),
        0o700,
    ));
    assert_eq!(mode_of(&f.at("/data")), 0o755);
}

#[test]
fn granted_directory_itself_cannot_be_removed() {
    let mut f = Fixture::apply(WRITE_DATA);
    denied(files::Host::remove(&mut f.view(), "/data".into()));
    assert!(f.at("/data").is_dir());
}

// Writes: exact, idempotent, atomic.

#[test]
fn ensure_file_writes_exact_contents_and_mode_and_records_the_effect() {
    let mut f = Fixture::apply(WRITE_DATA);
    let changed =
        files::Host::ensure_file(&mut f.view(), "/data/x".into(), b"hello".to_vec(), 0o600)
            .expect("write");
    assert!(changed);
    assert_eq!(std::fs::read(f.at("/data/x")).expect("x"), b"hello");
    assert_eq!(mode_of(&f.at("/data/x")), 0o600);
    let effects = effects(&mut f.shared);
    assert_eq!(effects.len(), 1);
    assert_eq!(
        (
            effects[0].action,
            effects[0].target.as_str(),
            effects[0].applied
        ),
        ("write-file", "/data/x", true)
    );
}

#[test]
fn ensure_file_with_the_same_contents_and_mode_changes_nothing() {
    let mut f = Fixture::apply(WRITE_DATA);
    let mut view = f.view();
    assert!(
        files::Host::ensure_file(&mut view, "/data/x".into(), b"a".to_vec(), 0o644).expect("1")
    );
    assert!(
        !files::Host::ensure_file(&mut view, "/data/x".into(), b"a".to_vec(), 0o644).expect("2")
    );
    assert_eq!(effects(&mut f.shared).len(), 1);
}

#[test]
fn replacing_a_file_swaps_it_whole_for_a_new_one() {
    // A reader holding the old file sees the old bytes to the end: the new
    // contents went into another file, renamed over the name.
    let mut f = Fixture::apply(WRITE_DATA);
    std::fs::write(f.at("/data/x"), b"old contents").expect("x");
    let old = std::fs::File::open(f.at("/data/x")).expect("open old");
    let old_ino = old.metadata().expect("stat").ino();
    files::Host::ensure_file(&mut f.view(), "/data/x".into(), b"new".to_vec(), 0o644)
        .expect("replace");
    let mut seen = String::new();
    std::io::Read::read_to_string(&mut &old, &mut seen).expect("read old");
    assert_eq!(seen, "old contents");
    assert_ne!(
        std::fs::metadata(f.at("/data/x")).expect("stat").ino(),
        old_ino
    );
    assert_eq!(std::fs::read(f.at("/data/x")).expect("x"), b"new");
}

#[test]
fn write_leaves_no_temporary_file_behind() {
    let mut f = Fixture::apply(WRITE_DATA);
    files::Host::ensure_file(&mut f.view(), "/data/x".into(), b"x".to_vec(), 0o644).expect("write");
    let names: Vec<_> = std::fs::read_dir(f.at("/data"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["x"]);
}

#[test]
fn failed_replace_keeps_the_old_entry_and_leaves_no_temporary_file() {
    let f = Fixture::apply(WRITE_DATA);
    std::fs::create_dir(f.at("/data/d")).expect("d");
    std::fs::write(f.at("/data/d/keep"), b"k").expect("keep");
    let dir = rustix::fs::open(
        f.at("/data"),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .expect("data");
    // Renaming a file over a non-empty directory fails at the last step.
    write_atomically(
        &dir,
        "d",
        b"x",
        0o644,
        None,
        &crate::undo::journal::Barrier::none(),
    )
    .expect_err("rename over a directory");
    assert_eq!(std::fs::read(f.at("/data/d/keep")).expect("keep"), b"k");
    let names: Vec<_> = std::fs::read_dir(f.at("/data"))
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["d"]);
}

#[test]
fn contents_over_the_file_limit_are_refused() {
    let mut f = Fixture::apply(WRITE_DATA);
    invalid(files::Host::ensure_file(
        &mut f.view(),
        "/data/x".into(),
        vec![0; MAX_FILE_BYTES + 1],
        0o644,
    ));
    assert!(!f.at("/data/x").exists());
}

#[test]
fn ensure_dir_makes_missing_parents_0755_and_the_leaf_with_its_mode() {
    let mut f = Fixture::apply(WRITE_DATA);
    assert!(files::Host::ensure_dir(&mut f.view(), "/data/a/b".into(), 0o700).expect("mkdir"));
    assert_eq!(mode_of(&f.at("/data/a")), 0o755);
    assert_eq!(mode_of(&f.at("/data/a/b")), 0o700);
    assert!(!files::Host::ensure_dir(&mut f.view(), "/data/a/b".into(), 0o700).expect("again"));
}

#[test]
fn ensure_dir_makes_a_missing_granted_directory_under_the_host_root() {
    let mut f = Fixture::apply("files: {write: [/opt/cni/bin]}");
    assert!(files::Host::ensure_dir(&mut f.view(), "/opt/cni/bin".into(), 0o755).expect("mkdir"));
    assert!(f.at("/opt/cni/bin").is_dir());
}

#[test]
fn remove_of_a_missing_file_changes_nothing() {
    let mut f = Fixture::apply(WRITE_DATA);
    assert!(!files::Host::remove(&mut f.view(), "/data/none".into()).expect("remove"));
    assert!(effects(&mut f.shared).is_empty());
}

#[test]
fn remove_of_a_symlink_removes_the_link_not_its_target() {
    let mut f = Fixture::apply(WRITE_DATA);
    std::fs::write(f.at("/data/x"), b"x").expect("x");
    symlink("x", f.at("/data/link")).expect("symlink");
    assert!(files::Host::remove(&mut f.view(), "/data/link".into()).expect("remove"));
    assert!(!f.at("/data/link").is_symlink());
    assert!(f.at("/data/x").exists());
}

// Reads.

#[test]
fn list_dir_returns_entries_sorted_without_dot_entries() {
    let mut f = Fixture::apply(WRITE_DATA);
    std::fs::write(f.at("/data/b"), b"").expect("b");
    std::fs::create_dir(f.at("/data/a")).expect("a");
    symlink("b", f.at("/data/c")).expect("c");
    let entries = files::Host::list_dir(&mut f.view(), "/data".into()).expect("list");
    let seen: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(
        seen,
        [
            ("a", FileKind::Directory),
            ("b", FileKind::File),
            ("c", FileKind::Symlink)
        ]
    );
}

#[test]
fn stat_of_a_missing_path_is_none() {
    let mut f = Fixture::apply(WRITE_DATA);
    assert!(
        files::Host::stat(&mut f.view(), "/data/none".into())
            .expect("stat")
            .is_none()
    );
}

#[test]
fn stat_of_a_symlink_describes_the_link() {
    let mut f = Fixture::apply(WRITE_DATA);
    symlink("/secret", f.at("/data/s")).expect("symlink");
    let st = files::Host::stat(&mut f.view(), "/data/s".into())
        .expect("stat")
        .expect("exists");
    assert_eq!(st.kind, FileKind::Symlink);
}

// Kernel filesystems (the machine's own /proc, read only).

/// A run whose host root is the machine's `/`, reading `/proc`.
fn proc_fixture(grant: &str) -> (FilesCtx, Shared) {
    let root = Arc::new(HostRoot::open(Path::new("/")).expect("/"));
    (
        FilesCtx::new(testing::grant(grant, None), root, Arc::default()),
        testing::shared(RunMode::Apply),
    )
}

#[test]
fn proc_file_is_denied_without_kernel_paths() {
    let (mut ctx, mut shared) = proc_fixture("files: {read: [/proc]}");
    let mut view = FilesView {
        ctx: &mut ctx,
        shared: &mut shared,
    };
    let why = denied(files::Host::read_file(
        &mut view,
        "/proc/self/status".into(),
    ));
    assert!(why.contains("kernelPaths"), "{why}");
}

#[test]
fn proc_file_listed_in_kernel_paths_is_readable() {
    let (mut ctx, mut shared) =
        proc_fixture("files: {read: [/proc], kernelPaths: [/proc/meminfo]}");
    let mut view = FilesView {
        ctx: &mut ctx,
        shared: &mut shared,
    };
    let meminfo = files::Host::read_file(&mut view, "/proc/meminfo".into()).expect("meminfo");
    assert!(meminfo.starts_with(b"MemTotal:"));
    denied(files::Host::read_file(
        &mut view,
        "/proc/self/status".into(),
    ));
}

// Plan mode: nothing made, everything recorded, and what builds on a planned
// directory is planned too.

#[test]
fn plan_mode_ensure_dir_records_each_missing_directory_and_makes_none() {
    let mut f = Fixture::new(WRITE_DATA, RunMode::Plan);
    assert!(files::Host::ensure_dir(&mut f.view(), "/data/a/b".into(), 0o700).expect("plan"));
    assert!(!f.at("/data/a").exists());
    let effects = effects(&mut f.shared);
    let seen: Vec<_> = effects
        .iter()
        .map(|e| (e.action, e.target.as_str(), e.detail.as_str(), e.applied))
        .collect();
    assert_eq!(
        seen,
        [
            ("create-dir", "/data/a", "mode 0755", false),
            ("create-dir", "/data/a/b", "mode 0700", false)
        ]
    );
}

#[test]
fn plan_mode_file_beneath_a_planned_directory_is_planned_not_written() {
    let mut f = Fixture::new(WRITE_DATA, RunMode::Plan);
    let mut view = f.view();
    files::Host::ensure_dir(&mut view, "/data/a".into(), 0o755).expect("plan dir");
    // The directory does not exist: a real lookup would fail with not-found.
    assert!(
        files::Host::ensure_file(&mut view, "/data/a/x".into(), b"x".to_vec(), 0o644)
            .expect("plan file")
    );
    assert!(!f.at("/data/a").exists());
    let actions: Vec<_> = effects(&mut f.shared)
        .into_iter()
        .map(|e| (e.action, e.target))
        .collect();
    assert_eq!(
        actions,
        [
            ("create-dir", "/data/a".to_owned()),
            ("write-file", "/data/a/x".to_owned())
        ]
    );
}

#[test]
fn plan_mode_ensure_dir_beneath_a_planned_directory_plans_only_what_is_new() {
    let mut f = Fixture::new(WRITE_DATA, RunMode::Plan);
    let mut view = f.view();
    assert!(files::Host::ensure_dir(&mut view, "/data/a".into(), 0o755).expect("plan"));
    // Planned already: no change, as apply mode would find it there.
    assert!(!files::Host::ensure_dir(&mut view, "/data/a".into(), 0o755).expect("again"));
    assert!(files::Host::ensure_dir(&mut view, "/data/a/b/c".into(), 0o700).expect("below"));
    assert!(!f.at("/data/a").exists());
    let seen: Vec<_> = effects(&mut f.shared)
        .into_iter()
        .map(|e| (e.target, e.detail))
        .collect();
    assert_eq!(
        seen,
        [
            ("/data/a".to_owned(), "mode 0755".to_owned()),
            ("/data/a/b".to_owned(), "mode 0755".to_owned()),
            ("/data/a/b/c".to_owned(), "mode 0700".to_owned()),
        ]
    );
}

#[test]
fn plan_mode_missing_granted_directory_is_planned_from_its_first_missing_ancestor() {
    let mut f = Fixture::new("files: {write: [/opt/cni/bin]}", RunMode::Plan);
    assert!(files::Host::ensure_dir(&mut f.view(), "/opt/cni/bin/x".into(), 0o755).expect("plan"));
    assert!(!f.at("/opt").exists());
    let targets: Vec<_> = effects(&mut f.shared)
        .into_iter()
        .map(|e| e.target)
        .collect();
    assert_eq!(
        targets,
        ["/opt", "/opt/cni", "/opt/cni/bin", "/opt/cni/bin/x"]
    );
}

#[test]
fn plan_mode_write_records_the_effect_and_writes_nothing() {
    let mut f = Fixture::new(WRITE_DATA, RunMode::Plan);
    assert!(
        files::Host::ensure_file(&mut f.view(), "/data/x".into(), b"x".to_vec(), 0o644)
            .expect("plan")
    );
    assert!(!f.at("/data/x").exists());
    let effects = effects(&mut f.shared);
    assert_eq!(
        (effects[0].action, effects[0].applied),
        ("write-file", false)
    );
}

#[test]
fn plan_mode_scope_is_checked_as_in_apply_mode() {
    let mut f = Fixture::new(WRITE_DATA, RunMode::Plan);
    denied(files::Host::ensure_dir(
        &mut f.view(),
        "/other/a".into(),
        0o755,
    ));
    assert!(effects(&mut f.shared).is_empty());
}

#[test]
fn planned_directories_past_the_plan_budget_end_the_run() {
    let mut planned = PlannedDirs::default();
    let dir = HostPath::parse(&format!("/{}", "d".repeat(200))).expect("path");
    let err = (0..PLAN_BYTES)
        .find_map(|_| planned.push(dir.clone(), 1, 0o755).err())
        .expect("the budget ends");
    assert!(testing::is_limit(&err), "{err:?}");
    assert!(planned.bytes <= PLAN_BYTES);
}

const READ_WRITE_DATA: &str = "files: {read: [/data], write: [/data]}";

fn names(entries: &[DirEntry]) -> Vec<(String, FileKind)> {
    entries.iter().map(|e| (e.name.clone(), e.kind)).collect()
}

#[test]
fn plan_mode_reads_back_its_planned_files_and_directories() {
    let mut f = Fixture::new(READ_WRITE_DATA, RunMode::Plan);
    std::fs::write(f.at("/data/host"), b"on the host").expect("host file");
    let mut v = f.view();
    assert!(
        files::Host::ensure_file(&mut v, "/data/x".into(), b"one\n".to_vec(), 0o640).expect("x")
    );
    assert_eq!(
        files::Host::read_file(&mut v, "/data/x".into()).expect("read"),
        b"one\n"
    );
    let st = files::Host::stat(&mut v, "/data/x".into())
        .expect("stat")
        .expect("planned");
    assert_eq!((st.kind, st.size, st.mode), (FileKind::File, 4, 0o640));
    // The same again: nothing new to plan.
    assert!(
        !files::Host::ensure_file(&mut v, "/data/x".into(), b"one\n".to_vec(), 0o640)
            .expect("same")
    );
    // Changed: diffed against the planned bytes.
    assert!(
        files::Host::ensure_file(&mut v, "/data/x".into(), b"two\n".to_vec(), 0o640).expect("two")
    );
    assert!(files::Host::ensure_dir(&mut v, "/data/d".into(), 0o700).expect("dir"));
    assert!(files::Host::ensure_file(&mut v, "/data/d/y".into(), b"y".to_vec(), 0o644).expect("y"));
    // A file beneath a planned directory's missing child: no parent.
    assert!(matches!(
        files::Host::ensure_file(&mut v, "/data/d/e/z".into(), b"z".to_vec(), 0o644),
        Err(CapError::NotFound(_))
    ));
    let st = files::Host::stat(&mut v, "/data/d".into())
        .expect("stat")
        .expect("planned dir");
    assert_eq!((st.kind, st.mode), (FileKind::Directory, 0o700));
    assert_eq!(
        names(&files::Host::list_dir(&mut v, "/data".into()).expect("list")),
        [
            ("d".to_owned(), FileKind::Directory),
            ("host".to_owned(), FileKind::File),
            ("x".to_owned(), FileKind::File)
        ]
    );
    assert_eq!(
        names(&files::Host::list_dir(&mut v, "/data/d".into()).expect("list d")),
        [("y".to_owned(), FileKind::File)]
    );
    // Removing a planned file: recorded as apply records it, then gone.
    assert!(files::Host::remove(&mut v, "/data/x".into()).expect("remove"));
    assert!(matches!(
        files::Host::read_file(&mut v, "/data/x".into()),
        Err(CapError::NotFound(_))
    ));
    assert!(
        files::Host::stat(&mut v, "/data/x".into())
            .expect("stat")
            .is_none()
    );
    assert!(!files::Host::remove(&mut v, "/data/x".into()).expect("again"));
    // Removing a host file: hidden from the calls after.
    assert!(files::Host::remove(&mut v, "/data/host".into()).expect("remove host"));
    assert!(
        files::Host::stat(&mut v, "/data/host".into())
            .expect("stat")
            .is_none()
    );
    assert!(!files::Host::remove(&mut v, "/data/host".into()).expect("again"));
    assert_eq!(
        names(&files::Host::list_dir(&mut v, "/data".into()).expect("list")),
        [("d".to_owned(), FileKind::Directory)]
    );
    // Nothing touched on the host.
    assert!(!f.at("/data/x").exists() && !f.at("/data/d").exists());
    assert_eq!(
        std::fs::read(f.at("/data/host")).expect("host"),
        b"on the host"
    );
    let seen: Vec<_> = effects(&mut f.shared)
        .into_iter()
        .map(|e| (e.action, e.target, e.diff.unwrap_or_default()))
        .collect();
    let actions: Vec<_> = seen.iter().map(|(a, t, _)| (*a, t.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("write-file", "/data/x"),
            ("write-file", "/data/x"),
            ("create-dir", "/data/d"),
            ("write-file", "/data/d/y"),
            ("remove", "/data/x"),
            ("remove", "/data/host"),
        ]
    );
    assert!(
        seen[1].2.contains("-one") && seen[1].2.contains("+two"),
        "{}",
        seen[1].2
    );
}

#[test]
fn planned_file_contents_past_their_budget_end_the_run() {
    let mut planned = PlannedFiles::default();
    let big = || PlannedFile::Written {
        contents: vec![0; MAX_FILE_BYTES],
        mode: 0o644,
        at_ns: 0,
    };
    let path = |i: usize| HostPath::parse(&format!("/data/{i}")).expect("path");
    for i in 0..3 {
        planned.set(path(i), big()).expect("within the budget");
    }
    // Replacing one costs only the difference.
    planned.set(path(0), big()).expect("replaced");
    let err = planned.set(path(3), big()).expect_err("past the budget");
    assert!(testing::is_limit(&err), "{err:?}");
    assert!(planned.bytes <= PLAN_FILE_BYTES);
    planned.forget(&path(0));
    planned.set(path(3), big()).expect("room again");
}
