//! Writing the hosts file's block without ever corrupting the rest: where the blocks
//! are, rename() of a whole new file or a rewrite in place of the block alone, and what
//! others write meanwhile.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::inplace::{last_line, padding_line, write_in_place};
use std::time::SystemTime;

use super::{BEGIN, END, Entry, Skip, render_into, without_shadowing};

/// Where a file's managed blocks are.
#[derive(Debug, PartialEq, Eq)]
pub struct Split {
    /// The file without its blocks: what tsinit must never change.
    pub outside: Vec<u8>,
    /// Byte offset where the first block begins (the file's length if it has none).
    pub first_block: usize,
    /// Where the lines inside the last block are (without the markers).
    pub body: Option<std::ops::Range<usize>>,
    pub blocks: usize,
}

pub(super) fn line_is(line: &[u8], marker: &str, prefix_only: bool) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if prefix_only {
        line.starts_with(marker.as_bytes())
    } else {
        line == marker.as_bytes()
    }
}

/// Finds the managed blocks in `content`. A BEGIN without END runs to the end of the file.
pub fn split(content: &[u8]) -> Split {
    let mut out = Split {
        outside: Vec::with_capacity(content.len()),
        first_block: content.len(),
        body: None,
        blocks: 0,
    };
    let mut pos = 0;
    // Where the body of the block being read starts.
    let mut in_block: Option<usize> = None;
    while pos < content.len() {
        let end = crate::bytes::find(content, pos, b'\n').map_or(content.len(), |i| i + 1);
        let line = &content[pos..end];
        // Marker lines start with '#': the others are told apart by one byte.
        let marker =
            |m: &str, prefix_only| line.first() == Some(&b'#') && line_is(line, m, prefix_only);
        match in_block {
            None if marker(BEGIN, true) => {
                // The newline before BEGIN is the block's own.
                let start = if pos > 0 && content[pos - 1] == b'\n' {
                    out.outside.pop();
                    pos - 1
                } else {
                    pos
                };
                out.first_block = out.first_block.min(start);
                out.blocks += 1;
                in_block = Some(end);
            }
            None => out.outside.extend_from_slice(line),
            Some(body) if marker(END, false) => {
                out.body = Some(body..pos);
                in_block = None;
            }
            Some(_) => {}
        }
        pos = end;
    }
    if let Some(body) = in_block {
        out.body = Some(body..content.len());
    }
    out
}

/// `content` with all its blocks replaced by `block`, which goes at the end.
pub fn apply(content: &[u8], block: &str) -> Vec<u8> {
    let mut out = split(content).outside;
    out.extend_from_slice(block.as_bytes());
    out
}

/// The body lines of a rendered block (between its marker lines).
#[cfg(test)]
fn body_of(block: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in body_lines(block) {
        out.extend_from_slice(line);
    }
    out
}

/// The lines of a block's body, padding left out.
fn body_lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut lines = block.split_inclusive(|&b| b == b'\n');
    // Up to and including the BEGIN line, then until the END line.
    let _ = lines.find(|l| line_is(l, BEGIN, true));
    lines
        .take_while(|l| !line_is(l, END, false))
        .filter(|line| !is_padding(line))
}

/// Whether two blocks list the same lines (padding and the BEGIN line aside), compared
/// without copying them: as a whole when neither has a comment line (padding is one),
/// else line by line.
fn same_body(a: &[u8], b: &[u8]) -> bool {
    match (plain_body(a), plain_body(b)) {
        (Some(a), Some(b)) => crate::bytes::equal(a, b),
        _ => body_lines(a).eq(body_lines(b)),
    }
}

/// The lines between a block's BEGIN line (one of its first two lines) and its END line
/// (its last), if there is no '#' among them.
fn plain_body(block: &[u8]) -> Option<&[u8]> {
    let mut start = 0;
    let mut begun = false;
    for _ in 0..2 {
        let end = crate::bytes::find(block, start, b'\n').map_or(block.len(), |i| i + 1);
        begun = line_is(&block[start..end], BEGIN, true);
        start = end;
        if begun {
            break;
        }
    }
    let body = block.get(start..).filter(|_| begun)?;
    let end = last_line(body);
    let body = &body[..body.len() - end.len()];
    (line_is(end, END, false) && !body.contains(&b'#')).then_some(body)
}

/// A padding line: '#', spaces, newline (see [`HostsFile::write`]).
fn is_padding(line: &[u8]) -> bool {
    line.len() >= 2
        && line[0] == b'#'
        && line.ends_with(b"\n")
        && line[1..line.len() - 1].iter().all(|&b| b == b' ')
}

/// `block` made at least `len` bytes long by a padding line before its END line (after
/// its last line if it has none).
pub(super) fn padded(block: &[u8], len: usize) -> Vec<u8> {
    if block.len() >= len {
        return block.to_vec();
    }
    let pad = padding_line(len - block.len());
    let end = last_line(block);
    let at = if line_is(end, END, false) {
        block.len() - end.len()
    } else {
        block.len()
    };
    let mut out = block[..at].to_vec();
    out.extend_from_slice(&pad);
    out.extend_from_slice(&block[at..]);
    out
}

/// Whether a write changed the file.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Unchanged,
    Replaced,
    InPlace,
}

/// How many times a write starts over because the file changed while it was written.
const TRIES: usize = 20;

/// The hosts file tsinit keeps its block in.
pub struct HostsFile {
    path: PathBuf,
    /// Whether the file must be written in place: it is a mount point (a container
    /// runtime bind-mounts /etc/hosts, and rename() over it fails) or its directory is
    /// not writable. Found out at the first write, so start-up does not read
    /// /proc/self/mountinfo a second time.
    in_place: Option<bool>,
    /// Names already reported as left out (logged once, not at every write).
    reported: BTreeSet<(String, Skip)>,
    /// The files recent renames replaced, how much of each is carried over, and when it
    /// was replaced: lines a writer that opened one before its rename writes to it later
    /// are carried over at the next writes, for [`KEEP_REPLACED`] (a writer that stalls
    /// between its open() and its write() for longer than several writes of the block
    /// is slow, not gone).
    replaced: Vec<(File, u64, std::time::Instant)>,
    /// The file as last read, and the block last made (see [`write_with`]).
    read_buf: Vec<u8>,
    block_buf: String,
}

/// How long a replaced file is watched for lines still written to it.
const KEEP_REPLACED: std::time::Duration = std::time::Duration::from_secs(5);
/// How many replaced files are watched at most.
const MAX_REPLACED: usize = 16;

impl HostsFile {
    pub fn new(path: &Path) -> HostsFile {
        HostsFile {
            path: path.to_path_buf(),
            in_place: None,
            reported: BTreeSet::new(),
            replaced: Vec::new(),
            read_buf: Vec::new(),
            block_buf: String::new(),
        }
    }

    /// A file that is written in place whatever it is (for tests of that path).
    pub fn in_place(path: &Path) -> HostsFile {
        HostsFile {
            in_place: Some(true),
            ..HostsFile::new(path)
        }
    }

    /// Whether `target` (the resolved hosts file) is to be written in place.
    fn writes_in_place(&mut self, target: &Path) -> bool {
        *self.in_place.get_or_insert_with(|| {
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            crate::preflight::parse_mountinfo(&mountinfo)
                .iter()
                .any(|m| m.mount_point == target)
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the file's block `block` (from [`render`]), less the names it must not
    /// carry (see [`without_shadowing`]; each is logged once). Skips the write when the
    /// block already says the same (the timestamp aside). A symbolic link is followed:
    /// its target is written, the link stays. Anything but a regular file is refused.
    ///
    /// Outside the block nothing changes: by rename() of a complete new file beside the
    /// target where possible, else by rewriting the block at the end of the file in
    /// place, so that a crash or SIGKILL at any moment leaves every byte outside the
    /// block as it was. Lines others add to the file meanwhile are kept (see
    /// [`replace`] and [`write_in_place`] for how, and for the window that remains);
    /// a write that finds the file changed under it starts over.
    pub fn write(&mut self, block: &str) -> io::Result<Written> {
        self.write_with(&mut |reported, outside, out| {
            let (block, skipped) = without_shadowing(block, outside);
            report(reported, skipped);
            out.push_str(&block);
        })
    }

    /// Makes the file's block list `list` (as [`write`](HostsFile::write) would write its
    /// rendering), leaving out what would shadow a name without parsing any text again.
    pub fn write_entries(&mut self, list: &[Entry], now: SystemTime) -> io::Result<Written> {
        self.write_with(&mut |reported, outside, out| {
            let (kept, skipped) = super::unshadowed(list, outside);
            report(reported, skipped);
            render_into(out, kept.as_deref().unwrap_or(list), now);
        })
    }

    /// [`write`](HostsFile::write) with the block made by `make` from the lines outside it.
    /// The file is read into, and the block made in, buffers kept from the last write: a
    /// big tailnet's block is megabytes, and fresh memory is zeroed page by page.
    fn write_with(&mut self, make: &mut MakeBlock<'_>) -> io::Result<Written> {
        let mut current = std::mem::take(&mut self.read_buf);
        let mut block = std::mem::take(&mut self.block_buf);
        let written = self.write_using(make, &mut current, &mut block);
        (self.read_buf, self.block_buf) = (current, block);
        written
    }

    fn write_using(
        &mut self,
        make: &mut MakeBlock<'_>,
        current: &mut Vec<u8>,
        block: &mut String,
    ) -> io::Result<Written> {
        let target = std::fs::canonicalize(&self.path)?;
        for (old, seen, _) in &mut self.replaced {
            *seen = carry_over(old, *seen, &target)?;
        }
        self.replaced
            .retain(|(_, _, at)| at.elapsed() < KEEP_REPLACED);
        for _ in 0..TRIES {
            let file = open_regular(&target, OpenOptions::new().read(true))?;
            let len = read_into(&file, current)?;
            let current = &current[..len];
            let split = split(current);
            block.clear();
            make(&mut self.reported, &split.outside, block);
            let block = &block[..];
            if split.blocks == 1
                && split.first_block == split.outside.len()
                && same_body(&current[split.first_block..], block.as_bytes())
            {
                return Ok(Written::Unchanged);
            }
            if !self.writes_in_place(&target) {
                let desired = [&split.outside[..], block.as_bytes()];
                match replace(&target, &file, current, &desired)? {
                    Replaced::Done(seen) => {
                        if self.replaced.len() >= MAX_REPLACED {
                            self.replaced.remove(0);
                        }
                        let now = std::time::Instant::now();
                        self.replaced.push((file, seen, now));
                        return Ok(Written::Replaced);
                    }
                    Replaced::Changed => continue,
                    Replaced::Cannot(why) => {
                        log::debug!("hosts: {}; writing in place", why);
                        self.in_place = Some(true);
                    }
                }
            }
            if write_in_place(&target, current, block)? {
                return Ok(Written::InPlace);
            }
        }
        Err(io::Error::other(format!(
            "{} changed under every one of {TRIES} tries to write it",
            target.display()
        )))
    }
}

/// Makes a block from the lines outside it (into the string, empty when called), noting
/// what it leaves out in the set.
type MakeBlock<'a> = dyn FnMut(&mut BTreeSet<(String, Skip)>, &[u8], &mut String) + 'a;

/// Logs each name left out once (per reason).
fn report(reported: &mut BTreeSet<(String, Skip)>, skipped: Vec<super::Skipped>) {
    for s in skipped {
        if reported.insert((s.name.clone(), s.why)) {
            log::info!(
                "hosts: not listing {:?} for {}: {}",
                s.name,
                s.ip,
                s.why.reason()
            );
        }
    }
}

/// `path` opened with `opts`, if it is a regular file. Opened non-blocking and without
/// following a last symbolic link, so a FIFO, device or link put there never blocks or
/// redirects the write (its type is checked before and after opening).
pub(super) fn open_regular(path: &Path, opts: &mut OpenOptions) -> io::Result<File> {
    let not_regular = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        )
    };
    if !std::fs::symlink_metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let file = opts
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_regular());
    }
    Ok(file)
}

/// The whole content of `file`, read from its start.
pub(super) fn read_all(file: &File) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let len = read_into(file, &mut out)?;
    out.truncate(len);
    Ok(out)
}

/// Reads the whole content of `file` from its start into `buf`, and says how long it is.
/// `buf` is grown as needed and never shrunk, so it is zeroed only where it grows.
fn read_into(file: &File, buf: &mut Vec<u8>) -> io::Result<usize> {
    let size = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    if buf.len() <= size {
        buf.resize(size + 1, 0);
    }
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(len * 2 + 8192, 0);
        }
        match file.read_at(&mut buf[len..], len as u64) {
            Ok(0) => return Ok(len),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// How a [`replace`] ended (its errors aside).
enum Replaced {
    /// Renamed; how much of the old file is carried over.
    Done(u64),
    /// The file changed since it was read: nothing was written.
    Changed,
    /// rename() cannot be used (why): the file is a mount point, or its directory is not
    /// writable. Nothing was written.
    Cannot(String),
}

/// Makes `target`, whose content was `current` (read through `old`), say `desired`: a
/// new file beside it (same mode and owner), renamed over it.
///
/// Others' lines are kept: just before the rename the file is read again and, if it was
/// changed other than by appending, or replaced, nothing is renamed
/// ([`Replaced::Changed`]: start over). Lines appended since it was read (up to and
/// after the rename, by writers that opened the file before it) are in the old file;
/// once renamed, what the old file grew by is appended to the new one, at once and
/// at the next writes (see [`HostsFile::replaced`]). What remains: a change
/// that does not append, made in the microseconds between the check and the rename, is
/// lost, and so are lines written to the old file more than [`KEEP_REPLACED`] after
/// the rename (by a writer that keeps the file open that long). On any error the file is left as it was and the temporary
/// file removed.
fn replace(target: &Path, old: &File, current: &[u8], desired: &[&[u8]]) -> io::Result<Replaced> {
    let meta = old.metadata()?;
    let tmp = match create_temp(target, meta.permissions().mode() & 0o7777) {
        Ok(t) => t,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EACCES) | Some(libc::EROFS) | Some(libc::EPERM)
            ) =>
        {
            return Ok(Replaced::Cannot(format!(
                "cannot create a file beside {}: {}",
                target.display(),
                crate::error::os_message(&e)
            )));
        }
        Err(e) => return Err(e),
    };
    let (mut f, tmp_path) = tmp;
    let renamed = (|| {
        for part in desired {
            f.write_all(part)?;
        }
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        f.set_permissions(meta.permissions())?;
        f.sync_all()?;
        if !only_appended(old, target, current)? {
            return Ok(Replaced::Changed);
        }
        match std::fs::rename(&tmp_path, target) {
            Ok(()) => Ok(Replaced::Done(0)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EXDEV)) => Ok(
                Replaced::Cannot(format!("{} is a mount point", target.display())),
            ),
            Err(e) => Err(e),
        }
    })();
    if !matches!(renamed, Ok(Replaced::Done(_))) {
        std::fs::remove_file(&tmp_path).ok();
        return renamed;
    }
    // No waiting here (this write can be on the way to starting the workload): what
    // comes later is carried over at the next write.
    let seen = carry_over(old, current.len() as u64, target)?;
    Ok(Replaced::Done(seen))
}

/// Whether `target` is still the file `old` and holds `current`, lines appended to it
/// aside (those are carried over after the rename).
fn only_appended(old: &File, target: &Path, current: &[u8]) -> io::Result<bool> {
    let now = open_regular(target, OpenOptions::new().read(true))?;
    let (a, b) = (old.metadata()?, now.metadata()?);
    if (a.dev(), a.ino()) != (b.dev(), b.ino()) || b.len() < current.len() as u64 {
        return Ok(false);
    }
    // Compared a piece at a time: the file can be large, and only its start matters.
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0;
    while at < current.len() {
        let want = (current.len() - at).min(buf.len());
        now.read_exact_at(&mut buf[..want], at as u64)?;
        if !crate::bytes::equal(&buf[..want], &current[at..at + want]) {
            return Ok(false);
        }
        at += want;
    }
    Ok(true)
}

/// Appends to `target` what `old` (the file it replaced) holds beyond `from`: lines
/// others appended to the old file around the rename. How far `old` is carried over now.
fn carry_over(old: &File, from: u64, target: &Path) -> io::Result<u64> {
    let len = old.metadata()?.len();
    if len <= from {
        return Ok(from);
    }
    let mut extra = vec![0u8; (len - from) as usize];
    old.read_exact_at(&mut extra, from)?;
    let mut new = open_regular(target, OpenOptions::new().append(true))?;
    new.write_all(&extra)?;
    new.sync_all()?;
    log::debug!(
        "hosts: {} bytes appended to {} during its rename carried over",
        extra.len(),
        target.display()
    );
    Ok(len)
}

/// A new file `.<name>.tsinit-<pid>` beside `target`, created exclusively with `mode`
/// (never through a symbolic link or over an existing file). One left there by an
/// earlier run (killed mid-write; in a container tsinit's pid is 1 every time) is
/// removed and the creation tried once more.
fn create_temp(target: &Path, mode: u32) -> io::Result<(File, PathBuf)> {
    let dir = target.parent().unwrap_or(Path::new("/"));
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tsinit-{}", std::process::id()));
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
    };
    match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            log::debug!("hosts: removing {}, left by an earlier run", tmp.display());
            std::fs::remove_file(&tmp)?;
            Ok((create()?, tmp))
        }
        other => Ok((other?, tmp)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::tests::{BLOCK, names_of};

    #[test]
    fn the_writer_leaves_out_shadowing_names() {
        let path = temp("shadow", b"127.0.0.1 localhost\n172.17.0.2 abc123def\n");
        let block = "\n# BEGIN tsinit managed block (2 names, written x); edits here are lost\n\
                     100.64.0.5 localhost.tail.example localhost\n\
                     100.64.0.6 abc123def.tail.example abc123def\n\
                     # END tsinit managed block\n";
        let mut f = HostsFile::new(&path);
        assert_eq!(f.write(block).unwrap(), Written::Replaced);
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            names_of(&content[content.find(BEGIN).unwrap()..]),
            [
                "100.64.0.5 localhost.tail.example",
                "100.64.0.6 abc123def.tail.example"
            ]
        );
        assert_eq!(f.reported.len(), 2, "{:?}", f.reported);
        assert_eq!(f.write(block).unwrap(), Written::Unchanged);
        assert_eq!(f.reported.len(), 2, "reported once");
        // The file maps the full name now: that line goes.
        let mut outside = std::fs::read(&path).unwrap();
        outside.splice(0..0, b"10.1.1.1 abc123def.tail.example\n".iter().copied());
        std::fs::write(&path, &outside).unwrap();
        assert_eq!(f.write(block).unwrap(), Written::Replaced);
        let content = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            names_of(&content[content.find(BEGIN).unwrap()..]),
            ["100.64.0.5 localhost.tail.example"]
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn replaces_blocks_keeping_everything_else() {
        let stale =
            "\n# BEGIN tsinit managed block (old)\n100.64.0.9 old\n# END tsinit managed block\n";
        let cases: Vec<(&str, String, String)> = vec![
            ("empty file", String::new(), String::new()),
            ("no block", "127.0.0.1 localhost\n".into(), "127.0.0.1 localhost\n".into()),
            ("no trailing newline", "127.0.0.1 localhost".into(), "127.0.0.1 localhost".into()),
            ("crlf", "127.0.0.1 localhost\r\n::1 lh\r\n".into(), "127.0.0.1 localhost\r\n::1 lh\r\n".into()),
            ("stale block", format!("127.0.0.1 localhost\n{stale}"), "127.0.0.1 localhost\n".into()),
            (
                "stale block in the middle",
                format!("127.0.0.1 localhost\n{stale}10.0.0.5 docker\n"),
                "127.0.0.1 localhost\n10.0.0.5 docker\n".into(),
            ),
            (
                "two stale blocks",
                format!("a\n{stale}b\n{stale}"),
                "a\nb\n".into(),
            ),
            (
                "crlf stale block",
                "a\r\n\n# BEGIN tsinit managed block x\r\n100.64.0.9 o\r\n# END tsinit managed block\r\n".into(),
                "a\r\n".into(),
            ),
            (
                "unterminated block",
                "a\n\n# BEGIN tsinit managed block x\n100.64.0.9 o\n".into(),
                "a\n".into(),
            ),
        ];
        for (what, input, outside) in cases {
            let out = apply(input.as_bytes(), BLOCK);
            assert_eq!(out, format!("{outside}{BLOCK}").into_bytes(), "{what}");
            let again = split(&out);
            assert_eq!(
                (again.blocks, again.outside),
                (1, outside.clone().into_bytes()),
                "{what}"
            );
            assert_eq!(apply(&out, BLOCK), out, "{what}: idempotent");
        }
    }

    fn temp(name: &str, content: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tsinit-hosts-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hosts");
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn writes_by_rename_or_in_place_and_skips_unchanged() {
        for in_place in [false, true] {
            let path = temp(&format!("w{in_place}"), b"127.0.0.1 localhost");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            let mut f = if in_place {
                HostsFile::in_place(&path)
            } else {
                HostsFile::new(&path)
            };
            let want = if in_place {
                Written::InPlace
            } else {
                Written::Replaced
            };
            assert_eq!(f.write(BLOCK).unwrap(), want);
            let other = BLOCK.replace("written x", "written y");
            assert_eq!(
                f.write(&other).unwrap(),
                Written::Unchanged,
                "timestamp alone"
            );
            let changed = BLOCK.replace("100.64.0.1", "100.64.0.2");
            assert_eq!(f.write(&changed).unwrap(), want);
            let content = std::fs::read(&path).unwrap();
            assert_eq!(
                content,
                format!("127.0.0.1 localhost{changed}").into_bytes()
            );
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o640, "permissions kept");
            std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        }
    }

    #[test]
    fn in_place_a_shorter_block_is_padded_never_truncated() {
        let path = temp("shrink", b"127.0.0.1 localhost\n");
        let mut f = HostsFile::in_place(&path);
        let big = BLOCK.replace(
            "100.64.0.1 me.tail.example me\n",
            "100.64.0.1 me.tail.example me\n100.64.0.2 a-long-peer-name.tail.example\n",
        );
        assert_eq!(f.write(&big).unwrap(), Written::InPlace);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(f.write(BLOCK).unwrap(), Written::InPlace);
        let content = std::fs::read(&path).unwrap();
        assert_eq!(content.len() as u64, len, "the block keeps its length");
        let s = split(&content);
        assert_eq!(
            (s.blocks, &s.outside[..]),
            (1, &b"127.0.0.1 localhost\n"[..])
        );
        assert_eq!(
            body_of(&content[s.first_block..]),
            body_of(BLOCK.as_bytes())
        );
        assert_eq!(
            f.write(BLOCK).unwrap(),
            Written::Unchanged,
            "padding is not a change"
        );
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
