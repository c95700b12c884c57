//! The Dropbox emulator against Dropbox's own client: starts the emulator in this
//! process, seeds a file, and runs `tests/conformance/dropbox_sdk.py` (the official
//! `dropbox` SDK, unchanged, reaching the emulator through a `requests` session it is
//! given) against it. Then checks, from the emulator's side, that the bytes the client
//! uploaded are the bytes it holds and that the faults the script asked for were sent.
//!
//! Skipped with a note when the SDK is not installed, unless `LAMINAR_REQUIRE_SERVERS`
//! is set (tests/run.sh sets it, installs the SDK into target/venv and sets
//! `LAMINAR_PYTHON`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use laminar_bench::servers::require_servers;
use laminar_emulators::dropbox::{content_hash_hex, DropboxEmulator, DropboxOptions, BLOCK_BYTES};

const SEEDED_PATH: &str = "/Seeded/Grüße.txt";
const SEEDED_TEXT: &str = "seeded from Rust, read by the SDK\n";
/// 2019-06-01T12:00:00Z.
const SEEDED_CLIENT_MODIFIED_S: u64 = 1_559_390_400;

fn python() -> String {
    std::env::var("LAMINAR_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether the SDK imports; panics when it doesn't and servers are required.
fn sdk_installed() -> bool {
    let ok = Command::new(python())
        .args(["-c", "import dropbox, dropbox.file_transfer"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            !require_servers(),
            "the dropbox SDK is not importable by {} but LAMINAR_REQUIRE_SERVERS is set \
             (tests/run.sh installs it into target/venv and sets LAMINAR_PYTHON)",
            python()
        );
        eprintln!("skipping: the dropbox SDK is not installed (tests/run.sh installs it)");
    }
    ok
}

/// The bytes dropbox_sdk.py uploads: (i * 31 + seed + i / 4093) mod 251.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| u8::try_from((i * 31 + seed + i / 4093) % 251).expect("below 251")).collect()
}

#[test]
fn dropbox_sdk_conforms() {
    if !sdk_installed() {
        return;
    }
    let emu = DropboxEmulator::start(DropboxOptions { seed: 11, ..DropboxOptions::default() }).expect("start");
    let seeded = emu
        .insert_with(SEEDED_PATH, SEEDED_TEXT, UNIX_EPOCH + Duration::from_secs(SEEDED_CLIENT_MODIFIED_S))
        .expect("seed a file");
    let mut config = serde_json::to_value(emu.endpoints()).expect("endpoints serialise");
    config["seeded_path"] = SEEDED_PATH.into();
    config["seeded_text"] = SEEDED_TEXT.into();
    config["seeded_hash"] = seeded.content_hash.clone().into();

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/dropbox_sdk.py");
    let out = Command::new(python()).arg(&script).arg(config.to_string()).output().expect("run dropbox_sdk.py");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("dropbox_sdk.py stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "dropbox_sdk.py failed ({:?})", out.status.code());
    assert!(stdout.contains("checks passed"), "the script did not finish");

    // The bytes as the emulator holds them, checked without the SDK.
    let block = BLOCK_BYTES;
    for (path, want) in [
        ("/Conformance/Seq/Big.bin", pattern(2 * block + 123_457, 2)),
        ("/Conformance/Conc/a.bin", pattern(2 * block + 5, 3)),
        ("/Conformance/Conc/b.bin", pattern(3 * block, 4)),
        ("/Conformance/Helpers/parallel.bin", pattern(2 * 8 * (1 << 20) + 99, 6)),
        ("/Conformance/Batch/v1.bin", pattern(1000, 5)),
        ("/Conformance/Small/s0.txt", pattern(100, 20)),
        ("/Conformance/Small/s2.txt", pattern(102, 22)),
    ] {
        let got = emu.file(path).unwrap_or_else(|| panic!("{path} is missing"));
        assert!(got == want, "{path}: {} bytes, want {}", got.len(), want.len());
        let meta = emu.metadata(path).expect("metadata");
        assert_eq!(meta.content_hash, content_hash_hex(&want), "{path}");
    }
    let unicode = emu.file("/conformance/ünïcødé/файл 文件 😀.txt").expect("the non-ASCII file");
    assert_eq!(unicode, "déjà vu ✓".as_bytes());
    assert!(emu.file("/Conformance/empty.txt").is_none(), "deleted by the script");
    assert_eq!(emu.metadata("/conformance/small.bin").expect("small").client_modified_s, 1_614_834_367);

    let stats = emu.stats();
    assert_eq!(stats.throttled, 2, "{stats:?}");
    assert!(stats.auth_rejected >= 2, "an expired and a made-up token: {stats:?}");
    assert_eq!(stats.requests.get("files/upload_session/finish_batch_v2"), Some(&3), "{stats:?}");
    assert_eq!(stats.batch_entries_busy, 1, "{stats:?}");
    assert!(stats.requests.get("oauth2/token").is_some_and(|&n| n >= 3), "{stats:?}");
}
