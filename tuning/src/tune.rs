//! `laminar tune`: the host settings a relay appliance wants, checked against what the
//! host has, each with the reason and the exact command that fixes it; and applying
//! the sysctls among them (persisted in a sysctl.d file), touching nothing else.
//!
//! Paths are read under a root (`/` normally), so tests can check and apply against a
//! copy of `/proc/sys` without touching the host.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// One checked setting.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    /// Name, e.g. `net.ipv4.tcp_congestion_control` or `nic.eth0.gro`.
    pub name: String,
    /// What the host has (None: not readable here).
    pub current: Option<String>,
    /// What a relay appliance wants.
    pub recommended: String,
    /// Whether the current value is good enough.
    pub ok: bool,
    /// Why it matters for a relay.
    pub why: String,
    /// The command that fixes it, when it is not ok.
    pub fix: Option<String>,
    /// Whether `tune apply` sets it (a sysctl it checked).
    pub sysctl: bool,
}

/// What the checks are sized for.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Link bandwidth, bits per second.
    pub bandwidth_bps: u64,
    /// Round-trip time to the stores, seconds.
    pub rtt_seconds: f64,
}

impl Target {
    /// Bandwidth-delay product, bytes.
    pub fn bdp_bytes(&self) -> u64 {
        (self.bandwidth_bps as f64 / 8.0 * self.rtt_seconds) as u64
    }
}

/// Parses `10Gbit`, `25gbit`, `100Gbps`, `800Mbit`.
pub fn parse_bandwidth(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (n, unit) = t.split_at(split);
    let n: f64 = n.parse().ok()?;
    let mult = match unit {
        "gbit" | "gbps" | "g" => 1e9,
        "mbit" | "mbps" | "m" => 1e6,
        "kbit" | "kbps" | "k" => 1e3,
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// Parses `50ms`, `0.2s`, `200us`.
pub fn parse_rtt(s: &str) -> Option<f64> {
    let t = s.trim().to_ascii_lowercase();
    let (n, div) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    n.trim().parse::<f64>().ok().map(|v| v / div).filter(|v| *v > 0.0)
}

fn read(root: &Path, path: &str) -> Option<String> {
    std::fs::read_to_string(root.join(path.trim_start_matches('/')))
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// Rounds up to a whole MiB.
fn round_mib(b: u64) -> u64 {
    b.div_ceil(1 << 20) * (1 << 20)
}

struct Checks<'a> {
    root: &'a Path,
    out: Vec<Setting>,
}

impl Checks<'_> {
    fn sysctl(&mut self, name: &str, recommended: String, ok: impl Fn(&str) -> bool, why: &str) {
        let current = read(self.root, &sysctl_path(name));
        let good = current.as_deref().is_some_and(&ok);
        self.out.push(Setting {
            name: name.to_string(),
            fix: (!good && current.is_some()).then(|| format!("sysctl -w {name}='{recommended}'")),
            ok: good || current.is_none(),
            current,
            recommended,
            why: why.to_string(),
            sysctl: true,
        });
    }

    fn other(
        &mut self,
        name: String,
        current: Option<String>,
        recommended: &str,
        ok: bool,
        why: &str,
        fix: Option<String>,
    ) {
        self.out.push(Setting {
            name,
            current,
            recommended: recommended.to_string(),
            ok,
            why: why.to_string(),
            fix: if ok { None } else { fix },
            sysctl: false,
        });
    }
}

fn at_least(min: u64) -> impl Fn(&str) -> bool {
    move |v: &str| v.trim().parse::<u64>().is_ok_and(|n| n >= min)
}

/// The third (max) field of a `tcp_rmem`-style triple is at least `min`.
fn triple_max_at_least(min: u64) -> impl Fn(&str) -> bool {
    move |v: &str| v.split_whitespace().nth(2).and_then(|m| m.parse::<u64>().ok()).is_some_and(|m| m >= min)
}

/// Runs every check. `worker_cpus` are the CPUs the workers run on (for IRQ affinity).
pub fn check(root: &Path, target: Target, worker_cpus: &[usize]) -> Vec<Setting> {
    let mut c = Checks { root, out: Vec::new() };
    let available = read(root, "/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap_or_default();
    let has_bbr = available.split_whitespace().any(|a| a == "bbr");
    c.sysctl(
        "net.ipv4.tcp_congestion_control",
        "bbr".into(),
        |v| v == "bbr",
        if has_bbr {
            "BBR keeps long fat pipes full despite loss; the default (cubic) halves its window on every drop"
        } else {
            "BBR keeps long fat pipes full despite loss; load it first: modprobe tcp_bbr"
        },
    );
    let fq_available = root.join("sys/module/sch_fq").exists()
        || read(root, "/proc/sys/net/core/default_qdisc").as_deref() == Some("fq")
        || modules_have(root, "sch_fq");
    c.sysctl(
        "net.core.default_qdisc",
        if fq_available { "fq".into() } else { "fq_codel".into() },
        move |v| if fq_available { v == "fq" } else { v == "fq" || v == "fq_codel" },
        if fq_available {
            "fq paces each flow, which BBR was designed around"
        } else {
            "fq is missing from this kernel (sch_fq): BBR paces internally since Linux 4.13, so fq_codel is the next best; install the kernel's extra modules for fq"
        },
    );
    let bdp = target.bdp_bytes();
    let buf = round_mib((2 * bdp).max(16 << 20));
    let why_buf = format!(
        "one connection needs a window of the bandwidth-delay product ({} at this bandwidth and RTT), twice for headroom",
        crate::HumanBytes(bdp)
    );
    c.sysctl("net.core.rmem_max", buf.to_string(), at_least(buf), &why_buf);
    c.sysctl("net.core.wmem_max", buf.to_string(), at_least(buf), &why_buf);
    c.sysctl("net.ipv4.tcp_rmem", format!("4096 131072 {buf}"), triple_max_at_least(buf), &why_buf);
    c.sysctl("net.ipv4.tcp_wmem", format!("4096 16384 {buf}"), triple_max_at_least(buf), &why_buf);
    c.sysctl(
        "net.core.somaxconn",
        "4096".into(),
        at_least(4096),
        "the control API and any local endpoint accept bursts of connections",
    );
    c.sysctl(
        "net.ipv4.tcp_mtu_probing",
        "1".into(),
        |v| v == "1" || v == "2",
        "finds a working MTU when a path drops ICMP (black holes stall big transfers otherwise)",
    );
    c.sysctl(
        "net.core.busy_poll",
        "0".into(),
        |v| v == "0",
        "busy polling spins CPUs the workers need; turn it on (50) only on cores set aside for the NIC",
    );
    c.sysctl("net.core.busy_read", "0".into(), |v| v == "0", "as busy_poll, for blocking reads");
    c.sysctl(
        "kernel.io_uring_disabled",
        "0".into(),
        |v| v == "0",
        "io_uring is Laminar's fast driver; with it disabled the workers run epoll",
    );

    // Memlock: io_uring rings (and registered buffers, where used) count against it.
    let memlock = crate::host::memlock_bytes();
    c.other(
        "limit.memlock".into(),
        Some(memlock.map_or("unlimited".into(), |b| crate::HumanBytes(b).to_string())),
        ">= 64 MiB or unlimited",
        memlock.is_none_or(|b| b >= 64 << 20),
        "io_uring rings are charged to the memlock limit on older kernels; a low limit forces epoll",
        Some("ulimit -l unlimited (systemd: LimitMEMLOCK=infinity; containers: --ulimit memlock=-1)".into()),
    );

    // Transparent huge pages: the RAM tier is a few large regions.
    let thp = read(root, "/sys/kernel/mm/transparent_hugepage/enabled");
    let thp_mode = thp.as_deref().and_then(|t| {
        t.split_whitespace().find(|w| w.starts_with('[')).map(|w| w.trim_matches(['[', ']']).to_string())
    });
    c.other(
        "vm.transparent_hugepage".into(),
        thp_mode.clone(),
        "madvise or always",
        thp_mode.as_deref().is_none_or(|m| m != "never"),
        "the RAM tier is large contiguous regions; huge pages cut TLB misses on the byte path",
        Some("echo madvise > /sys/kernel/mm/transparent_hugepage/enabled".into()),
    );

    // CPU frequency governor of the worker CPUs.
    for cpu in worker_cpus {
        let gov = read(root, &format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"));
        if let Some(g) = gov {
            c.other(
                format!("cpu{cpu}.governor"),
                Some(g.clone()),
                "performance",
                g == "performance",
                "a relay's bursts end before ondemand/powersave governors raise the clock",
                Some(format!("echo performance > /sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor")),
            );
        }
    }
    if !worker_cpus.iter().any(|cpu| root.join(format!("sys/devices/system/cpu/cpu{cpu}/cpufreq")).exists()) {
        c.other(
            "cpu.governor".into(),
            None,
            "performance",
            true,
            "no cpufreq here (a VM or a fixed clock): nothing to set",
            None,
        );
    }

    // NICs: offloads, and where their interrupts land.
    for nic in crate::host::detect_nics(root) {
        if nic.name == "lo" || nic.state != "up" {
            continue;
        }
        for (what, value, why) in [
            ("gro", nic.gro, "GRO merges received segments: fewer, larger reads for the workers"),
            ("tso", nic.tso, "TSO lets the NIC cut large sends: less CPU per byte sent"),
        ] {
            c.other(
                format!("nic.{}.{what}", nic.name),
                value.map(|v| if v { "on".into() } else { "off".into() }),
                "on",
                value.is_none_or(|v| v),
                why,
                Some(format!("ethtool -K {} {what} on", nic.name)),
            );
        }
        let irqs = nic_irqs(root, &nic.name);
        if !irqs.is_empty() {
            let mut cpus: Vec<usize> = irqs.iter().flat_map(|(_, c)| c.iter().copied()).collect();
            cpus.sort_unstable();
            cpus.dedup();
            let on_workers = cpus.iter().filter(|c| worker_cpus.contains(c)).count();
            let want = irqs.len().min(worker_cpus.len()).max(1);
            let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
            let fix = irqs
                .iter()
                .zip(worker_cpus.iter().cycle())
                .map(|((irq, _), cpu)| format!("echo {cpu} > /proc/irq/{irq}/smp_affinity_list"))
                .collect::<Vec<_>>()
                .join("; ");
            c.other(
                format!("nic.{}.irq_affinity", nic.name),
                Some(format!("{} queues on CPUs {}", irqs.len(), list.join(","))),
                &format!("queues spread over {want} worker CPUs"),
                on_workers >= want,
                "each worker should receive its flows' interrupts on its own core, not one core for all",
                Some(format!("systemctl stop irqbalance; {fix}")),
            );
        }
    }
    c.out
}

fn modules_have(root: &Path, module: &str) -> bool {
    let release = read(root, "/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = root.join(format!("lib/modules/{release}/kernel/net/sched"));
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|e| e.file_name().to_string_lossy().starts_with(module))
}

/// The NIC's interrupts and the CPUs each may run on.
fn nic_irqs(root: &Path, ifname: &str) -> Vec<(u32, Vec<usize>)> {
    let dev = root.join(format!("sys/class/net/{ifname}/device"));
    let mut irqs: Vec<u32> = Vec::new();
    for dir in [dev.join("msi_irqs"), dev.join("../msi_irqs")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            irqs.extend(entries.flatten().filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok()));
            break;
        }
    }
    // Queue interrupts only: virtio's config/control vectors and the like carry no flows.
    let names = std::fs::read_to_string(root.join("proc/interrupts")).unwrap_or_default();
    irqs.retain(|irq| {
        names
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{irq}:")))
            .is_some_and(|l| ["input", "output", "rx", "tx", "TxRx", ifname].iter().any(|k| l.contains(k)))
    });
    irqs.sort_unstable();
    irqs.into_iter()
        .map(|irq| {
            let cpus = read(root, &format!("/proc/irq/{irq}/smp_affinity_list"))
                .map(|l| crate::host::parse_cpu_list(&l))
                .unwrap_or_default();
            (irq, cpus)
        })
        .collect()
}

/// What `apply` did or would do.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// `sysctl -w` equivalents, in order.
    pub commands: Vec<String>,
    /// The sysctl.d file written (or that would be).
    pub file: PathBuf,
    /// Whether anything was written.
    pub written: bool,
}

/// Why `apply` could not run.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Not root.
    #[error("setting sysctls needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); run these as root instead:\n{0}")]
    NotPermitted(String),
    /// A write failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Applies the sysctls among `settings` that are not ok: writes them under
/// `root/proc/sys` and persists them in `root/<sysctl_file>`. A dry run (`yes` false)
/// only lists the commands.
pub fn apply(root: &Path, settings: &[Setting], sysctl_file: &Path, yes: bool) -> Result<Applied, ApplyError> {
    let todo: Vec<&Setting> = settings.iter().filter(|s| s.sysctl && !s.ok && s.current.is_some()).collect();
    let commands: Vec<String> = todo.iter().map(|s| format!("sysctl -w {}='{}'", s.name, s.recommended)).collect();
    let file = root.join(sysctl_file.strip_prefix("/").unwrap_or(sysctl_file));
    if !yes || todo.is_empty() {
        return Ok(Applied { commands, file, written: false });
    }
    // SAFETY: geteuid has no preconditions.
    if root == Path::new("/") && unsafe { libc::geteuid() } != 0 {
        return Err(ApplyError::NotPermitted(commands.join("\n")));
    }
    for s in &todo {
        let path = root.join(sysctl_path(&s.name).trim_start_matches('/'));
        std::fs::write(&path, format!("{}\n", s.recommended)).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => ApplyError::NotPermitted(commands.join("\n")),
            _ => ApplyError::Io { path: path.clone(), source: e },
        })?;
    }
    let mut text = String::from("# Written by `laminar tune apply`: settings for a relay appliance.\n");
    for s in &todo {
        text.push_str(&format!("# {}\n{} = {}\n", s.why, s.name, s.recommended));
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ApplyError::Io { path: dir.to_path_buf(), source: e })?;
    }
    std::fs::write(&file, text).map_err(|e| ApplyError::Io { path: file.clone(), source: e })?;
    Ok(Applied { commands, file, written: true })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_parse() {
        assert_eq!(parse_bandwidth("10Gbit"), Some(10_000_000_000));
        assert_eq!(parse_bandwidth("800mbit"), Some(800_000_000));
        assert_eq!(parse_bandwidth("fast"), None);
        assert_eq!(parse_rtt("50ms"), Some(0.05));
        assert_eq!(parse_rtt("0.2s"), Some(0.2));
        assert_eq!(parse_rtt("-1ms"), None);
        let t = Target { bandwidth_bps: 10_000_000_000, rtt_seconds: 0.05 };
        assert_eq!(t.bdp_bytes(), 62_500_000);
    }

    #[test]
    fn apply_writes_only_what_it_checked_and_failed() {
        let root = tempfile::tempdir().unwrap();
        let set = |p: &str, v: &str| {
            let f = root.path().join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, v).unwrap();
        };
        set("proc/sys/net/ipv4/tcp_available_congestion_control", "reno cubic bbr\n");
        set("proc/sys/net/ipv4/tcp_congestion_control", "cubic\n");
        set("proc/sys/net/core/rmem_max", "212992\n");
        set("proc/sys/net/core/somaxconn", "8192\n");
        set("proc/sys/net/core/busy_poll", "0\n");
        let t = Target { bandwidth_bps: 10_000_000_000, rtt_seconds: 0.05 };
        let settings = check(root.path(), t, &[0]);
        let by = |n: &str| settings.iter().find(|s| s.name == n).unwrap();
        assert!(!by("net.ipv4.tcp_congestion_control").ok);
        assert!(by("net.core.somaxconn").ok);
        assert_eq!(by("net.core.rmem_max").recommended, (120u64 << 20).to_string(), "2 x 62.5 MB, in whole MiB");
        // Unreadable here: not judged, not applied.
        assert!(by("net.ipv4.tcp_mtu_probing").ok && by("net.ipv4.tcp_mtu_probing").current.is_none());
        let dry = apply(root.path(), &settings, Path::new("/etc/sysctl.d/90-laminar.conf"), false).unwrap();
        assert!(!dry.written && dry.commands.len() == 2, "{:?}", dry.commands);
        assert_eq!(
            std::fs::read_to_string(root.path().join("proc/sys/net/ipv4/tcp_congestion_control")).unwrap(),
            "cubic\n"
        );
        let done = apply(root.path(), &settings, Path::new("/etc/sysctl.d/90-laminar.conf"), true).unwrap();
        assert!(done.written);
        assert_eq!(
            std::fs::read_to_string(root.path().join("proc/sys/net/ipv4/tcp_congestion_control")).unwrap(),
            "bbr\n"
        );
        assert_eq!(std::fs::read_to_string(root.path().join("proc/sys/net/core/somaxconn")).unwrap(), "8192\n");
        let persisted = std::fs::read_to_string(root.path().join("etc/sysctl.d/90-laminar.conf")).unwrap();
        assert!(persisted.contains("net.ipv4.tcp_congestion_control = bbr") && !persisted.contains("somaxconn"));
    }
}
