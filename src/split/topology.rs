//! Topology (placeholder)
