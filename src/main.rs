//! The `smolbot` command line: the server, the terminal chat, the model tools and downloads.

mod cli;

fn main() -> std::process::ExitCode {
    let args = match cli::Cli::parse_with_config() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
