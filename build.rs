//! Build script: rebuild when a migration changes.
// Rebuild when a migration file is added or edited: they are embedded with
// include_str! and listed in src/sqlite/schema.rs.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
