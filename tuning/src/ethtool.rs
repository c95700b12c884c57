//! NIC offload states through the ethtool ioctl (`SIOCETHTOOL`), the same calls
//! `ethtool -k` makes, so no `ethtool` binary is needed. Legacy get commands are used
//! (GRO, TSO, and the LRO flag): every driver since 2.6.x answers them.

/// Offloads of one interface; None where the driver does not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Generic receive offload.
    pub gro: Option<bool>,
    /// Large receive offload.
    pub lro: Option<bool>,
    /// TCP segmentation offload.
    pub tso: Option<bool>,
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETH_FLAG_LRO: u32 = 1 << 15;
const IFNAMSIZ: usize = 16;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes on 64-bit).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40 || std::mem::size_of::<usize>() != 8);

/// Reads GRO, LRO and TSO of `ifname`.
pub fn offloads(ifname: &str) -> Offloads {
    if ifname.is_empty() || ifname.len() >= IFNAMSIZ {
        return Offloads::default();
    }
    // SAFETY: socket() has no memory preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Offloads::default();
    }
    let get = |cmd: u32| -> Option<u32> {
        let mut value = EthtoolValue { cmd, data: 0 };
        let mut req = IfReq { name: [0; IFNAMSIZ], data: &mut value, _pad: [0; 16] };
        req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
        // SAFETY: `req` is a valid ifreq whose data points at a live ethtool_value for
        // the duration of the call; the kernel writes only inside it.
        let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq) };
        (rc == 0).then_some(value.data)
    };
    let out = Offloads {
        gro: get(ETHTOOL_GGRO).map(|v| v != 0),
        lro: get(ETHTOOL_GFLAGS).map(|v| v & ETH_FLAG_LRO != 0),
        tso: get(ETHTOOL_GTSO).map(|v| v != 0),
    };
    // SAFETY: `fd` is the socket opened above, closed once.
    unsafe { libc::close(fd) };
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_answers_or_says_nothing() {
        // Loopback has GRO/TSO on where the kernel answers; in a restricted sandbox
        // the ioctl may be refused, which must read as "unknown", never a crash.
        let o = super::offloads("lo");
        if let Some(tso) = o.tso {
            let _ = tso;
        }
        assert_eq!(super::offloads("no-such-interface-name"), super::Offloads::default());
    }
}
