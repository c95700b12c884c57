//! Host detection and sizing.
