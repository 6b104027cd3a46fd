//! The `herald` binary; all of it is the `herald_cli` library.

fn main() -> std::process::ExitCode {
    herald_cli::main()
}
