//! The managed block of the hosts file: its parser and writer against arbitrary files
//! (property test), SIGKILL of a writer at random moments on a bind-mounted file, and the
//! block written from a real tailscaled's IPN bus.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use tsinit::hosts::{self, HostsFile, Options, apply, split};
use tsinit::localapi::{PeerStatus, Status};

const OPTS: Options = Options {
    ipv6: true,
    short_names: true,
    online_only: false,
};

fn status(peers: &[(String, Vec<String>)]) -> Status {
    let mut peer = BTreeMap::new();
    for (i, (name, ips)) in peers.iter().enumerate() {
        peer.insert(
            format!("nodekey:{i}"),
            PeerStatus {
                dns_name: name.clone(),
                tailscale_ips: ips.clone(),
                online: i % 2 == 0,
                ..PeerStatus::default()
            },
        );
    }
    Status {
        backend_state: "Running".to_string(),
        magic_dns_suffix: "tail.example".to_string(),
        peer,
        ..Status::default()
    }
}

fn line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..40),
        1 => Just(b"# BEGIN tsinit managed block (old)".to_vec()),
        1 => Just(b"# END tsinit managed block".to_vec()),
        1 => Just(b"127.0.0.1 localhost".to_vec()),
        1 => Just(Vec::new()),
    ]
}

fn file() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(
            (line(), prop_oneof![Just(&b"\n"[..]), Just(&b"\r\n"[..])]),
            0..12,
        ),
        any::<bool>(),
    )
        .prop_map(|(lines, trailing)| {
            let mut out = Vec::new();
            for (l, end) in lines {
                out.extend(l.iter().copied().filter(|&b| b != b'\n'));
                out.extend_from_slice(end);
            }
            if !trailing && out.ends_with(b"\n") {
                out.pop();
            }
            out
        })
}

fn peers() -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
    let name = prop_oneof![
        "[a-z][a-z0-9-]{0,10}\\.tail\\.example\\.",
        ".{0,30}",
        "[a-z]{1,5}\\.tail\\.example\\.\n100\\.64\\.0\\.9 injected",
    ];
    let ip = prop_oneof![
        (64u8..128, any::<u8>(), any::<u8>()).prop_map(|(b, c, d)| format!("100.{b}.{c}.{d}")),
        "fd7a:115c:a1e0::[0-9a-f]{1,4}",
        ".{0,20}",
    ];
    proptest::collection::vec((name, proptest::collection::vec(ip, 0..3)), 0..8)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Whatever the file holds and whatever names arrive, everything outside the block is
    /// kept exactly, the result has exactly one block, and only valid lines are in it.
    #[test]
    fn outside_bytes_survive_and_one_valid_block_results(content in file(), peers in peers()) {
        let block = hosts::render(&hosts::entries(&status(&peers), OPTS), SystemTime::now());
        let out = apply(&content, &block);
        let before = split(&content);
        let after = split(&out);
        prop_assert_eq!(&after.outside, &before.outside);
        prop_assert_eq!(after.blocks, 1);
        prop_assert_eq!(apply(&out, &block), out.clone());
        for line in std::str::from_utf8(&out[after.body.unwrap()]).unwrap().lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            prop_assert!(fields.len() == 2 || fields.len() == 3, "{line:?}");
            let ip: std::net::IpAddr = fields[0].parse().unwrap();
            prop_assert!(hosts::tailscale_ip(&ip));
            for name in &fields[1..] {
                let valid = hosts::dns_name(name);
                prop_assert_eq!(valid.as_deref(), Some(*name));
            }
        }
    }
}

/// The writer process for the SIGKILL test: rewrites the block of $TSINIT_HOSTS_WRITER
/// (bind-mounted, so in place) with blocks of changing size until it is killed.
#[test]
#[ignore = "helper process for kill_9_of_a_writer_never_damages_the_rest_of_the_file"]
fn hosts_writer_process() {
    let path = std::env::var("TSINIT_HOSTS_WRITER").expect("TSINIT_HOSTS_WRITER");
    let mut file = HostsFile::new(Path::new(&path));
    let mut n = 0usize;
    loop {
        n += 1;
        let peers: Vec<(String, Vec<String>)> = (0..n % 40)
            .map(|i| {
                (
                    format!("peer{i}-{n}.tail.example."),
                    vec![format!("100.64.{}.{}", i, n % 250)],
                )
            })
            .collect();
        let block = hosts::render(&hosts::entries(&status(&peers), OPTS), SystemTime::now());
        file.write(&block).expect("write");
    }
}

#[test]
fn kill_9_of_a_writer_never_damages_the_rest_of_the_file() {
    common::require_root();
    let dir = common::TempDir::new("kill9");
    let outside =
        b"127.0.0.1 localhost\r\n::1 ip6-localhost\n# a comment \xff\n10.0.0.7 docker-host"
            .to_vec();
    let real = dir.path().join("real-hosts");
    let mounted = dir.path().join("etc-hosts");
    std::fs::write(&real, &outside).unwrap();
    std::fs::write(&mounted, b"").unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut with_block, mut partial) = (0, 0);
    for round in 0..1000 {
        let tag = common::Tag::new();
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$REAL\" \"$MOUNTED\" && exec \"$EXE\" --ignored --exact hosts_writer_process --quiet")
            .env("REAL", &real)
            .env("MOUNTED", &mounted)
            .env("EXE", &exe)
            .env("TSINIT_HOSTS_WRITER", &mounted)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        tag.apply(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        // The moment of the kill is what is random here: anywhere from before the
        // first write to deep in a run of rewrites.
        std::thread::sleep(Duration::from_micros(random() % 20_000));
        child.kill().unwrap();
        child.wait().unwrap();
        let content = std::fs::read(&real).unwrap();
        let s = split(&content);
        assert_eq!(
            s.outside, outside,
            "round {round}: bytes outside the block changed"
        );
        assert!(s.blocks <= 1, "round {round}: {} blocks", s.blocks);
        if s.blocks == 1 {
            with_block += 1;
            if !content.ends_with(b"# END tsinit managed block\n") {
                partial += 1;
            }
        }
    }
    // The kills did land while writing: most rounds wrote, and some were cut mid-block.
    assert!(with_block > 500, "only {with_block} rounds wrote a block");
    eprintln!("1000 kills: {with_block} with a block, {partial} cut in the middle of one");
}

/// A block listing `n` peers (so blocks of different lengths: the block grows and shrinks).
fn block_of(n: usize) -> String {
    let peers: Vec<(String, Vec<String>)> = (0..n)
        .map(|i| {
            (
                format!("peer{i}.tail.example."),
                vec![format!("100.64.1.{i}"), format!("fd7a:115c:a1e0::{i:x}")],
            )
        })
        .collect();
    hosts::render(&hosts::entries(&status(&peers), OPTS), SystemTime::now())
}

/// Appends 2 000 numbered lines to `path` one at a time (open, write, close, as
/// `echo ... >> /etc/hosts` does) while `file` rewrites its block with growing and
/// shrinking blocks; then checks that every line is outside the block exactly once.
/// (writes, lines lost, lines doubled).
fn appends_race_writes(mut file: HostsFile, path: &Path) -> (usize, usize, usize) {
    const LINES: usize = 2000;
    let line = |i: usize| format!("10.9.{}.{} appended-{i}", i / 250, i % 250);
    let appender = {
        let path = path.to_path_buf();
        std::thread::spawn(move || {
            for i in 0..LINES {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                // One write() per line, as `echo` does (writeln! would make two).
                f.write_all(format!("{}\n", line(i)).as_bytes()).unwrap();
                drop(f);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let mut writes = 0;
    while !appender.is_finished() {
        writes += 1;
        file.write(&block_of(writes % 23)).expect("write");
    }
    appender.join().unwrap();
    file.write(&block_of(3)).expect("write");
    let content = std::fs::read(path).unwrap();
    let s = split(&content);
    assert_eq!(s.blocks, 1);
    assert_eq!(s.first_block, s.outside.len(), "the block is last");
    let outside = String::from_utf8(s.outside).unwrap();
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for l in outside.lines() {
        *count.entry(l).or_default() += 1;
    }
    let (mut lost, mut doubled) = (0, 0);
    for i in 0..LINES {
        match count.get(line(i).as_str()).copied().unwrap_or(0) {
            0 => {
                lost += 1;
                eprintln!("lost: {}", line(i));
            }
            1 => {}
            _ => doubled += 1,
        }
    }
    assert_eq!(count.get("127.0.0.1 localhost"), Some(&1));
    (writes, lost, doubled)
}

#[test]
fn lines_others_append_while_the_block_is_written_are_never_lost() {
    for in_place in [false, true] {
        let dir = common::TempDir::new("append-race");
        let path = dir.write("hosts", "127.0.0.1 localhost\n");
        let file = if in_place {
            HostsFile::in_place(&path)
        } else {
            HostsFile::new(&path)
        };
        let (writes, lost, doubled) = appends_race_writes(file, &path);
        eprintln!("in place: {in_place}: {writes} writes, {lost} lines lost, {doubled} doubled");
        assert!(writes > 20, "the writes raced the appends: {writes}");
        assert_eq!((lost, doubled), (0, 0), "in place: {in_place}");
    }
}

/// The helper process for tests that mount (it runs in a mount namespace of its own,
/// see [`in_mount_namespace`]): the case in $TSINIT_HOSTS_CASE on $TSINIT_HOSTS_DIR.
#[test]
#[ignore = "helper process for tests that mount"]
fn hosts_mount_namespace_helper() {
    let dir = std::path::PathBuf::from(std::env::var("TSINIT_HOSTS_DIR").expect("dir"));
    match std::env::var("TSINIT_HOSTS_CASE").expect("case").as_str() {
        "full" => full_filesystem(&dir),
        "ro-link" => link_in_a_read_only_directory(&dir),
        other => panic!("no case {other}"),
    }
}

/// Runs the helper's `case` after `script` (mounts, with $DIR the test's directory) in
/// a mount namespace of its own; panics with its output unless it succeeds.
fn in_mount_namespace(case: &str, dir: &Path, script: &str) {
    common::require_root();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "set -e; {script}; exec \"$EXE\" --ignored --exact hosts_mount_namespace_helper --nocapture"
        ))
        .env("DIR", dir)
        .env("EXE", std::env::current_exe().unwrap())
        .env("TSINIT_HOSTS_DIR", dir)
        .env("TSINIT_HOSTS_CASE", case)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{case}: {text}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_full_filesystem_never_leaves_half_a_block() {
    let dir = common::TempDir::new("full");
    in_mount_namespace(
        "full",
        dir.path(),
        "mount -t tmpfs -o size=64k tsinit-full \"$DIR\"",
    );
}

/// On a 64 KiB tmpfs: a hosts file just under a page long, the rest of the space taken.
fn full_filesystem(dir: &Path) {
    let path = dir.join("hosts");
    let small = block_of(2);
    let mut outside = b"127.0.0.1 localhost\n# filler ".to_vec();
    outside.extend(std::iter::repeat_n(
        b'x',
        3950 - small.len() - outside.len(),
    ));
    outside.push(b'\n');
    std::fs::write(&path, &outside).unwrap();
    HostsFile::in_place(&path).write(&small).unwrap();
    let before = std::fs::read(&path).unwrap();
    assert!(before.len() < 4000, "{}", before.len());
    let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = [b'.'; 512];
    while filler.write_all(&chunk).is_ok() {}
    filler.sync_all().ok();

    let big = block_of(20);
    for in_place in [true, false] {
        let mut file = if in_place {
            HostsFile::in_place(&path)
        } else {
            HostsFile::new(&path)
        };
        let err = file.write(&big).expect_err("no space left");
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ENOSPC),
            "in place {in_place}: {err}"
        );
        let after = std::fs::read(&path).unwrap();
        assert!(
            after == before,
            "in place {in_place}: the file changed:\n{}",
            String::from_utf8_lossy(&after)
        );
        assert!(after.ends_with(b"# END tsinit managed block\n"));
        let left: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("tsinit"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
    // With space again, the same write goes through.
    drop(filler);
    std::fs::remove_file(dir.join("filler")).unwrap();
    HostsFile::in_place(&path).write(&big).unwrap();
    let content = std::fs::read(&path).unwrap();
    assert_eq!(split(&content).outside, outside);
    assert!(content.ends_with(b"# END tsinit managed block\n"));
    eprintln!(
        "full filesystem: the {}-byte file left unchanged; with space it grew to {} bytes",
        before.len(),
        content.len()
    );
}

#[test]
fn a_stale_temporary_file_or_link_does_not_block_writes() {
    let dir = common::TempDir::new("stale-tmp");
    let path = dir.write("hosts", "127.0.0.1 localhost\n");
    let tmp = dir
        .path()
        .join(format!(".hosts.tsinit-{}", std::process::id()));
    // Left by a killed run (same pid: PID 1 in every container start).
    std::fs::write(&tmp, "half a file").unwrap();
    let mut file = HostsFile::new(&path);
    file.write(&block_of(1))
        .expect("write over a stale temporary file");
    assert!(!tmp.exists());
    // A link planted at the name is removed, never followed.
    let victim = dir.write("victim", "untouched\n");
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    file.write(&block_of(2)).expect("write over a planted link");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
    assert!(std::fs::symlink_metadata(&tmp).is_err(), "the link is gone");
    let content = std::fs::read(&path).unwrap();
    assert_eq!(split(&content).outside, b"127.0.0.1 localhost\n");
    assert!(String::from_utf8_lossy(&content).contains(" peer1.tail.example peer1\n"));
}

#[test]
fn a_symlinked_hosts_file_is_written_through_the_link_which_stays() {
    let dir = common::TempDir::new("symlink");
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    let target = dir.write("run/hosts", "127.0.0.1 localhost\n");
    let link = dir.path().join("etc/hosts");
    std::os::unix::fs::symlink("../run/hosts", &link).unwrap();
    let mut file = HostsFile::new(&link);
    assert_eq!(file.write(&block_of(1)).unwrap(), hosts::Written::Replaced);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    let content = std::fs::read_to_string(&target).unwrap();
    assert!(content.contains(" peer0.tail.example peer0\n"), "{content}");
    let names = |d: &str| -> Vec<String> {
        std::fs::read_dir(dir.path().join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        (names("etc"), names("run")),
        (vec!["hosts".into()], vec!["hosts".into()])
    );
}

#[test]
fn a_link_in_a_read_only_directory_is_written_through() {
    let dir = common::TempDir::new("ro-link");
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    dir.write("run/hosts", "127.0.0.1 localhost\n");
    std::os::unix::fs::symlink(dir.path().join("run/hosts"), dir.path().join("etc/hosts")).unwrap();
    in_mount_namespace(
        "ro-link",
        dir.path(),
        "mount --bind \"$DIR/etc\" \"$DIR/etc\"; mount -o remount,bind,ro \"$DIR/etc\"",
    );
}

fn link_in_a_read_only_directory(dir: &Path) {
    let link = dir.join("etc/hosts");
    assert!(
        std::fs::write(dir.join("etc/probe"), "").is_err(),
        "etc is read-only"
    );
    let mut file = HostsFile::new(&link);
    assert_eq!(file.write(&block_of(1)).unwrap(), hosts::Written::Replaced);
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    let content = std::fs::read_to_string(dir.join("run/hosts")).unwrap();
    assert!(
        content.starts_with("127.0.0.1 localhost\n\n# BEGIN"),
        "{content}"
    );
    assert!(content.contains(" peer0.tail.example peer0\n"), "{content}");
}

/// Makes a directory immutable (root cannot create files in it either) until dropped.
struct Immutable<'a>(&'a Path);

impl<'a> Immutable<'a> {
    fn new(dir: &'a Path) -> Immutable<'a> {
        let ok = Command::new("chattr").arg("+i").arg(dir).status().unwrap();
        assert!(ok.success(), "chattr +i {}", dir.display());
        Immutable(dir)
    }
}

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        Command::new("chattr").arg("-i").arg(self.0).status().ok();
    }
}

#[test]
fn a_file_in_a_directory_that_is_not_writable_is_written_in_place() {
    common::require_root();
    let dir = common::TempDir::new("immutable-dir");
    let sub = dir.path().join("etc");
    std::fs::create_dir_all(&sub).unwrap();
    let path = sub.join("hosts");
    std::fs::write(&path, "127.0.0.1 localhost\n").unwrap();
    let _immutable = Immutable::new(&sub);
    assert!(
        std::fs::write(sub.join("probe"), "").is_err(),
        "etc is not writable"
    );
    let mut file = HostsFile::new(&path);
    assert_eq!(file.write(&block_of(1)).unwrap(), hosts::Written::InPlace);
    assert_eq!(file.write(&block_of(4)).unwrap(), hosts::Written::InPlace);
    let content = std::fs::read(&path).unwrap();
    assert_eq!(split(&content).outside, b"127.0.0.1 localhost\n");
    assert!(String::from_utf8_lossy(&content).contains(" peer3.tail.example peer3\n"));
}

#[test]
fn a_fifo_or_other_special_file_is_refused_without_blocking() {
    let dir = common::TempDir::new("fifo");
    let fifo = dir.path().join("hosts");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    for path in [fifo, link, std::path::PathBuf::from("/dev/null")] {
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            tx.send(
                HostsFile::new(&p)
                    .write(&block_of(1))
                    .map_err(|e| e.to_string()),
            )
            .ok();
        });
        let result = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("writing {} blocked", path.display()));
        let err = result.expect_err("refused");
        assert!(
            err.contains("not a regular file"),
            "{}: {err}",
            path.display()
        );
    }
}

/// A writer that opened the file, then stalled while tsinit rewrote the block several
/// times (by rename), still gets its line into the file: replaced files are watched for
/// a while, not only until the next write.
#[test]
fn a_line_from_a_writer_stalled_across_several_renames_is_kept() {
    let dir = common::TempDir::new("stalled-writer");
    let path = dir.write("hosts", "127.0.0.1 localhost\n");
    let mut file = HostsFile::new(&path);
    file.write(&block_of(1)).expect("write");
    let mut stalled = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    for n in 2..5 {
        file.write(&block_of(n)).expect("write");
    }
    stalled.write_all(b"10.9.9.9 late-writer\n").unwrap();
    drop(stalled);
    file.write(&block_of(5)).expect("write");
    let content = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(content.matches("late-writer").count(), 1, "{content}");
    let s = split(content.as_bytes());
    assert_eq!((s.blocks, s.first_block), (1, s.outside.len()), "{content}");
}
