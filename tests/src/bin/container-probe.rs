//! Run as the process of the agent's container (tests/tests/all/container.rs)
//! in place of the agent: tries what the container's mounts, capabilities
//! and seccomp filter should refuse, and prints one line per attempt,
//! `OP ok` or `OP errno=N`, so the test can assert the exact errno. Links
//! only libc, like the agent, so it runs on the agent image's libraries.
//!
//! Raw system calls (init_module, setns, a raw socket, ...) have no safe
//! wrapper here: unsafe is allowed for those calls only.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::Error;

/// `-1` from a libc call: the errno; else ok.
fn result(rc: libc::c_long) -> Result<(), i32> {
    if rc < 0 {
        Err(Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

/// Opens `path` for writing (creating it).
fn write(path: &str) -> Result<(), i32> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|e| e.raw_os_error().unwrap_or(0))
}

fn open(path: &str, flags: libc::c_int) -> Result<libc::c_int, i32> {
    let p = cstr(path);
    // SAFETY: a valid C string; the fd is only used by this process.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
    result(fd.into()).map(|()| fd)
}

fn op(name: &str) -> Result<(), i32> {
    // SAFETY (every block below): raw system calls with valid C strings or
    // null pointers the kernel checks; nothing is shared with other threads.
    unsafe {
        if let Some(path) = name.strip_prefix("write:") {
            return write(path);
        }
        if let Some(path) = name.strip_prefix("read:") {
            return std::fs::read(path)
                .map(drop)
                .map_err(|e| e.raw_os_error().unwrap_or(0));
        }
        if let Some(path) = name.strip_prefix("setns:") {
            let fd = open(path, libc::O_RDONLY)?;
            return result(libc::setns(fd, libc::CLONE_NEWNET).into());
        }
        if let Some(path) = name.strip_prefix("chown:") {
            write(path)?;
            let p = cstr(path);
            return result(libc::chown(p.as_ptr(), 1000, 1000).into());
        }
        if let Some(path) = name.strip_prefix("mknod:") {
            let p = cstr(path);
            // /dev/null's numbers: a character device node.
            let dev = libc::makedev(1, 3);
            return result(libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o666, dev).into());
        }
        match name {
            "finit_module" => {
                let fd = open("/hostaction", libc::O_RDONLY)?;
                let empty = cstr("");
                result(libc::syscall(libc::SYS_finit_module, fd, empty.as_ptr(), 0))
            }
            "init_module" => {
                let empty = cstr("");
                let image = [0u8; 64];
                result(libc::syscall(
                    libc::SYS_init_module,
                    image.as_ptr(),
                    image.len(),
                    empty.as_ptr(),
                ))
            }
            "mount-tmpfs" => {
                let (src, dst, fs) = (cstr("tmpfs"), cstr("/var/cache/hostaction"), cstr("tmpfs"));
                result(
                    libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null())
                        .into(),
                )
            }
            "remount-root-rw" => {
                let (none, root) = (cstr(""), cstr("/"));
                let flags = libc::MS_REMOUNT | libc::MS_BIND;
                result(
                    libc::mount(
                        none.as_ptr(),
                        root.as_ptr(),
                        std::ptr::null(),
                        flags,
                        std::ptr::null(),
                    )
                    .into(),
                )
            }
            "unshare-net" => result(libc::unshare(libc::CLONE_NEWNET).into()),
            "unshare-mount" => result(libc::unshare(libc::CLONE_NEWNS).into()),
            "raw-socket" => {
                result(libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP).into())
            }
            "sethostname" => {
                let name = "probe";
                result(libc::sethostname(name.as_ptr().cast(), name.len()).into())
            }
            _ => Err(-1),
        }
    }
}

fn main() {
    for name in std::env::args().skip(1) {
        match op(&name) {
            Ok(()) => println!("{name} ok"),
            Err(errno) => println!("{name} errno={errno}"),
        }
    }
}
