//! Benchmarks on device-resident data (filled in by the bench suite).
