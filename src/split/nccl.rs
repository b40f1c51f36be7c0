//! NCCL (placeholder)
