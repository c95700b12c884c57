//! `laminar demo`: Dropbox into Google Drive, between the two providers' emulators.
//!
//! Both emulators (`laminar-emulators`, the ones the test suite proves against the
//! providers' official SDKs) start in this process on 127.0.0.1; nothing leaves the
//! machine. The Dropbox one is seeded with a sample tree: many small files in folders,
//! a few large ones (read as parallel ranges, written to Drive as one resumable
//! stream), names with accents, CJK, emoji and URL-special characters, and an empty
//! file. The relay goes through the same configuration, registry and engine as
//! `laminar relay dbx:Demo gd:Demo`.
//!
//! Dropbox and Drive share no hash, so the check afterwards uses each provider's own:
//! the MD5 Drive computed over what it stored must equal the MD5 of the bytes seeded
//! into Dropbox, and Dropbox's content_hash of the source must equal a content_hash
//! computed over the bytes Drive holds (with the emulator's own implementation, not the
//! engine's). Then the relay runs again and must copy nothing.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use laminar_emulators::drive::{DriveEmulator, DriveOptions};
use laminar_emulators::dropbox::{content_hash_hex, DropboxEmulator, DropboxOptions};
use laminar_engine::checksum::{ChecksumAlgo, Hasher};
use laminar_tuning::{parse_size, HumanBytes};

use super::pattern;
use crate::cli::{options, print_report, relay_with_progress, DemoArgs, Fail};
use crate::config::Config;

/// The folder the sample tree is seeded under in Dropbox and relayed to in Drive.
const FOLDER: &str = "Demo";
/// Folders the small files are spread over.
const SMALL_FOLDERS: usize = 20;
/// Files whose names are awkward for one provider's API or the other's.
const AWKWARD: [(&str, usize); 7] = [
    ("Photos/2024/Été à Paris/IMG_0001.jpg", 180_001),
    ("Docs/Résumé – final.pdf", 4_321),
    ("Docs/日本語 ノート.txt", 99),
    ("Music/Sigur Rós/Ágætis byrjun.flac", 65_537),
    ("Notes/party 🎉 plan.txt", 1_024),
    ("Notes/100% #1 & more; a+b=c?.txt", 777),
    ("empty.txt", 0),
];

pub(super) fn run(args: DemoArgs) -> Result<u8, Fail> {
    let opts = options(&args.engine)?;
    let large_size =
        parse_size(&args.large_size).map_err(|e| Fail { code: 2, message: format!("--large-size: {e}") })?;
    let large_size = usize::try_from(large_size).ok().filter(|&n| n <= 1 << 30).ok_or_else(|| Fail {
        code: 2,
        message: "--large-size: at most 1GiB (the emulators hold files in memory)".into(),
    })?;
    let dbx = DropboxEmulator::start(DropboxOptions::default()).map_err(emulator_fail)?;
    let gd = DriveEmulator::start(DriveOptions::default()).map_err(emulator_fail)?;
    if !args.json {
        println!(
            "demo: started a Dropbox emulator ({}) and a Google Drive emulator ({}) on loopback: emulated \
             services, no network",
            dbx.api_url(),
            gd.api_url()
        );
    }

    let files = sample_tree(args.small_files, args.large_files, large_size);
    let total: u64 = files.values().map(|b| b.len() as u64).sum();
    // A fixed modification time, so the demo's Drive files say when they were made.
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
    let mut content_hashes = BTreeMap::new();
    for (rel, bytes) in &files {
        let info = dbx.insert_with(&format!("/{FOLDER}/{rel}"), bytes.clone(), modified).map_err(emulator_fail)?;
        content_hashes.insert(rel.clone(), info.content_hash);
    }
    if !args.json {
        println!("demo: seeded Dropbox with {} files ({}) under /{FOLDER}", files.len(), HumanBytes(total));
    }

    let config = Config::parse(&format!("{}\n{}", dbx.remote_toml("dbx"), gd.remote_toml("gd")))
        .map_err(|e| Fail { code: 1, message: format!("demo: {e}") })?;
    let src_url = format!("dbx:{FOLDER}");
    let dst_url = format!("gd:{FOLDER}");
    let (src, dst) = (config.location(&src_url)?, config.location(&dst_url)?);
    if !args.json {
        println!("demo: laminar relay {src_url} {dst_url}");
    }
    let report = relay_with_progress(src, dst, opts.clone(), !args.json, &mut |_| {})?;
    print_report(&report, args.json, false);

    let problems = verify(&files, &content_hashes, &gd);
    let (src, dst) = (config.location(&src_url)?, config.location(&dst_url)?);
    let again = relay_with_progress(src, dst, opts, false, &mut |_| {})?;
    if !args.json {
        println!(
            "demo: verified {} files by both providers' hashes (Drive's MD5 of what it stored against the \
             Dropbox bytes, Dropbox's content_hash against the Drive bytes); a second relay copied {} and \
             skipped {}",
            files.len() - problems.len(),
            again.objects_copied,
            again.objects_skipped
        );
    }
    for problem in &problems {
        eprintln!("laminar: demo: {problem}");
    }
    let failed =
        report.objects_failed > 0 || again.objects_failed > 0 || !problems.is_empty() || again.objects_copied > 0;
    Ok(if failed { 1 } else { 0 })
}

fn emulator_fail(e: anyhow::Error) -> Fail {
    Fail { code: 1, message: format!("demo: {e:#}") }
}

/// The sample tree, by path below the demo folder.
fn sample_tree(small: usize, large: usize, large_size: usize) -> BTreeMap<String, Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(0x1a31_4a12);
    let mut files = BTreeMap::new();
    for i in 0..small {
        let len = rng.usize(1..=64 << 10);
        files.insert(format!("Small/{:02}/object-{i:05}.bin", i % SMALL_FOLDERS), pattern(&mut rng, len));
    }
    for i in 0..large {
        files.insert(format!("Video/clip-{i}.mov"), pattern(&mut rng, large_size));
    }
    for (name, len) in AWKWARD {
        files.insert(name.to_string(), pattern(&mut rng, len));
    }
    files
}

/// Every seeded file, checked in Drive by both providers' hashes; what is wrong, one
/// line each.
fn verify(
    files: &BTreeMap<String, Vec<u8>>,
    content_hashes: &BTreeMap<String, String>,
    gd: &DriveEmulator,
) -> Vec<String> {
    let prefix = format!("{FOLDER}/");
    let mut in_drive = BTreeMap::new();
    for e in gd.tree() {
        if e.trashed || e.mime_type.ends_with(".folder") {
            continue;
        }
        if let Some(rel) = e.path.strip_prefix(&prefix) {
            if in_drive.insert(rel.to_string(), e.clone()).is_some() {
                return vec![format!("{rel} is in Drive twice")];
            }
        }
    }
    let mut problems = Vec::new();
    for (rel, bytes) in files {
        let Some(entry) = in_drive.remove(rel) else {
            problems.push(format!("{rel} is missing in Drive"));
            continue;
        };
        let Some(stored) = gd.read_id(&entry.id) else {
            problems.push(format!("{rel}: Drive holds no bytes for it"));
            continue;
        };
        let mut md5 = Hasher::new(ChecksumAlgo::Md5);
        md5.update(bytes);
        if entry.md5.as_deref() != Some(md5.finish().to_hex().as_str()) {
            problems.push(format!("{rel}: Drive's md5Checksum does not match the Dropbox bytes"));
        }
        if content_hash_hex(&stored) != content_hashes[rel] {
            problems.push(format!("{rel}: Dropbox's content_hash does not match the bytes in Drive"));
        }
    }
    problems.extend(in_drive.keys().map(|rel| format!("{rel} is in Drive but not in the source")));
    problems
}
