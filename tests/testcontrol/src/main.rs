//! `testcontrol --listen ADDR [--netns NAME] --key KEY...`: runs the test control + DERP
//! server, prints its URL as the first line of stdout, and runs until SIGTERM/SIGINT, or
//! until stdin reaches EOF when stdin is a pipe or socket (so `cmd &` with stdin on
//! /dev/null keeps running). From a pipe it also takes commands, one per line:
//! `add NAME` (a fake peer; prints its id), `remove ID`, and
//! `add-many PREFIX COUNT [BATCH]`: COUNT fake peers named PREFIX-0 .. PREFIX-<COUNT-1>,
//! BATCH (default 50) per map update, each batch sent before the next is added (see
//! `TestControl::add_fake_peers`); prints one line when done,
//! `added COUNT FIRST_ID..LAST_ID in BATCHES batches`, or `error: ...`.

use std::io::{BufRead, Write};
use std::os::unix::fs::FileTypeExt;

use testcontrol::TestControl;

const USAGE: &str =
    "usage: testcontrol --listen ADDR [--netns NAME] --key KEY [KEY...] [--key KEY...]";

fn main() {
    let mut listen = None;
    let mut netns = None;
    let mut keys: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1).peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| fail(&arg))
        };
        match flag.as_str() {
            "--listen" => listen = Some(value()),
            "--netns" => netns = Some(value()),
            "--key" => {
                keys.push(value());
                while let Some(more) = args.next_if(|a| !a.starts_with("--")) {
                    keys.push(more);
                }
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            _ => fail(&arg),
        }
    }
    let listen = listen.unwrap_or_else(|| fail("missing --listen"));
    let server = match &netns {
        Some(ns) => TestControl::start_in_netns(ns, &listen),
        None => TestControl::start(&listen),
    };
    let server = server.unwrap_or_else(|e| {
        eprintln!("testcontrol: cannot listen on {listen}: {e}");
        std::process::exit(1);
    });
    server.set_valid_keys(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    println!("{}", server.url());
    let _ = std::io::stdout().flush();

    let stdin_is_pipe = std::fs::metadata("/proc/self/fd/0")
        .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
        .unwrap_or(false);
    if stdin_is_pipe {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("add"), Some(name)) => println!("{}", server.add_fake_peer(name)),
                (Some("add-many"), Some(prefix)) => {
                    let count = words.next().map(str::parse::<usize>);
                    let batch = words.next().map(str::parse::<usize>).unwrap_or(Ok(50));
                    match (count, batch) {
                        (Some(Ok(count)), Ok(batch)) if batch > 0 => {
                            match server.add_fake_peers(prefix, count, batch) {
                                Ok(ids) => println!(
                                    "added {count} {}..{} in {} batches",
                                    ids.first().copied().unwrap_or(0),
                                    ids.last().copied().unwrap_or(0),
                                    count.div_ceil(batch)
                                ),
                                Err(e) => println!("error: {e}"),
                            }
                        }
                        _ => println!("error: usage: add-many PREFIX COUNT [BATCH]"),
                    }
                }
                (Some("remove"), Some(id)) => match id.parse() {
                    Ok(id) => {
                        server.remove_peer(id);
                        println!("removed {id}");
                    }
                    Err(_) => println!("error: bad id {id:?}"),
                },
                _ => println!(
                    "error: commands are `add NAME`, `remove ID` and \
                     `add-many PREFIX COUNT [BATCH]`"
                ),
            }
            let _ = std::io::stdout().flush();
        }
    } else {
        // SIGTERM and SIGINT keep their default action: end the process.
        loop {
            std::thread::park();
        }
    }
}

fn fail(what: &str) -> ! {
    eprintln!("testcontrol: bad argument {what:?}\n{USAGE}");
    std::process::exit(2);
}
