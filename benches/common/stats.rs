//! Closed-loop measurements shared by the benches: what each client recorded, one measured
//! window of a configuration, and the windows of one configuration pooled into percentiles
//! and CPU per operation.

use std::time::{Duration, Instant};

use super::percentile;

/// What one closed-loop client recorded inside the measured window.
pub struct Record {
    /// Latency of every operation, ns.
    pub latencies_ns: Vec<u64>,
    /// Operations answered wrongly.
    pub errors: u64,
    /// The first wrong answer, to print.
    pub first_error: Option<String>,
}

impl Record {
    /// An empty record with room for many samples.
    pub fn new() -> Record {
        Record {
            latencies_ns: Vec::with_capacity(64 * 1024),
            errors: 0,
            first_error: None,
        }
    }

    /// Counts a wrong answer, keeping the first one's text.
    pub fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }
}

/// One measured window of one configuration (all its clients together).
#[derive(Clone)]
pub struct Point {
    pub latencies_ns: Vec<u64>,
    pub window: Duration,
    pub errors: u64,
    pub first_error: Option<String>,
    /// On-CPU time of the proxy during the window (zero when there is none).
    pub proxy_cpu: Duration,
    /// On-CPU time of the backend during the window.
    pub backend_cpu: Duration,
    /// The part of `proxy_cpu` spent in the kernel, where measured.
    pub proxy_kernel: Option<Duration>,
}

/// CPU used inside a window, or a sample of the counters at its edges.
#[derive(Clone, Copy, Default)]
pub struct CpuUse {
    /// The proxy's on-CPU time (zero when there is none).
    pub proxy: Duration,
    /// The backend's on-CPU time.
    pub backend: Duration,
    /// The proxy's kernel time, where measured.
    pub proxy_kernel: Option<Duration>,
}

impl CpuUse {
    /// What was used between the samples `self` and `later`.
    fn until(self, later: CpuUse) -> CpuUse {
        CpuUse {
            proxy: later.proxy.saturating_sub(self.proxy),
            backend: later.backend.saturating_sub(self.backend),
            proxy_kernel: later
                .proxy_kernel
                .zip(self.proxy_kernel)
                .map(|(after, before)| after.saturating_sub(before)),
        }
    }
}

impl Point {
    /// The clients' records merged; prints the first wrong answer under `label`.
    pub fn merge(label: &str, records: Vec<Record>, window: Duration, cpu: CpuUse) -> Point {
        let mut point = Point {
            latencies_ns: Vec::new(),
            window,
            errors: 0,
            first_error: None,
            proxy_cpu: cpu.proxy,
            backend_cpu: cpu.backend,
            proxy_kernel: cpu.proxy_kernel,
        };
        for record in records {
            point.latencies_ns.extend(record.latencies_ns);
            point.errors += record.errors;
            point.first_error = point.first_error.or(record.first_error);
        }
        if let Some(error) = &point.first_error {
            eprintln!("{label}: {} bad answers, first: {error}", point.errors);
        }
        point
    }
}

/// Points of one configuration pooled together.
#[derive(Clone)]
pub struct Stats {
    /// Operations per second over every window.
    pub rate: f64,
    /// Operations per second of each window (round).
    pub round_rates: Vec<f64>,
    /// Latency percentiles and maximum, µs.
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub errors: u64,
    /// CPU µs per operation of the proxy.
    pub proxy_us: f64,
    /// CPU µs per operation of the backend.
    pub backend_us: f64,
    /// Of `proxy_us`, the µs spent in the kernel, where measured.
    pub proxy_kernel_us: Option<f64>,
}

impl Stats {
    /// Pools the windows of one configuration.
    pub fn pool(points: &[Point]) -> Stats {
        let mut all: Vec<u64> = points
            .iter()
            .flat_map(|p| p.latencies_ns.iter().copied())
            .collect();
        all.sort_unstable();
        let count = all.len() as f64;
        let seconds: f64 = points.iter().map(|p| p.window.as_secs_f64()).sum();
        let per_operation = |cpu: Duration| {
            if all.is_empty() {
                0.0
            } else {
                cpu.as_secs_f64() * 1e6 / count
            }
        };
        Stats {
            rate: count / seconds,
            round_rates: points
                .iter()
                .map(|p| p.latencies_ns.len() as f64 / p.window.as_secs_f64())
                .collect(),
            p50: percentile(&all, 0.50) / 1e3,
            p99: percentile(&all, 0.99) / 1e3,
            p999: percentile(&all, 0.999) / 1e3,
            max: all.last().map_or(f64::NAN, |&ns| ns as f64 / 1e3),
            errors: points.iter().map(|p| p.errors).sum(),
            proxy_us: per_operation(points.iter().map(|p| p.proxy_cpu).sum()),
            backend_us: per_operation(points.iter().map(|p| p.backend_cpu).sum()),
            proxy_kernel_us: points
                .iter()
                .map(|p| p.proxy_kernel)
                .sum::<Option<Duration>>()
                .map(per_operation),
        }
    }
}

/// VmRSS and VmHWM of process `pid`, KiB (zeros when it is gone).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs `clients` closed-loop clients: each starts shortly, warms up for `warmup`, and records
/// for `window`; `cpu` is sampled at the window's edges. Returns the records and the CPU each
/// side used inside the window.
pub async fn closed_loop<F, Fut>(
    clients: usize,
    warmup: Duration,
    window: Duration,
    cpu: impl Fn() -> CpuUse,
    client: F,
) -> anyhow::Result<(Vec<Record>, CpuUse)>
where
    F: Fn(Instant, Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Record>> + Send + 'static,
{
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let end = measure_from + window;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let run = client(measure_from, end);
            tokio::spawn(async move {
                tokio::time::sleep_until(start.into()).await;
                run.await
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let before = cpu();
    tokio::time::sleep_until(end.into()).await;
    let used = before.until(cpu());
    let mut records = Vec::with_capacity(clients);
    for task in tasks {
        records.push(task.await??);
    }
    Ok((records, used))
}

/// Header of the cells [`Stats::cells`] prints.
pub const CELLS_HEADER: &str =
    "    rate          rounds      p50      p99    p99.9      max        proxy cpu  backend cpu  err";

impl Stats {
    /// One table row's measured cells: rate, each round's rate, latencies (µs), the proxy's
    /// CPU per operation (`-` without a proxy), the backend's, and the errors.
    pub fn cells(&self, with_proxy: bool) -> String {
        let rounds: Vec<String> = self.round_rates.iter().map(|&r| super::kilo(r)).collect();
        let proxy = match (with_proxy, self.proxy_kernel_us) {
            (true, Some(kernel)) => format!("{:.1} (sys {kernel:.1})", self.proxy_us),
            (true, None) => format!("{:.1}", self.proxy_us),
            (false, _) => "-".into(),
        };
        format!(
            "{:>8} {:>15} {:>8.1} {:>8.1} {:>8.1} {:>8.0} {:>16} {:>12.1} {:>4}",
            super::kilo(self.rate),
            rounds.join("/"),
            self.p50,
            self.p99,
            self.p999,
            self.max,
            proxy,
            self.backend_us,
            self.errors
        )
    }

    /// This configuration against `direct`: rate ratio, p50 and p99 ratios, and the µs added
    /// at p50, p99 and p99.9.
    pub fn versus(&self, direct: &Stats) -> String {
        format!(
            "{:>11.2} {:>10.2} {:>10.2} {:>12.1} {:>12.1} {:>12.1}",
            self.rate / direct.rate,
            self.p50 / direct.p50,
            self.p99 / direct.p99,
            self.p50 - direct.p50,
            self.p99 - direct.p99,
            self.p999 - direct.p999
        )
    }
}

/// Header of the cells [`Stats::versus`] prints.
pub const VERSUS_HEADER: &str =
    "rate ratio  p50 ratio  p99 ratio    p50 added    p99 added  p99.9 added";
