//! `ethgate check`: validate a config file and, with `--probe`, dial every upstream.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ethgate::config::{CallTransport, Config, UpstreamConfig};
use ethgate::upstream::dial::dial_ws;
use ethgate::upstream::probe::{probe_endpoint, probe_over, Batch, Report};
use ethgate::upstream::ws::WsMux;
use ethgate::upstream::HttpPool;

pub fn check(path: &Path, probe: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(errors) => {
            println!("{}: {} problem(s)", path.display(), errors.0.len());
            println!("{errors}");
            return ExitCode::FAILURE;
        }
    };
    let listen: Vec<String> = config.server.listen.iter().map(|a| a.to_string()).collect();
    println!(
        "{}: valid ({} upstreams; clients on {}; admin on {})",
        path.display(),
        config.upstreams.len(),
        listen.join(", "),
        config.admin.listen
    );
    if !probe {
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            println!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if runtime.block_on(probe_all(&config)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Probes every upstream, prints one line each; true when all are reachable on the right chain.
async fn probe_all(config: &Config) -> bool {
    let timeout = config.health.timeout.max(Duration::from_secs(2));
    let mut expected = config.chain_id;
    let mut all_good = true;
    for upstream in &config.upstreams {
        let started = Instant::now();
        let pool = HttpPool::for_upstream(timeout, config.server.max_response_bytes, upstream);
        let probe = async {
            match (upstream.calls, &upstream.http) {
                (CallTransport::Http, Some(uri)) => probe_endpoint(&pool, uri).await,
                // Calls over the WebSocket are probed over it, as ethgate would.
                _ => {
                    let mux =
                        WsMux::new(upstream.clone(), timeout, config.server.max_response_bytes);
                    probe_over(|body| mux.post(body), Batch::Plain).await
                }
            }
        };
        let http = match tokio::time::timeout(timeout, probe).await {
            Ok(probed) => probed.map_err(|e| e.to_string()),
            Err(_) => Err(format!("timed out after {timeout:?}")),
        };
        let latency = started.elapsed();
        let ws = ws_handshake(upstream, timeout).await;
        let verdict = describe(upstream, &http, ws, latency, &mut expected);
        all_good &= verdict.good;
        println!("{}", verdict.line);
    }
    all_good
}

/// One upstream's line of `ethgate check --probe` output.
struct Verdict {
    /// What is printed.
    line: String,
    /// Reachable (its calls endpoint, and its WebSocket endpoint when it has one) and on the
    /// expected chain (a syncing node still counts: it will catch up).
    good: bool,
}

/// The verdict on one upstream: `unreachable` (its calls endpoint failed), `wrong_chain`,
/// `ws_unreachable` (calls are answered over HTTP but the `ws` handshake failed), `syncing` or
/// `ok`; only the last two are good.
fn describe(
    upstream: &UpstreamConfig,
    http: &Result<Report, String>,
    ws: Option<Result<(), String>>,
    latency: Duration,
    expected: &mut Option<u64>,
) -> Verdict {
    // A `ws` endpoint that is configured but down is an unreachable endpoint like any other
    // (ethgate would use it for subscriptions), so the upstream does not pass the check.
    let ws_ok = !matches!(ws, Some(Err(_)));
    let ws = match ws {
        None => "ws=-".to_string(),
        Some(Ok(())) => "ws=ok".to_string(),
        Some(Err(e)) => format!("ws=error({e})"),
    };
    match http {
        Err(error) => Verdict {
            line: format!("{}: unreachable: {error} {ws}", upstream.name),
            good: false,
        },
        Ok(report) => {
            let expected_id = *expected.get_or_insert(report.chain_id);
            let chain_ok = report.chain_id == expected_id;
            let verdict = if !chain_ok {
                "wrong_chain"
            } else if !ws_ok {
                "ws_unreachable"
            } else if report.syncing {
                "syncing"
            } else {
                "ok"
            };
            let line = format!(
                "{}: {verdict} chain_id={} head={} syncing={} latency_ms={:.1} {ws}",
                upstream.name,
                report.chain_id,
                report.head,
                report.syncing,
                latency.as_secs_f64() * 1000.0
            );
            Verdict {
                line,
                good: chain_ok && ws_ok,
            }
        }
    }
}

async fn ws_handshake(upstream: &UpstreamConfig, timeout: Duration) -> Option<Result<(), String>> {
    upstream.ws.as_ref()?;
    // The dialer's errors never hold the URL, whose path may carry an API key.
    let outcome = match dial_ws(upstream, timeout).await {
        Ok(mut socket) => {
            let _ = socket.close(None).await;
            Ok(())
        }
        Err(error) => Err(error),
    };
    Some(outcome)
}
