//! Links the hutch binary as a position-dependent executable: a PIE of this size spends about
//! a millisecond of every start applying ~21,000 relocations and copying the pages they touch,
//! and `hutch run` is started once per node by users who benchmark start-up latency.

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
