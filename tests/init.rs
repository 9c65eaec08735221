//! The init contract, tested on the real binary as PID 1 of a fresh PID namespace and as a
//! subreaper: reaping, exit statuses, signal forwarding, inherited signal state, stopping
//! leftovers, stdio and cwd.

#![allow(unsafe_code)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Running, TempDir, alive, children_of, pid1, run, subreaper};

const TRAP_LOOP: &str = r#"
sleep 1000 & p=$!
echo ready
while kill -0 $p 2>/dev/null; do wait $p; done
"#;

#[test]
fn reaps_1000_orphans_as_pid1() {
    let mut cmd = pid1(&["-vv", "--", "sh", "-c"]);
    cmd.arg(
        "i=0; while [ $i -lt 1000 ]; do (true &); i=$((i+1)); done; echo made; exec sleep 1000",
    );
    let r = Running::start(cmd);
    r.wait_stdout("made");
    r.wait_output(true, Duration::from_secs(30), |e| {
        e.matches("reaped orphan").count() >= 1000
    });
    let tsinit = r.pid1_pid();
    let zombies: Vec<_> = children_of(tsinit)
        .into_iter()
        .filter(|&(_, s)| s == 'Z')
        .collect();
    assert!(zombies.is_empty(), "zombies left under tsinit: {zombies:?}");
    Running::kill(tsinit, libc::SIGTERM);
    let mut r = r;
    assert_eq!(r.code(), 128 + libc::SIGTERM);
}

#[test]
fn every_exit_code_passes_through() {
    for code in 0..=255 {
        let mut cmd = pid1(&["sh", "-c"]);
        cmd.arg(format!("exit {code}"));
        let (got, _, err) = run(cmd);
        assert_eq!(got, code, "stderr: {err}");
    }
}

#[test]
fn stop_signals_end_a_default_handler_workload_with_128_plus_n() {
    for sig in [
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ] {
        let mut cmd = pid1(&["sh", "-c", "echo ready; exec sleep 1000"]);
        cmd.stdin(Stdio::null());
        let mut r = Running::start(cmd);
        r.wait_stdout("ready");
        Running::kill(r.pid1_pid(), sig);
        assert_eq!(r.code(), 128 + sig, "signal {sig}; stderr: {}", r.stderr());
    }
}

/// Every signal 1-31 tsinit forwards, and real-time ones, reach a workload that traps it.
#[test]
fn every_forwardable_signal_reaches_a_trapping_workload() {
    let forwardable: Vec<i32> = vec![
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGALRM,
        libc::SIGTERM,
        libc::SIGSTKFLT,
        libc::SIGCONT,
        libc::SIGTSTP,
        libc::SIGURG,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGVTALRM,
        libc::SIGPROF,
        libc::SIGWINCH,
        libc::SIGIO,
        libc::SIGPWR,
        40,
        50,
        64,
    ];
    // The last signal's trap also ends the workload, so tsinit exits on its own.
    let last = forwardable[forwardable.len() - 1];
    let traps: String = forwardable
        .iter()
        .map(|&s| match s == last {
            false => format!("trap 'echo got {s}' {s}\n"),
            true => format!("trap 'echo got {s}; kill $p; exit 0' {s}\n"),
        })
        .collect();
    for mode in ["pid1", "subreaper"] {
        let script = format!("{traps}{TRAP_LOOP}");
        let args = ["--", "bash", "-c", script.as_str()];
        let mut r = Running::start(if mode == "pid1" {
            pid1(&args)
        } else {
            subreaper(&args)
        });
        r.wait_stdout("ready");
        let target = if mode == "pid1" { r.pid1_pid() } else { r.pid };
        for &sig in &forwardable {
            Running::kill(target, sig);
            r.wait_stdout(&format!("got {sig}\n"));
        }
        assert_eq!(r.code(), 0, "{mode}: {}", r.stderr());
    }
}

#[test]
fn group_target_reaches_the_whole_process_group() {
    let script = r#"
        trap 'echo parent got USR1' USR1
        bash -c 'trap "echo child got USR1; exit 0" USR1; echo child ready; sleep 1000 & wait $!' &
        wait  # returns early when the USR1 trap runs
        wait  # then waits for the child to finish its own trap
        exit 0
    "#;
    let mut cmd = pid1(&["--", "bash", "-c", script]);
    cmd.env("TSINIT_SIGNAL_TARGET", "group");
    let mut r = Running::start(cmd);
    r.wait_stdout("child ready");
    Running::kill(r.pid1_pid(), libc::SIGUSR1);
    r.wait_stdout("child got USR1");
    r.wait_stdout("parent got USR1");
    assert_eq!(r.code(), 0, "{}", r.stderr());
}

/// Sets dispositions and mask the way a parent might before starting tsinit.
fn with_signal_state(cmd: &mut Command, ignore: &'static [i32], block: &'static [i32]) {
    use std::os::unix::process::CommandExt;
    let setup = move || -> std::io::Result<()> {
        // SAFETY: runs between fork and exec and makes only async-signal-safe calls with
        // pointers to valid local values.
        unsafe {
            for sig in 1..=31 {
                if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                    continue;
                }
                let handler = if ignore.contains(&sig) {
                    libc::SIG_IGN
                } else {
                    libc::SIG_DFL
                };
                libc::signal(sig, handler);
            }
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &sig in block {
                libc::sigaddset(&mut set, sig);
            }
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        }
        Ok(())
    };
    // SAFETY: the closure is async-signal-safe (see above).
    unsafe {
        cmd.pre_exec(setup);
    }
}

fn sig_lines(out: &str) -> String {
    out.lines()
        .filter(|l| l.starts_with("SigBlk") || l.starts_with("SigIgn"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn child_gets_the_inherited_ignored_and_blocked_signals() {
    let show = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"];
    let cases: [(&[i32], &[i32], &str, &str); 2] = [
        (&[], &[], "0000000000000000", "0000000000000000"),
        (
            &[libc::SIGHUP, libc::SIGUSR1, libc::SIGPIPE, libc::SIGTTOU],
            &[libc::SIGUSR2, libc::SIGWINCH, libc::SIGTERM],
            "0000000008004800",
            "0000000000201201",
        ),
    ];
    for (ignore, block, want_blk, want_ign) in cases {
        // Control: the same program run without tsinit sees the state we set (signals
        // above 31, reserved by the C library, keep whatever the test runner had).
        let mut direct = Command::new(show[0]);
        direct.args(&show[1..]);
        with_signal_state(&mut direct, ignore, block);
        let (_, out, _) = run(direct);
        let want = sig_lines(&out);
        let low31 = |line: &str| u64::from_str_radix(&line[8..], 16).unwrap() & 0x7fff_ffff;
        let lines: Vec<&str> = want.lines().collect();
        assert_eq!(
            low31(lines[0]),
            u64::from_str_radix(want_blk, 16).unwrap(),
            "{want}"
        );
        assert_eq!(
            low31(lines[1]),
            u64::from_str_radix(want_ign, 16).unwrap(),
            "{want}"
        );

        let mut via_sub = subreaper(&show);
        with_signal_state(&mut via_sub, ignore, block);
        let (code, out, err) = run(via_sub);
        assert_eq!(
            (code, sig_lines(&out)),
            (0, want.clone()),
            "subreaper: {err}"
        );

        let mut via_pid1 = pid1(&show);
        with_signal_state(&mut via_pid1, ignore, block);
        let (code, out, err) = run(via_pid1);
        assert_eq!((code, sig_lines(&out)), (0, want), "pid1: {err}");
    }
}

#[test]
fn not_found_is_127_and_not_executable_is_126() {
    let dir = TempDir::new("exec");
    let plain = dir.write("plain-file", "echo hi\n");
    let (code, _, err) = run(pid1(&["no-such-program-anywhere"]));
    assert_eq!(code, 127, "{err}");
    assert!(
        err.contains("cannot run `no-such-program-anywhere`") && err.contains("not found in PATH"),
        "{err}"
    );
    let (code, _, err) = run(pid1(&[plain.to_str().unwrap()]));
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    let (code, _, err) = run(subreaper(&["/"]));
    assert_eq!(code, 126, "{err}");
}

#[test]
fn bad_config_exits_78_with_one_message_before_spawning_anything() {
    let dir = TempDir::new("badconfig");
    let config = dir.write("tsinit.toml", "signal_target = \"group\"\ngrace = \"5s\"\n");
    let marker = dir.path().join("spawned");
    let script = format!("touch {}", marker.display());
    for (args, env) in [
        (vec!["-c", config.to_str().unwrap()], None),
        (vec![], Some(("TSINIT_CONFIG", config.to_str().unwrap()))),
        (vec![], Some(("TSINIT_GRACE_PERIOD", "soon"))),
    ] {
        let mut full = args.clone();
        full.extend(["sh", "-c", &script]);
        let mut cmd = pid1(&full);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let (code, _, err) = run(cmd);
        assert_eq!(code, 78, "{err}");
        assert_eq!(err.lines().count(), 1, "exactly one line: {err}");
        let want = match env {
            Some(("TSINIT_GRACE_PERIOD", _)) => "tsinit: error: bad configuration: \
                TSINIT_GRACE_PERIOD=\"soon\": `soon` is not a duration"
                .to_string(),
            _ => format!(
                "tsinit: error: bad configuration: {}:2:1: unknown field `grace`, expected one of",
                config.display()
            ),
        };
        assert!(err.starts_with(&want), "{err}");
        assert!(!marker.exists(), "the workload must not have started");
    }
}

#[test]
fn no_program_prints_usage_and_fails() {
    let (code, out, err) = run(subreaper(&[]));
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(
        err.contains("no PROGRAM given") && err.contains("Usage: tsinit"),
        "{err}"
    );
    let (code, out, _) = run(subreaper(&["--help"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("Usage: tsinit"), "{out}");
    let (code, out, _) = run(subreaper(&["--version"]));
    assert_eq!(
        (code, out.trim()),
        (0, concat!("tsinit ", env!("CARGO_PKG_VERSION")))
    );
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Leftovers get SIGTERM; one that exits on it is done, one that ignores it is killed
/// after the grace period; tsinit exits with the workload's own status.
#[test]
fn leftovers_get_term_then_kill_after_the_grace_period() {
    let script = r#"
        bash -c 'trap "echo polite got TERM; exit 0" TERM; echo polite $$; sleep 1000 & wait $!' &
        bash -c 'trap "echo stubborn got TERM" TERM; echo stubborn $$; while :; do sleep 1000 & wait $!; done' &
        while [ "$(grep -c . "$OUT" 2>/dev/null)" != 2 ]; do :; done
        date +%s%N > "$OUT.exit"
        exit 3
    "#;
    for mode in ["pid1", "subreaper"] {
        let dir = TempDir::new(&format!("leftovers-{mode}"));
        let out = dir.path().join("pids");
        // The two daemons write their pids to $OUT as well as stdout, so the workload knows
        // when both are ready.
        let script = script.replace("echo polite $$", "echo polite $$ | tee -a \"$OUT\"");
        let script = script.replace("echo stubborn $$", "echo stubborn $$ | tee -a \"$OUT\"");
        let args = ["-v", "--", "bash", "-c", script.as_str()];
        let mut cmd = if mode == "pid1" {
            pid1(&args)
        } else {
            subreaper(&args)
        };
        cmd.env("OUT", &out).env("TSINIT_GRACE_PERIOD", "1s");
        let mut r = Running::start(cmd);
        let (_, exited_at) = r.wait_exit(Duration::from_secs(20));
        let exited_ns = now_ns() - exited_at.elapsed().as_nanos();
        let workload_exit: u128 = std::fs::read_to_string(format!("{}.exit", out.display()))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let stopping = Duration::from_nanos((exited_ns - workload_exit) as u64);
        assert_eq!(
            r.code(),
            3,
            "{mode}: workload's status; stderr: {}",
            r.stderr()
        );
        r.wait_stdout("polite got TERM");
        r.wait_stdout("stubborn got TERM");
        assert!(
            stopping >= Duration::from_secs(1) && stopping < Duration::from_secs(3),
            "{mode}: tsinit took {stopping:?} to stop leftovers with a 1s grace period"
        );
        let err = r.stderr();
        assert!(err.contains("sending SIGTERM to"), "{err}");
        assert!(
            err.contains("still running 1s after SIGTERM: sending SIGKILL"),
            "{err}"
        );
        if mode == "subreaper" {
            // Killed and reaped by tsinit, not reparented elsewhere.
            for line in std::fs::read_to_string(&out).unwrap().lines() {
                let pid: i32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
                assert!(!alive(pid), "{line} is still running");
            }
        }
    }
}

#[test]
fn exits_within_100ms_when_the_workload_exits_at_once() {
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let mut r = Running::start(pid1(&["true"]));
            assert_eq!(r.code(), 0);
            r.elapsed_to_exit()
        })
        .collect();
    times.sort();
    // The whole run includes creating the namespace; the median must still be quick.
    assert!(times[2] < Duration::from_millis(100), "{times:?}");
}

#[test]
fn escalates_only_when_configured() {
    let script = format!("trap 'echo got TERM' TERM; trap 'echo got USR1' USR1\n{TRAP_LOOP}");
    // Default: a TERM the workload ignores is not escalated.
    let mut r = Running::start(pid1(&["bash", "-c", &script]));
    r.wait_stdout("ready");
    let tsinit = r.pid1_pid();
    Running::kill(tsinit, libc::SIGTERM);
    r.wait_stdout("got TERM");
    Running::kill(tsinit, libc::SIGUSR1);
    r.wait_stdout("got USR1");
    Running::kill(tsinit, libc::SIGKILL);
    r.wait_exit(Duration::from_secs(10));

    // escalate_after: SIGKILL that long after the TERM.
    let mut cmd = pid1(&["bash", "-c", &script]);
    cmd.env("TSINIT_ESCALATE_AFTER", "300ms");
    let mut r = Running::start(cmd);
    r.wait_stdout("ready");
    let sent = Instant::now();
    Running::kill(r.pid1_pid(), libc::SIGTERM);
    assert_eq!(r.code(), 128 + libc::SIGKILL, "{}", r.stderr());
    let (_, at) = r.wait_exit(Duration::from_secs(1));
    assert!(at - sent >= Duration::from_millis(300), "{:?}", at - sent);
    assert!(
        r.stderr().contains("sending SIGKILL (escalate_after)"),
        "{}",
        r.stderr()
    );
}

#[test]
fn stdin_stdout_and_cwd_pass_through() {
    let dir = TempDir::new("stdio");
    let tag = common::Tag::new();
    let mut cmd = pid1(&["sh", "-c", "cat; pwd"]);
    tag.apply(&mut cmd);
    cmd.current_dir(dir.path()).stdin(Stdio::piped());
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello through tsinit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("hello through tsinit\n{}\n", dir.path().display())
    );
}

/// As a subreaper: orphans are reaped, leftovers stopped, and a process outside tsinit's
/// tree (here a sibling started by the test) is never signalled.
#[test]
fn subreaper_reaps_orphans_and_never_signals_outside_its_tree() {
    let tag = common::Tag::new();
    let mut bystander = Command::new("sleep");
    tag.apply(&mut bystander);
    let mut bystander = bystander.arg("1000").spawn().unwrap();
    let script = "i=0; while [ $i -lt 50 ]; do (true &); i=$((i+1)); done; \
                  (sleep 1000 &); echo made";
    let mut r = Running::start(subreaper(&["-vv", "sh", "-c", script]));
    assert_eq!(r.code(), 0, "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("running as a child subreaper"), "{err}");
    assert!(err.matches("reaped orphan").count() >= 50, "{err}");
    assert!(
        err.contains("sending SIGTERM to 1 remaining process(es)"),
        "{err}"
    );
    let still_running = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(still_running, "tsinit signalled a process outside its tree");
}

/// As PID 1 under a /proc that shows the parent namespace (`unshare` without
/// `--mount-proc`), tsinit must not act on the processes it lists there: leftovers are
/// signalled with kill(-1), which stays inside its own namespace.
#[test]
fn pid1_with_a_foreign_proc_stops_leftovers_but_nothing_outside() {
    common::require_root();
    let tag = common::Tag::new();
    let mut bystander = Command::new("sleep");
    tag.apply(&mut bystander);
    let mut bystander = bystander.arg("1000").spawn().unwrap();
    let script = r#"
        bash -c 'trap "echo leftover got TERM; exit 0" TERM; sleep 1000 & echo ready > "$OUT"; wait $!' &
        while [ ! -s "$OUT" ]; do :; done
        exit 4
    "#;
    let dir = TempDir::new("foreign-proc");
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--kill-child=SIGKILL"])
        .arg(common::tsinit_bin())
        .args(["-v", "--", "bash", "-c", script])
        .env("OUT", dir.path().join("ready"));
    let mut r = Running::start(cmd);
    assert_eq!(r.code(), 4, "{}", r.stderr());
    r.wait_stdout("leftover got TERM");
    let err = r.stderr();
    assert!(err.contains("/proc shows another PID namespace"), "{err}");
    let still_running = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(
        still_running,
        "tsinit signalled a process outside its namespace"
    );
}
