//! Proves the real-server harness itself: two SeaweedFS "clouds" at once, buckets,
//! rclone uploads and copies, `rclone check --download` (which must also notice a
//! difference), and the fault-injecting proxy in front of a real server.

use std::path::Path;
use std::thread;

use laminar_bench::servers::{rclone_check, rclone_check_output, rclone_copy, Weed};
use laminar_tests::proxy::{Fault, Proxy};

const MIB: usize = 1 << 20;

/// Two instances started concurrently; `None` when the tools are missing and servers
/// are not required (the test is skipped with a note).
fn two_clouds() -> Option<(Weed, Weed)> {
    let (a, b) = thread::scope(|scope| {
        let a = scope.spawn(Weed::start_or_skip);
        let b = scope.spawn(Weed::start_or_skip);
        (a.join().expect("start a"), b.join().expect("start b"))
    });
    match (a.expect("starting SeaweedFS a"), b.expect("starting SeaweedFS b")) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    }
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn write_file(root: &Path, relative: &str, bytes: &[u8]) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn two_clouds_copy_and_check() {
    let Some((a, b)) = two_clouds() else { return };
    assert_ne!(a.endpoint, b.endpoint);
    assert_ne!(a.access_key, b.access_key, "credentials are per instance");
    a.create_bucket("cloud-a").unwrap();
    b.create_bucket("cloud-b").unwrap();

    let local = tempfile::tempdir().unwrap();
    write_file(local.path(), "big.bin", &pattern(12 * MIB + 3, 1));
    write_file(local.path(), "empty", b"");
    write_file(local.path(), "dir/with space & plus+.txt", b"awkward");
    write_file(local.path(), "dir/ünïcødé/日本語.txt", "unicode".as_bytes());
    a.upload_dir(local.path(), "cloud-a/data").unwrap();

    rclone_copy((&a, "cloud-a/data"), (&b, "cloud-b/copy")).unwrap();
    rclone_check((&a, "cloud-a/data"), (&b, "cloud-b/copy")).unwrap();
    b.rclone_check_download(&a, "cloud-a/data", "cloud-b/copy").unwrap();

    // The check is not vacuous: one changed object makes it fail.
    let changed = tempfile::tempdir().unwrap();
    write_file(changed.path(), "empty", b"not empty any more");
    b.upload_file(&changed.path().join("empty"), "cloud-b/copy/empty").unwrap();
    let output = rclone_check_output((&a, "cloud-a/data"), (&b, "cloud-b/copy")).unwrap();
    assert!(!output.status.success(), "rclone check must report the changed object");
    assert!(String::from_utf8_lossy(&output.stderr).contains("empty"));

    // rclone() defines every remote named in its arguments as this instance, and
    // returns the output of a failing command rather than an error.
    let listing = a.rclone(&["lsf", "-R", "a:cloud-a/data"]).unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("dir/with space & plus+.txt"), "{listing}");
    let missing = a.rclone(&["lsf", "a:no-such-bucket"]).unwrap();
    assert!(!missing.status.success());

    let toml = a.remote_toml("src");
    assert!(toml.starts_with("[remotes.src]\ntype = \"s3\"\n"), "{toml}");
    assert!(toml.contains(&format!("endpoint = \"{}\"", a.endpoint)));
    assert!(toml.contains(&format!("secret_access_key = \"{}\"", a.secret_key)));
    assert!(toml.contains("path_style = true"));
}

#[test]
fn proxy_faults_against_a_real_server() {
    let Some(weed) = Weed::start_or_skip().unwrap() else {
        return;
    };
    weed.create_bucket("proxied").unwrap();
    let local = tempfile::tempdir().unwrap();
    let body = pattern(3 * MIB, 2);
    write_file(local.path(), "up/obj", &body);
    weed.upload_dir(&local.path().join("up"), "proxied/clean").unwrap();

    // rclone through a proxy that flips one byte deep in the downloaded body: rclone
    // notices (MD5 against the ETag), retries, and ends with the right bytes.
    let proxy = Proxy::start(weed.addr(), Fault::FlipResponseByte { after_bytes: 2 * MIB as u64 });
    let mut env = weed.rclone_env("flip");
    for (key, value) in &mut env {
        if key.ends_with("_ENDPOINT") {
            *value = proxy.endpoint();
        }
    }
    let down = local.path().join("down");
    let rclone = laminar_bench::servers::find_tool("rclone").unwrap();
    let output = std::process::Command::new(rclone)
        .args(["--config=", "copy", "flip:proxied/clean", down.to_str().unwrap()])
        .envs(env)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(proxy.fault_fired(), "the flip fired");
    assert!(proxy.bytes_relayed() > 2 * MIB as u64);
    assert_eq!(std::fs::read(down.join("obj")).unwrap(), body);
    drop(proxy);

    // A proxy that dies after 4 KiB of responses: the client gets an error, not a hang.
    let proxy = Proxy::start(weed.addr(), Fault::CutAfter { response_bytes: 4096 });
    let mut env = weed.rclone_env("dying");
    for (key, value) in &mut env {
        if key.ends_with("_ENDPOINT") {
            *value = proxy.endpoint();
        }
    }
    let rclone = laminar_bench::servers::find_tool("rclone").unwrap();
    let output = std::process::Command::new(rclone)
        .args(["--config=", "--retries=1", "--low-level-retries=1", "cat", "dying:proxied/clean/obj"])
        .envs(env)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(proxy.fault_fired());
}
