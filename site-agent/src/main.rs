//! `site-agent`: the program a hospital installs (see the library crate).

fn main() -> std::process::ExitCode {
    site_agent::cli::main()
}
