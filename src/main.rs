//! The `ethgate` binary: CLI, logging, runtime, exit codes.
#![forbid(unsafe_code)]

mod check;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use ethgate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "ethgate",
    version,
    about = "JSON-RPC failover proxy for Ethereum clients"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGINT/SIGTERM.
    Run {
        /// Config file (TOML).
        #[arg(long, env = "ETHGATE_CONFIG")]
        config: PathBuf,
        /// Log format; overrides [log] format.
        #[arg(long, value_enum)]
        log_format: Option<CliLogFormat>,
        /// Log level or tracing filter (e.g. "debug", "ethgate=debug"); overrides [log] level.
        #[arg(long)]
        log_level: Option<String>,
        /// Tokio worker threads (default: one per core).
        #[arg(long, env = "ETHGATE_WORKERS")]
        workers: Option<usize>,
    },
    /// Validate a config file; with --probe also dial every upstream.
    Check {
        /// Config file (TOML).
        #[arg(long, env = "ETHGATE_CONFIG")]
        config: PathBuf,
        /// Dial every upstream (eth_chainId, eth_blockNumber, eth_syncing, WS handshake).
        #[arg(long)]
        probe: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CliLogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            log_format,
            log_level,
            workers,
        } => run(config, log_format, log_level, workers),
        Command::Check { config, probe } => check::check(&config, probe),
    }
}

fn run(
    path: PathBuf,
    log_format: Option<CliLogFormat>,
    log_level: Option<String>,
    workers: Option<usize>,
) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("ethgate: invalid config {}:\n{errors}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let format = match log_format {
        Some(CliLogFormat::Json) => LogFormat::Json,
        Some(CliLogFormat::Text) => LogFormat::Text,
        None => config.log.format,
    };
    let level = log_level.unwrap_or_else(|| config.log.level.clone());
    if let Err(error) = init_logging(format, &level) {
        eprintln!("ethgate: --log-level: {error}");
        return ExitCode::FAILURE;
    }
    let runtime = match runtime_builder(workers).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ethgate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // anyhow here only: `{:#}` prints the error with its causes ("cannot bind …: address in use").
    let result: anyhow::Result<()> = runtime.block_on(async {
        let server = ethgate::Server::bind(config).await?;
        tokio::spawn(reload_on_sighup(path, server.reloader()));
        server.run(ethgate::shutdown::signal()).await?;
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("ethgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// One worker runs on tokio's single-threaded scheduler: the same work on one thread, without
/// the work-stealing machinery every wake pays on the multi-threaded one (measured: fewer
/// instructions per proxied call). More workers, or the default of one per core, share work.
fn runtime_builder(workers: Option<usize>) -> tokio::runtime::Builder {
    match workers.filter(|&w| w > 0) {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    }
}

/// SIGHUP re-reads the config file and applies it; an invalid file changes nothing. (Its
/// default action would kill the process, so it is always handled.)
async fn reload_on_sighup(path: PathBuf, reloader: ethgate::reload::Reloader) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: live reload is unavailable");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
            match Config::load(&path) {
                Ok(config) => {
                    // The reload task logs the outcome itself.
                    let _ = reloader.reload(config).await;
                }
                Err(errors) => tracing::error!(
                    problems = %errors.messages().join("; "),
                    "config reload refused: invalid file; the previous config stays"
                ),
            }
        }
    }
}

fn init_logging(format: LogFormat, level: &str) -> Result<(), String> {
    ethgate::config::check_log_filter(level)?;
    let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::runtime_builder;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_worker_runs_the_single_threaded_scheduler_and_more_share_work() {
        let flavor = |workers| {
            let runtime = runtime_builder(workers).enable_all().build().unwrap();
            runtime.handle().runtime_flavor()
        };
        assert_eq!(flavor(Some(1)), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(Some(2)), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(Some(0)), RuntimeFlavor::MultiThread);
        assert_eq!(flavor(None), RuntimeFlavor::MultiThread);
    }
}
