//! Test harness: runs the real tsinit binary as PID 1 of a fresh PID namespace
//! (`unshare --pid --fork --mount-proc`) or as a plain child (subreaper mode), captures
//! its output, and waits on conditions with deadlines. Every process it starts is killed
//! (by pid) when the handle is dropped, also when a test fails.
#![allow(dead_code, unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The binary under test: $TEST_TSINIT_BIN (the static release build scripts/test makes),
/// else the one cargo built for these tests.
pub fn tsinit_bin() -> PathBuf {
    std::env::var_os("TEST_TSINIT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tsinit")))
}

/// Fails the test loudly unless we can create PID namespaces.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root to create PID namespaces: run it with scripts/test as root"
    );
    assert!(
        Path::new("/usr/bin/unshare").exists() || Path::new("/bin/unshare").exists(),
        "this test needs `unshare` (util-linux)"
    );
}

/// A command that runs tsinit with `args` as PID 1 of a new PID namespace.
pub fn pid1(args: &[&str]) -> Command {
    require_root();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"])
        .arg(tsinit_bin())
        .args(args);
    cmd
}

/// A command that runs tsinit with `args` directly (not PID 1: subreaper mode).
pub fn subreaper(args: &[&str]) -> Command {
    let mut cmd = Command::new(tsinit_bin());
    cmd.args(args);
    cmd
}

/// A fresh directory for one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        // Unique within the run too: tests running in parallel may pick the same name.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tsinit-test-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// Writes `text` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write temp file");
        path
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Marks every process a test starts (through an environment variable that children
/// inherit) so that all of them, also ones reparented away from their starter, are
/// killed by pid when the tag is dropped, whether the test passed or failed.
pub struct Tag(String);

impl Tag {
    pub fn new() -> Tag {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Tag(format!("{}-{n}", std::process::id()))
    }

    /// Tags `cmd`.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("TEST_TSINIT_TAG", &self.0);
    }

    /// The pids of live processes carrying this tag.
    pub fn pids(&self) -> Vec<i32> {
        let needle = format!("TEST_TSINIT_TAG={}\0", self.0);
        all_pids()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
            })
            .collect()
    }
}

impl Drop for Tag {
    fn drop(&mut self) {
        for _ in 0..10 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) takes no pointers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[derive(Default)]
struct Captured {
    stdout: String,
    stderr: String,
    /// How many of the two pipes reached end-of-file.
    closed: u8,
}

/// A running process with its output captured.
pub struct Running {
    pub pid: i32,
    tag: Tag,
    started: Instant,
    output: Arc<(Mutex<Captured>, Condvar)>,
    exit: Receiver<(ExitStatus, Instant)>,
    status: Option<(ExitStatus, Instant)>,
}

impl Running {
    /// Starts `cmd` with stdout and stderr captured (stdin from /dev/null unless set).
    pub fn start(mut cmd: Command) -> Running {
        let tag = Tag::new();
        tag.apply(&mut cmd);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child: Child = cmd.spawn().expect("spawn process under test");
        let output = Arc::new((Mutex::new(Captured::default()), Condvar::new()));
        let out = child.stdout.take().expect("stdout pipe");
        let err = child.stderr.take().expect("stderr pipe");
        spawn_reader(out, output.clone(), true);
        spawn_reader(err, output.clone(), false);
        let pid = child.id() as i32;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let status = child.wait().expect("wait for process under test");
            let _ = tx.send((status, Instant::now()));
        });
        Running {
            pid,
            tag,
            started,
            output,
            exit: rx,
            status: None,
        }
    }

    pub fn stdout(&self) -> String {
        self.output.0.lock().unwrap().stdout.clone()
    }

    pub fn stderr(&self) -> String {
        self.output.0.lock().unwrap().stderr.clone()
    }

    /// Waits until stdout (or stderr if `on_stderr`) satisfies `pred`; panics with all the
    /// output if it does not within `timeout`.
    pub fn wait_output(&self, on_stderr: bool, timeout: Duration, pred: impl Fn(&str) -> bool) {
        let (lock, cv) = &*self.output;
        let guard = lock.lock().unwrap();
        let (guard, result) = cv
            .wait_timeout_while(guard, timeout, |c| {
                !pred(if on_stderr { &c.stderr } else { &c.stdout })
            })
            .unwrap();
        if result.timed_out() {
            panic!(
                "condition on {} not met within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                if on_stderr { "stderr" } else { "stdout" },
                guard.stdout,
                guard.stderr
            );
        }
    }

    /// Waits until stdout contains `needle`.
    pub fn wait_stdout(&self, needle: &str) {
        self.wait_output(false, Duration::from_secs(20), |s| s.contains(needle));
    }

    /// Waits for the process to exit and for all its output; returns its status and when
    /// it exited. Output still held open after the exit means something tsinit should
    /// have stopped is still running: that fails the test.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Instant) {
        if let Some(s) = self.status {
            return s;
        }
        match self.exit.recv_timeout(timeout) {
            Ok(s) => self.wait_exit_after(s),
            Err(RecvTimeoutError::Timeout) => panic!(
                "process did not exit within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.stdout(),
                self.stderr()
            ),
            Err(RecvTimeoutError::Disconnected) => panic!("waiter thread died"),
        }
    }

    /// Records the exit `s` and waits for the output pipes to close.
    fn wait_exit_after(&mut self, s: (ExitStatus, Instant)) -> (ExitStatus, Instant) {
        self.status = Some(s);
        let (lock, cv) = &*self.output;
        let guard = lock.lock().unwrap();
        let (guard, res) = cv
            .wait_timeout_while(guard, Duration::from_secs(10), |c| c.closed < 2)
            .unwrap();
        assert!(
            !res.timed_out(),
            "exited, but its output is still held open by a leftover process\n\
             --- stdout ---\n{}\n--- stderr ---\n{}",
            guard.stdout,
            guard.stderr
        );
        s
    }

    /// Waits up to `timeout` for the exit; `None` if still running.
    pub fn wait_exit_for(&mut self, timeout: Duration) -> Option<(ExitStatus, Instant)> {
        if self.status.is_some() {
            return self.status;
        }
        match self.exit.recv_timeout(timeout) {
            Ok(s) => Some(self.wait_exit_after(s)),
            Err(_) => None,
        }
    }

    /// The exit code (or 128+N if killed by signal N, as a shell reports it).
    pub fn code(&mut self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        let (status, _) = self.wait_exit(Duration::from_secs(30));
        status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap()
    }

    pub fn elapsed_to_exit(&mut self) -> Duration {
        let (_, at) = self.wait_exit(Duration::from_secs(30));
        at - self.started
    }

    /// The pid (in our namespace) of the tsinit that `unshare` started as PID 1.
    pub fn pid1_pid(&self) -> i32 {
        let list = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid))
            .expect("read unshare's children");
        list.split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("unshare has a child")
    }

    /// Sends signal number `sig` (real-time signals included) to `pid`.
    pub fn kill(pid: i32, sig: i32) {
        // SAFETY: kill(2) takes no pointers.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Kill everything this test started (the tag's own Drop does it), then collect
        // the process we spawned.
        if self.status.is_none() && self.exit.try_recv().is_err() {
            for pid in self.tag.pids() {
                // SAFETY: kill(2) takes no pointers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.exit.recv_timeout(Duration::from_secs(10));
        }
    }
}

fn spawn_reader(
    mut pipe: impl Read + Send + 'static,
    output: Arc<(Mutex<Captured>, Condvar)>,
    is_stdout: bool,
) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let (lock, cv) = &*output;
            let n = match pipe.read(&mut buf) {
                Ok(0) | Err(_) => {
                    lock.lock().unwrap().closed += 1;
                    cv.notify_all();
                    return;
                }
                Ok(n) => n,
            };
            let mut c = lock.lock().unwrap();
            let text = String::from_utf8_lossy(&buf[..n]);
            if is_stdout {
                c.stdout.push_str(&text);
            } else {
                c.stderr.push_str(&text);
            }
            cv.notify_all();
        }
    });
}

/// Runs `cmd` to completion (deadline 60 s) and returns (exit code, stdout, stderr).
pub fn run(cmd: Command) -> (i32, String, String) {
    let mut r = Running::start(cmd);
    let code = r.code();
    (code, r.stdout(), r.stderr())
}

/// Every pid in /proc.
pub fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .expect("read /proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
}

/// The processes whose parent is `ppid`, with their state letters.
pub fn children_of(ppid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for pid in all_pids() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if rest.next().and_then(|p| p.parse().ok()) == Some(ppid) {
            out.push((pid, state));
        }
    }
    out
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|c| stat[c + 1..].split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Checks `cond` until it holds, for at most `timeout`, pausing briefly between checks;
/// panics naming `what` if it never does. For conditions no event announces.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The directory holding tailscale and tailscaled 1.96.4, fetched (and sha256-checked)
/// by scripts/fetch-tailscale on first use.
pub fn tailscale_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-tailscale");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/fetch-tailscale");
        assert!(out.status.success(), "scripts/fetch-tailscale failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
    .clone()
}

/// A network namespace of the test's own with a veth pair up (tailscaled treats a
/// namespace with only `lo` as offline). Deleted when dropped.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        require_root();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("tsinit-t{}-{n}", std::process::id());
        let ns = NetNs { name };
        ns.ip(&["netns", "add", &ns.name]);
        let in_ns = |args: &[&str]| {
            let mut full = vec!["-n", ns.name.as_str()];
            full.extend_from_slice(args);
            ns.ip(&full);
        };
        in_ns(&["link", "set", "lo", "up"]);
        in_ns(&[
            "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ]);
        in_ns(&["addr", "add", "10.99.0.1/24", "dev", "veth0"]);
        in_ns(&["link", "set", "veth0", "up"]);
        in_ns(&["link", "set", "veth1", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip").args(args).status().expect("run ip");
        assert!(status.success(), "ip {args:?} failed");
    }

    /// Joins this namespace to `other` with a veth pair: `<net>.1/24` here (device
    /// `to-b`), `<net>.2/24` there (`to-a`); `net` is like "10.231.0".
    pub fn join(&self, other: &NetNs, net: &str) {
        let ip = |args: &[&str]| self.ip(args);
        ip(&[
            "-n",
            &self.name,
            "link",
            "add",
            "to-b",
            "type",
            "veth",
            "peer",
            "name",
            "to-a",
            "netns",
            &other.name,
        ]);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{net}.1/24"),
            "dev",
            "to-b",
        ]);
        ip(&[
            "-n",
            &other.name,
            "addr",
            "add",
            &format!("{net}.2/24"),
            "dev",
            "to-a",
        ]);
        ip(&["-n", &self.name, "link", "set", "to-b", "up"]);
        ip(&["-n", &other.name, "link", "set", "to-a", "up"]);
    }

    /// A command that runs `program` inside the namespace.
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Environment for a tsinit that runs real tailscaled inside a test namespace: state
/// and socket under `dir`, no log upload, and a login server on a closed loopback port
/// (so nothing ever tries to reach the internet).
pub fn tailscale_env(cmd: &mut Command, dir: &Path) {
    let path = format!(
        "{}:{}",
        tailscale_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path)
        .env("TSINIT_TAILSCALE_STATE_DIR", dir.join("state"))
        .env("TSINIT_TAILSCALE_SOCKET", dir.join("run/tailscaled.sock"))
        // No link at this machine's /var/run/tailscale/tailscaled.sock (a test of the
        // link gives tsinit a /run of its own).
        .env("TSINIT_TAILSCALE_SOCKET_LINK", "false")
        .env("TSINIT_TAILSCALE_TAILSCALED_ARGS", "--no-logs-no-support")
        .env("TSINIT_TAILSCALE_LOGIN_SERVER", "http://127.0.0.1:9")
        .env("TSINIT_TAILSCALE_UP_TIMEOUT", "2s")
        .env("TSINIT_TAILSCALE_HOSTNAME", "tsinit-test")
        .env("TSINIT_HOSTS_PATH", test_hosts_file(dir));
    for var in ["TS_AUTHKEY", "TS_AUTH_KEY", "TAILSCALE_AUTHKEY"] {
        cmd.env_remove(var);
    }
}

/// Environment for a tsinit that logs in to the test control server at `url`: DERP over
/// HTTP (the namespaces carry no UDP to it), a bring-up deadline long enough for a
/// loaded machine, and `$TSINIT` naming the binary for scripts that exec it.
pub fn login_env(cmd: &mut Command, url: impl AsRef<std::ffi::OsStr>) {
    cmd.env("TSINIT", tsinit_bin())
        .env("TSINIT_TAILSCALE_LOGIN_SERVER", url)
        .env("TSINIT_TAILSCALE_UP_TIMEOUT", "20s")
        .env("TS_DEBUG_USE_DERP_HTTP", "1");
}

/// A hosts file of the test's own (never the machine's /etc/hosts), created with a
/// line that must survive every write.
pub fn test_hosts_file(dir: &Path) -> PathBuf {
    let path = dir.join("hosts");
    if !path.exists() {
        std::fs::write(&path, "127.0.0.1 localhost\n").expect("write test hosts file");
    }
    path
}

/// tsinit as PID 1 inside `ns` with `args`, set up by [`tailscale_env`].
pub fn pid1_in(ns: &NetNs, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = ns.cmd("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc", "--kill-child=SIGKILL"])
        .arg(tsinit_bin())
        .args(args);
    tailscale_env(&mut cmd, dir);
    cmd
}

/// Waits (30 s at most) for `r` to exit while reading every process's command line every
/// few milliseconds: panics if one holds `secret`; returns whether a `tailscale up` that
/// reads its key (or another secret) from a memory file (`--auth-key=file:/proc/self/fd/N`)
/// was seen.
pub fn watch_argv_until_exit(r: &mut Running, secret: &str) -> bool {
    let mut saw_up = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.wait_exit_for(Duration::from_millis(5)).is_none() {
        assert!(Instant::now() < deadline, "tsinit did not finish");
        for pid in all_pids() {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            assert!(
                !cmdline.contains(secret),
                "secret in argv of {pid}: {cmdline}"
            );
            saw_up |= cmdline.contains(" up ") && cmdline.contains("=file:/proc/self/fd/");
        }
    }
    saw_up
}
