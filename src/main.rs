//! The `leasehold` command line; see `leasehold --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
