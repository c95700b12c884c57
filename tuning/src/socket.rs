//! The per-socket policy the engine applies to every connection it opens: congestion
//! control, buffer sizes, NODELAY and keepalive. Planned here from what the host
//! offers; applied by the engine through socket2.

use serde::Serialize;

/// What each connection gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SocketPolicy {
    /// TCP congestion control (`bbr` where the kernel has it); None keeps the default.
    pub congestion: Option<String>,
    /// SO_SNDBUF; None leaves the kernel's autotuning on (the right choice unless
    /// `net.ipv4.tcp_wmem` cannot be raised).
    pub send_buffer_bytes: Option<usize>,
    /// SO_RCVBUF; None leaves autotuning on.
    pub recv_buffer_bytes: Option<usize>,
    /// TCP_NODELAY: requests and small objects go out at once.
    pub nodelay: bool,
    /// Keepalive idle time: idle pooled connections that died are noticed.
    pub keepalive_secs: Option<u64>,
}

impl Default for SocketPolicy {
    fn default() -> Self {
        SocketPolicy {
            congestion: None,
            send_buffer_bytes: None,
            recv_buffer_bytes: None,
            nodelay: true,
            keepalive_secs: Some(30),
        }
    }
}

impl SocketPolicy {
    /// The policy for this host: BBR when the kernel offers it.
    pub fn for_host() -> SocketPolicy {
        let available =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap_or_default();
        let congestion = available.split_whitespace().any(|c| c == "bbr").then(|| "bbr".to_string());
        SocketPolicy { congestion, ..SocketPolicy::default() }
    }

    /// One line for logs and `laminar plan`.
    pub fn describe(&self) -> String {
        let buffers = match (self.send_buffer_bytes, self.recv_buffer_bytes) {
            (None, None) => "buffers autotuned".to_string(),
            (s, r) => format!(
                "send buffer {}, receive buffer {}",
                s.map_or("autotuned".into(), |b| crate::HumanBytes(b as u64).to_string()),
                r.map_or("autotuned".into(), |b| crate::HumanBytes(b as u64).to_string())
            ),
        };
        format!(
            "congestion {}, {}, {}, {}",
            self.congestion.as_deref().unwrap_or("system default"),
            if self.nodelay { "NODELAY" } else { "Nagle" },
            self.keepalive_secs.map_or("no keepalive".into(), |s| format!("keepalive {s}s")),
            buffers
        )
    }
}
