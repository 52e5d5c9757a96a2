//! placeholder until the simulator's lib.rs is written
