//! The progress display on a real terminal, beside rclone's: tmux runs `laminar
//! relay` in one pane and `rclone copy -P` in the other, on the same tree at the same
//! `--bwlimit`, and the test reads both screens a few times a second. Laminar's line
//! must be steady (its counts never go back, bytes move as they stream rather than as
//! objects land, one line, no ETA while the listing still grows) and say at least what rclone's says: bytes with the total, rate, objects
//! with the total, errors. With `LAMINAR_PROGRESS_CAPTURE=DIR` the screens are kept
//! there, one file per tool, for the side-by-side in `bench/PROGRESS.md`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use laminar_bench::servers::{find_tool, require_servers};
use laminar_tests::laminar_bin;

/// Liveness bound (not a timing assertion): a hang fails with the screens so far.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

fn tool(name: &str) -> Option<PathBuf> {
    let found = find_tool(name);
    if found.is_none() {
        assert!(!require_servers(), "{name} is required (LAMINAR_REQUIRE_SERVERS is set): run tests/run.sh");
        eprintln!("skipping: {name} not installed (tests/run.sh installs it)");
    }
    found
}

/// A tmux server of this test's own (its own socket), killed by its PID on drop.
struct Tmux {
    socket: PathBuf,
    pid: Option<i32>,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").arg("-S").arg(&self.socket).args(args).output().expect("run tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The visible screen of `pane`, trailing blank lines dropped.
    fn screen(&self, pane: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", pane]).trim_end().to_string()
    }

    /// Whether the command in `pane` has exited (the pane is kept after it).
    fn dead(&self, pane: &str) -> bool {
        self.run(&["display-message", "-p", "-t", pane, "#{pane_dead}"]).trim() == "1"
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // SAFETY: kill has no memory preconditions; the PID is the tmux server
            // this test started on its own socket.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// A tree of `count` files of `size` bytes.
fn tree(root: &Path, count: usize, size: usize) {
    for i in 0..count {
        let dir = root.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes: Vec<u8> = (0..size).map(|b| (b * 7 + i * 13) as u8).collect();
        std::fs::write(dir.join(format!("f{i:03}.bin")), bytes).unwrap();
    }
}

/// The number before `word` in `line` (`12 copied` -> 12).
fn count_before(line: &str, word: &str) -> Option<u64> {
    let at = line.find(word)?;
    line[..at].split_whitespace().last()?.trim_end_matches('+').parse().ok()
}

/// The bytes done the bar shows (`256.00 KiB/16.00 MiB` -> 262144).
fn bytes_shown(line: &str) -> Option<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| w.contains("B/"))?;
    let unit = words[at].split('/').next()?;
    let scale = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((words.get(at.checked_sub(1)?)?.parse::<f64>().ok()? * scale) as u64)
}

/// Laminar's progress line on a screen, if one is shown.
fn laminar_line(screen: &str) -> Option<&str> {
    screen.lines().find(|l| is_progress(l))
}

/// Whether `line` is the progress line (`N of M objects: ...`), not the summary.
fn is_progress(line: &str) -> bool {
    line.contains(" objects: ") && line.contains(" of ")
}

#[test]
fn the_progress_line_is_steady_and_says_what_rclone_p_says() {
    let (Some(_), Some(rclone)) = (tool("tmux"), tool("rclone")) else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // 16 MiB at 2 MiB/s: about eight seconds each, long enough for many screens.
    tree(&src, 64, 256 << 10);
    let (ours, theirs) = (dir.path().join("laminar-dst"), dir.path().join("rclone-dst"));
    let rclone_conf = dir.path().join("rclone.conf");
    std::fs::write(&rclone_conf, "").unwrap();
    let laminar = format!(
        "{} relay file://{} file://{} --bwlimit 2M --workers 2",
        laminar_bin().display(),
        src.display(),
        ours.display()
    );
    let rclone_cmd = format!(
        "RCLONE_CONFIG={} {} copy -P --bwlimit 2M {} {}",
        rclone_conf.display(),
        rclone.display(),
        src.display(),
        theirs.display()
    );
    let mut tmux = Tmux { socket: dir.path().join("tmux.sock"), pid: None };
    tmux.run(&["-f", "/dev/null", "new-session", "-d", "-s", "p", "-x", "200", "-y", "24", &laminar]);
    tmux.pid = tmux.run(&["display-message", "-p", "#{pid}"]).trim().parse().ok();
    tmux.run(&["set-option", "-t", "p", "remain-on-exit", "on"]);
    tmux.run(&["split-window", "-t", "p", "-h", &rclone_cmd]);
    let (our_pane, their_pane) = ("p:0.0", "p:0.1");

    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let (mut our_screens, mut their_screens) = (Vec::new(), Vec::new());
    loop {
        let (ours_done, theirs_done) = (tmux.dead(our_pane), tmux.dead(their_pane));
        our_screens.push(tmux.screen(our_pane));
        their_screens.push(tmux.screen(their_pane));
        if ours_done && theirs_done {
            break;
        }
        assert!(Instant::now() < deadline, "the relays never ended: {our_screens:?}\n{their_screens:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    if let Some(keep) = std::env::var_os("LAMINAR_PROGRESS_CAPTURE") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::write(keep.join("laminar.txt"), our_screens.join("\n----\n")).unwrap();
        std::fs::write(keep.join("rclone.txt"), their_screens.join("\n----\n")).unwrap();
    }

    // Both copied every byte.
    for (name, dst) in [("laminar", &ours), ("rclone", &theirs)] {
        for i in 0..64 {
            let rel = format!("d{}/f{i:03}.bin", i % 4);
            let want: Vec<u8> = (0..256 << 10).map(|b: usize| (b * 7 + i * 13) as u8).collect();
            assert_eq!(std::fs::read(dst.join(&rel)).ok(), Some(want), "{name} copied {rel}");
        }
    }

    // Laminar's line: shown, one at a time, its counts never going back.
    let lines: Vec<&str> = our_screens.iter().filter_map(|s| laminar_line(s)).collect();
    assert!(lines.len() >= 3, "the progress line was shown: {our_screens:?}");
    let (mut done, mut copied, mut bytes) = (0, 0, 0);
    let mut streamed_ahead = false;
    // Objects land as the bytes stream (as rclone's do), not all together at the end.
    let mut landed_early = false;
    for (screen, line) in our_screens.iter().zip(our_screens.iter().map(|s| laminar_line(s))) {
        let Some(line) = line else { continue };
        assert_eq!(screen.lines().filter(|l| is_progress(l)).count(), 1, "one line: {screen}");
        let (d, c) = (count_before(line, "of ").unwrap(), count_before(line, "copied").unwrap());
        assert!(d >= done && c >= copied, "counts went back: {line} after {done} done, {copied} copied");
        (done, copied) = (d, c);
        let b = bytes_shown(line).unwrap_or_else(|| panic!("bytes shown: {line}"));
        assert!(b >= bytes, "bytes went back: {line} after {bytes}");
        bytes = b;
        // Bytes count as they stream, before their objects land.
        streamed_ahead |= b > c * (256 << 10);
        landed_early |= c > 0 && b < 8 << 20;
        assert!(!(line.contains("listing...") && line.contains("ETA")), "no ETA while listing: {line}");
        // What rclone -P says, Laminar says too: bytes of the total, a rate, objects.
        assert!(line.contains("B/") && line.contains("/s"), "bytes, total and rate: {line}");
    }
    assert!(done <= 64 && copied <= 64, "{done} {copied}");
    assert!(streamed_ahead, "the bytes moved only as objects landed: {lines:?}");
    assert!(landed_early, "no object landed before half the bytes were through: {lines:?}");
    let last = our_screens.last().unwrap();
    assert!(last.contains("64"), "the summary names the 64 objects: {last}");
    // rclone's screens, for the record: it ran with -P on a terminal.
    assert!(their_screens.iter().any(|s| s.contains("Transferred:")), "{their_screens:?}");
}
