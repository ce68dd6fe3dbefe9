//! `tally-loadtest`: the command-line entry point of the load tester.

fn main() -> std::process::ExitCode {
    eprintln!("tally-loadtest: no scenario is available in this build yet");
    std::process::ExitCode::from(2)
}
