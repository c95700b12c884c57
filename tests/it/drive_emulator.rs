//! The Drive emulator against Google's own client: starts the emulator in this process,
//! seeds a Doc and a shortcut, and runs `tests/conformance/drive_sdk.py`
//! (google-api-python-client and google-auth, unchanged) against it. Then checks, from
//! the emulator's side, that the bytes the client uploaded are the bytes it holds.
//!
//! Skipped with a note when the client libraries are not installed, unless
//! `LAMINAR_REQUIRE_SERVERS` is set (tests/run.sh sets it and installs them).

use std::path::PathBuf;
use std::process::Command;

use laminar_bench::servers::require_servers;
use laminar_emulators::drive::{DocKind, DriveEmulator, DriveOptions};

const DOC_TEXT: &str = "Notes from the emulator\nline two, with a comma\n";

fn python() -> String {
    std::env::var("LAMINAR_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether the client libraries import; panics when they don't and servers are required.
fn client_installed() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import googleapiclient.discovery, google.oauth2.credentials, google.oauth2.service_account"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !require_servers(),
            "google-api-python-client / google-auth not importable by {} but LAMINAR_REQUIRE_SERVERS is set \
             (tests/run.sh installs them into target/venv and sets LAMINAR_PYTHON)",
            python()
        );
        eprintln!("skipping: google-api-python-client not installed (tests/run.sh installs it)");
    }
    ok
}

/// The bytes drive_sdk.py uploads: (i * 31 + seed) mod 251.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| u8::try_from((i * 31 + seed) % 251).expect("below 251")).collect()
}

#[test]
fn google_client_conforms() {
    if !client_installed() {
        return;
    }
    let emu = DriveEmulator::start(DriveOptions::default()).expect("start the Drive emulator");
    let doc_id = emu.insert_doc("seed/notes", DocKind::Document, DOC_TEXT).expect("seed a Doc");
    let target = emu.insert("seed/target.bin", b"target".to_vec()).expect("seed a file");
    let shortcut = emu.insert_shortcut("seed/link", &target).expect("seed a shortcut");
    let big_doc = emu.insert_doc("seed/big", DocKind::Document, &"x".repeat(10 << 20)).expect("seed a big Doc");
    let album = emu.mkdir("seed/album").expect("seed a folder");
    let folder_shortcut = emu.insert_shortcut("seed/album link", &album).expect("seed a folder shortcut");
    let mut config = serde_json::to_value(emu.endpoints()).expect("endpoints serialise");
    config["doc_id"] = doc_id.into();
    config["doc_text"] = DOC_TEXT.into();
    config["shortcut_id"] = shortcut.into();
    config["shortcut_target"] = target.into();
    config["big_doc_id"] = big_doc.into();
    config["folder_shortcut_id"] = folder_shortcut.into();
    config["folder_shortcut_target"] = album.into();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/drive_sdk.py");
    let mut cmd = Command::new(python());
    cmd.arg(&script).arg(config.to_string());
    // Loopback only: keep any proxy out of the client's way.
    for var in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run drive_sdk.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drive_sdk.py failed ({}):\n{stderr}\n{stdout}", out.status);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("drive_sdk.py prints one JSON line");
    eprintln!("drive_sdk.py: {} checks passed", summary["checks"]);
    assert!(summary["checks"].as_u64().unwrap_or(0) > 50, "{summary}");

    // What the client uploaded is what the emulator holds, byte for byte.
    for name in ["small", "big"] {
        let f = &summary[name];
        let id = f["id"].as_str().expect("an id");
        let want = pattern(
            usize::try_from(f["size"].as_u64().expect("a size")).expect("small"),
            usize::try_from(f["seed"].as_u64().expect("a seed")).expect("small"),
        );
        assert_eq!(emu.read_id(id).as_deref(), Some(want.as_slice()), "{name}: the stored bytes");
    }
    assert_eq!(emu.read("sdk/list/sub/renamed.bin"), Some(pattern(5000, 5)), "renamed, rewritten and moved");
    assert_eq!(emu.ids_at("sdk/list/dup.txt").len(), 2, "duplicate names in one folder");
    let stats = emu.stats();
    assert!(stats.requests["upload.chunk"] >= 4, "{stats:?}");
}
