//! Chaos soak: a seeded random schedule of faults on the lockstep anvil devnet behind ethgate,
//! with three real subscribers (two ethers v6 WebSocketProviders, one raw Rust client)
//! holding newHeads and five different logs filters while contract calls are mined every
//! block. Faults: a node killed, revived (restarted empty and caught up), lagging, caught up;
//! a reorg of depth 1–5 on the node feeding the subscriptions; an upstream WebSocket dropped
//! (a relay between ethgate and the node is cut); a poisonous subscribe from a client of its
//! own (5 topic positions, a malformed address, more subscriptions than the per-connection cap).
//!
//! Asserted over the whole run, per client: every canonical head and every matching log
//! exactly once, in order; orphaned logs retracted with `removed: true`; no client closed
//! (one node is always live); ethers handed the application what the socket carried; the
//! poisonous subscriber gets geth's error and nobody else notices.
//!
//! Environment: `SOAK_SEED` (default: from the clock, printed), `SOAK_EVENTS` (default 30),
//! `SOAK_POISON=0` leaves the poisonous subscribes out (default: in), `SOAK_SKIP=reorg,lag`
//! (say) leaves other kinds out, for bisecting a failure; `SOAK_BLOCK_MS` (default 500);
//! `SOAK_ETHGATE_LOG` (ethgate's `--log-level`, default info). On failure ethgate's kept log is
//! saved to `target/soak-ethgate-SEED.log`. `scripts/soak.sh` runs a long schedule and prints the figures. Needs anvil and the JS
//! deps (`scripts/install-test-deps.sh`); without them it skips, unless `CI` is set.

mod support;

#[path = "soak/chain.rs"]
mod chain;
#[path = "soak/check.rs"]
mod check;
#[path = "soak/clients.rs"]
mod clients;
#[path = "soak/poison.rs"]
mod poison;
#[path = "soak/run.rs"]
mod run;
#[path = "soak/schedule.rs"]
mod schedule;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use clients::Seen;
use run::{Done, Settings, Soak};
use support::e2e::deps_present;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn settings() -> Settings {
    let seed = env_u64("SOAK_SEED").unwrap_or_else(|| clients::now_ms() % 1_000_000);
    let mut skip: Vec<String> = std::env::var("SOAK_SKIP")
        .unwrap_or_default()
        .split(',')
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    if std::env::var("SOAK_POISON").is_ok_and(|v| v.trim() == "0") {
        skip.push("poison".into());
    }
    Settings {
        seed,
        events: env_u64("SOAK_EVENTS").unwrap_or(30) as usize,
        skip,
        block_time: Duration::from_millis(env_u64("SOAK_BLOCK_MS").unwrap_or(500)),
    }
}

/// p-th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Panics with everything needed to reproduce and diagnose a fatal failure.
fn fatal(soak: &Soak, at: &str, error: &str) -> ! {
    let log = soak.eg.log();
    let tail: Vec<&str> = log.lines().rev().take(60).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    // The whole kept log (first and last lines) goes to a file: the tail alone rarely shows
    // how it started.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("target/soak-ethgate-{}.log", soak.settings.seed));
    let saved = match std::fs::write(&path, &log) {
        Ok(()) => format!("ethgate's kept log: {}", path.display()),
        Err(e) => format!("could not save ethgate's log to {}: {e}", path.display()),
    };
    panic!(
        "SOAK FAILED (seed {seed}, reproduce with SOAK_SEED={seed} SOAK_EVENTS={events}) at {at}: \
         {error}\nviolations so far: {:#?}\n{saved}\n----- ethgate log (last lines) -----\n{}\n-----",
        soak.violations,
        tail.join("\n"),
        seed = soak.settings.seed,
        events = soak.settings.events,
    );
}

/// The ethers client's summary against its socket: ethers' "block" events are the newHeads
/// numbers, and each filter listener got exactly the live logs the socket carried, in order.
fn check_ethers(name: &str, seen: &[Seen], summary: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let heads: Vec<Value> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Head { n, .. } => Some(Value::from(*n)),
            _ => None,
        })
        .collect();
    if summary["blocks"].as_array() != Some(&heads) {
        errors.push(format!(
            "{name}: ethers' block events differ from the newHeads numbers"
        ));
    }
    let Some(listeners) = summary["listener"].as_object() else {
        return vec![format!("{name}: no listener record in the summary")];
    };
    for (sub, got) in listeners {
        let want: Vec<(u64, String, u64)> = seen
            .iter()
            .filter_map(|s| match s {
                Seen::Log {
                    sub: s2,
                    n,
                    hash,
                    i,
                    removed: false,
                    ..
                } if s2 == sub => Some((*n, hash.clone(), *i)),
                _ => None,
            })
            .collect();
        let got: Vec<(u64, String, u64)> = got
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|l| {
                let hash = l["hash"].as_str().unwrap_or_default().to_lowercase();
                (
                    l["n"].as_u64().unwrap_or(0),
                    hash,
                    l["i"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        if got != want {
            errors.push(format!(
                "{name}/{sub}: the ethers listener got {} logs, the socket carried {} live ones",
                got.len(),
                want.len()
            ));
        }
    }
    errors
}

/// The soak itself (see the module doc); prints `SOAK ...` figure lines.
async fn soak(settings: Settings) {
    let started = Instant::now();
    let plan = schedule::plan(
        settings.seed,
        settings.events,
        run::NODES as u64,
        &settings.skip,
    );
    eprintln!(
        "SOAK seed={} events={} skip={:?} block_ms={} (reproduce: SOAK_SEED={} SOAK_EVENTS={})",
        settings.seed,
        settings.events,
        settings.skip,
        settings.block_time.as_millis(),
        settings.seed,
        settings.events
    );
    let mut soak = Soak::start(settings.clone()).await;
    let mut done: Vec<Done> = Vec::new();
    for (k, step) in plan.iter().enumerate() {
        match soak.apply(*step).await {
            Ok(d) => {
                eprintln!(
                    "soak event {k}/{}: {step:?} node={:?} source={} {} (t+{:?})",
                    plan.len(),
                    d.node,
                    d.was_source,
                    d.note,
                    started.elapsed()
                );
                done.push(d);
            }
            Err(e) => fatal(&soak, &format!("event {k} {step:?}"), &e),
        }
    }
    let last = match soak.finish().await {
        Ok(l) => l,
        Err(e) => fatal(&soak, "the end of the run", &e),
    };
    let (canonical, expected) = match soak.canonical(last).await {
        Ok(c) => c,
        Err(e) => fatal(&soak, "reading the canonical chain", &e),
    };
    // Wait (bounded) for the logs of the last blocks with events to be in; the checks below
    // report whatever is still missing.
    let _ = support::http::poll_until(
        "the last logs",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            soak.clients
                .iter()
                .all(|c| {
                    let subs: HashSet<&str> = c.filters.iter().map(|f| f.0.as_str()).collect();
                    let need: usize = expected
                        .iter()
                        .filter(|(n, _)| subs.contains(n.as_str()))
                        .map(|(_, v)| v.len())
                        .sum();
                    c.with(|r| {
                        r.seen
                            .iter()
                            .filter(|s| matches!(s, Seen::Log { removed: false, .. }))
                            .count()
                    }) >= need
                })
                .then_some(())
        },
    )
    .await;
    let failovers: Vec<u64> = done
        .iter()
        .filter(|d| d.was_source && matches!(d.step.kind(), "kill" | "drop_ws"))
        .flat_map(|d| soak.first_head_after(d.t0))
        .collect();
    // A source that stalls (stops mining) is left only once it is seen to fall behind.
    let mut stalls: Vec<u64> = done
        .iter()
        .filter(|d| d.was_source && d.step.kind() == "lag")
        .flat_map(|d| soak.first_head_after(d.t0))
        .collect();
    stalls.sort_unstable();
    for c in &mut soak.clients {
        c.stop().await;
    }
    let mut violations = std::mem::take(&mut soak.violations);
    let (mut heads, mut logs, mut retracted, mut replaced) = (0, 0, 0, 0);
    let mut seen_hashes: HashSet<String> = HashSet::new();
    for c in &soak.clients {
        let subs: HashSet<&str> = c.filters.iter().map(|f| f.0.as_str()).collect();
        let mine: BTreeMap<String, Vec<check::LogId>> = expected
            .iter()
            .filter(|(n, _)| subs.contains(n.as_str()))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        c.with(|r| {
            if let Some(closed) = &r.closed {
                violations.push(format!("{}: closed during the run: {closed}", c.name));
            }
            if !r.errors.is_empty() {
                violations.push(format!("{}: errors {:?}", c.name, r.errors));
            }
            for s in &r.seen {
                if let Seen::Head { hash, .. } = s {
                    seen_hashes.insert(hash.clone());
                }
            }
            match check::check_stream(&r.seen, &canonical, &mine, soak.from, last) {
                Ok(rep) => {
                    heads += rep.heads;
                    logs += rep.logs;
                    retracted += rep.retracted;
                    replaced += rep.replaced.len();
                }
                Err(e) => violations.extend(e.into_iter().map(|e| format!("{}: {e}", c.name))),
            }
            if let Some(sum) = &r.summary {
                violations.extend(check_ethers(&c.name, &r.seen, sum));
            } else if c.name.starts_with("ethers") {
                violations.push(format!("{}: no summary from the ethers client", c.name));
            }
        });
    }
    let reorgs: Vec<&Done> = done.iter().filter(|d| d.step.kind() == "reorg").collect();
    let reorgs_seen = reorgs
        .iter()
        .filter(|d| d.branch.iter().any(|h| seen_hashes.contains(h)))
        .count();
    let fed_reorgs = reorgs.iter().filter(|d| d.was_source).count();
    if fed_reorgs >= 2 && reorgs_seen == 0 {
        violations.push(format!(
            "{fed_reorgs} reorgs of the feeding node, and no client ever saw a diverged branch"
        ));
    }
    let mut sorted = failovers.clone();
    sorted.sort_unstable();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &done {
        *kinds.entry(d.step.kind()).or_default() += 1;
    }
    let skipped = done
        .iter()
        .filter(|d| d.note.starts_with("skipped"))
        .count();
    let figures = [
        format!("seed {}", soak.settings.seed),
        format!("events survived {}/{} ({skipped} skipped as not applicable)", done.len(), plan.len()),
        format!("events by kind {kinds:?}"),
        format!("blocks {} (from {} to {last}), contract calls sent {} ({} failed)",
            last - soak.from + 1, soak.from, soak.calls.0, soak.calls.1),
        format!("heads checked {heads} (over {} clients), canonical logs checked {logs}",
            soak.clients.len()),
        format!("logs retracted (removed: true) {retracted}, heads replaced by reorgs {replaced}"),
        format!("reorgs whose branch reached a client {reorgs_seen}/{} (of the feeding node: {fed_reorgs})",
            reorgs.len()),
        format!(
            "subscription failover ms (fault on the feeding node -> next new head at a client): \
             n={} p50={} p99={} max={}",
            sorted.len(),
            percentile(&sorted, 50.0),
            percentile(&sorted, 99.0),
            sorted.last().copied().unwrap_or(0)
        ),
        format!(
            "feeding node stalled (lag) -> next new head at a client, ms: n={} p50={} p99={} max={}",
            stalls.len(),
            percentile(&stalls, 50.0),
            percentile(&stalls, 99.0),
            stalls.last().copied().unwrap_or(0)
        ),
        format!("duration {:?}, violations {}", started.elapsed(), violations.len()),
    ];
    eprintln!("SOAK FIGURES");
    for f in figures {
        eprintln!("SOAK   {f}");
    }
    if !violations.is_empty() {
        let shown: Vec<&String> = violations.iter().take(40).collect();
        fatal(
            &soak,
            "the end-of-run checks",
            &format!("{} violations: {shown:#?}", violations.len()),
        );
    }
}

/// The default suite's short schedule (about 30 events; `SOAK_*` variables override).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_keeps_every_subscriber_exact() {
    if !deps_present("chaos_soak_keeps_every_subscriber_exact", true) {
        return;
    }
    soak(settings()).await;
}

#[test]
fn percentile_is_nearest_rank() {
    let v: Vec<u64> = (1..=100).collect();
    assert_eq!(percentile(&v, 50.0), 50);
    assert_eq!(percentile(&v, 99.0), 99);
    assert_eq!(percentile(&[7], 99.0), 7);
    assert_eq!(percentile(&[], 50.0), 0);
}

#[test]
fn source_hint_reads_failover_and_source_lines() {
    let log = "WARN ethgate::subscription::feed: subscription source lost upstream=\"anvil1\" error=x\n\
               WARN ethgate::subscription::feed: subscription failover from=\"anvil1\" to=\"anvil2\" duration_ms=1";
    assert_eq!(
        support::e2e::feed_source_hint(log).as_deref(),
        Some("anvil2")
    );
    let back = "INFO ethgate::subscription::feed: subscription source back upstream=\"anvil0\" duration_ms=3";
    assert_eq!(
        support::e2e::feed_source_hint(back).as_deref(),
        Some("anvil0")
    );
    assert_eq!(
        support::e2e::feed_source_hint("INFO ethgate: serving"),
        None
    );
}

#[test]
fn the_contract_code_is_what_the_init_code_copies() {
    let code = chain::bytecode();
    assert_eq!((code.len() - 2) / 2, 11 + 0x2f);
    assert!(code[2..].bytes().all(|b| b.is_ascii_hexdigit()));
}

/// The relay forwards both ways; a cut closes open connections and refuses new ones for the
/// time asked, then forwards again.
#[tokio::test]
async fn relay_forwards_and_cut_drops_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = echo.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let relay = support::relay::Relay::start(port).await.expect("relay");
    let wait = Duration::from_secs(5);
    let mut c = tokio::net::TcpStream::connect(relay.addr())
        .await
        .expect("connect");
    c.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(wait, c.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&buf, b"ping");

    relay.cut(Duration::from_millis(500));
    let n = tokio::time::timeout(wait, c.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "a cut connection must close: {n:?}"
    );
    let mut refused = tokio::net::TcpStream::connect(relay.addr())
        .await
        .expect("accepted");
    let n = tokio::time::timeout(wait, refused.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "refused while cut: {n:?}");

    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut again = tokio::net::TcpStream::connect(relay.addr())
        .await
        .expect("connect");
    again.write_all(b"pong").await.expect("write");
    tokio::time::timeout(wait, again.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&buf, b"pong");
    assert_eq!(
        relay.accepted(),
        2,
        "the refused connection was never forwarded"
    );
}

/// A killed node comes back on its port, empty, and is replayed onto the canonical chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devnet_revives_a_killed_node_onto_the_canonical_chain() {
    if !deps_present(
        "devnet_revives_a_killed_node_onto_the_canonical_chain",
        false,
    ) {
        return;
    }
    let dev = support::devnet::Devnet::start(2).await.expect("devnet");
    for _ in 0..3 {
        dev.mine().await.expect("mine");
    }
    let old_pid = dev.pid(1);
    dev.kill(1).await;
    for _ in 0..2 {
        dev.mine().await.expect("mine with one node dead");
    }
    let replayed = dev.revive(1).await.expect("revive");
    assert_eq!(replayed, 5, "blocks 1..=5 replayed on the empty node");
    assert_ne!(dev.pid(1), old_pid);
    assert_eq!(dev.state(1).await, support::devnet::NodeState::Live);
    let m = dev.mine().await.expect("mine after the revive");
    assert_eq!(m.nodes.len(), 2, "both nodes in lockstep again: {m:?}");
    let http = support::http::Http::default();
    let top = http
        .rpc(
            &dev.http_url(1),
            "eth_getBlockByNumber",
            serde_json::json!(["latest", false]),
            Duration::from_secs(5),
        )
        .await
        .expect("latest block of the revived node");
    assert_eq!(top["hash"].as_str(), Some(m.hash.as_str()));
    assert!(
        dev.revive(0).await.is_err(),
        "a live node cannot be revived"
    );
}
