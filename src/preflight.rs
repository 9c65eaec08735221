//! Preflight: can this container run tailscaled with kernel networking, and if not, what fixes it.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, ErrorKind::NotFound};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability};
use nix::sys::stat::{Mode, SFlag, major, makedev, minor, mknod};

/// Where the TUN device normally is.
pub const TUN_PATH: &str = "/dev/net/tun";

const TUN_FIX: &str = "run the container with --device /dev/net/tun \
                       (compose: `devices: [\"/dev/net/tun:/dev/net/tun\"]`)";
const CGROUP_FIX: &str = "the device cgroup refuses it: add --device-cgroup-rule 'c 10:200 rwm' \
                          (compose: `device_cgroup_rules: ['c 10:200 rwm']`)";
const NOT_TUN: &str = "not the TUN character device 10:200";
/// The checks kernel networking needs; the others only warn, or matter in every mode.
const KERNEL_CHECKS: [&str; 3] = ["tun", "net_admin", "binaries"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Warn,
    Fail,
}

/// One check's result; `fix` is set exactly when the outcome is not Ok.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, outcome: Outcome, detail: String, fix: Option<String>) -> Check {
        Check {
            name,
            outcome,
            detail,
            fix,
        }
    }
}

/// What the checks look at; the caller reads the environment, so tests can substitute it.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Normally [`TUN_PATH`].
    pub tun_path: &'a Path,
    /// Whether to create a missing TUN node (needs CAP_MKNOD).
    pub may_mknod: bool,
    pub state_dir: &'a Path,
    /// The contents of /proc/self/mountinfo.
    pub mountinfo: &'a str,
    pub hostname: &'a str,
    /// Explicit binary paths; `None`: search `path_env`.
    pub tailscaled: Option<&'a Path>,
    pub tailscale: Option<&'a Path>,
    pub path_env: &'a str,
    /// Asked by someone else than tsinit (`tsinit preflight`, maybe as a non-root user):
    /// a capability the container grants (its bounding set) counts, as tsinit running as
    /// root holds it.
    pub on_behalf: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    /// `tun`, `net_admin` and `binaries` are all Ok.
    pub kernel_ok: bool,
    pub tailscaled: Option<PathBuf>,
    pub tailscale: Option<PathBuf>,
}

/// One line of /proc/self/mountinfo, the parts preflight needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// A problem and its fix.
type Problem = (String, String);

/// Runs every check, in order. Never panics: a check that cannot tell fails, saying why.
pub fn run(inputs: &Inputs) -> Report {
    let tailscaled = resolve("tailscaled", inputs.tailscaled, inputs.path_env);
    let tailscale = resolve("tailscale", inputs.tailscale, inputs.path_env);
    let checks = vec![
        verdict("tun", tun(inputs.tun_path, inputs.may_mknod)),
        check_cap(
            "net_admin",
            Capability::CAP_NET_ADMIN,
            Outcome::Fail,
            inputs.on_behalf,
        ),
        check_cap(
            "net_raw",
            Capability::CAP_NET_RAW,
            Outcome::Warn,
            inputs.on_behalf,
        ),
        check_state_dir(inputs.state_dir, inputs.mountinfo, inputs.hostname),
        verdict("binaries", binaries(&tailscaled, &tailscale)),
    ];
    let kernel_ok = kernel_failures(&checks).next().is_none();
    let (tailscaled, tailscale) = (tailscaled.ok(), tailscale.ok());
    Report {
        checks,
        kernel_ok,
        tailscaled,
        tailscale,
    }
}

fn kernel_failures(checks: &[Check]) -> impl Iterator<Item = &Check> {
    let failing = |c: &&Check| KERNEL_CHECKS.contains(&c.name) && c.outcome != Outcome::Ok;
    checks.iter().filter(failing)
}

impl Report {
    /// Human text: one line per check like
    /// "  ok    tun        /dev/net/tun: character device 10:200, opens read-write", for
    /// non-ok ones an indented "        fix: ..." line; last a verdict: "kernel networking:
    /// available" or "kernel networking: NOT available (userspace networking still works)".
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            let label = match c.outcome {
                Outcome::Ok => "ok",
                Outcome::Warn => "warn",
                Outcome::Fail => "FAIL",
            };
            out.push_str(&format!("  {label:<6}{:<10} {}\n", c.name, c.detail));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("        fix: {fix}\n"));
            }
        }
        out.push_str(match self.kernel_ok {
            true => "kernel networking: available\n",
            false => "kernel networking: NOT available (userspace networking still works)\n",
        });
        out
    }

    pub fn to_json(&self) -> String {
        let error = |e: serde_json::Error| format!("{{\"error\": {:?}}}", e.to_string());
        serde_json::to_string_pretty(self).unwrap_or_else(error)
    }

    /// The failing kernel-mode checks joined as one message with their fixes, for an error.
    pub fn kernel_problems(&self) -> Option<String> {
        let problems: Vec<String> = kernel_failures(&self.checks)
            .map(|c| match &c.fix {
                Some(fix) => format!("{}: {} (fix: {fix})", c.name, c.detail),
                None => format!("{}: {}", c.name, c.detail),
            })
            .collect();
        let joined = problems.join("; ");
        let message = format!("kernel networking is not available: {joined}");
        (!problems.is_empty()).then_some(message)
    }
}

/// A check that either passes or fails.
fn verdict(name: &'static str, result: Result<String, Problem>) -> Check {
    match result {
        Ok(detail) => Check::new(name, Outcome::Ok, detail, None),
        Err((detail, fix)) => Check::new(name, Outcome::Fail, detail, Some(fix)),
    }
}

fn tun(path: &Path, may_mknod: bool) -> Result<String, Problem> {
    let p = path.display();
    let fail = |detail: String| (detail, TUN_FIX.to_string());
    let mut created = "";
    let meta = match fs::metadata(path) {
        Err(e) if e.kind() == NotFound && may_mknod => {
            created = " (created by tsinit)";
            let made = create_tun(path).and_then(|()| fs::metadata(path));
            made.map_err(|e| fail(format!("{p} is missing and creating it failed: {e}")))?
        }
        Err(e) if e.kind() == NotFound => return Err(fail(format!("{p} does not exist"))),
        Err(e) => return Err(fail(format!("{p} cannot be inspected: {e}"))),
        Ok(meta) => meta,
    };
    let kind = meta.file_type();
    if !kind.is_char_device() {
        let what = match (kind.is_dir(), kind.is_file()) {
            (true, _) => "a directory",
            (_, true) => "a regular file",
            _ => "some other kind of file",
        };
        return Err(fail(format!("{p} is {what}, {NOT_TUN}")));
    }
    let (maj, min) = (major(meta.rdev()), minor(meta.rdev()));
    if (maj, min) != (10, 200) {
        let found = format!("{p} is character device {maj}:{min}");
        return Err(fail(format!("{found}, {NOT_TUN}")));
    }
    if let Err(e) = OpenOptions::new().read(true).write(true).open(path) {
        let detail = format!(
            "{p}: character device 10:200{created}, but opening it fails: {}",
            crate::error::os_message(&e)
        );
        let fix = match e.raw_os_error() {
            // As root, a refusal means the device cgroup or a `nodev` mount: the device
            // has to come from the runtime.
            Some(libc::EPERM) | Some(libc::EACCES) if nix::unistd::geteuid().is_root() => {
                format!("{TUN_FIX}; {CGROUP_FIX}")
            }
            Some(libc::EACCES) => format!("run as root, or make {p} mode 0666"),
            _ => TUN_FIX.to_string(),
        };
        return Err((detail, fix));
    }
    let opens = "character device 10:200, opens read-write";
    Ok(format!("{p}: {opens}{created}"))
}

/// Creates `path` (and its directory, 0755) as the TUN node 10:200, mode 0666.
fn create_tun(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    }
    let (mode, dev) = (Mode::from_bits_truncate(0o666), makedev(10, 200));
    mknod(path, SFlag::S_IFCHR, mode, dev)?;
    // mknod's mode went through the umask.
    fs::set_permissions(path, Permissions::from_mode(0o666))
}

fn check_cap(name: &'static str, cap: Capability, missing: Outcome, on_behalf: bool) -> Check {
    let flag = name.to_ascii_uppercase();
    let fix = format!("--cap-add {flag} (compose: `cap_add: [{flag}]`)");
    let why = match missing {
        Outcome::Fail => "tailscaled cannot create its interface or set routes",
        _ => "tailscaled runs without it, but some of its features need raw sockets",
    };
    let granted = || caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false);
    let (outcome, detail) = match caps::has_cap(None, CapSet::Effective, cap) {
        Ok(true) => (Outcome::Ok, format!("{cap} is in the effective set")),
        Ok(false) if on_behalf && !nix::unistd::geteuid().is_root() && granted() => (
            Outcome::Ok,
            format!(
                "{cap} is granted to the container (in the bounding set); this user is not \
                 root and does not hold it, tsinit as root does"
            ),
        ),
        Ok(false) => (missing, format!("{cap} is not in the effective set: {why}")),
        Err(e) => (missing, format!("cannot read the capability sets: {e}")),
    };
    let fix = (outcome != Outcome::Ok).then_some(fix);
    Check::new(name, outcome, detail, fix)
}

fn check_state_dir(dir: &Path, mountinfo: &str, hostname: &str) -> Check {
    let d = dir.display();
    let fail = |detail: String| {
        let fix = format!(
            "mount a writable volume at {d} (docker: -v tsinit-state:{d}; compose: a named volume)"
        );
        Check::new("state_dir", Outcome::Fail, detail, Some(fix))
    };
    let mut created = "";
    match fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => return fail(format!("{d} exists but is not a directory")),
        Ok(_) => {}
        Err(_) => {
            let mode = Permissions::from_mode(0o700);
            let made = fs::create_dir_all(dir).and_then(|()| fs::set_permissions(dir, mode));
            if let Err(e) = made {
                return fail(format!("{d} does not exist and cannot be created: {e}"));
            }
            created = " (created, mode 0700)";
        }
    }
    let probe = dir.join(format!(".tsinit-preflight-{}", std::process::id()));
    if let Err(e) = fs::write(&probe, "").and_then(|()| fs::remove_file(&probe)) {
        return fail(format!("{d} is not writable: {e}"));
    }
    let real = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = parse_mountinfo(mountinfo);
    let writable = format!("{d}: writable directory{created}");
    let Some(m) = mount_for(&mounts, &real) else {
        let detail = format!("{writable}; not found in mountinfo, persistence not checked");
        return Check::new("state_dir", Outcome::Ok, detail, None);
    };
    let (fs_type, mp) = (&m.fs_type, m.mount_point.display());
    let on = format!("{writable} on {fs_type} ({}) at {mp}", m.source);
    let volatile = matches!(m.fs_type.as_str(), "tmpfs" | "ramfs")
        || (m.fs_type == "overlay" && m.mount_point == Path::new("/"));
    if !volatile {
        return Check::new("state_dir", Outcome::Ok, on, None);
    }
    let lost = "state will be lost when the container is recreated";
    let detail = format!("{on}: {lost}; the node will re-register as '{hostname}-1'");
    let fix = Some(format!("mount a volume at {d}"));
    Check::new("state_dir", Outcome::Warn, detail, fix)
}

/// An explicit path, which must be an executable file, or else a search of `path_env`.
fn resolve(name: &str, explicit: Option<&Path>, path_env: &str) -> Result<PathBuf, Problem> {
    let set = format!("set tailscale.{name} to its path");
    let Some(path) = explicit else {
        let problem = format!("{name} is not in any directory of PATH ({path_env})");
        let fix = format!("install {name} in a directory on PATH (e.g. /usr/local/bin), or {set}");
        return find_in_path(name, path_env).ok_or((problem, fix));
    };
    let p = path.display();
    let (problem, fix) = match fs::metadata(path) {
        Ok(meta) if is_executable_file(&meta) => return Ok(path.to_path_buf()),
        Ok(meta) if meta.is_file() => (format!("{p} is not executable"), format!("chmod +x {p}")),
        Ok(_) => (format!("{name} at {p} is not a regular file"), set),
        Err(e) => (format!("{p}: {e}"), format!("install {name}, or {set}")),
    };
    Err((problem, fix))
}

type Resolved = Result<PathBuf, Problem>;

fn binaries(tailscaled: &Resolved, tailscale: &Resolved) -> Result<String, Problem> {
    if let (Ok(d), Ok(c)) = (tailscaled, tailscale) {
        let (d, c) = (d.display(), c.display());
        return Ok(format!("tailscaled: {d}, tailscale: {c}"));
    }
    let (problems, fixes): (Vec<&str>, Vec<&str>) = [tailscaled, tailscale]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
        .map(|(p, f)| (p.as_str(), f.as_str()))
        .unzip();
    Err((problems.join("; "), fixes.join("; ")))
}

fn is_executable_file(meta: &fs::Metadata) -> bool {
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

/// The first executable regular file called `name` in the `:`-separated `path_env`
/// (empty entries are skipped, not taken as the current directory).
pub fn find_in_path(name: &str, path_env: &str) -> Option<PathBuf> {
    let executable = |p: &PathBuf| fs::metadata(p).is_ok_and(|m| is_executable_file(&m));
    let dirs = path_env.split(':').filter(|dir| !dir.is_empty());
    dirs.map(|dir| Path::new(dir).join(name)).find(executable)
}

/// Parses /proc/self/mountinfo; lines that do not have the expected shape are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let parse = |line: &str| {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let mount_point = OsString::from_vec(unescape(fields.get(4)?));
        // The optional fields (shared:N, master:N) end at a lone "-".
        let sep = 6 + fields.get(6..)?.iter().position(|f| *f == "-")?;
        let text = |i: usize| Some(String::from_utf8_lossy(&unescape(fields.get(i)?)).into());
        Some(Mount {
            mount_point: mount_point.into(),
            fs_type: text(sep + 1)?,
            source: text(sep + 2)?,
        })
    };
    text.lines().filter_map(parse).collect()
}

/// Undoes mountinfo's octal escapes (`\040` is a space, `\134` a backslash).
fn unescape(field: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut rest = field.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        let (byte, next) = match (b, tail) {
            (b'\\', [x @ b'0'..=b'3', y @ b'0'..=b'7', z @ b'0'..=b'7', more @ ..]) => {
                ((x - b'0') * 64 + (y - b'0') * 8 + (z - b'0'), more)
            }
            _ => (b, tail),
        };
        out.push(byte);
        rest = next;
    }
    out
}

/// The mount holding `path` (absolute, symlinks resolved): the one whose mount point is the
/// longest whole-component prefix; of equal ones the last, as it hides the others.
pub fn mount_for<'m>(mounts: &'m [Mount], path: &Path) -> Option<&'m Mount> {
    let holding = mounts.iter().filter(|m| path.starts_with(&m.mount_point));
    holding.max_by_key(|m| m.mount_point.components().count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::{Fail, Warn};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let template = std::env::temp_dir().join("tsinit-preflight-XXXXXX");
            TempDir(nix::unistd::mkdtemp(&template).unwrap())
        }

        fn file(&self, name: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            fs::write(&path, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&path, Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const OVERLAY: &str = "1255 1180 0:310 / / rw,relatime master:1 - overlay overlay \
        rw,lowerdir=/var/lib/docker/overlay2/l/ABC:/var/lib/docker/overlay2/l/DEF,\
        upperdir=/var/lib/docker/overlay2/x/diff,workdir=/var/lib/docker/overlay2/x/work";
    const VOLUME: &str = "1270 1255 8:1 /var/lib/docker/volumes/tsinit-state/_data \
        /var/lib/tailscale rw,relatime - ext4 /dev/sda1 rw";
    const RUN: &str = "1260 1255 0:315 / /run rw,nosuid shared:4 master:2 - tmpfs tmpfs rw";
    const SPACE: &str = r"1280 1255 8:1 /home/My\040Files /data/My\040Files rw - ext4 /dev/sda1 rw";
    const ODD: &str = r"1281 1255 8:1 / /odd\134dir\777 rw - ext4 /dev/sd\040b rw";
    const EXT4: &str = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw";
    const TMPFS: &str = "27 1 0:30 / / rw,relatime - tmpfs tmpfs rw,size=65536k";
    const TAILS: &str = "1290 1255 8:17 / /var/lib/tails rw - xfs /dev/sdb1 rw";
    const RUN2: &str = "1291 1260 0:316 / /run rw - ramfs none rw";

    #[test]
    fn parses_mountinfo() {
        let cases = [
            (OVERLAY, "/", "overlay", "overlay"),
            (VOLUME, "/var/lib/tailscale", "ext4", "/dev/sda1"),
            (RUN, "/run", "tmpfs", "tmpfs"),
            (SPACE, "/data/My Files", "ext4", "/dev/sda1"),
            (ODD, r"/odd\dir\777", "ext4", "/dev/sd b"),
        ];
        for (line, mount_point, fs_type, source) in cases {
            let [m] = &parse_mountinfo(line)[..] else {
                panic!("not one mount: {line}");
            };
            assert_eq!(m.mount_point, Path::new(mount_point), "{line}");
            assert_eq!((m.fs_type.as_str(), m.source.as_str()), (fs_type, source));
        }
        for bad in ["garbage", "1 2 3:4 / /x rw no-dash ext4 src"] {
            assert_eq!(parse_mountinfo(bad), [], "{bad}");
        }
    }

    #[test]
    fn mount_for_picks_longest_component_prefix() {
        let text = [OVERLAY, TAILS, VOLUME, RUN, SPACE, RUN2].join("\n");
        let mounts = parse_mountinfo(&text);
        assert_eq!(mounts.len(), 6);
        let cases = [
            ("/var/lib/tailscale", "/var/lib/tailscale"),
            ("/var/lib/tailscale/state", "/var/lib/tailscale"),
            ("/var/lib/tailscale2", "/"),
            ("/var/lib/tails/x", "/var/lib/tails"),
            ("/var/lib", "/"),
            ("/data/My Files/x", "/data/My Files"),
            ("/run/x", "/run"),
        ];
        for (path, mount_point) in cases {
            let found = mount_for(&mounts, Path::new(path)).unwrap();
            assert_eq!(found.mount_point, Path::new(mount_point), "{path}");
        }
        let run = mount_for(&mounts, Path::new("/run")).map(|m| m.fs_type.as_str());
        assert_eq!(run, Some("ramfs"), "the later mount hides");
        assert_eq!(mount_for(&[], Path::new("/x")), None);
    }

    #[test]
    fn state_dir() {
        let tmp = TempDir::new();
        let file = tmp.file("file", 0o644);
        let (t, f) = (tmp.0.as_path(), file.as_path());
        let (fresh, under_file) = (t.join("a/b"), f.join("state"));
        let cases = [
            (t, EXT4, Outcome::Ok, "directory on ext4 (/dev/vda) at /"),
            (&fresh, EXT4, Outcome::Ok, "(created, mode 0700) on ext4"),
            (&under_file, EXT4, Fail, "cannot be created: Not a"),
            (f, EXT4, Fail, "exists but is not a directory"),
            (t, TMPFS, Warn, "will re-register as 'box-1'"),
            (t, OVERLAY, Warn, "on overlay (overlay) at /: state"),
            (t, "", Outcome::Ok, "persistence not checked"),
        ];
        for (dir, mountinfo, outcome, detail) in cases {
            let check = check_state_dir(dir, mountinfo, "box");
            assert_eq!(check.outcome, outcome, "{check:?}");
            assert!(check.detail.contains(detail), "{check:?}");
            let (d, fix) = (dir.display(), check.fix.clone().unwrap_or_default());
            match outcome {
                Outcome::Ok => assert_eq!(check.fix, None),
                Warn => assert_eq!(fix, format!("mount a volume at {d}")),
                Fail => assert!(fix.contains(&format!("at {d} (docker: -v tsinit-state:{d};"))),
            }
        }
        let mode = fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let left = fs::read_dir(t).unwrap().count();
        assert_eq!(left, 2, "probe file left behind");
    }

    #[test]
    fn tun_that_is_not_the_device_fails() {
        let tmp = TempDir::new();
        let cases = [
            (tmp.file("tun", 0o666), "is a regular file, not the TUN"),
            (tmp.0.clone(), "is a directory"),
            (tmp.0.join("missing"), "missing does not exist"),
            ("/dev/null".into(), "is character device 1:3, not"),
        ];
        for (path, detail) in cases {
            let check = verdict("tun", tun(&path, false));
            assert_eq!(check.outcome, Fail, "{check:?}");
            assert!(check.detail.contains(detail), "{check:?}");
            assert_eq!(check.fix.as_deref(), Some(TUN_FIX));
        }
        let device = "run the container with --device /dev/net/tun (compose: `devices: [";
        assert!(TUN_FIX.starts_with(device));
    }

    #[test]
    fn real_tun() {
        let path = Path::new(TUN_PATH);
        assert!(path.exists(), "this test needs {TUN_PATH} on the machine");
        let check = verdict("tun", tun(path, false));
        if nix::unistd::geteuid().is_root() {
            let want = "/dev/net/tun: character device 10:200, opens read-write";
            assert_eq!(check.detail, want, "as root, it must open: {check:?}");
            assert_eq!(check.outcome, Outcome::Ok);
        } else {
            let explained = check.outcome == Outcome::Ok || check.fix.is_some();
            assert!(explained, "not root, and no fix given: {check:?}");
        }
    }

    #[test]
    fn finds_executables_in_path() {
        let tmp = TempDir::new();
        let (tool, plain) = (tmp.file("tool", 0o755), tmp.file("plain", 0o644));
        fs::create_dir(tmp.0.join("dirx")).unwrap();
        let path_env = format!("/nonexistent::{}", tmp.0.display());
        assert_eq!(find_in_path("tool", &path_env), Some(tool.clone()));
        for name in ["plain", "dirx", "nope", ""] {
            assert_eq!(find_in_path(name, &path_env), None, "{name}");
        }
        assert_eq!(find_in_path("tool", ""), None);
        assert_eq!(resolve("tailscaled", Some(&tool), ""), Ok(tool.clone()));
        let (problem, fix) = resolve("tailscale", Some(&plain), "").unwrap_err();
        assert!(problem.ends_with("plain is not executable"), "{problem}");
        assert_eq!(fix, format!("chmod +x {}", plain.display()));
        let (problem, _) = resolve("x", Some(&tmp.0.join("nope")), "").unwrap_err();
        assert!(problem.ends_with("No such file or directory (os error 2)"));
    }

    #[test]
    fn report() {
        let tmp = TempDir::new();
        fs::create_dir(tmp.0.join("bin")).unwrap();
        let tailscaled = tmp.file("bin/tailscaled", 0o755);
        let (tun, state) = (tmp.file("tun", 0o666), tmp.0.join("state"));
        let path_env = tmp.0.join("bin").display().to_string();
        let report = run(&Inputs {
            tun_path: &tun,
            may_mknod: false,
            state_dir: &state,
            mountinfo: EXT4,
            hostname: "box",
            tailscaled: None,
            tailscale: None,
            path_env: &path_env,
            on_behalf: false,
        });
        let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
        let all = ["tun", "net_admin", "net_raw", "state_dir", "binaries"];
        assert_eq!(names, all);
        assert_eq!((report.kernel_ok, &report.tailscale), (false, &None));
        assert_eq!(report.tailscaled, Some(tailscaled));
        let (text, json) = (report.to_text(), report.to_json());
        for name in names {
            assert!(text.contains(&format!(" {name} ")), "{text}");
            assert!(json.contains(&format!("\"name\": \"{name}\"")), "{json}");
        }
        let verdict = "\nkernel networking: NOT available (userspace networking still works)\n";
        assert!(text.ends_with(verdict), "{text}");
        assert!(json.contains("\"outcome\": \"fail\""), "{json}");
        let problems = report.kernel_problems().unwrap();
        let has = |part: &str| problems.contains(part);
        assert!(has(&format!("(fix: {TUN_FIX})")), "{problems}");
        assert!(has("binaries: tailscale is not in"), "{problems}");
        assert!(!has("state_dir"), "{problems}");
    }

    #[test]
    fn text_layout() {
        let detail = "/dev/net/tun: character device 10:200, opens read-write";
        let fix = Some("--cap-add NET_RAW".to_string());
        let checks = vec![
            Check::new("tun", Outcome::Ok, detail.into(), None),
            Check::new("net_raw", Warn, "missing".into(), fix),
        ];
        let report = Report {
            checks,
            kernel_ok: true,
            tailscaled: None,
            tailscale: None,
        };
        let want = "  ok    tun        /dev/net/tun: character device 10:200, opens read-write\n\
                    \x20 warn  net_raw    missing\n\
                    \x20       fix: --cap-add NET_RAW\n\
                    kernel networking: available\n";
        assert_eq!(report.to_text(), want);
        assert_eq!(report.kernel_problems(), None);
    }
}
