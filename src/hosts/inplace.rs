//! Writing the block in place, for a hosts file that cannot be replaced (Docker
//! bind-mounts /etc/hosts): only bytes already read are overwritten, room for a longer
//! block is made first, and lines others append are kept.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::file::{line_is, open_regular, padded, read_all, split};
use super::{BEGIN, END};

/// Makes `target`, whose content was `current`, carry `block` at its end, writing only
/// from where its first block starts (a bind-mounted file cannot be replaced). False if
/// the file was changed other than by appending since: nothing was written, start over.
///
/// Bytes are only ever written inside the length the file had when read, or appended
/// (O_APPEND) past its end, so lines others append are never overwritten: they end up
/// after the block, and the next write moves lines it finds there before it. The block never shrinks: a shorter one is
/// padded to the old length. A kill in the middle of a write then leaves new bytes
/// followed by old ones, all after the (same) BEGIN marker, so still inside the block. A
/// longer block first needs room, see [`make_room`]. What remains: a change that does not
/// append, made between the last read and the write, is lost.
pub(super) fn write_in_place(target: &Path, current: &[u8], block: &str) -> io::Result<bool> {
    let file = open_regular(target, OpenOptions::new().read(true).write(true))?;
    if !read_all(&file)?.starts_with(current) {
        return Ok(false);
    }
    let split = split(current);
    let from = split.first_block;
    let mut after = split.outside[from..].to_vec();
    let Some(last) = last_block(current) else {
        // No block yet: appended whole, in one write.
        append(target, current.len() as u64, block.as_bytes())?;
        file.sync_all()?;
        return Ok(true);
    };
    let room = current.len() - from - after.len();
    let mut grown = 0;
    if !fits(block.len(), room) {
        let mut now = current[..from].to_vec();
        if !after.is_empty() && ends_with_end(last) && fits(last.len(), room) {
            // Lines follow the block: first moved before it, the old block (padded to
            // the same room) after them, in one write that keeps the file's length.
            log::debug!("hosts: lines follow the block; moving them before it");
            now.extend_from_slice(&after);
            now.extend_from_slice(&padded(last, room));
            file.write_all_at(&now[from..], from as u64)?;
        } else {
            now = current.to_vec();
        }
        grown = (block.len() + 2).saturating_sub(room).max(2);
        after.extend_from_slice(&make_room(&file, target, &now, grown)?);
    }
    let mut bytes = after;
    bytes.extend_from_slice(&padded(block.as_bytes(), room + grown));
    file.write_all_at(&bytes, from as u64)?;
    file.sync_all()?;
    Ok(true)
}

/// Whether a block of `len` bytes fills `room` bytes exactly or with a padding line
/// (which takes at least 2 bytes).
fn fits(len: usize, room: usize) -> bool {
    len == room || len + 2 <= room
}

/// The bytes of the last block of `content`: from the newline before its BEGIN line (if
/// any) to the end of its END line, or of the file for a block without END.
fn last_block(content: &[u8]) -> Option<&[u8]> {
    let mut found = None;
    let mut pos = 0;
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line_is(line, BEGIN, true) {
            let start = if pos > 0 && content[pos - 1] == b'\n' {
                pos - 1
            } else {
                pos
            };
            found = Some((start, content.len()));
        } else if line_is(line, END, false)
            && let Some((_, end)) = found.as_mut()
            && *end == content.len()
        {
            *end = pos + line.len();
        }
        pos += line.len();
    }
    found.map(|(start, end)| &content[start..end])
}

/// The last line of `content` (with its line ending).
pub(super) fn last_line(content: &[u8]) -> &[u8] {
    let body = content.strip_suffix(b"\n").unwrap_or(content);
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    &content[start..]
}

/// Whether `content` ends with an END line.
fn ends_with_end(content: &[u8]) -> bool {
    line_is(last_line(content), END, false)
}

/// A padding line of exactly `len` bytes (at least 2): '#', spaces, newline.
pub(super) fn padding_line(len: usize) -> Vec<u8> {
    let mut out = vec![b'#'];
    out.extend(std::iter::repeat_n(b' ', len.saturating_sub(2)));
    out.push(b'\n');
    out
}

/// Grows the space of the block at the end of `file` (content `current`, with the block
/// last) by `by` bytes, before a byte of the block changes, so that a full filesystem
/// never leaves half a block: its END line (if any) is overwritten by a padding line of
/// the same length (the block then runs to the end of the file, still listing the same
/// names), then a padding line of `by` bytes is appended. If that fails (no space
/// left), the file is cut back to its length and the END line put back: byte for byte
/// as it was. This relies on overwriting a file's bytes needing no new space, true of
/// filesystems that do not copy on write. Returns the lines others appended meanwhile:
/// they sit inside the block's space now, and go before the block.
fn make_room(file: &File, target: &Path, current: &[u8], by: usize) -> io::Result<Vec<u8>> {
    let end = last_line(current);
    let end_at = (current.len() - end.len()) as u64;
    let is_end = line_is(end, END, false);
    if is_end {
        let mut blank = padding_line(end.len().max(2));
        if !end.ends_with(b"\n") {
            blank.pop();
            blank.push(b' ');
        }
        file.write_all_at(&blank, end_at)?;
    }
    let pad = padding_line(by);
    if let Err(e) = append(target, current.len() as u64, &pad) {
        if is_end {
            file.write_all_at(end, end_at).ok();
        }
        return Err(e);
    }
    let now = read_all(file)?;
    let past = now.get(current.len()..).unwrap_or_default();
    let Some(at) = past.windows(pad.len()).position(|w| w == pad.as_slice()) else {
        return Err(io::Error::other(
            "the room appended to the hosts file is gone",
        ));
    };
    let mut others = past[..at].to_vec();
    others.extend_from_slice(&past[at + pad.len()..]);
    Ok(others)
}

/// Appends `bytes` to `target` (O_APPEND: never over what others appended), which was
/// `len` bytes long. On an error (no space left), a part of `bytes` already appended is
/// cut off again, unless others appended meanwhile.
fn append(target: &Path, len: u64, bytes: &[u8]) -> io::Result<()> {
    let mut file = open_regular(target, OpenOptions::new().read(true).append(true))?;
    let Err(e) = file.write_all(bytes) else {
        return Ok(());
    };
    if let Ok(now) = read_all(&file)
        && now.len() as u64 >= len
        && bytes.starts_with(&now[len as usize..])
    {
        file.set_len(len).ok();
    }
    Err(e)
}
