//! Deciding whether and how tailscaled runs, before anything starts: the binaries, the
//! preflight checks, kernel or userspace networking, the auth key, the state directory's
//! lock. Every problem here is the user's to fix and stops tsinit with one message.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use log::{debug, info, warn};

use crate::bringup::identity::{self, AuthKey, SecretArg};
use crate::bringup::plan::Desired;
use crate::config::{self, Config, Enabled, Networking};
use crate::error::Error;
use crate::preflight;
use crate::serve::apply::ServeSetup;

/// What tailscaled needs, decided before it starts.
pub struct Prepared {
    /// The state directory's lock, held until tsinit exits.
    pub lock: nix::fcntl::Flock<File>,
    pub tailscaled: PathBuf,
    pub tailscale: PathBuf,
    pub userspace: bool,
    /// "kernel", or "userspace" and why; `tsinit status` shows it.
    pub mode_note: String,
    pub desired: Desired,
    pub key: Option<AuthKey>,
    /// `--client-secret`/`--id-token` from the extra `up` arguments.
    pub secrets: Vec<SecretArg>,
    /// A client id or secret (OAuth, workload identity): the CLI mints a key at a login.
    pub mints: bool,
    pub serve: ServeSetup,
}

/// Decides whether and how tailscaled runs: finds the binaries, runs the preflight checks,
/// picks kernel or userspace networking, finds the auth key. `Ok(None)`: no tailscale,
/// tsinit is a plain init. Errors are for problems the user must fix first.
pub fn prepare(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
    service: bool,
) -> Result<Option<Prepared>, Error> {
    let t = &config.tailscale;
    if t.enabled == Enabled::No {
        debug!("tailscale.enabled = false: running as a plain init");
        return Ok(None);
    }
    if env("RELEASE_COMMAND").is_some_and(|v| !v.is_empty()) && t.enabled == Enabled::Auto {
        // Fly's release machines have no volumes: a login there would register a new
        // node on every deploy.
        info!("RELEASE_COMMAND is set (a release machine): not starting tailscale");
        return Ok(None);
    }
    let path_env = env("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string());
    let found = |configured: &Option<PathBuf>, name: &str| {
        configured
            .clone()
            .or_else(|| preflight::find_in_path(name, &path_env))
    };
    let configured = t.tailscaled.is_some() || t.tailscale.is_some();
    if t.enabled == Enabled::Auto
        && !configured
        && (found(&t.tailscaled, "tailscaled").is_none()
            || found(&t.tailscale, "tailscale").is_none())
    {
        // Checked before preflight, which would create the state dir or /dev/net/tun.
        info!("tailscaled not found in PATH: running as a plain init");
        return Ok(None);
    }
    let hostname = system_hostname();
    let may_mknod = config.networking != Networking::Userspace;
    let report = run_preflight(config, may_mknod, &path_env, &hostname, false);
    let (Some(tailscaled), Some(tailscale)) = (report.tailscaled.clone(), report.tailscale.clone())
    else {
        return Err(Error::Unavailable(format!(
            "tailscaled and tailscale are needed but not found ({}); install them, set \
             tailscale.tailscaled/tailscale.tailscale, or set tailscale.enabled = false",
            problems(&report, &["binaries"])
        )));
    };
    for check in &report.checks {
        match check.outcome {
            preflight::Outcome::Warn => warn!("{}{}", check.detail, fix_suffix(check)),
            preflight::Outcome::Ok => debug!("preflight {}: {}", check.name, check.detail),
            preflight::Outcome::Fail => debug!("preflight {} failed: {}", check.name, check.detail),
        }
    }
    if report
        .checks
        .iter()
        .any(|c| c.name == "state_dir" && c.outcome == preflight::Outcome::Fail)
    {
        return Err(Error::Unavailable(problems(&report, &["state_dir"])));
    }
    let kernel_problems = report.kernel_problems();
    let (userspace, mode_note) = match (config.networking, &kernel_problems) {
        (Networking::Userspace, _) => (true, "userspace (networking = \"userspace\")".to_string()),
        (_, None) => (false, "kernel".to_string()),
        (Networking::Kernel, Some(why)) => {
            return Err(Error::Unavailable(format!(
                "networking = \"kernel\" but this container cannot do kernel networking: {why}; \
                 or set networking = \"auto\" to fall back to userspace networking"
            )));
        }
        (Networking::Auto, Some(why)) => {
            userspace_banner(why, t);
            (
                true,
                format!("userspace (kernel networking unavailable: {why})"),
            )
        }
    };
    let desired = Desired::from_config(config, &identity::default_hostname(&hostname, env));
    // Those that matter only at a login (minting a key) need no word.
    let login_only = |a: &&String| {
        let name = a
            .trim_start_matches('-')
            .split('=')
            .next()
            .unwrap_or_default();
        !["client-id", "audience"].contains(&name)
    };
    let unread: Vec<&String> = desired.extra_up_args.iter().filter(login_only).collect();
    if !unread.is_empty() {
        let unread: Vec<&str> = unread.iter().map(|a| a.as_str()).collect();
        info!(
            "extra `tailscale up` arguments passed on as given at a login: {} (tsinit does \
             not read them, so later boots do not check them)",
            unread.join(" ")
        );
    }
    if !userspace {
        let (v4, v6) = forwarding_needed(&desired);
        ensure_forwarding(Path::new("/proc/sys/net"), v4, v6).map_err(Error::Unavailable)?;
    }
    let serve = ServeSetup::from_config(config)?;
    if desired.ssh && userspace {
        info!(
            "Tailscale SSH with userspace networking: tailscaled answers port 22 of the \
             node's tailnet addresses itself, so peers reach it as in kernel mode; programs \
             run in an SSH session reach other tailnet nodes only through the proxy \
             (ALL_PROXY), not directly"
        );
    }
    let extra_key = t.up_secrets.iter().rfind(|s| s.flag == "auth-key");
    let key = identity::auth_key(
        t.auth_key_file.as_deref(),
        env,
        extra_key,
        Path::new(identity::SECRET_FILE),
    )
    .map_err(|message| {
        Error::Config(config::ConfigError {
            origin: "auth key".to_string(),
            message,
        })
    })?;
    if let Some(key) = &key {
        identity::check_key(key, &desired).map_err(Error::Unavailable)?;
        if let Some(warning) = identity::ephemeral_warning(key) {
            warn!("{warning}");
        }
        debug!("auth key from {}", key.source);
    }
    let secrets = credential_secrets(&t.up_secrets)?;
    let client_id = t.extra_up_args.iter().find_map(|a| {
        let a = a.trim_start_matches('-');
        a.strip_prefix("client-id=")
    });
    let mints = client_id.is_some() || secrets.iter().any(|s| s.flag == "client-secret");
    if mints && desired.advertise_tags.is_empty() {
        return Err(Error::Unavailable(
            "a key minted from an OAuth client or a federated identity (client id, client \
             secret, ID token) needs tags: set TSINIT_TAILSCALE_ADVERTISE_TAGS or give \
             --advertise-tags in TS_EXTRA_ARGS, e.g. tag:container"
                .to_string(),
        ));
    }
    for s in secrets.iter().filter(|s| s.flag == "client-secret") {
        let key = AuthKey {
            key: s.value.clone(),
            source: "the client secret".to_string(),
        };
        if let Some(warning) = identity::ephemeral_warning(&key) {
            warn!("{warning}");
        }
    }
    if let Some(id) = client_id.filter(|id| identity::mints_ephemeral(id)) {
        warn!(
            "the client id {id} mints ephemeral nodes: control removes the node soon after \
             it goes offline, while its saved state says logged in; append \
             ?ephemeral=false&preauthorized=true to the client id for a node that stays"
        );
    }
    if config.hosts.enabled {
        check_hosts_path(&config.hosts.path)?;
    }
    let lock = lock_state_dir(&t.state_dir, &hostname, service)?;
    refuse_live_socket(&t.socket)?;
    Ok(Some(Prepared {
        lock,
        tailscaled,
        tailscale,
        secrets,
        mints,
        userspace,
        mode_note,
        desired,
        key,
        serve,
    }))
}

/// The secrets other than the auth key (a client secret, an ID token), with a `file:`
/// value read here: the CLI resolves `file:` itself, but it reads these from a memory
/// file, whose text it does not resolve again.
fn credential_secrets(all: &[SecretArg]) -> Result<Vec<SecretArg>, Error> {
    let mut out = Vec::new();
    for s in all.iter().filter(|s| s.flag != "auth-key") {
        let value = match s.value.strip_prefix("file:") {
            Some(path) => config::read_small_file(Path::new(path))
                .map_err(|e| {
                    Error::Config(config::ConfigError {
                        origin: format!("--{} file:{path}", s.flag),
                        message: format!("cannot read the file: {e}"),
                    })
                })?
                .trim()
                .to_string(),
            None => s.value.clone(),
        };
        out.push(SecretArg {
            flag: s.flag,
            value,
        });
    }
    Ok(out)
}

/// How the lock file says that its holder is a `tsinit run` (tailscale alone).
pub const SERVICE: &str = " (tsinit run)";

/// The file in the state directory that tsinit holds locked while it runs.
pub const LOCK_FILE: &str = "tsinit.lock";

/// Locks the state directory for this tsinit's lifetime: a second tsinit (a second
/// replica on the same volume, an old container still running) would otherwise start a
/// second tailscaled with the same node key. The lock file names its holder.
fn lock_state_dir(
    dir: &Path,
    hostname: &str,
    service: bool,
) -> Result<nix::fcntl::Flock<File>, Error> {
    use nix::fcntl::{Flock, FlockArg};
    let path = dir.join(LOCK_FILE);
    let failed = |e: &dyn std::fmt::Display| {
        Error::Unavailable(format!("cannot lock {}: {e}", path.display()))
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| failed(&crate::error::os_message(&e)))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            file.read_to_string(&mut holder).ok();
            let holder = holder.trim();
            return Err(Error::Unavailable(format!(
                "another tsinit/tailscaled uses {}: {}; stop it first, or give this one a \
                 state directory of its own (tailscale.state_dir, TS_STATE_DIR): two \
                 tailscaled on one state would share one node key",
                dir.display(),
                if holder.is_empty() {
                    "its pid is not known"
                } else {
                    holder
                }
            )));
        }
        Err((_, e)) => return Err(failed(&e)),
    };
    let role = if service { SERVICE } else { "" };
    let me = format!("pid {} in {hostname}{role}\n", std::process::id());
    let written = lock
        .set_len(0)
        .and_then(|()| lock.rewind())
        .and_then(|_| lock.write_all(me.as_bytes()));
    if let Err(e) = written {
        debug!("cannot note tsinit's pid in {}: {e}", path.display());
    }
    Ok(lock)
}

/// Refuses to start when a daemon answers on the LocalAPI socket already (one not
/// started by a tsinit, which would hold the lock): only a socket nobody answers on is
/// stale and may be removed.
pub(crate) fn refuse_live_socket(socket: &Path) -> Result<(), Error> {
    let is_socket = std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket());
    if is_socket && std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(Error::Unavailable(format!(
            "a tailscaled already answers on {}: stop it first, or give tsinit another \
             socket (tailscale.socket, TS_SOCKET)",
            socket.display()
        )));
    }
    Ok(())
}

/// Refuses a hosts file that is not a regular file (after symlinks): reading a FIFO
/// would block, a device has no block to keep. A missing file is only warned about later.
fn check_hosts_path(path: &Path) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_file() => Err(Error::Config(config::ConfigError {
            origin: format!("hosts.path = {:?}", path.display().to_string()),
            message: "it is not a regular file; point hosts.path (TSINIT_HOSTS_PATH) at the \
                      hosts file, or set hosts.enabled = false"
                .to_string(),
        })),
        _ => Ok(()),
    }
}

/// The preflight checks for `config` on this machine; `may_mknod`: create a missing
/// /dev/net/tun.
pub fn run_preflight(
    config: &Config,
    may_mknod: bool,
    path_env: &str,
    hostname: &str,
    on_behalf: bool,
) -> preflight::Report {
    let t = &config.tailscale;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    preflight::run(&preflight::Inputs {
        tun_path: Path::new(preflight::TUN_PATH),
        may_mknod,
        state_dir: &t.state_dir,
        mountinfo: &mountinfo,
        hostname,
        tailscaled: t.tailscaled.as_deref(),
        tailscale: t.tailscale.as_deref(),
        path_env,
        on_behalf,
    })
}

fn fix_suffix(check: &preflight::Check) -> String {
    check
        .fix
        .as_ref()
        .map(|f| format!(" (fix: {f})"))
        .unwrap_or_default()
}

fn problems(report: &preflight::Report, names: &[&str]) -> String {
    report
        .checks
        .iter()
        .filter(|c| names.contains(&c.name) && c.outcome == preflight::Outcome::Fail)
        .map(|c| format!("{}{}", c.detail, fix_suffix(c)))
        .collect::<Vec<_>>()
        .join("; ")
}

pub(crate) fn userspace_banner(why: &str, t: &config::Tailscale) {
    let rule = "-".repeat(72);
    warn!(
        "{rule}\n\
         tsinit: warning: kernel networking is not available here, so tailscaled runs in\n\
         tsinit: warning: USERSPACE networking mode. Why: {why}\n\
         tsinit: warning: The workload reaches the tailnet only through the SOCKS5 proxy\n\
         tsinit: warning: ALL_PROXY=socks5h://{} (set for it), and no tailscale0 exists.\n\
         tsinit: warning: For kernel mode, apply the fixes above; to choose userspace and\n\
         tsinit: warning: silence this, set networking = \"userspace\" (TSINIT_NETWORKING).\n\
         tsinit: warning: {rule}",
        t.socks5_server
    );
}

/// The container's hostname.
pub fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
/// Which IP families a subnet router or exit node with kernel networking forwards: the
/// families of the advertised routes, both for an exit node.
fn forwarding_needed(desired: &Desired) -> (bool, bool) {
    let routes = desired.advertise_routes.as_deref().unwrap_or_default();
    let exit = desired.flags.advertise_exit_node == Some(true);
    let v6 = |r: &String| r.contains(':');
    (
        exit || routes.iter().any(|r| !v6(r)),
        exit || routes.iter().any(v6),
    )
}

/// Turns on IPv4/IPv6 forwarding under `net` (/proc/sys/net) where it is needed and
/// off; an error says why it cannot and how to set it for the container.
fn ensure_forwarding(net: &Path, v4: bool, v6: bool) -> Result<(), String> {
    let wanted = [(v4, "ipv4/ip_forward"), (v6, "ipv6/conf/all/forwarding")];
    for (_, file) in wanted.iter().filter(|(on, _)| *on) {
        let path = net.join(file);
        let sysctl = format!("net.{}", file.replace('/', "."));
        let on = std::fs::read_to_string(&path).map(|v| v.trim() == "1");
        let result = match on {
            Ok(true) => Ok(()),
            Ok(false) => std::fs::write(&path, "1"),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => debug!("{sysctl} is 1"),
            Err(e) => {
                return Err(format!(
                    "the advertised routes or exit node need IP forwarding, and {sysctl} is \
                     off and cannot be turned on here ({}): set it for the container \
                     (docker run --sysctl {sysctl}=1, or `sysctls:` in Compose), or run it \
                     privileged",
                    crate::error::os_message(&e)
                ));
            }
        }
    }
    Ok(())
}

/// With the socket elsewhere, makes the tailscale CLI's default socket path a symlink
/// to it, if that path is free (or is such a link already, or one to nothing left by an
/// earlier run), so the CLI works without `--socket`. Returns the link it stands for.
pub fn link_socket(socket: &Path) -> Option<PathBuf> {
    link_at(Path::new(crate::config::CLI_SOCKET), socket)
}

/// [`link_socket`] with the link at `link`.
fn link_at(link: &Path, socket: &Path) -> Option<PathBuf> {
    let target = std::path::absolute(socket).unwrap_or_else(|_| socket.to_path_buf());
    let dir = |p: &Path| p.parent().and_then(|d| std::fs::canonicalize(d).ok());
    let same_dir = || dir(&target).is_some_and(|d| Some(d) == dir(link));
    if target == link || (target.file_name() == link.file_name() && same_dir()) {
        return None;
    }
    match std::fs::read_link(link) {
        Ok(to) if to == target => return Some(link.to_path_buf()),
        Ok(_) if !link.exists() => {
            std::fs::remove_file(link).ok();
        }
        _ if std::fs::symlink_metadata(link).is_err() => {}
        _ => {
            info!(
                "{} is taken: the tailscale CLI needs --socket={} here",
                link.display(),
                target.display()
            );
            return None;
        }
    }
    let made = match link.parent() {
        Some(d) => std::fs::create_dir_all(d),
        None => Ok(()),
    };
    match made.and_then(|()| std::os::unix::fs::symlink(&target, link)) {
        Ok(()) => {
            debug!("{} -> {}", link.display(), target.display());
            Some(link.to_path_buf())
        }
        Err(e) => {
            warn!(
                "cannot link {} to the socket ({}): the tailscale CLI needs --socket={} here",
                link.display(),
                crate::error::os_message(&e),
                target.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_socket_link_is_made_only_where_nothing_else_is() {
        let dir = std::env::temp_dir().join(format!("tsinit-link-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        let link = dir.join("var/run/tailscale/tailscaled.sock");
        let socket = dir.join("tmp/tailscaled.sock");
        // Free: made, with its directory.
        assert_eq!(link_at(&link, &socket), Some(link.clone()));
        assert_eq!(std::fs::read_link(&link).unwrap(), socket);
        // Already this link (a restart): kept.
        assert_eq!(link_at(&link, &socket), Some(link.clone()));
        // A link to nothing (an earlier run's, to another socket): replaced.
        let other = dir.join("tmp/other.sock");
        assert_eq!(link_at(&link, &other), Some(link.clone()));
        assert_eq!(std::fs::read_link(&link).unwrap(), other);
        // A link to something that exists, or a file: left alone.
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::write(&other, "").unwrap();
        assert_eq!(link_at(&link, &socket), None);
        assert_eq!(std::fs::read_link(&link).unwrap(), other);
        std::fs::remove_file(&link).unwrap();
        std::fs::write(&link, "mine").unwrap();
        assert_eq!(link_at(&link, &socket), None);
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "mine");
        // The socket is at that path already (also through a linked directory): nothing.
        assert_eq!(link_at(&link, &link), None);
        std::os::unix::fs::symlink(dir.join("var/run"), dir.join("run")).unwrap();
        assert_eq!(
            link_at(&link, &dir.join("run/tailscale/tailscaled.sock")),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use super::*;

    #[test]
    fn forwarding_follows_the_routes_families_and_the_exit_node() {
        let with = |extra: &str| {
            let env = |k: &str| (k == "TS_EXTRA_ARGS").then(|| extra.to_string());
            let config = crate::config::from_text("test", "", &env).unwrap();
            forwarding_needed(&Desired::from_config(&config, "h"))
        };
        assert_eq!(with(""), (false, false));
        assert_eq!(with("--advertise-routes=10.0.0.0/8"), (true, false));
        assert_eq!(with("--advertise-routes=fd00::/64"), (false, true));
        assert_eq!(with("--advertise-exit-node"), (true, true));
        assert_eq!(with("--advertise-routes="), (false, false));
    }

    #[test]
    fn forwarding_is_turned_on_or_explained() {
        let dir = std::env::temp_dir().join(format!("tsinit-fwd-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ipv4")).unwrap();
        let v4 = dir.join("ipv4/ip_forward");
        std::fs::write(&v4, "0\n").unwrap();
        ensure_forwarding(&dir, true, false).unwrap();
        assert_eq!(std::fs::read_to_string(&v4).unwrap(), "1");
        // Not there (IPv6 off, or no /proc/sys): what to set, and how.
        let err = ensure_forwarding(&dir, true, true).unwrap_err();
        assert!(
            err.contains("net.ipv6.conf.all.forwarding is off and cannot be turned on")
                && err.contains("--sysctl net.ipv6.conf.all.forwarding=1"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
