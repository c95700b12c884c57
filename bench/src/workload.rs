//! Workloads: named, deterministic sets of objects, and the bytes inside them.
//!
//! An object's contents are a pure function of its key and offset ([`fill`]), so the
//! synthetic endpoint can serve any range of any object without storing it, a real
//! server can be loaded with the same bytes, and a destination can be checked against
//! a CRC32C computed without reading the source back.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// One object of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSpec {
    /// Key relative to the workload's prefix, e.g. `g0-16384/obj-000007`.
    pub key: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// A named set of objects.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    /// Name, e.g. `mixed`.
    pub name: String,
    /// Number of objects.
    pub object_count: usize,
    /// Sum of the object sizes.
    pub total_bytes: u64,
    /// The objects, in key order.
    #[serde(skip)]
    pub objects: Vec<ObjectSpec>,
}

/// The workload names `named` knows, for help texts and errors.
pub const WORKLOAD_NAMES: &str = "small, large, mixed, pareto, tiny";

const PARETO_SEED: u64 = 7;
const PARETO_OBJECTS: usize = 1000;
const PARETO_MIN_BYTES: f64 = 64.0 * 1024.0;
const PARETO_ALPHA: f64 = 1.1;
const PARETO_MAX_BYTES: u64 = 512 << 20;

impl Workload {
    /// The built-in workloads: `small` (10,000 × 16 KiB), `large` (8 × 1 GiB), `mixed`
    /// (1,000 × 16 KiB + 4 × 256 MiB), `pareto` (1,000 sizes from a Pareto
    /// distribution, α = 1.1, minimum 64 KiB, capped at 512 MiB, fixed seed) and `tiny`
    /// (the test suite's: 20 × 16 KiB + 2 × 40 MiB, so parts are exercised).
    pub fn named(name: &str) -> Result<Workload> {
        let groups: Vec<(usize, u64)> = match name {
            "small" => vec![(10_000, 16 << 10)],
            "large" => vec![(8, 1 << 30)],
            "mixed" => vec![(1000, 16 << 10), (4, 256 << 20)],
            "tiny" => vec![(20, 16 << 10), (2, 40 << 20)],
            "pareto" => return Ok(Workload::from_objects(name, pareto_objects())),
            other => bail!("unknown workload {other:?}: use one of {WORKLOAD_NAMES}"),
        };
        let mut objects = Vec::new();
        for (g, (count, size)) in groups.iter().enumerate() {
            for i in 0..*count {
                objects.push(ObjectSpec { key: format!("g{g}-{size}/obj-{i:06}"), size_bytes: *size });
            }
        }
        Ok(Workload::from_objects(name, objects))
    }

    /// A workload of the given objects (sorted by key here).
    pub fn from_objects(name: &str, mut objects: Vec<ObjectSpec>) -> Workload {
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Workload {
            name: name.to_string(),
            object_count: objects.len(),
            total_bytes: objects.iter().map(|o| o.size_bytes).sum(),
            objects,
        }
    }

    /// The workload with the same objects, restored after deserialising (which skips
    /// the object list).
    pub fn reload(&self) -> Result<Workload> {
        Workload::named(&self.name)
    }

    /// Writes the workload's files under `dir` (keys become paths), with [`fill`]'s bytes.
    pub fn generate(&self, dir: &std::path::Path) -> Result<()> {
        use std::io::Write;
        let mut block = vec![0u8; 1 << 20];
        for o in &self.objects {
            let path = dir.join(&o.key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
            let mut offset = 0;
            while offset < o.size_bytes {
                let n = (o.size_bytes - offset).min(block.len() as u64) as usize;
                fill(&o.key, offset, &mut block[..n]);
                f.write_all(&block[..n])?;
                offset += n as u64;
            }
            f.flush()?;
        }
        Ok(())
    }
}

fn pareto_objects() -> Vec<ObjectSpec> {
    let mut rng = fastrand::Rng::with_seed(PARETO_SEED);
    (0..PARETO_OBJECTS)
        .map(|i| {
            // Inverse transform: x = x_min / U^(1/α), U uniform in (0, 1].
            let u = 1.0 - rng.f64();
            let size = (PARETO_MIN_BYTES / u.powf(1.0 / PARETO_ALPHA)) as u64;
            ObjectSpec { key: format!("pareto/obj-{i:06}"), size_bytes: size.min(PARETO_MAX_BYTES) }
        })
        .collect()
}

/// Length of the repeating pattern object contents are cut from.
pub const PATTERN_BYTES: usize = 1 << 20;
const _: () = assert!(PATTERN_BYTES.is_power_of_two());

/// The pattern: [`PATTERN_BYTES`] pseudo-random bytes, the same in every process.
pub fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut rng = fastrand::Rng::with_seed(0x1a31_4a72);
        let mut p = vec![0u8; PATTERN_BYTES];
        rng.fill(&mut p);
        p
    })
}

/// Where in the pattern a key's byte 0 is (FNV-1a of the key, so each object differs).
pub fn pattern_start(key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h as usize) & (PATTERN_BYTES - 1)
}

/// Fills `buf` with the bytes of object `key` from `offset` on.
pub fn fill(key: &str, offset: u64, buf: &mut [u8]) {
    let p = pattern();
    let mut at = (pattern_start(key) + (offset as usize & (PATTERN_BYTES - 1))) & (PATTERN_BYTES - 1);
    let mut done = 0;
    while done < buf.len() {
        let n = (buf.len() - done).min(PATTERN_BYTES - at);
        buf[done..done + n].copy_from_slice(&p[at..at + n]);
        done += n;
        at = 0;
    }
}

/// The slices of the pattern that make up bytes `offset..offset + len` of object `key`,
/// for serving without copying.
pub fn slices(key: &str, offset: u64, len: u64) -> impl Iterator<Item = &'static [u8]> {
    let p = pattern();
    let mut at = (pattern_start(key) + (offset as usize & (PATTERN_BYTES - 1))) & (PATTERN_BYTES - 1);
    let mut left = len;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min((PATTERN_BYTES - at) as u64) as usize;
        let s = &p[at..at + n];
        left -= n as u64;
        at = (at + n) & (PATTERN_BYTES - 1);
        Some(s)
    })
}

/// CRC32C of a whole object.
pub fn object_crc32c(key: &str, size_bytes: u64) -> u32 {
    slices(key, 0, size_bytes).fold(0, crc32c::crc32c_append)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_add_up() {
        let w = Workload::named("mixed").unwrap();
        assert_eq!(w.object_count, 1004);
        assert_eq!(w.total_bytes, 1000 * (16 << 10) + 4 * (256 << 20));
        assert_eq!(Workload::named("large").unwrap().total_bytes, 8 << 30);
        assert!(Workload::named("nope").unwrap_err().to_string().contains("pareto"));
        assert!(w.objects.windows(2).all(|p| p[0].key < p[1].key));
    }

    #[test]
    fn pareto_is_fixed_and_heavy_tailed() {
        let a = Workload::named("pareto").unwrap();
        let b = Workload::named("pareto").unwrap();
        assert_eq!(a.objects, b.objects);
        assert_eq!(a.object_count, PARETO_OBJECTS);
        let max = a.objects.iter().map(|o| o.size_bytes).max().unwrap();
        let median = {
            let mut s: Vec<u64> = a.objects.iter().map(|o| o.size_bytes).collect();
            s.sort();
            s[s.len() / 2]
        };
        assert!(max > 100 * median, "max {max} median {median}");
    }

    #[test]
    fn fill_and_slices_agree_across_the_pattern_wrap() {
        let key = "g1-x/obj-000001";
        for (offset, len) in [(0u64, 10usize), (PATTERN_BYTES as u64 - 5, 20), (3 * PATTERN_BYTES as u64 + 7, 2 << 20)]
        {
            let mut a = vec![0u8; len];
            fill(key, offset, &mut a);
            let b: Vec<u8> = slices(key, offset, len as u64).flatten().copied().collect();
            assert_eq!(a, b);
            // A range is the same bytes as the matching part of a longer read.
            let mut whole = vec![0u8; len + 3];
            fill(key, offset.saturating_sub(3), &mut whole);
            if offset >= 3 {
                assert_eq!(&whole[3..], &a[..]);
            }
        }
        let mut c = vec![0u8; 100];
        fill("other", 0, &mut c);
        let mut d = vec![0u8; 100];
        fill(key, 0, &mut d);
        assert_ne!(c, d);
        assert_eq!(object_crc32c(key, 100), crc32c::crc32c(&d));
    }
}
