//! The command line: `tsinit [OPTIONS] [--] PROGRAM [ARGS...]`, plus reserved subcommands.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

pub const USAGE: &str = "\
Usage: tsinit [OPTIONS] [--] PROGRAM [ARGS...]
       tsinit run [OPTIONS]
       tsinit up [--wait[=DURATION]] [-c PATH]
       tsinit down [-c PATH]
       tsinit shellenv [-c PATH]
       tsinit preflight [--json] [-c PATH]
       tsinit status [-c PATH]

Runs PROGRAM as the workload of a container: starts tailscaled and brings the node up
(if tailscale is installed), forwards signals to the workload, reaps zombies, stops
whatever is left when it exits, and exits with its status.

`tsinit run` does the same for tailscale alone, with no workload, until a signal stops
it (a service of another init or supervisor; exit 0). Where nothing can run it, `tsinit
up` starts it in the background once (`--wait`: until the node is up), `tsinit down`
stops it, and `eval \"$(tsinit shellenv)\"` gives a shell the socket and proxy settings.

`tsinit preflight` checks whether this container can do kernel networking (exit 0 if
so); `tsinit status` shows the node's state (exit 0 only when it is Running).

Options:
  -c, --config PATH   configuration file (default: $TSINIT_CONFIG, else
                      /etc/tsinit/tsinit.toml if it exists, else built-in defaults)
  -v, --verbose       more logging (-vv for trace); default level from $TSINIT_LOG
  -h, --help          print this help
  -V, --version       print the version
  --                  end of options (needed only if PROGRAM starts with '-')
";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Run(RunArgs),
    Help,
    Version,
    /// A first-word subcommand (`preflight`, `status`) and the arguments after it.
    Subcommand(String, Vec<OsString>),
}

#[derive(Debug, PartialEq, Eq)]
pub struct RunArgs {
    pub config: Option<PathBuf>,
    pub verbosity: u8,
    /// PROGRAM and its arguments; empty for `tsinit run` (tailscale alone).
    pub program: Vec<OsString>,
}

/// Subcommands recognised as the first word; to run a program of that name, use `--`.
pub const SUBCOMMANDS: [&str; 5] = ["preflight", "status", "up", "down", "shellenv"];

/// A command line tsinit cannot use, with the message to print.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

/// Parses `args` (without argv[0]). Options end at `--` or at the first word that is not
/// an option, which is PROGRAM.
pub fn parse(args: &[OsString]) -> Result<Invocation, UsageError> {
    if let Some(first) = args.first().and_then(|a| a.to_str())
        && SUBCOMMANDS.contains(&first)
    {
        return Ok(Invocation::Subcommand(
            first.to_string(),
            args[1..].to_vec(),
        ));
    }
    // `tsinit run [OPTIONS]`: tailscaled alone, no workload.
    let service = args.first().is_some_and(|a| a == "run");
    let args = args.get(usize::from(service)..).unwrap_or_default();
    let mut config = None;
    let mut verbosity = 0u8;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_bytes();
        i += 1;
        match arg {
            b"--" => break,
            b"-h" | b"--help" => return Ok(Invocation::Help),
            b"-V" | b"--version" => return Ok(Invocation::Version),
            b"--verbose" => verbosity = verbosity.saturating_add(1),
            b"-c" | b"--config" => {
                let Some(path) = args.get(i) else {
                    return Err(UsageError(format!(
                        "option `{}` needs a file path after it",
                        String::from_utf8_lossy(arg)
                    )));
                };
                config = Some(PathBuf::from(path));
                i += 1;
            }
            _ if arg.starts_with(b"--config=") => {
                config = Some(PathBuf::from(OsStr::from_bytes(&arg[9..])));
            }
            _ if arg.starts_with(b"-c") => {
                config = Some(PathBuf::from(OsStr::from_bytes(&arg[2..])));
            }
            _ if arg.len() > 1 && arg.starts_with(b"-") && arg[1..].iter().all(|&b| b == b'v') => {
                verbosity = verbosity.saturating_add((arg.len() - 1) as u8);
            }
            _ if arg.starts_with(b"-") && arg.len() > 1 => {
                return Err(UsageError(format!(
                    "unknown option `{}`; to run a program whose name starts with '-', \
                     put `--` before it",
                    String::from_utf8_lossy(arg)
                )));
            }
            _ => {
                i -= 1;
                break;
            }
        }
    }
    let program = args[i..].to_vec();
    match (service, program.is_empty()) {
        (false, true) => {
            return Err(UsageError(
                "no PROGRAM given: tell tsinit what to run (or `tsinit run` to run tailscale \
                 alone)"
                    .to_string(),
            ));
        }
        (true, false) => {
            return Err(UsageError(
                "`tsinit run` runs tailscale alone and takes no PROGRAM; to run a program \
                 called run, write `tsinit -- run`"
                    .to_string(),
            ));
        }
        _ => {}
    }
    Ok(Invocation::Run(RunArgs {
        config,
        verbosity,
        program,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn run(config: Option<&str>, verbosity: u8, program: &[&str]) -> Invocation {
        Invocation::Run(RunArgs {
            config: config.map(PathBuf::from),
            verbosity,
            program: args(program),
        })
    }

    #[test]
    fn parses() {
        let cases: Vec<(&[&str], Invocation)> = vec![
            (&["sh", "-c", "x"], run(None, 0, &["sh", "-c", "x"])),
            (&["--", "sh", "-v"], run(None, 0, &["sh", "-v"])),
            (&["--", "-weird"], run(None, 0, &["-weird"])),
            (&["-v", "ls", "-v"], run(None, 1, &["ls", "-v"])),
            (&["-vv", "--verbose", "ls"], run(None, 3, &["ls"])),
            (&["-c", "/a.toml", "ls"], run(Some("/a.toml"), 0, &["ls"])),
            (&["-c/a.toml", "ls"], run(Some("/a.toml"), 0, &["ls"])),
            (&["--config", "/a", "--", "ls"], run(Some("/a"), 0, &["ls"])),
            (&["--config=/a", "ls"], run(Some("/a"), 0, &["ls"])),
            (&["-h"], Invocation::Help),
            (&["-v", "--help", "ls"], Invocation::Help),
            (&["--version"], Invocation::Version),
            (&["-V"], Invocation::Version),
            (&["status"], Invocation::Subcommand("status".into(), vec![])),
            (
                &["preflight", "--json"],
                Invocation::Subcommand("preflight".into(), args(&["--json"])),
            ),
            (&["--", "status"], run(None, 0, &["status"])),
            (&["-v", "status"], run(None, 1, &["status"])),
            (&["--", "--"], run(None, 0, &["--"])),
            // `tsinit run`: tailscale alone (an empty PROGRAM).
            (&["run"], run(None, 0, &[])),
            (&["run", "-v", "-c", "/a"], run(Some("/a"), 1, &[])),
            (&["--", "run"], run(None, 0, &["run"])),
            (&["-v", "run"], run(None, 1, &["run"])),
        ];
        for (argv, want) in cases {
            assert_eq!(parse(&args(argv)), Ok(want), "{argv:?}");
        }
    }

    #[test]
    fn rejects() {
        let cases: Vec<(&[&str], &str)> = vec![
            (&[], "no PROGRAM given"),
            (&["-v"], "no PROGRAM given"),
            (&["--"], "no PROGRAM given"),
            (
                &["run", "sleep"],
                "`tsinit run` runs tailscale alone and takes no PROGRAM",
            ),
            (&["run", "--", "x"], "`tsinit run` runs tailscale alone"),
            (
                &["-x", "ls"],
                "unknown option `-x`; to run a program whose name starts with",
            ),
            (&["--nope"], "unknown option `--nope`"),
            (&["-c"], "option `-c` needs a file path"),
            (&["ls", "--config"], ""),
        ];
        for (argv, want) in cases {
            match parse(&args(argv)) {
                Err(UsageError(msg)) => assert!(msg.starts_with(want), "{argv:?}: {msg}"),
                Ok(inv) => assert!(want.is_empty(), "{argv:?} parsed as {inv:?}"),
            }
        }
    }

    #[test]
    fn program_may_be_non_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let weird = OsString::from_vec(vec![b'a', 0xff]);
        let got = parse(std::slice::from_ref(&weird)).unwrap();
        assert_eq!(
            got,
            Invocation::Run(RunArgs {
                config: None,
                verbosity: 0,
                program: vec![weird]
            })
        );
    }
}
