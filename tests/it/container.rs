//! The container image, end to end: the release binary staged by
//! containers/stage-rootfs.sh, built with containers/Containerfile.local (FROM scratch,
//! so no registry is needed), and `laminar demo` run inside it as the image's
//! unprivileged user. Three seccomp settings: podman's default profile (io_uring or
//! epoll, with the line that says why), unconfined (io_uring, where this host has
//! it), and a profile that denies io_uring_setup (epoll, the line naming seccomp).
//!
//! Needs rootful podman with runc (`apt-get install podman runc`). Where that is
//! missing, each test prints one line saying why it did not run and returns;
//! `LAMINAR_REQUIRE_CONTAINERS=1` turns that into a failure. Containers use the host
//! network (nothing listens: the demo relays between two directories inside the
//! container) and modest rlimits, which an unprivileged-looking root (no
//! CAP_SYS_RESOURCE, as in some VMs) can still set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use laminar_tests::laminar_bin;

const ENV_REQUIRE_CONTAINERS: &str = "LAMINAR_REQUIRE_CONTAINERS";
/// The OCI runtime: crun is podman's default on newer distributions, but runc is
/// what Debian bookworm's podman is tested with and what CI installs.
const PODMAN_GLOBAL: [&str; 2] = ["--runtime", "runc"];
/// Upper bound on the rlimits given to containers; less where this host's hard limit
/// is lower (raising past it needs CAP_SYS_RESOURCE).
const NOFILE_MAX: u64 = 4096;
const NPROC_MAX: u64 = 4096;
const DEMO_ARGS: [&str; 7] = ["demo", "--small-files", "50", "--large-files", "1", "--large-size", "40MiB"];
/// 50 small, 1 large and the demo tree's 7 files with awkward names.
const DEMO_OBJECTS: usize = 58;
/// A profile that allows everything but io_uring, which it refuses with EPERM, as
/// Docker's default profile does.
const SECCOMP_NO_IO_URING: &str = r#"{
  "defaultAction": "SCMP_ACT_ALLOW",
  "syscalls": [
    { "names": ["io_uring_setup", "io_uring_enter", "io_uring_register"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1 }
  ]
}
"#;

fn require_containers() -> bool {
    std::env::var(ENV_REQUIRE_CONTAINERS).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn podman(args: &[&str]) -> std::io::Result<Output> {
    Command::new("podman").args(PODMAN_GLOBAL).args(args).output()
}

fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no output").to_string()
}

/// This process's effective uid, from /proc (the tests crate has no unsafe).
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

/// Why podman can't build and run images here, or None when it can.
fn podman_unusable() -> Option<String> {
    match Command::new("podman").arg("--version").output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some("podman not installed (apt-get install podman runc)".to_string())
        }
        Err(e) => return Some(format!("podman cannot be started: {e}")),
        Ok(out) if !out.status.success() => {
            return Some(format!("podman --version failed: {}", first_line(&out.stderr)))
        }
        Ok(_) => {}
    }
    if euid() != Some(0) {
        return Some("not root (the test runs rootful podman: run it as root)".to_string());
    }
    if !on_path("runc") {
        return Some("runc not installed (apt-get install runc)".to_string());
    }
    match podman(&["info", "--format", "{{.Store.GraphDriverName}}"]) {
        Err(e) => Some(format!("podman info could not run: {e}")),
        Ok(out) if !out.status.success() => Some(format!("podman info failed: {}", first_line(&out.stderr))),
        Ok(_) => None,
    }
}

/// True when the test can go on; otherwise prints why it did not run (one line) or,
/// with LAMINAR_REQUIRE_CONTAINERS set, fails.
fn podman_or_skip() -> bool {
    let Some(why) = podman_unusable() else { return true };
    assert!(!require_containers(), "container test could not run: {why}; {ENV_REQUIRE_CONTAINERS} is set");
    eprintln!("container test not run: {why}");
    false
}

/// The hard limit named `name` in /proc/self/limits; None when unlimited or unknown.
fn hard_limit(name: &str) -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let rest = limits.lines().find_map(|l| l.strip_prefix(name))?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn ulimit(name: &str, proc_name: &str, max: u64) -> String {
    let value = hard_limit(proc_name).map_or(max, |hard| hard.min(max));
    assert!(value > 0, "{proc_name} hard limit is 0");
    format!("{name}={value}:{value}")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is inside the workspace").to_path_buf()
}

fn log(what: &str, out: &Output) {
    eprintln!(
        "{what}\n-> {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An image built from the local binary, removed by its tag on drop.
struct Image {
    tag: String,
}

impl Image {
    fn build() -> Image {
        let context = tempfile::tempdir().expect("context directory");
        let root = workspace_root();
        let stage = Command::new("bash")
            .arg(root.join("containers/stage-rootfs.sh"))
            .arg(context.path())
            .arg(laminar_bin())
            .output()
            .expect("run containers/stage-rootfs.sh");
        log("containers/stage-rootfs.sh", &stage);
        assert!(stage.status.success(), "staging the rootfs failed");

        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let tag = format!("localhost/laminar-test:{}-{nanos}", std::process::id());
        let containerfile = root.join("containers/Containerfile.local");
        let containerfile = containerfile.to_str().expect("UTF-8 path");
        let context_path = context.path().to_str().expect("UTF-8 path");
        // No layer cache: each build is its own image (so removing it can't touch
        // another test's) and leaves no intermediate images behind.
        let args = ["build", "--pull=never", "--layers=false", "-f", containerfile, "-t", &tag, context_path];
        let out = podman(&args).expect("run podman build");
        // From here on the tag may exist: remove it even if the build half failed.
        let image = Image { tag };
        if !out.status.success() {
            log(&format!("podman build -t {}", image.tag), &out);
            panic!("podman build of containers/Containerfile.local failed");
        }
        image
    }

    /// `podman run --rm` of this image with `extra` podman options and `args`.
    fn run(&self, extra: &[&str], args: &[&str]) -> Output {
        let nofile = ulimit("nofile", "Max open files", NOFILE_MAX);
        let nproc = ulimit("nproc", "Max processes", NPROC_MAX);
        let mut all = vec!["run", "--rm", "--network", "host", "--ulimit", &nofile, "--ulimit", &nproc];
        all.extend(extra);
        all.push(&self.tag);
        all.extend(args);
        let out = podman(&all).expect("run podman run");
        log(&format!("podman {}", all.join(" ")), &out);
        out
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        match podman(&["rmi", "--force", &self.tag]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("podman rmi {} failed: {}", self.tag, first_line(&out.stderr)),
            Err(e) => eprintln!("podman rmi {} could not run: {e}", self.tag),
        }
    }
}

/// Checks the demo's output and returns the driver its summary names.
fn demo_succeeded(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "the demo failed in the container");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let copied = format!("{DEMO_OBJECTS} objects: {DEMO_OBJECTS} copied");
    assert!(stdout.contains(&copied), "expected {copied:?}: {stdout}");
    let verified = format!("verified {DEMO_OBJECTS} files by both providers' hashes");
    assert!(stdout.contains(&verified), "expected {verified:?}: {stdout}");
    assert!(stdout.contains(&format!("copied 0 and skipped {DEMO_OBJECTS}")), "{stdout}");
    let summary = stdout.lines().find(|l| l.starts_with(&copied)).expect("summary line");
    // "... (2 workers, epoll, 2.00 GiB RAM buffer)"
    let driver = summary.split_once(" workers, ").and_then(|(_, rest)| rest.split(',').next()).unwrap_or_default();
    assert!(driver == "io_uring" || driver == "epoll", "no driver in the summary: {summary}");
    driver.to_string()
}

#[test]
fn the_local_image_builds_offline_and_runs_the_demo_as_its_user() {
    if !podman_or_skip() {
        return;
    }
    let image = Image::build();

    // Whatever the default profile allows, the demo runs; on epoll it says why.
    let out = image.run(&[], &DEMO_ARGS);
    let driver = demo_succeeded(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if driver == "epoll" {
        // podman's default profile answers io_uring_setup with ENOSYS or EPERM; either
        // way the line names seccomp and the flag, not an old kernel (or, on kernels
        // before 5.12 that charge the rings to a low memlock limit, names memlock).
        let line = stderr.lines().find(|l| l.contains(" using the epoll driver:"));
        let line = line.unwrap_or_else(|| panic!("epoll without the reason: {stderr}"));
        assert!(
            line.contains("seccomp=unconfined") || line.contains("memlock"),
            "the line does not name the fix: {line}"
        );
    }

    // The image runs as its own user, who owns the data volume: a large object
    // forced through the stage lands in /var/lib/laminar/stage and back out.
    let user = podman(&["image", "inspect", "--format", "{{.Config.User}}", &image.tag]).expect("podman image inspect");
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "10001:10001", "the image does not run as laminar");
    let staged = ["demo", "--small-files", "5", "--large-files", "1", "--large-size", "40MiB", "--route", "stage"];
    let out = image.run(&[], &[&staged[..], &["--json"]].concat());
    assert_eq!(out.status.code(), Some(0), "the demo through the stage failed in the container");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("one JSON object on stdout");
    assert_eq!(report["routes"]["stage"], 1, "the large object did not go through the stage: {report}");
    assert_eq!(report["objects_failed"], 0, "{report}");

    // With seccomp out of the way io_uring is used, where this host has it: the
    // README's advice works.
    let out = image.run(&["--security-opt", "seccomp=unconfined"], &DEMO_ARGS);
    let driver = demo_succeeded(&out);
    match laminar_engine::runtime::probe_io_uring() {
        None => assert_eq!(driver, "io_uring", "unconfined, but not on io_uring"),
        Some(why) => eprintln!("io_uring is unavailable on this host too ({why}): {driver} is expected"),
    }
}

#[test]
fn with_io_uring_blocked_by_seccomp_the_demo_runs_on_epoll_and_says_why() {
    if !podman_or_skip() {
        return;
    }
    let image = Image::build();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("seccomp-no-io_uring.json");
    std::fs::write(&profile, SECCOMP_NO_IO_URING).unwrap();
    let opt = format!("seccomp={}", profile.display());
    let out = image.run(&["--security-opt", &opt], &DEMO_ARGS);
    assert_eq!(demo_succeeded(&out), "epoll");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().find(|l| l.contains(" using the epoll driver:")).unwrap_or_else(|| {
        panic!("no line saying why the epoll driver is used: {stderr}");
    });
    assert!(line.contains("not permitted") && line.contains("seccomp"), "the line does not name seccomp: {line}");
    assert_eq!(stderr.matches("using the epoll driver").count(), 1, "said more than once: {stderr}");
}
