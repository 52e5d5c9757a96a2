//! End-to-end tests of the `pentrace` command line: they run the real binary.

mod demo;
mod status;
mod udi;
