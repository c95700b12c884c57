//! Content sniffing: recognises already-compressed formats by their magic bytes, so
//! that a later format-conversion stage can leave them alone (compressing them again
//! costs CPU and saves nothing).

/// Bytes [`sniff`] looks at.
pub const SNIFF_BYTES: usize = 16;

/// The compressed format `head` starts with, if any.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    const MAGIC: &[(&[u8], &str)] = &[
        (&[0x1f, 0x8b], "gzip"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "zstd"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], "xz"),
        (b"BZh", "bzip2"),
        (&[0x04, 0x22, 0x4d, 0x18], "lz4"),
        (b"PK\x03\x04", "zip"),
        (&[b'7', b'z', 0xbc, 0xaf, 0x27, 0x1c], "7z"),
        (&[0x89, b'P', b'N', b'G'], "png"),
        (&[0xff, 0xd8, 0xff], "jpeg"),
        (b"GIF8", "gif"),
        (b"PAR1", "parquet"),
        (b"ORC", "orc"),
        (b"Obj\x01", "avro"),
    ];
    if let Some((_, name)) = MAGIC.iter().find(|(m, _)| head.starts_with(m)) {
        return Some(name);
    }
    if head.len() >= 12 && &head[4..8] == b"ftyp" {
        return Some("mp4");
    }
    if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        return Some("webp");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::sniff;

    #[test]
    fn magic_bytes_are_recognised() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Some("gzip"));
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 1]), Some("zstd"));
        assert_eq!(sniff(b"\0\0\0\x18ftypmp42"), Some("mp4"));
        assert_eq!(sniff(b"PAR1...."), Some("parquet"));
        assert_eq!(sniff(b"hello world"), None);
        assert_eq!(sniff(b""), None);
    }
}
