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
    let traces = match tally_node::telemetry::start(&cfg.telemetry, &cfg.node.id) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tally-node: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(traces.as_ref());
    let grace = std::time::Duration::from_secs(cfg.node.shutdown_grace_secs);
    let shutdown = async move {
        shutdown_signal().await;
        tally_node::node::exit_after(grace);
    };
    let code = match tally_node::run(cfg, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally-node: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    if let Some(provider) = traces {
        // Sends the spans still buffered; it blocks, so off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    }
    code
}

/// Log lines to stdout (`RUST_LOG` filters them) and, with tracing on, the request spans
/// to the OpenTelemetry exporter.
fn init_logging(traces: Option<&opentelemetry_sdk::trace::SdkTracerProvider>) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,scylla=warn,rdkafka=warn".into());
    // Spans reach OpenTelemetry whatever the log filter says, but only the node's own.
    let own =
        tracing_subscriber::filter::Targets::new().with_target("tally_node", tracing::Level::INFO);
    let otel = traces.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("tally-node"))
            .with_filter(own)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
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
