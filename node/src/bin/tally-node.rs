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
    /// Load and validate the config (and the keys file and cluster secret it names), then
    /// exit.
    CheckConfig,
    /// Make API keys and cluster secrets.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new API key and its entry for the keys file (auth.keys_file).
    New {
        /// Who holds the key, e.g. `game-backend`.
        #[arg(long)]
        name: String,
        /// What it may do: ingest, read, admin (comma-separated).
        #[arg(long, value_delimiter = ',', value_parser = tally_node::auth::Scope::parse, required = true)]
        scopes: Vec<tally_node::auth::Scope>,
        /// Most ingest requests per second (default: not limited).
        #[arg(long)]
        requests_per_sec: Option<u32>,
        /// Most ingested events per second (default: not limited).
        #[arg(long)]
        events_per_sec: Option<u32>,
    },
    /// Print a new cluster secret (for auth.cluster_secret_file or TALLY_AUTH__CLUSTER_SECRET).
    ClusterSecret,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(Command::Schema) = args.command {
        print!("{}", tally_node::event::json_schema());
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(Command::Keys(command)) = args.command {
        keys(command);
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
        if let Err(e) = tally_node::auth::Auth::load(&cfg.auth, cfg.has_peers()) {
            eprintln!("tally-node: {e:#}");
            return std::process::ExitCode::from(2);
        }
        if let Err(e) = tally_node::tls::check(&cfg) {
            eprintln!("tally-node: {e:#}");
            return std::process::ExitCode::from(2);
        }
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
    if cfg.node.pretouch_mib > 0 {
        let took = tally_node::memory::pretouch(cfg.node.pretouch_mib);
        tracing::info!(
            mib = cfg.node.pretouch_mib,
            secs = took.as_secs_f64(),
            "memory pretouched"
        );
    }
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

fn keys(command: KeysCommand) {
    use tally_node::auth::{keys, rate::IngestLimits};
    match command {
        KeysCommand::New {
            name,
            scopes,
            requests_per_sec,
            events_per_sec,
        } => {
            let key = keys::new_key();
            let limits = IngestLimits {
                requests_per_sec,
                events_per_sec,
                ..IngestLimits::default()
            };
            println!(
                "# The key, shown only now: give it to {name:?} (Authorization: Bearer <key>)."
            );
            println!("{key}");
            println!("# Its entry for the keys file (auth.keys_file), which holds only its hash:");
            print!("{}", keys::entry_toml(&name, &key, &scopes, &limits));
        }
        KeysCommand::ClusterSecret => println!("{}", keys::random_token()),
    }
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
