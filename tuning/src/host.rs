//! What the host offers: CPUs (with NUMA nodes and SMT siblings), memory (with cgroup
//! limits), the staging directory's file system, NICs, io_uring and the memlock limit.
//!
//! Each reading is a plain look at `/proc`, `/sys` or one syscall, and each may be
//! missing (a container hides `/sys`, a VM's NIC reports no speed): missing readings
//! are `None` and the plan falls back to conservative defaults.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One CPU the process may use.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Cpu {
    /// CPU number.
    pub id: usize,
    /// NUMA node, if the kernel says.
    pub node: Option<usize>,
    /// Other CPUs on the same core (SMT siblings).
    pub siblings: Vec<usize>,
}

/// Memory readings, bytes.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Memory {
    /// `MemTotal`.
    pub total_bytes: Option<u64>,
    /// `MemAvailable`.
    pub available_bytes: Option<u64>,
    /// The cgroup's memory limit (v2 `memory.max` or v1 `memory.limit_in_bytes`), if
    /// one is set.
    pub cgroup_limit_bytes: Option<u64>,
}

/// The staging directory's file system.
#[derive(Debug, Clone, Serialize)]
pub struct StageFs {
    /// The directory (created if it did not exist).
    pub dir: PathBuf,
    /// Free bytes for this user (statvfs `f_bavail`).
    pub free_bytes: Option<u64>,
    /// Whether the backing block device is rotational (a spinning disk).
    pub rotational: Option<bool>,
    /// Logical block size: the O_DIRECT alignment.
    pub logical_block_bytes: Option<u64>,
    /// Physical block size.
    pub physical_block_bytes: Option<u64>,
    /// Whether an aligned O_DIRECT write and read worked there (probed).
    pub o_direct: bool,
    /// Why not, when it did not.
    pub o_direct_error: Option<String>,
}

/// One network interface.
#[derive(Debug, Clone, Serialize)]
pub struct Nic {
    /// Interface name.
    pub name: String,
    /// Link speed in Mbit/s, if reported.
    pub speed_mbps: Option<u64>,
    /// `operstate`.
    pub state: String,
    /// Offloads, where the driver answers: generic receive offload.
    pub gro: Option<bool>,
    /// Large receive offload.
    pub lro: Option<bool>,
    /// TCP segmentation offload.
    pub tso: Option<bool>,
}

/// Everything detected.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// CPUs in the affinity mask.
    pub cpus: Vec<Cpu>,
    /// NUMA nodes among them.
    pub numa_nodes: usize,
    /// Memory.
    pub memory: Memory,
    /// The staging file system, when a directory was given.
    pub stage: Option<StageFs>,
    /// NICs (loopback and virtual ones included; the plan reads what it needs).
    pub nics: Vec<Nic>,
    /// None when io_uring works, else why not, with the fix.
    pub io_uring_unavailable: Option<String>,
    /// The soft memlock limit (io_uring rings and registered buffers count against it).
    pub memlock_bytes: Option<u64>,
    /// Kernel release.
    pub kernel: String,
}

fn read(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.parse::<usize>().ok()),
        }
    }
    out
}

fn cpus() -> (Vec<Cpu>, usize) {
    let mut nodes: Vec<(usize, Vec<usize>)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/sys/devices/system/node") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix("node").and_then(|n| n.parse().ok()) {
                nodes.push((n, read(e.path().join("cpulist")).map(|l| parse_cpu_list(&l)).unwrap_or_default()));
            }
        }
    }
    let cpus: Vec<Cpu> = crate::allowed_cpus()
        .into_iter()
        .map(|id| Cpu {
            id,
            node: nodes.iter().find(|(_, list)| list.contains(&id)).map(|(n, _)| *n),
            siblings: read(format!("/sys/devices/system/cpu/cpu{id}/topology/thread_siblings_list"))
                .map(|l| parse_cpu_list(&l).into_iter().filter(|c| *c != id).collect())
                .unwrap_or_default(),
        })
        .collect();
    let mut used: Vec<usize> = cpus.iter().filter_map(|c| c.node).collect();
    used.sort_unstable();
    used.dedup();
    (cpus, used.len().max(1))
}

/// A cgroup limit, or None when unlimited or unknown.
fn cgroup_limit_bytes() -> Option<u64> {
    let own = read("/proc/self/cgroup").unwrap_or_default();
    let limit = |text: Option<String>| -> Option<u64> {
        let v = text?.parse::<u64>().ok()?;
        // v1 says "unlimited" with a huge page-rounded number.
        (v < (1 << 60)).then_some(v)
    };
    for line in own.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        if controllers.is_empty() {
            // cgroup v2: "max" when unlimited.
            for p in [format!("/sys/fs/cgroup{path}/memory.max"), "/sys/fs/cgroup/memory.max".to_string()] {
                if let Some(v) = limit(read(&p)) {
                    return Some(v);
                }
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            for p in [
                format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"),
                "/sys/fs/cgroup/memory/memory.limit_in_bytes".to_string(),
            ] {
                if let Some(v) = limit(read(&p)) {
                    return Some(v);
                }
            }
        }
    }
    None
}

fn memory() -> Memory {
    let meminfo = read("/proc/meminfo").unwrap_or_default();
    Memory {
        total_bytes: crate::meminfo_field_bytes(&meminfo, "MemTotal:"),
        available_bytes: crate::meminfo_field_bytes(&meminfo, "MemAvailable:"),
        cgroup_limit_bytes: cgroup_limit_bytes(),
    }
}

/// The block device queue directory behind a path, for its rotational flag and sizes.
fn queue_dir(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let base = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    // A partition's queue is its parent disk's.
    [base.join("queue"), base.join("../queue")].into_iter().find(|q| q.is_dir())
}

/// Probes O_DIRECT in `dir` with one aligned 4 KiB write and read.
pub fn probe_o_direct(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let path = dir.join(format!(".laminar-odirect-probe-{}", std::process::id()));
    let result = (|| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)?;
        let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("layout");
        // An aligned buffer, as O_DIRECT needs; a Vec<u8> has no alignment guarantee.
        let mut block = AlignedBlock::new(layout);
        file.write_all_at(block.as_slice(), 0)?;
        file.read_exact_at(block.as_mut_slice(), 0)?;
        Ok::<(), std::io::Error>(())
    })();
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => format!("the file system at {} does not support O_DIRECT ({e})", dir.display()),
        _ => format!("O_DIRECT probe in {} failed: {e}", dir.display()),
    })
}

struct AlignedBlock {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBlock {
    fn new(layout: std::alloc::Layout) -> AlignedBlock {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        AlignedBlock {
            ptr: std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout)),
            layout,
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points at `layout.size()` initialised (zeroed) bytes we own.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Reads the staging file system at `dir`, creating the directory if needed.
pub fn stage_fs(dir: &Path) -> StageFs {
    let _ = std::fs::create_dir_all(dir);
    let free_bytes = statvfs_free(dir);
    let probe = probe_o_direct(dir);
    let queue = queue_dir(dir);
    let num = |name: &str| queue.as_ref().and_then(|q| read(q.join(name))).and_then(|v| v.parse::<u64>().ok());
    StageFs {
        dir: dir.to_path_buf(),
        free_bytes,
        rotational: num("rotational").map(|v| v == 1),
        logical_block_bytes: num("logical_block_size"),
        physical_block_bytes: num("physical_block_size"),
        o_direct: probe.is_ok(),
        o_direct_error: probe.err(),
    }
}

/// Free bytes for unprivileged users on the file system holding `dir`.
pub fn statvfs_free(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: plain data; zeroed is a valid statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` is valid for writes.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

fn nics() -> Vec<Nic> {
    detect_nics(Path::new("/"))
}

/// NICs under `root/sys/class/net`; offloads are asked of the kernel only when `root`
/// is `/` (tests pass a copy of the tree).
pub fn detect_nics(root: &Path) -> Vec<Nic> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(root.join("sys/class/net")) else { return out };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let speed_mbps = read(e.path().join("speed")).and_then(|s| s.parse::<i64>().ok()).filter(|s| *s > 0);
        let offloads = if root == Path::new("/") { crate::ethtool::offloads(&name) } else { Default::default() };
        out.push(Nic {
            state: read(e.path().join("operstate")).unwrap_or_default(),
            speed_mbps: speed_mbps.map(|s| s as u64),
            gro: offloads.gro,
            lro: offloads.lro,
            tso: offloads.tso,
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The soft RLIMIT_MEMLOCK, None when unlimited.
pub fn memlock_bytes() -> Option<u64> {
    // SAFETY: plain data; zeroed is a valid rlimit.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `r` is valid for writes.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) };
    (rc == 0 && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// Why io_uring can't be used here, with the fix, or None if it can. Creates a real
/// ring, so every cause (`kernel.io_uring_disabled`, seccomp, an old kernel, a low
/// memlock limit) is caught.
pub fn probe_io_uring(entries: u32) -> Option<String> {
    match io_uring::IoUring::new(entries) {
        Ok(_) => None,
        Err(e) => Some(explain_uring_error(&e)),
    }
}

/// One line naming why io_uring failed and the fix.
pub fn explain_uring_error(e: &std::io::Error) -> String {
    explain_uring_error_in(e, &UringContext::read())
}

/// What tells the causes of an io_uring failure apart.
#[derive(Debug, Clone, Copy, Default)]
pub struct UringContext {
    /// This process runs under a seccomp filter (`Seccomp: 2` in /proc/self/status):
    /// a container runtime's default profile, or systemd's sandboxing settings.
    pub seccomp: bool,
    /// `kernel.io_uring_disabled` (absent before Linux 6.6).
    pub io_uring_disabled: Option<u32>,
    /// Whether the kernel's version has io_uring at all (5.1 or later), when known.
    pub kernel_has_io_uring: Option<bool>,
}

impl UringContext {
    /// Reads this process's and this kernel's state.
    pub fn read() -> UringContext {
        let seccomp = read("/proc/self/status")
            .is_some_and(|s| s.lines().any(|l| l.strip_prefix("Seccomp:").is_some_and(|v| v.trim() == "2")));
        UringContext {
            seccomp,
            io_uring_disabled: read("/proc/sys/kernel/io_uring_disabled").and_then(|v| v.parse().ok()),
            kernel_has_io_uring: read("/proc/sys/kernel/osrelease")
                .and_then(|r| kernel_version(&r))
                .map(|version| version >= (5, 1)),
        }
    }
}

/// The major and minor version of a kernel release such as `6.18.44-fc-v669`.
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

const SECCOMP_FIX: &str = "allow io_uring_setup, io_uring_enter and io_uring_register in the seccomp profile (podman/docker: --security-opt seccomp=unconfined or a profile that allows them; systemd: a SystemCallFilter= that lists them)";

/// [`explain_uring_error`] in a given context. Container runtimes' default seccomp
/// profiles answer io_uring_setup with ENOSYS (podman) or EPERM (Docker), which alone
/// would read as an old kernel or the sysctl, so the kernel version and the sysctl are
/// ruled out first.
pub fn explain_uring_error_in(e: &std::io::Error, cx: &UringContext) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) if cx.kernel_has_io_uring == Some(false) => format!(
            "io_uring is not available ({e}): the kernel is older than 5.1; upgrade it for the faster driver"
        ),
        Some(libc::ENOSYS) if cx.seccomp => format!(
            "io_uring is blocked ({e}): this process runs under a seccomp filter (a container's default profile, or a systemd sandbox) that refuses io_uring_setup; {SECCOMP_FIX}"
        ),
        Some(libc::ENOSYS) => format!(
            "io_uring is not available ({e}): the kernel was built without it (CONFIG_IO_URING); use a kernel with it for the faster driver"
        ),
        Some(libc::EPERM) | Some(libc::EACCES) if cx.io_uring_disabled.is_some_and(|v| v != 0) => format!(
            "io_uring is not permitted ({e}): kernel.io_uring_disabled is {}; run `sysctl kernel.io_uring_disabled=0` on the host (laminar tune check shows it)",
            cx.io_uring_disabled.unwrap_or_default()
        ),
        Some(libc::EPERM) | Some(libc::EACCES) if cx.seccomp => format!(
            "io_uring is not permitted ({e}): a seccomp filter (a container's default profile, or a systemd sandbox) refuses io_uring_setup; {SECCOMP_FIX}"
        ),
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "io_uring is not permitted ({e}): a security module or kernel.io_uring_disabled refuses it; check `sysctl kernel.io_uring_disabled` (0 allows it) and the host's LSM policy"
        ),
        Some(libc::ENOMEM) => format!(
            "io_uring could not lock memory ({e}): the memlock limit is too low; raise it (`ulimit -l unlimited`, or LimitMEMLOCK= in the systemd unit)"
        ),
        _ => format!("io_uring could not be set up ({e})"),
    }
}

/// Detects the host; `stage_dir` is probed when given.
pub fn detect(stage_dir: Option<&Path>) -> Host {
    let (cpus, numa_nodes) = cpus();
    Host {
        cpus,
        numa_nodes,
        memory: memory(),
        stage: stage_dir.map(stage_fs),
        nics: nics(),
        io_uring_unavailable: probe_io_uring(crate::RING_ENTRIES),
        memlock_bytes: memlock_bytes(),
        kernel: read("/proc/sys/kernel/osrelease").unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(kernel_version("5.1.0"), Some((5, 1)));
        assert_eq!(kernel_version("4.19.0-27-amd64"), Some((4, 19)));
        assert_eq!(kernel_version("unknown"), None);
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
    }

    #[test]
    fn this_host_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let host = detect(Some(dir.path()));
        assert!(!host.cpus.is_empty());
        assert!(host.memory.total_bytes.unwrap() > 0);
        let stage = host.stage.unwrap();
        assert!(stage.free_bytes.unwrap() > 0);
        // /tmp here is ext4: O_DIRECT works; on tmpfs before 6.6 it would not.
        let _ = stage.o_direct;
    }
}
