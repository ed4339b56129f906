//! nexus-loadgen: the load generator of the Nexus overhead harness (bench/harness), for what wrk cannot
//! do: an open-loop rate with latency counted from each request's scheduled time (no coordinated
//! omission), time to first byte and first token, and hundreds of concurrent paced SSE streams with
//! every event timestamped. One thread, so it can share a core with the fake upstream.
//!
//!   nexus-loadgen closed  --url U --corpus F [--kind json|stream|all] --connections C (--duration S | --requests N)
//!   nexus-loadgen open    --url U --corpus F --rate R --duration S [--connections M]
//!   nexus-loadgen streams --url U --corpus F --streams N [--ramp-ms MS] [--stall-ms MS]
//!   nexus-loadgen upstream --port P [--text-tokens N]   (a fast mock upstream: see upstream.rs)
//!
//! Common: --header "name: value" (repeatable), --headers-file F, --salt N, --warmup S, --timeout-s S.
//! Prints one JSON object. Every loop is bounded by --duration, --requests or --streams.

mod corpus;
mod http;
mod upstream;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use corpus::Corpus;
use http::{BodyObserver, Conn};

struct Args {
    mode: String,
    opts: HashMap<String, String>,
    headers: Vec<String>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut it = std::env::args().skip(1);
        let mode = it
            .next()
            .ok_or("usage: nexus-loadgen closed|open|streams --url ... (see the source)")?;
        let mut opts = HashMap::new();
        let mut headers = Vec::new();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {flag}"))?;
            let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            match name {
                "header" => headers.push(value),
                "headers-file" => {
                    let text = std::fs::read_to_string(&value).map_err(|e| format!("{value}: {e}"))?;
                    headers.extend(text.lines().filter(|l| l.contains(':')).map(str::to_string));
                }
                _ => {
                    opts.insert(name.to_string(), value);
                }
            }
        }
        Ok(Args { mode, opts, headers })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.opts.get(name).map(String::as_str)
    }

    fn num(&self, name: &str, default: f64) -> Result<f64, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("--{name}: not a number: {v}")),
        }
    }
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * sorted.len() as f64) as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `{"n":..,"p50":..,...}` in microseconds.
fn summary(values: &mut [u64]) -> String {
    values.sort_unstable();
    let mean = if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<u64>() as f64 / values.len() as f64
    };
    format!(
        "{{\"n\":{},\"mean\":{:.1},\"p50\":{},\"p90\":{},\"p99\":{},\"p999\":{},\"max\":{}}}",
        values.len(),
        mean,
        pct(values, 50.0),
        pct(values, 90.0),
        pct(values, 99.0),
        pct(values, 99.9),
        values.last().copied().unwrap_or(0)
    )
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

#[derive(Default)]
struct Samples {
    total: Vec<u64>,
    ttfb: Vec<u64>,
    ttft: Vec<u64>,
    ok: u64,
    non_2xx: u64,
    errors: u64,
    last_error: Option<String>,
}

impl Samples {
    fn json(&mut self) -> String {
        format!(
            "\"ok\":{},\"non_2xx\":{},\"errors\":{},\"last_error\":{},\"latency_us\":{},\"ttfb_us\":{},\"ttft_us\":{}",
            self.ok,
            self.non_2xx,
            self.errors,
            self.last_error
                .as_ref()
                .map_or("null".to_string(), |e| format!("{e:?}")),
            summary(&mut self.total),
            summary(&mut self.ttfb),
            summary(&mut self.ttft)
        )
    }
}

struct Run {
    corpus: Corpus,
    addr: String,
    timeout: Duration,
    samples: RefCell<Samples>,
    next: Cell<u64>,
}

enum Outcome {
    Done { status: u16, obs: BodyObserver },
    Failed(String),
}

impl Run {
    /// One exchange on `conn` (opened or reopened as needed), bounded by the timeout.
    async fn one(&self, conn: &mut Option<Conn>, n: u64, track: bool, buf: &mut Vec<u8>) -> Outcome {
        let sse = self.corpus.request(n, buf);
        let attempt = async {
            if conn.is_none() {
                *conn = Some(Conn::connect(&self.addr).await?);
            }
            let mut obs = BodyObserver::new(sse, track);
            let (status, keep) = conn.as_mut().expect("connected").exchange(buf, &mut obs).await?;
            if !keep {
                *conn = None;
            }
            Ok::<_, std::io::Error>((status, obs))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok((status, obs))) => Outcome::Done { status, obs },
            Ok(Err(e)) => {
                *conn = None;
                tokio::time::sleep(Duration::from_millis(5)).await; // no hot loop on a refused connect
                Outcome::Failed(e.to_string())
            }
            Err(_) => {
                *conn = None;
                Outcome::Failed("timeout".to_string())
            }
        }
    }

    fn record(&self, started: Instant, outcome: &Outcome, keep: bool) {
        let mut s = self.samples.borrow_mut();
        match outcome {
            Outcome::Done { status, obs } => {
                if !(200..300).contains(status) {
                    s.non_2xx += 1;
                    return;
                }
                s.ok += 1;
                if keep {
                    s.total.push(us(started.elapsed()));
                    if let Some(t) = obs.first_byte {
                        s.ttfb.push(us(t - started));
                    }
                    if let Some(t) = obs.first_token {
                        s.ttft.push(us(t - started));
                    }
                }
            }
            Outcome::Failed(e) => {
                s.errors += 1;
                s.last_error = Some(e.clone());
            }
        }
    }
}

fn addr_of(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("--url must be http://host:port")?;
    Ok(rest.trim_end_matches('/').to_string())
}

async fn closed(run: Rc<Run>, args: &Args) -> Result<String, String> {
    let connections = args.num("connections", 1.0)? as usize;
    let duration = Duration::from_secs_f64(args.num("duration", 5.0)?);
    let warmup = Duration::from_secs_f64(args.num("warmup", 0.5)?);
    let limit = args.num("requests", f64::MAX)? as u64;
    let t0 = Instant::now();
    let measure_from = t0 + warmup;
    let end = measure_from + duration;
    let mut handles = Vec::new();
    for _ in 0..connections {
        let run = run.clone();
        handles.push(tokio::task::spawn_local(async move {
            let mut conn = None;
            let mut buf = Vec::with_capacity(128 * 1024);
            loop {
                let n = run.next.get();
                let now = Instant::now();
                if n >= limit || now >= end {
                    break;
                }
                run.next.set(n + 1);
                let outcome = run.one(&mut conn, n, false, &mut buf).await;
                run.record(now, &outcome, now >= measure_from);
            }
        }));
    }
    for h in handles {
        h.await.map_err(|e| e.to_string())?;
    }
    let elapsed = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64()
        .min(duration.as_secs_f64());
    let mut s = run.samples.borrow_mut();
    let rps = s.total.len() as f64 / elapsed.max(1e-9);
    Ok(format!(
        "{{\"mode\":\"closed\",\"connections\":{connections},\"seconds\":{elapsed:.3},\"rps\":{rps:.1},{}}}",
        s.json()
    ))
}

async fn open(run: Rc<Run>, args: &Args) -> Result<String, String> {
    let rate = args.num("rate", 1000.0)?;
    if rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    let duration = Duration::from_secs_f64(args.num("duration", 5.0)?);
    let warmup = Duration::from_secs_f64(args.num("warmup", 0.5)?);
    let workers = args.num("connections", (rate * 0.05).clamp(32.0, 512.0))? as usize;
    let t0 = Instant::now() + Duration::from_millis(20);
    let measure_from = t0 + warmup;
    let end = measure_from + duration;
    let late = Rc::new(Cell::new(0u64));
    let mut handles = Vec::new();
    for _ in 0..workers {
        let run = run.clone();
        let late = late.clone();
        handles.push(tokio::task::spawn_local(async move {
            let mut conn = None;
            let mut buf = Vec::with_capacity(128 * 1024);
            loop {
                let n = run.next.get();
                run.next.set(n + 1);
                let scheduled = t0 + Duration::from_secs_f64(n as f64 / rate);
                if scheduled >= end {
                    break;
                }
                // Waiting for our slot is the generator's own delay: count from when we woke.
                // Already late (every connection was busy): count from the schedule, the server's delay.
                let started = if scheduled > Instant::now() {
                    tokio::time::sleep_until(scheduled.into()).await;
                    Instant::now()
                } else {
                    late.set(late.get() + 1);
                    scheduled
                };
                let outcome = run.one(&mut conn, n, false, &mut buf).await;
                run.record(started, &outcome, scheduled >= measure_from);
            }
        }));
    }
    for h in handles {
        h.await.map_err(|e| e.to_string())?;
    }
    let mut s = run.samples.borrow_mut();
    let achieved = s.total.len() as f64 / duration.as_secs_f64();
    Ok(format!(
        "{{\"mode\":\"open\",\"rate\":{rate:.1},\"achieved_rps\":{achieved:.1},\"connections\":{workers},\
         \"late_starts\":{},{}}}",
        late.get(),
        s.json()
    ))
}

#[derive(Default)]
struct StreamStats {
    started: u64,
    completed: u64,
    failed: u64,
    non_2xx: u64,
    last_error: Option<String>,
    events: Vec<u64>,
    gaps: Vec<u64>,
    max_gaps: Vec<u64>,
    stalls: u64,
    stalled_streams: u64,
    ttfb: Vec<u64>,
    ttft: Vec<u64>,
    in_flight: u64,
    peak_in_flight: u64,
}

async fn streams(run: Rc<Run>, args: &Args) -> Result<String, String> {
    let n = args.num("streams", 64.0)? as u64;
    let ramp = Duration::from_secs_f64(args.num("ramp-ms", 500.0)? / 1000.0);
    let stall = Duration::from_secs_f64(args.num("stall-ms", 200.0)? / 1000.0);
    let stats = Rc::new(RefCell::new(StreamStats::default()));
    let t0 = Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::new();
    for k in 0..n {
        let run = run.clone();
        let stats = stats.clone();
        let at = t0 + ramp.mul_f64(k as f64 / n.max(1) as f64);
        handles.push(tokio::task::spawn_local(async move {
            tokio::time::sleep_until(at.into()).await;
            {
                let mut s = stats.borrow_mut();
                s.started += 1;
                s.in_flight += 1;
                s.peak_in_flight = s.peak_in_flight.max(s.in_flight);
            }
            let mut conn = None;
            let mut buf = Vec::with_capacity(128 * 1024);
            let started = Instant::now();
            let outcome = run.one(&mut conn, k, true, &mut buf).await;
            let mut s = stats.borrow_mut();
            s.in_flight -= 1;
            match outcome {
                Outcome::Done { status, obs } if (200..300).contains(&status) => {
                    if obs.saw_stop {
                        s.completed += 1;
                    }
                    s.events.push(obs.events as u64);
                    if let Some(t) = obs.first_byte {
                        s.ttfb.push(us(t - started));
                    }
                    if let Some(t) = obs.first_token {
                        s.ttft.push(us(t - started));
                    }
                    let mut worst = 0;
                    let mut stalled = false;
                    for pair in obs.event_times.windows(2) {
                        let gap = pair[1] - pair[0];
                        worst = worst.max(us(gap));
                        s.gaps.push(us(gap));
                        if gap > stall {
                            s.stalls += 1;
                            stalled = true;
                        }
                    }
                    s.max_gaps.push(worst);
                    s.stalled_streams += u64::from(stalled);
                }
                Outcome::Done { .. } => s.non_2xx += 1,
                Outcome::Failed(e) => {
                    s.failed += 1;
                    s.last_error = Some(e);
                }
            }
        }));
    }
    for h in handles {
        h.await.map_err(|e| e.to_string())?;
    }
    let mut s = stats.borrow_mut();
    let total_events: u64 = s.events.iter().sum();
    let min_events = s.events.iter().min().copied().unwrap_or(0);
    let max_events = s.events.iter().max().copied().unwrap_or(0);
    let last_error = s.last_error.as_ref().map_or("null".to_string(), |e| format!("{e:?}"));
    let (gaps, max_gaps) = (summary(&mut s.gaps), summary(&mut s.max_gaps));
    let (ttfb, ttft) = (summary(&mut s.ttfb), summary(&mut s.ttft));
    Ok(format!(
        "{{\"mode\":\"streams\",\"streams\":{n},\"started\":{},\"completed\":{},\"failed\":{},\"non_2xx\":{},\
         \"last_error\":{last_error},\"peak_in_flight\":{},\"events_total\":{total_events},\"events_min\":{min_events},\
         \"events_max\":{max_events},\"stall_us\":{},\"stalls\":{},\"stalled_streams\":{},\"gap_us\":{},\
         \"max_gap_us\":{},\"ttfb_us\":{},\"ttft_us\":{},\"seconds\":{:.3}}}",
        s.started,
        s.completed,
        s.failed,
        s.non_2xx,
        s.peak_in_flight,
        us(stall),
        s.stalls,
        s.stalled_streams,
        gaps,
        max_gaps,
        ttfb,
        ttft,
        t0.elapsed().as_secs_f64()
    ))
}

fn main() {
    let result = (|| -> Result<String, String> {
        let args = Args::parse()?;
        if args.mode == "upstream" {
            let port = args.num("port", 8123.0)? as u16;
            let tokens = args.num("text-tokens", 12.0)? as usize;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            return tokio::task::LocalSet::new().block_on(&rt, upstream::serve(port, tokens));
        }
        let url = args.get("url").ok_or("--url is required")?;
        let addr = addr_of(url)?;
        let corpus_path = args.get("corpus").ok_or("--corpus is required")?;
        let kind = args
            .get("kind")
            .unwrap_or(if args.mode == "streams" { "stream" } else { "json" });
        let path = args.get("path").unwrap_or("/v1/messages?beta=true");
        let salt = args.num("salt", 0.0)? as u8;
        let corpus =
            Corpus::load(corpus_path, kind, &args.headers, &addr, path, salt).map_err(|e| format!("corpus: {e}"))?;
        let run = Rc::new(Run {
            corpus,
            addr,
            timeout: Duration::from_secs_f64(args.num("timeout-s", 30.0)?),
            samples: RefCell::new(Samples::default()),
            next: Cell::new(0),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            match args.mode.as_str() {
                "closed" => closed(run, &args).await,
                "open" => open(run, &args).await,
                "streams" => streams(run, &args).await,
                other => Err(format!("unknown mode {other}")),
            }
        })
    })();
    match result {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("nexus-loadgen: {e}");
            std::process::exit(2);
        }
    }
}
