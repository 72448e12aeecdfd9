//! `gsed`, the GSE daemon on every lab client (see [`gsed::cli`]).

fn main() -> std::process::ExitCode {
    gsed::cli::main()
}
