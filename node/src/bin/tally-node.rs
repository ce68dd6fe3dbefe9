//! `tally-node`: parses arguments, loads the config, runs the node until SIGTERM/SIGINT.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mimalloc returns freed memory to the OS and fragments far less than glibc's malloc under
/// many threads allocating small objects (entity maps, record batches): resident memory per
/// entity is what the node is sized by.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tally-node", version, about = "Tally telemetry cluster node")]
struct Args {
    /// Path of the node's TOML config (see cluster-config/).
    #[arg(
        long,
        short,
        env = "TALLY_CONFIG",
        default_value = "cluster-config/local.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the JSON Schema of events (docs/event.schema.json).
    Schema,
    /// Load and validate the config, then exit.
    CheckConfig,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,scylla=warn,rdkafka=warn".into()),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    if let Some(Command::Schema) = args.command {
        print!("{}", tally_node::event::json_schema());
        return std::process::ExitCode::SUCCESS;
    }
    let cfg = match tally_node::Config::load(&args.config) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tally-node: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Some(Command::CheckConfig) = args.command {
        println!("config {} is valid", args.config.display());
        return std::process::ExitCode::SUCCESS;
    }
    let grace = std::time::Duration::from_secs(cfg.node.shutdown_grace_secs);
    let shutdown = async move {
        shutdown_signal().await;
        tally_node::node::exit_after(grace);
    };
    match tally_node::run(cfg, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally-node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
