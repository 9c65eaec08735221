//! The managed block of the hosts file: its parser and writer against arbitrary files
//! (property test), SIGKILL of a writer at random moments on a bind-mounted file, and the
//! block written from a real tailscaled's IPN bus.

mod common;

use std::collections::BTreeMap;
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
        for line in String::from_utf8(after.body.unwrap()).unwrap().lines() {
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
