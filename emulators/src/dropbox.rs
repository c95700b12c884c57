//! The Dropbox emulator (being written).
