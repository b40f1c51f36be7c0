//! decodelab: a kernel lab for the data movement that limits LLM decode.
//!
//! `workload` says what is computed and what a step must move; `backend` runs it;
//! `registry` names every kernel and backend;
//! `experiment` reads YAML, expands sweeps and drives the runner; `report` writes results.

pub mod backend;
pub mod cluster;
pub mod energy;
pub mod error;
pub mod experiment;
pub mod hardware;
pub mod model;
pub mod profiles;
pub mod registry;
pub mod report;
pub mod shard;
pub mod split;
pub mod workload;
