//! `laminar tune`: checks of this host, a dry run that changes nothing, and an apply
//! against a copy of /proc/sys (the host itself is never changed by the tests).

use std::process::Command;

use laminar_tests::laminar_bin;
use serde_json::Value;

#[test]
fn check_names_every_setting_and_apply_changes_only_what_it_checked() {
    let out = Command::new(laminar_bin())
        .args(["tune", "check", "--json", "--bandwidth", "25Gbit", "--rtt", "20ms"])
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    for name in [
        "net.ipv4.tcp_congestion_control",
        "net.core.default_qdisc",
        "net.core.rmem_max",
        "net.core.wmem_max",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
        "net.core.somaxconn",
        "net.ipv4.tcp_mtu_probing",
        "net.core.busy_poll",
        "net.core.busy_read",
        "kernel.io_uring_disabled",
        "limit.memlock",
        "vm.transparent_hugepage",
    ] {
        let s = &doc[name];
        assert!(s.is_object(), "{name} not checked: {doc}");
        assert!(s["recommended"].is_string() && s["why"].is_string(), "{name}: {s}");
        if s["ok"] == false {
            assert!(s["fix"].is_string(), "{name} is wanting but has no fix: {s}");
        }
    }
    // 25 Gbit/s x 20 ms = 62.5 MB; twice that, in whole MiB.
    assert_eq!(doc["net.core.rmem_max"]["recommended"], (120u64 << 20).to_string());

    // A copy of the sysctls apply may touch, under a fake root.
    let root = tempfile::tempdir().unwrap();
    let copy = |name: &str, value: &str| {
        let p = root.path().join("proc/sys").join(name.replace('.', "/"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, value).unwrap();
    };
    copy("net.ipv4.tcp_available_congestion_control", "reno cubic bbr\n");
    copy("net.ipv4.tcp_congestion_control", "cubic\n");
    copy("net.core.somaxconn", "128\n");
    copy("net.core.busy_poll", "0\n");
    let r = root.path().to_str().unwrap();
    let dry = Command::new(laminar_bin()).args(["tune", "apply", "--root", r]).output().unwrap();
    assert!(dry.status.success());
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(text.contains("dry run") && text.contains("net.core.somaxconn='4096'"), "{text}");
    assert_eq!(std::fs::read_to_string(root.path().join("proc/sys/net/core/somaxconn")).unwrap(), "128\n");
    let done = Command::new(laminar_bin()).args(["tune", "apply", "--yes", "--root", r]).output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(std::fs::read_to_string(root.path().join("proc/sys/net/core/somaxconn")).unwrap(), "4096\n");
    assert_eq!(std::fs::read_to_string(root.path().join("proc/sys/net/ipv4/tcp_congestion_control")).unwrap(), "bbr\n");
    assert_eq!(
        std::fs::read_to_string(root.path().join("proc/sys/net/core/busy_poll")).unwrap(),
        "0\n",
        "ok settings untouched"
    );
    let persisted = std::fs::read_to_string(root.path().join("etc/sysctl.d/90-laminar.conf")).unwrap();
    assert!(persisted.contains("net.core.somaxconn = 4096") && !persisted.contains("busy_poll"), "{persisted}");

    // Bad input: one line naming the flag.
    let bad = Command::new(laminar_bin()).args(["tune", "check", "--bandwidth", "fast"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--bandwidth") && err.lines().count() == 1, "{err}");

    // The socket policy the engine applies is in the plan.
    let plan = Command::new(laminar_bin()).args(["plan", "--json", "--stage-dir", r]).output().unwrap();
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["sockets"]["nodelay"], true, "{plan}");
    assert!(plan["sockets"]["keepalive_secs"].as_u64().is_some());
}
