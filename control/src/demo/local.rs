//! `laminar demo --local`: the whole engine between two local directories.
//!
//! Generates many small files and a few large ones in a temporary source directory,
//! relays them through the workers to a temporary destination (large files go as
//! parallel parts), checks every byte independently, runs the relay again to show
//! that nothing is copied twice, prints the summary and removes both directories.

use std::sync::Arc;

use laminar_engine::backend::file::FileBackend;
use laminar_engine::relay::Location;
use laminar_tuning::{parse_size, HumanBytes};

use super::io_fail;
use crate::cli::{options, print_report, relay_with_progress, DemoArgs, Fail};

pub(super) fn run(args: DemoArgs) -> Result<u8, Fail> {
    let opts = options(&args.engine)?;
    let large_size =
        parse_size(&args.large_size).map_err(|e| Fail { code: 2, message: format!("--large-size: {e}") })?;
    let dir = tempfile::Builder::new().prefix("laminar-demo-").tempdir().map_err(io_fail)?;
    let src = dir.path().join("source");
    let dst = dir.path().join("destination");
    let total = generate(&src, args.small_files, args.large_files, large_size).map_err(io_fail)?;
    if !args.json {
        println!(
            "demo: generated {} files ({}) in {}",
            args.small_files + args.large_files,
            HumanBytes(total),
            src.display()
        );
    }
    let location = |path: &std::path::Path| {
        Location::new(Arc::new(FileBackend::new(path.to_path_buf())), "", format!("file://{}", path.display()))
    };
    let report = relay_with_progress(location(&src), location(&dst), opts.clone(), !args.json, &mut |_| {})?;
    print_report(&report, args.json, false);
    let mismatched = verify_trees(&src, &dst).map_err(io_fail)?;
    let again = relay_with_progress(location(&src), location(&dst), opts, false, &mut |_| {})?;
    if !args.json {
        println!(
            "demo: verified {} files byte for byte against the source; a second relay copied {} and skipped {}",
            args.small_files + args.large_files - mismatched.len(),
            again.objects_copied,
            again.objects_skipped
        );
    }
    for path in &mismatched {
        eprintln!("laminar: demo: {path} differs between source and destination");
    }
    let failed = report.objects_failed > 0 || !mismatched.is_empty() || again.objects_copied > 0;
    Ok(if failed { 1 } else { 0 })
}

fn generate(root: &std::path::Path, small: usize, large: usize, large_size: u64) -> std::io::Result<u64> {
    let mut rng = fastrand::Rng::with_seed(0x1a31_4a12);
    let mut total = 0;
    for i in 0..small {
        let dir = root.join(format!("small/{:02}", i % 50));
        std::fs::create_dir_all(&dir)?;
        let len = rng.usize(1..=64 << 10);
        let data: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
        std::fs::write(dir.join(format!("object-{i:05}.bin")), &data)?;
        total += len as u64;
    }
    std::fs::create_dir_all(root.join("large"))?;
    let mut block = vec![0u8; 1 << 20];
    for i in 0..large {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(root.join(format!("large/blob-{i}.bin")))?);
        let mut left = large_size;
        while left > 0 {
            rng.fill(&mut block);
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n])?;
            left -= n as u64;
        }
        total += large_size;
    }
    Ok(total)
}

/// Compares every file under `src` with its twin under `dst`, a block at a time so
/// the check's memory stays small; returns the ones that differ.
fn verify_trees(src: &std::path::Path, dst: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut bad = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            if !same_file_contents(&path, &dst.join(rel))? {
                bad.push(rel.display().to_string());
            }
        }
    }
    Ok(bad)
}

fn same_file_contents(a: &std::path::Path, b: &std::path::Path) -> std::io::Result<bool> {
    use std::io::Read;
    let Ok(fb) = std::fs::File::open(b) else { return Ok(false) };
    let mut fa = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(a)?);
    let mut fb = std::io::BufReader::with_capacity(1 << 20, fb);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }

    fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok(n)
    }
}
