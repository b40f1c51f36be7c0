//! Every integration test in one binary (one link in release mode), a module per suite:
//! `cargo test --profile ci conformance::cpu::` runs one backend's conformance cases.

mod cli;
mod common;
mod conformance;
mod cuda;
mod cuda_host;
mod experiment;
mod layers;
mod model;
mod oracle;
mod ranks;
mod split;
mod store;
mod wgsl;
