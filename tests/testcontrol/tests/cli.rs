//! The `testcontrol` binary on loopback: prints its URL first, serves /key, survives bad
//! handshakes, and exits when its stdin pipe closes. Needs no root.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn http(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn binary_prints_url_serves_and_exits_on_stdin_eof() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_testcontrol"))
        .args(["--listen", "127.0.0.1:0", "--key", "k1", "k2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("http://")
        .expect("URL first")
        .to_string();

    let key = http(&addr, "GET /key?v=133 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(key.starts_with("HTTP/1.1 200"), "{key}");
    assert!(key.contains(r#""publicKey":"mkey:"#), "{key}");

    let bad = "POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol\r\n\
               Connection: upgrade\r\nX-Tailscale-Handshake: AAAA\r\n\r\n";
    assert!(http(&addr, bad).starts_with("HTTP/1.1 400"));
    assert!(http(&addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(&addr, "GET /derp/probe HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));

    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("testcontrol did not exit on stdin EOF");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}
