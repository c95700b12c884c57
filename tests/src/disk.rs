//! A small real file system for tests that need a disk to fill up: ext4 on a loop
//! device in a file of 48 MiB, mounted under a temporary directory and unmounted on
//! drop.
//!
//! Why a real file system rather than a fake write error: the code under test meets
//! ENOSPC where the kernel gives it (an allocation, a write, a rename), the space it
//! frees on removal is really freed, and the error it reports names what it would name
//! on an operator's disk. Making one needs root and a loop device: [`SmallDisk::make`]
//! says why it could not, and the test skips with that line.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The image's size; ext4's own structures take a few MiB of it.
const IMAGE_BYTES: u64 = 48 << 20;
/// Bytes written per call when filling the disk.
const FILL_CHUNK_BYTES: usize = 1 << 20;

/// A mounted ext4 file system of [`IMAGE_BYTES`].
pub struct SmallDisk {
    mount: tempfile::TempDir,
    image: tempfile::NamedTempFile,
}

impl SmallDisk {
    /// Makes and mounts it; Err says why not (no root, no loop device, no mkfs.ext4).
    pub fn make() -> Result<SmallDisk, String> {
        let image = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        image.as_file().set_len(IMAGE_BYTES).map_err(|e| e.to_string())?;
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
        };
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(image.path()))?;
        let mount = tempfile::tempdir().map_err(|e| e.to_string())?;
        run(Command::new("mount").args(["-o", "loop"]).arg(image.path()).arg(mount.path()))?;
        Ok(SmallDisk { mount, image })
    }

    /// Makes one, or says on stderr why it could not (for `what`) and gives None:
    /// the test skips rather than pass silently.
    pub fn make_or_skip(what: &str) -> Option<SmallDisk> {
        match SmallDisk::make() {
            Ok(disk) => Some(disk),
            Err(why) => {
                eprintln!("skipping {what}: cannot make a small ext4 file system here: {why}");
                None
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        self.mount.path()
    }

    /// Bytes free for an unprivileged writer, as `df` counts them.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        let out = Command::new("df").args(["--output=avail", "-B1"]).arg(self.path()).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("df said {text:?}")))
    }

    /// Writes a ballast file until about `leave_bytes` are free (within a chunk), and
    /// returns its path: removing it frees the space again.
    pub fn fill_leaving(&self, leave_bytes: u64) -> std::io::Result<PathBuf> {
        use std::io::Write;
        let path = self.path().join("ballast");
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0x5au8; FILL_CHUNK_BYTES];
        // Bounded: each pass writes a chunk, and the disk holds IMAGE_BYTES at most.
        for _ in 0..IMAGE_BYTES as usize / FILL_CHUNK_BYTES {
            file.sync_all()?;
            if self.free_bytes()? <= leave_bytes + FILL_CHUNK_BYTES as u64 {
                break;
            }
            file.write_all(&chunk)?;
        }
        file.sync_all()?;
        Ok(path)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount.path()).status();
        let _ = &self.image;
    }
}
