//! A real OCI registry for the end-to-end tests: Debian's `docker-registry`
//! (distribution 2.8) serving on 127.0.0.1, plain or with TLS (a test CA made
//! with `openssl`) and htpasswd basic auth, its storage in a temp dir. And a
//! [`FaultProxy`] in front of a plain registry, for the failures a real
//! registry will not produce on demand (5xx, a stall, a cut connection, a
//! trickle).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the registry may take to answer after being started (~50 ms).
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A docker-registry serving on 127.0.0.1, its storage in a temp dir; killed
/// on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    addr: String,
    ca: Option<PathBuf>,
    child: Option<Child>,
}

impl Registry {
    /// Plain HTTP, anonymous.
    pub fn plain() -> Registry {
        Self::new(false, None)
    }

    /// HTTPS with a test CA ([`Registry::ca_pem`]; the leaf has SAN
    /// `IP:127.0.0.1`) and htpasswd basic auth for `user`.
    pub fn tls_with_auth(user: &str, password: &str) -> Registry {
        Self::new(true, Some((user, password)))
    }

    fn new(tls: bool, auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().expect("registry scratch dir");
        let d = dir.path();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut http = serde_json::json!({ "addr": addr, "secret": "hostaction-test" });
        if tls {
            make_certs(d);
            http["tls"] = serde_json::json!({
                "certificate": d.join("leaf.pem"),
                "key": d.join("leaf.key"),
            });
        }
        // JSON is YAML: no quoting to get wrong.
        let mut config = serde_json::json!({
            "version": "0.1",
            "log": { "level": "error", "accesslog": { "disabled": true } },
            "storage": {
                "filesystem": { "rootdirectory": d.join("storage") },
                "delete": { "enabled": true },
            },
            "http": http,
        });
        if let Some((user, password)) = auth {
            let out = run(Command::new("htpasswd").args(["-nbBC", "4", user, password]));
            std::fs::write(d.join("htpasswd"), out.trim()).expect("write htpasswd");
            config["auth"] = serde_json::json!({
                "htpasswd": { "realm": "hostaction-test", "path": d.join("htpasswd") },
            });
        }
        std::fs::write(d.join("config.yml"), config.to_string()).expect("write registry config");
        let ca = tls.then(|| d.join("ca.pem"));
        let mut registry = Registry {
            dir,
            addr,
            ca,
            child: None,
        };
        registry.start();
        registry
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The CA certificate PEM file, for TLS registries.
    pub fn ca_pem(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// Stops the registry process (connections then fail: "registry down").
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage, and waits until it
    /// serves. A no-op when it runs.
    ///
    /// # Panics
    /// When it does not serve within 10 s, with its log.
    pub fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("registry.log"))
            .expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("registry log"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.answers() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(d.join("registry.log")).unwrap_or_default();
                self.stop();
                panic!(
                    "docker-registry on {} did not start ({exited:?}):\n{log}",
                    self.addr
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the registry answers: any HTTP answer to `GET /v2/` when plain,
    /// an accepted connection when TLS.
    fn answers(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(&self.addr) else {
            return false;
        };
        if self.ca.is_some() {
            return true;
        }
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        let mut head = [0; 5];
        conn.write_all(request.as_bytes()).is_ok()
            && conn.read_exact(&mut head).is_ok()
            && &head == b"HTTP/"
    }

    /// The storage file holding a blob's bytes (`digest` is `sha256:HEX` or
    /// `HEX`): `<storage>/docker/registry/v2/blobs/sha256/<first2>/<hex>/data`.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Writes `config.json` into `dir`: docker basic credentials for this
    /// registry (`auths: {"127.0.0.1:PORT": {"auth": base64(user:pass)}}`).
    /// Returns its path.
    pub fn write_docker_config(&self, dir: &Path, user: &str, password: &str) -> PathBuf {
        let auth = base64(format!("{user}:{password}").as_bytes());
        let config = serde_json::json!({ "auths": { &self.addr: { "auth": auth } } });
        let path = dir.join("config.json");
        std::fs::create_dir_all(dir).expect("docker config dir");
        std::fs::write(&path, config.to_string()).expect("write docker config");
        path
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes `ca.pem` (a CA) and `leaf.pem`/`leaf.key` (signed by it, SAN
/// `IP:127.0.0.1`) in `dir`. Distinct CA and leaf: rustls rejects a CA
/// certificate used as end-entity. P-256 keys: quick to make.
fn make_certs(dir: &Path) {
    let openssl = |args: &str| {
        run(Command::new("openssl")
            .current_dir(dir)
            .args(args.split_whitespace()));
    };
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(&format!(
        "req -x509 -days 2 -subj /CN=hostaction-test-CA {key} -keyout ca.key -out ca.pem \
         -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
    ));
    openssl(&format!(
        "req -subj /CN=127.0.0.1 {key} -keyout leaf.key -out leaf.csr"
    ));
    let ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
               extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n";
    std::fs::write(dir.join("leaf.ext"), ext).expect("write leaf extensions");
    openssl(
        "x509 -req -days 2 -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
         -extfile leaf.ext -out leaf.pem",
    );
}

/// Runs `cmd` to success; its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("spawn helper command");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?}: {}\n{err}", out.status);
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Standard base64, padded.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            let c = if i <= chunk.len() {
                ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]
            } else {
                b'='
            };
            out.push(char::from(c));
        }
    }
    out
}

/// What [`FaultProxy`] does with the connections it accepts next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward to the upstream.
    None,
    /// Answer the next `times` connections with status `code` (HTTP/1.1,
    /// `Content-Length: 0`, `Connection: close`), then forward again.
    Status {
        /// The HTTP status code.
        code: u16,
        /// How many connections get it.
        times: usize,
    },
    /// Accept and never answer (until the client or the proxy goes away).
    Stall,
    /// Forward, but close the connection after this many bytes of the
    /// upstream's response.
    CutAfter(usize),
    /// Forward the upstream's response one byte per this interval: alive to
    /// any per-read time-out longer than it, done in days.
    Trickle(Duration),
}

/// A TCP proxy in front of a plain-HTTP registry that can inject faults; for
/// the failures a real registry will not produce on demand (5xx, a stall, a
/// cut connection).
///
/// Faults apply per connection, decided when it is accepted. So that a
/// client's kept-alive connection does not slip past a new fault,
/// [`FaultProxy::set`] closes the connections open so far: set faults
/// between requests, not during one.
pub struct FaultProxy {
    addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    fault: Mutex<Fault>,
    requests: AtomicUsize,
    stop: AtomicBool,
    /// The connections accepted so far, for `set` to close.
    open: Mutex<Vec<TcpStream>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (an ephemeral port), forwarding to `upstream`
    /// (`HOST:PORT`); a thread per connection.
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault proxy");
        let addr = listener
            .local_addr()
            .expect("fault proxy address")
            .to_string();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
        });
        let (upstream, state) = (upstream.to_owned(), Arc::clone(&shared));
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if state.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                state.requests.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = conn.try_clone() {
                    let mut open = lock(&state.open);
                    open.retain(|c| c.peer_addr().is_ok()); // not yet closed by both ends
                    open.push(clone);
                }
                let fault = state.take_fault();
                let (upstream, state) = (upstream.clone(), Arc::clone(&state));
                std::thread::spawn(move || {
                    serve(&conn, &upstream, fault, &state);
                    let _ = conn.shutdown(Shutdown::Both); // `open` holds a clone
                });
            }
        });
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sets the fault for the connections accepted from now on, and closes
    /// those open (kept alive, stalled) so the client's next request meets it.
    pub fn set(&self, fault: Fault) {
        *lock(&self.shared.fault) = fault;
        for conn in lock(&self.shared.open).drain(..) {
            let _ = conn.shutdown(Shutdown::Both);
        }
    }

    /// Requests (connections) seen so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

impl Shared {
    /// The fault for a new connection, counting a `Status` down.
    fn take_fault(&self) -> Fault {
        let mut fault = lock(&self.fault);
        let now = *fault;
        if let Fault::Status { code, times } = now {
            let left = times.saturating_sub(1);
            *fault = if left > 0 {
                Fault::Status { code, times: left }
            } else {
                Fault::None
            };
            if times == 0 {
                return Fault::None;
            }
        }
        now
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr); // unblocks accept
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Locks `mutex`; a thread that panicked holding it left it usable still.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves one client connection under `fault`.
fn serve(mut client: &TcpStream, upstream: &str, fault: Fault, state: &Shared) {
    let limit = match fault {
        Fault::None | Fault::Trickle(_) => usize::MAX,
        Fault::CutAfter(n) => n,
        Fault::Status { code, .. } => {
            // Read the request head, answer, then drain what the client still
            // sends: closing on unread data would reset the connection and
            // lose the answer.
            let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = Vec::new();
            let mut buf = [0; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match client.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer = format!(
                "HTTP/1.1 {code} Injected Fault\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = client.write_all(answer.as_bytes());
            let _ = client.shutdown(Shutdown::Write);
            while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
            return;
        }
        Fault::Stall => {
            // Hold the connection until the client gives up or the proxy stops.
            let _ = client.set_read_timeout(Some(Duration::from_millis(100)));
            let mut buf = [0; 4096];
            while !state.stop.load(Ordering::SeqCst) {
                match client.read(&mut buf) {
                    Ok(0) => return,
                    Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        return;
                    }
                    _ => {}
                }
            }
            return;
        }
    };
    let Ok(mut up) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(mut client_in), Ok(mut up_out)) = (client.try_clone(), up.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut up_out);
        let _ = up_out.shutdown(Shutdown::Write);
    });
    if let Fault::Trickle(every) = fault {
        trickle(client, &mut up, every, state);
        let _ = up.shutdown(Shutdown::Both);
        return;
    }
    let (mut sent, mut buf) = (0, [0; 8192]);
    while sent < limit {
        let n = match up.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(limit - sent),
        };
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
    }
    // Cut: close both ways; else the upstream ended its side, and so do we.
    let how = if sent < limit {
        Shutdown::Write
    } else {
        Shutdown::Both
    };
    let _ = client.shutdown(how);
    let _ = up.shutdown(how);
}

/// Sends what `up` answers to `client` one byte per `every`, until either
/// end closes or the proxy stops.
fn trickle(mut client: &TcpStream, up: &mut TcpStream, every: Duration, state: &Shared) {
    let _ = up.set_read_timeout(Some(Duration::from_millis(100)));
    let mut pending = std::collections::VecDeque::new();
    let mut next = Instant::now() + every;
    let mut buf = [0; 8192];
    let mut upstream_open = true;
    while !state.stop.load(Ordering::SeqCst) {
        if upstream_open {
            match up.read(&mut buf) {
                Ok(0) => upstream_open = false,
                Ok(n) => pending.extend(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => upstream_open = false,
            }
        } else if pending.is_empty() {
            return;
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
        if Instant::now() >= next {
            next += every;
            if let Some(byte) = pending.pop_front()
                && client.write_all(&[byte]).is_err()
            {
                return;
            }
        }
    }
}
