//! A local multi-node devnet for trying ethgate by hand: N anvil nodes on ONE chain (identical
//! block hashes), mined in lockstep every `--block-time`.
//!
//! ```text
//! cargo run --example devnet -- --nodes 3 --block-time 1s --base-port 8600
//! ```
//!
//! It prints each node's URLs and PID, then one line per block. Kill a node from another shell
//! (`kill PID`) to watch ethgate fail over: the devnet notices the dead node and keeps mining the
//! others. Ctrl-C (or SIGTERM) stops every node. Needs anvil (`scripts/install-test-deps.sh`).

#[path = "../tests/support/devnet.rs"]
#[allow(dead_code)]
mod devnet;
#[path = "../tests/support/http.rs"]
#[allow(dead_code)]
mod http;
#[path = "../tests/support/process.rs"]
#[allow(dead_code)]
mod process;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "N anvil nodes mined in lockstep on one chain (ethgate demo devnet)")]
struct Args {
    /// Number of anvil nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Time between blocks, e.g. "1s", "500ms".
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    block_time: Duration,
    /// First node listens on this port, the next on port+1, ...; default: any free port.
    #[arg(long)]
    base_port: Option<u16>,
    /// Chain id of every node.
    #[arg(long, default_value_t = devnet::DEFAULT_CHAIN_ID)]
    chain_id: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    if d.is_zero() {
        return Err("block time must be > 0".into());
    }
    Ok(d)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.nodes == 0 {
        eprintln!("--nodes must be at least 1");
        return ExitCode::from(2);
    }
    let mut cfg = devnet::DevnetConfig::new(args.nodes);
    cfg.chain_id = args.chain_id;
    if let Some(base) = args.base_port {
        let ports: Option<Vec<u16>> = (0..args.nodes)
            .map(|i| base.checked_add(i as u16))
            .collect();
        match ports {
            Some(p) => cfg.ports = Some(p),
            None => {
                eprintln!("--base-port {base} + {} nodes overflows", args.nodes);
                return ExitCode::from(2);
            }
        }
    }
    let dev = match devnet::Devnet::start_with(cfg).await {
        Ok(d) => Arc::new(d),
        Err(e) => {
            eprintln!("devnet: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "devnet: {} anvil nodes, chain id {}, one block every {:?}",
        dev.len(),
        dev.chain_id(),
        args.block_time
    );
    for i in 0..dev.len() {
        println!(
            "node {i}: http {}  ws {}  pid {}",
            dev.http_url(i),
            dev.ws_url(i),
            dev.pid(i)
        );
    }
    println!("devnet ready");
    let _ = std::io::stdout().flush();

    let mut tick = tokio::time::interval(args.block_time);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut reported_dead = vec![false; dev.len()];
    let code = loop {
        tokio::select! {
            _ = &mut stop => break ExitCode::SUCCESS,
            _ = tick.tick() => {}
        }
        // A mine is never interrupted half-way (that would break lockstep).
        match dev.mine().await {
            Ok(m) => {
                for &i in &m.died {
                    if !reported_dead[i] {
                        reported_dead[i] = true;
                        println!("node {i} (pid {}) is gone; mining the others", dev.pid(i));
                    }
                }
                let live: Vec<String> = m.nodes.iter().map(|i| i.to_string()).collect();
                let mut line = format!(
                    "block {:>5} {} ts {} txs {} nodes [{}]",
                    m.number,
                    m.hash,
                    m.timestamp,
                    m.txs,
                    live.join(",")
                );
                if !m.repaired.is_empty() {
                    line.push_str(&format!(" (re-mined on {:?})", m.repaired));
                }
                println!("{line}");
            }
            Err(e) => {
                println!("mine failed: {e}");
                let mut any_alive = false;
                for i in 0..dev.len() {
                    if dev.state(i).await != devnet::NodeState::Dead {
                        any_alive = true;
                    }
                }
                if !any_alive {
                    println!("all nodes are gone; exiting");
                    break ExitCode::FAILURE;
                }
            }
        }
        let _ = std::io::stdout().flush();
    };
    println!("devnet: stopping nodes");
    drop(dev);
    code
}

/// Resolves on SIGINT, SIGTERM or SIGHUP so the nodes are always killed (by `Drop`).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    let term_fut = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let hup_fut = async {
        match hup.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term_fut => {}
        _ = hup_fut => {}
    }
}
