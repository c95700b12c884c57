//! The Google Drive emulator (being written).
