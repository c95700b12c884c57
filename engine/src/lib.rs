//! Relay engine.
