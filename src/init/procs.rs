//! Which processes tsinit is responsible for, read from /proc.
//!
//! As PID 1 that is every process in the PID namespace; as a subreaper only its own
//! descendants. Processes in an excluded subtree (services such as tailscaled, which are
//! stopped last) are left out.

use std::collections::HashMap;
use std::io;
use std::path::Path;

/// One line of the process table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    /// The state letter of /proc/PID/stat (R, S, D, Z, T, ...).
    pub state: char,
}

impl Proc {
    fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses /proc/PID/stat: "pid (comm) state ppid ...", where comm may hold anything.
pub fn parse_stat(line: &str) -> Option<Proc> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let mut rest = line.get(close + 1..)?.split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(Proc { pid, ppid, state })
}

/// Whether the /proc mounted at `proc` shows our own PID namespace (it does not after a
/// bare `unshare --pid --fork` without `--mount-proc`): then scanning it would find
/// processes that are not ours.
pub fn shows_our_namespace(proc: &Path) -> bool {
    std::fs::read_link(proc.join("self"))
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
        == Some(std::process::id())
}

/// Reads the process table (processes that vanish while reading are skipped).
pub fn table(proc: &Path) -> io::Result<Vec<Proc>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(proc)? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(line) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some(p) = parse_stat(&line)
            && p.pid == pid
        {
            out.push(p);
        }
    }
    Ok(out)
}

/// The live processes to stop, given the table, our pid, whether we are PID 1 (all of
/// the namespace is ours) or a subreaper (only descendants), and subtrees to leave alone.
pub fn responsible(table: &[Proc], me: i32, whole_namespace: bool, exclude: &[i32]) -> Vec<i32> {
    let parent: HashMap<i32, i32> = table.iter().map(|p| (p.pid, p.ppid)).collect();
    // Walks up from `pid`; true if it reaches `target` before leaving the table.
    let under = |mut pid: i32, targets: &[i32]| -> bool {
        for _ in 0..table.len() + 1 {
            if targets.contains(&pid) {
                return true;
            }
            match parent.get(&pid) {
                Some(&pp) if pp != pid => pid = pp,
                _ => return false,
            }
        }
        false
    };
    let mut out: Vec<i32> = table
        .iter()
        .filter(|p| p.pid != me && !p.is_dead())
        .filter(|p| whole_namespace || under(p.pid, &[me]))
        .filter(|p| !under(p.pid, exclude))
        .map(|p| p.pid)
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        let cases = [
            ("1 (tsinit) S 0 1 1 0 -1", Some((1, 0, 'S'))),
            ("42 (a b) c) Z 7 42 42", Some((42, 7, 'Z'))),
            ("9 ((sd-pam)) R 1 9", Some((9, 1, 'R'))),
            ("9 (x)", None),
            ("garbage", None),
        ];
        for (line, want) in cases {
            let got = parse_stat(line).map(|p| (p.pid, p.ppid, p.state));
            assert_eq!(got, want, "{line}");
        }
    }

    fn t(rows: &[(i32, i32, char)]) -> Vec<Proc> {
        rows.iter()
            .map(|&(pid, ppid, state)| Proc { pid, ppid, state })
            .collect()
    }

    #[test]
    fn pid1_takes_the_whole_namespace_but_services_and_the_dead() {
        // 1 = tsinit; 5 = service (tailscaled) with child 6; 7 adopted orphan; 8 zombie;
        // 9 entered from outside (docker exec: parent 0).
        let table = t(&[
            (1, 0, 'S'),
            (5, 1, 'S'),
            (6, 5, 'S'),
            (7, 1, 'S'),
            (8, 1, 'Z'),
            (9, 0, 'S'),
            (10, 7, 'R'),
        ]);
        assert_eq!(responsible(&table, 1, true, &[5]), vec![7, 9, 10]);
        assert_eq!(responsible(&table, 1, true, &[]), vec![5, 6, 7, 9, 10]);
    }

    #[test]
    fn subreaper_takes_only_descendants() {
        // 100 = tsinit's parent, 200 = tsinit, 300 its child, 301 grandchild, 400 a
        // sibling of tsinit, 401 its child, 1 host init.
        let table = t(&[
            (1, 0, 'S'),
            (100, 1, 'S'),
            (200, 100, 'S'),
            (300, 200, 'S'),
            (301, 300, 'S'),
            (400, 100, 'S'),
            (401, 400, 'S'),
            (302, 200, 'S'),
        ]);
        assert_eq!(responsible(&table, 200, false, &[]), vec![300, 301, 302]);
        assert_eq!(responsible(&table, 200, false, &[302]), vec![300, 301]);
    }

    #[test]
    fn survives_a_parent_cycle() {
        let table = t(&[(2, 3, 'S'), (3, 2, 'S')]);
        assert_eq!(responsible(&table, 1, false, &[]), Vec::<i32>::new());
    }

    #[test]
    fn reads_this_namespace() {
        assert!(shows_our_namespace(Path::new("/proc")));
        let me = std::process::id() as i32;
        let table = table(Path::new("/proc")).unwrap();
        assert!(table.iter().any(|p| p.pid == me));
    }
}
