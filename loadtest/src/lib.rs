//! Tally's load generator and exact verifier.
//!
//! Planned scenarios: `viewers` (concurrent viewers switching channels) and `players`
//! (player event streams), each keeping the exact expected state of every entity and
//! verifying the cluster against it. This crate currently holds only the command-line
//! shell; the scenarios are not built yet.
