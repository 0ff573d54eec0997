//! The `leasehold` command line (see `leasehold --help`).

fn main() {
    eprintln!(
        "leasehold {}: the command line is not built yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
