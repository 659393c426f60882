//! Helpers shared by the bench binaries: runtimes pinned to a CPU, CPU-time accounting from
//! /proc, percentiles and number formatting, and a bodiless HTTP response.
#![allow(dead_code)] // each bench binary uses its own part.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use tokio::runtime::Runtime;

pub mod stats;
#[allow(unused_imports)] // each bench binary uses its own part.
pub use stats::{closed_loop, rss_kib, CpuUse, Point, Record, Stats, CELLS_HEADER, VERSUS_HEADER};

pub struct Pinned {
    pub rt: Runtime,
    pub tids: Arc<Mutex<Vec<u32>>>,
    pub pin_failures: Arc<AtomicUsize>,
}

impl Pinned {
    /// A multi-thread runtime with one worker.
    pub fn runtime(name: &'static str, cpu: Option<usize>) -> anyhow::Result<Pinned> {
        let tids = Arc::new(Mutex::new(Vec::new()));
        let pin_failures = Arc::new(AtomicUsize::new(0));
        let (t, f) = (tids.clone(), pin_failures.clone());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(name)
            .enable_all()
            .on_thread_start(move || {
                if let Some(tid) = current_tid() {
                    t.lock().unwrap().push(tid);
                    if let Some(cpu) = cpu {
                        if !pin_thread(tid, cpu) {
                            f.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
            .build()
            .with_context(|| format!("building runtime {name}"))?;
        rt.block_on(async { tokio::spawn(async {}).await })?;
        Ok(Pinned {
            rt,
            tids,
            pin_failures,
        })
    }

    pub fn pinned(&self) -> bool {
        self.pin_failures.load(Ordering::Relaxed) == 0
    }

    /// CPU time used so far by this runtime's threads.
    pub fn cpu_time(&self) -> Duration {
        let tids = self.tids.lock().unwrap().clone();
        tids.into_iter()
            .map(|tid| task_cpu_time(&format!("/proc/self/task/{tid}")))
            .sum()
    }
}

pub fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

pub fn pin_thread(tid: u32, cpu: usize) -> bool {
    Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// On-CPU time of one task (`/proc/.../task/TID`): schedstat (ns), else stat (clock ticks).
pub fn task_cpu_time(dir: &str) -> Duration {
    if let Ok(text) = std::fs::read_to_string(format!("{dir}/schedstat")) {
        if let Some(ns) = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            return Duration::from_nanos(ns);
        }
    }
    let Ok(text) = std::fs::read_to_string(format!("{dir}/stat")) else {
        return Duration::ZERO;
    };
    let Some(rest) = text.rsplit_once(')').map(|(_, r)| r) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Time one task (`/proc/.../task/TID`) spent in the kernel, from `stat` (clock ticks of
/// 10 ms: over a window of seconds, precise to a few percent).
pub fn task_kernel_time(dir: &str) -> Duration {
    let text = std::fs::read_to_string(format!("{dir}/stat")).unwrap_or_default();
    let stime = text
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(12))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(stime * 10)
}

/// Kernel time of every current thread of process `pid`.
pub fn process_kernel_time(pid: u32) -> Duration {
    sum_over_threads(pid, task_kernel_time)
}

/// On-CPU time of every current thread of process `pid`.
pub fn process_cpu_time(pid: u32) -> Duration {
    sum_over_threads(pid, task_cpu_time)
}

/// `per_thread` of each current thread of process `pid` (its `/proc/PID/task/TID`), summed.
fn sum_over_threads(pid: u32, per_thread: fn(&str) -> Duration) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    tasks
        .filter_map(Result::ok)
        .map(|t| per_thread(&t.path().to_string_lossy()))
        .sum()
}

/// The value at quantile `q` of sorted samples (nearest rank); NaN when empty.
pub fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

/// A rate as `12.3k` above ten thousand, else a whole number.
pub fn kilo(rate: f64) -> String {
    if rate >= 10_000.0 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

/// A response with only a status.
pub fn status_only(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// Runs bench `name` when cargo asked for it (`--bench`); `cargo test --all-targets` runs the
/// binary without it, and then only a line is printed. Exits 1 when the run fails.
pub fn run_bench(name: &str, run: impl FnOnce() -> anyhow::Result<()>) {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name} bench: skipped (run it with `cargo bench --bench {name}`)");
        return;
    }
    if let Err(error) = run() {
        eprintln!("{name} bench failed: {error:#}");
        std::process::exit(1);
    }
}

/// `quick` or `full`, then rounds, window and warm-up, as the tables' header says them.
pub fn mode_line(quick: bool, rounds: usize, measure: Duration, warmup: Duration) -> String {
    format!(
        "{} ({} round(s) x {:.1} s per point after {:.1} s warm-up",
        if quick { "quick" } else { "full" },
        rounds,
        measure.as_secs_f64(),
        warmup.as_secs_f64()
    )
}

/// Prints the CPU count and load average (other work skews absolute figures).
pub fn print_machine() {
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        let load: Vec<&str> = load.split_whitespace().take(3).collect();
        println!(
            "machine: {} CPUs, load average {} (other work on the machine skews absolute figures)",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load.join(" ")
        );
    }
}
