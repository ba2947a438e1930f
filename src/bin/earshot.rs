//! The `earshot` binary: everything lives in the library's `cli` module.
fn main() -> std::process::ExitCode {
    earshot::cli::main()
}
