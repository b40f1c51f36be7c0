//! The link kernel's runs: every ordered pair of the run's devices, one result each.
