//! `taskstream-bench`: parse flags, raise the open-file limit, run the scenarios, print one JSON
//! line per run (and a summary line per figure).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use taskstream_bench::procs::{Bins, Kind};
use taskstream_bench::report;
use taskstream_bench::scenario::{
    Broker, Ctx, broadcast, fanout, idle, positions, proxy, reconnect, resume,
};

#[derive(Parser)]
#[command(
    name = "taskstream-bench",
    about = "What one taskstream sidecar costs per connection and per event, beside a baseline"
)]
struct Args {
    /// The sidecar binary (default: beside this one).
    #[arg(long, env = "TASKSTREAM_BENCH_SIDECAR")]
    sidecar_bin: Option<PathBuf>,
    /// The baseline binary (default: beside this one).
    #[arg(long, env = "TASKSTREAM_BENCH_BASELINE")]
    baseline_bin: Option<PathBuf>,
    /// Which servers to measure.
    #[arg(long, value_enum, default_value = "both")]
    target: Targets,
    /// Runs of each scenario per target (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Event source of both servers: admin `POST /publish/<group>` (memory) or Redis `PUBLISH`
    /// (redis: sidecar `--broker redis`, baseline `--redis-url`, each on its own redis-server).
    #[arg(long, value_enum, default_value = "memory")]
    broker: Broker,
    /// WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Hard bound on any one run, in seconds.
    #[arg(long, default_value_t = 300)]
    deadline_secs: u64,
    /// On the Redis path, the shortest continuous publishing of any step that reports loss
    /// (fan-out steps, the broadcast series, the soak after a reconnect storm). The default is
    /// more than three of the sidecar's 5 s Redis keep-alive PINGs.
    #[arg(long, default_value_t = 16.0)]
    min_secs: f64,
    /// On the Redis path, a redis-server without `HELLO` (as Redis 5), so the sidecar subscribes
    /// over RESP2 (redis-rs's queued `PubSub`) instead of RESP3 pushes: to compare the two.
    #[arg(long)]
    redis_resp2: bool,
    /// Also append every JSON line to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Targets {
    Both,
    Sidecar,
    Baseline,
}

#[derive(Clone, Subcommand)]
enum Scenario {
    /// Resident memory per idle connection.
    Idle {
        #[arg(long, value_delimiter = ',', default_value = "5000,19000")]
        conns: Vec<usize>,
        /// Run the sidecar with history on (`--history-size N`; needs --broker redis); 0: off.
        /// The baseline keeps no history either way.
        #[arg(long, default_value_t = 0)]
        history_size: usize,
    },
    /// Rate ramp over N clients in G groups until p99 passes the limit or an event is lost.
    Fanout(FanoutArgs),
    /// One event to one group of N clients: time until the last one has it.
    Broadcast {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long, default_value_t = 9)]
        repeats: usize,
        /// Milliseconds between two events (they do not wait for each other).
        #[arg(long, default_value_t = 500)]
        period_ms: u64,
    },
    /// HTTP through the sidecar versus straight to the app.
    Proxy {
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// N clients dropped at once (server killed and restarted) reconnect with jitter.
    Reconnect {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long, default_value_t = 1000)]
        groups: usize,
        #[arg(long, default_value_t = 1000)]
        jitter_ms: u64,
        /// Continuous publishing after the storm, loss counted (the Redis path: at least
        /// --min-secs).
        #[arg(long, default_value_t = 0.0)]
        soak_secs: f64,
        /// Deliveries per second during the soak (and all through a --resume run).
        #[arg(long, default_value_t = 20_000.0)]
        soak_rate: f64,
        /// Resume storm instead (--broker redis, sidecar only): taskstream.v1 clients, events
        /// published with history, the sidecar down for --outage-ms, every client back at once
        /// with last_id; time until all have caught up.
        #[arg(long)]
        resume: bool,
        /// `--history-size` of the sidecar in a --resume run.
        #[arg(long, default_value_t = 1000)]
        history_size: usize,
        /// How long the sidecar stays down in a --resume run.
        #[arg(long, default_value_t = 2000)]
        outage_ms: u64,
    },
    /// Connect storm (--broker redis, sidecar only): taskstream.v1 clients with several groups
    /// each; what positions at connect cost (history on: one read per client and a `position`
    /// frame per group; off: the sidecar without history, nothing read).
    Connect {
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
        #[arg(long, default_value_t = 1000)]
        groups: usize,
        /// Groups in each client's token; its own `user:{sub}` group comes on top.
        #[arg(long, default_value_t = 4)]
        groups_per_conn: usize,
        /// Measure with positions, without, or both (without first, then with).
        #[arg(long, value_enum, default_value = "both")]
        positions: PositionsArg,
    },
    /// Every scenario with its defaults, then the summary table and the plot.
    All {
        #[command(flatten)]
        fanout: FanoutArgs,
        /// Where to write the latency plot.
        #[arg(long, default_value = "docs/bench-latency.svg")]
        svg: PathBuf,
    },
    /// Summary table and plot from a file of JSON lines written with --out.
    Report {
        input: PathBuf,
        #[arg(long, default_value = "docs/bench-latency.svg")]
        svg: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PositionsArg {
    On,
    Off,
    Both,
}

#[derive(Clone, clap::Args)]
struct FanoutArgs {
    #[arg(long, default_value_t = 10_000)]
    fanout_conns: usize,
    #[arg(long, default_value_t = 1000)]
    groups: usize,
    /// Target deliveries per second, one step each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,25000,50000,75000,100000,150000,200000,250000,300000,400000"
    )]
    rates: Vec<f64>,
    #[arg(long, default_value_t = 3.0)]
    step_secs: f64,
    #[arg(long, default_value_t = 100.0)]
    p99_limit_ms: f64,
    /// Padding bytes in each event (the event is about 70 bytes plus this).
    #[arg(long, default_value_t = 30)]
    pad: usize,
    /// Publisher connections.
    #[arg(long, default_value_t = 8)]
    publishers: usize,
}

struct Run {
    args: Args,
    ctx: Ctx,
    lines: Vec<Value>,
}

impl Run {
    fn kinds(&self) -> Vec<Kind> {
        match self.args.target {
            // The baseline first in each round: both see the same machine state in turn.
            Targets::Both => vec![Kind::Baseline, Kind::Sidecar],
            Targets::Sidecar => vec![Kind::Sidecar],
            Targets::Baseline => vec![Kind::Baseline],
        }
    }

    fn emit(&mut self, mut line: Value) -> Result<()> {
        println!("{line}");
        if let Some(path) = &self.args.out {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open {}", path.display()))?;
            writeln!(f, "{line}")?;
        }
        if let Some(o) = line.as_object_mut()
            && !o.contains_key("summary")
        {
            self.lines.push(line);
        }
        Ok(())
    }

    async fn scenario(&mut self, scenario: &Scenario) -> Result<()> {
        let runs = self.args.runs.max(1);
        let broker = self.ctx.broker;
        for run in 0..runs {
            match scenario {
                Scenario::Idle {
                    conns,
                    history_size,
                } => {
                    if *history_size > 0 && broker != Broker::Redis {
                        anyhow::bail!("idle --history-size needs --broker redis");
                    }
                    for &n in conns {
                        for kind in self.kinds() {
                            let v = idle::run(&self.ctx, kind, n, *history_size).await?;
                            let variant = match history_size {
                                0 => format!("{n} conns"),
                                h => format!("{n} conns, sidecar history {h}"),
                            };
                            self.emit(tag(v, "idle", &variant, kind, run, broker))?;
                        }
                    }
                }
                Scenario::Fanout(f) => {
                    for kind in self.kinds() {
                        let v = fanout::run(&self.ctx, kind, &fanout_args(f)).await?;
                        let variant = format!("{} conns / {} groups", f.fanout_conns, f.groups);
                        self.emit(tag(v, "fanout", &variant, kind, run, broker))?;
                    }
                }
                Scenario::Broadcast {
                    conns,
                    repeats,
                    period_ms,
                } => {
                    for kind in self.kinds() {
                        let a = broadcast::Args {
                            conns: *conns,
                            repeats: *repeats,
                            period: Duration::from_millis(*period_ms),
                        };
                        let v = broadcast::run(&self.ctx, kind, a).await?;
                        self.emit(tag(
                            v,
                            "broadcast",
                            &format!("{conns} conns"),
                            kind,
                            run,
                            broker,
                        ))?;
                    }
                }
                Scenario::Proxy { secs, concurrency } => {
                    let a = proxy::Args {
                        secs: Duration::from_secs_f64(*secs),
                        concurrency: *concurrency,
                    };
                    let v = proxy::run(&self.ctx, &a).await?;
                    self.emit(tag(v, "proxy", "", Kind::Sidecar, run, Broker::Memory))?;
                }
                Scenario::Reconnect {
                    conns,
                    groups,
                    jitter_ms: _,
                    soak_secs,
                    soak_rate,
                    resume: true,
                    history_size,
                    outage_ms,
                } => {
                    let a = resume::Args {
                        conns: *conns,
                        groups: *groups,
                        history_size: *history_size,
                        rate: *soak_rate,
                        before: Duration::from_secs(5),
                        outage: Duration::from_millis(*outage_ms),
                        after: Duration::from_secs_f64(*soak_secs),
                    };
                    let v = resume::run(&self.ctx, a).await?;
                    let variant = format!("{conns} conns, resume after {outage_ms} ms down");
                    self.emit(tag(v, "resume", &variant, Kind::Sidecar, run, broker))?;
                }
                Scenario::Reconnect {
                    conns,
                    groups,
                    jitter_ms,
                    soak_secs,
                    soak_rate,
                    ..
                } => {
                    for kind in self.kinds() {
                        let a = reconnect::Args {
                            conns: *conns,
                            groups: *groups,
                            jitter: Duration::from_millis(*jitter_ms),
                            soak: Duration::from_secs_f64(*soak_secs),
                            soak_rate: *soak_rate,
                        };
                        let v = reconnect::run(&self.ctx, kind, a).await?;
                        let variant = format!("{conns} conns, jitter {jitter_ms} ms");
                        self.emit(tag(v, "reconnect", &variant, kind, run, broker))?;
                    }
                }
                Scenario::Connect {
                    conns,
                    groups,
                    groups_per_conn,
                    positions: which,
                } => {
                    let variants: &[bool] = match which {
                        PositionsArg::On => &[true],
                        PositionsArg::Off => &[false],
                        PositionsArg::Both => &[false, true],
                    };
                    for &with in variants {
                        let a = positions::Args {
                            conns: *conns,
                            groups: *groups,
                            groups_per_conn: *groups_per_conn,
                            positions: with,
                        };
                        let v = positions::run(&self.ctx, a).await?;
                        let variant = format!(
                            "{conns} conns x {} groups, positions {}",
                            groups_per_conn + 1,
                            if with { "on" } else { "off" }
                        );
                        self.emit(tag(v, "connect", &variant, Kind::Sidecar, run, broker))?;
                    }
                }
                Scenario::All { .. } | Scenario::Report { .. } => {}
            }
        }
        Ok(())
    }

    fn finish(&mut self, svg: Option<&PathBuf>) -> Result<()> {
        let summary = report::summarize(&self.lines);
        for s in summary.clone() {
            self.emit(s)?;
        }
        eprintln!("\n{}", report::markdown(&summary));
        if let Some(path) = svg
            && self.lines.iter().any(|l| l["scenario"] == "fanout")
        {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(path, report::svg(&self.lines))
                .with_context(|| format!("write {}", path.display()))?;
            eprintln!("plot written to {}", path.display());
        }
        Ok(())
    }
}

fn fanout_args(f: &FanoutArgs) -> fanout::Args {
    fanout::Args {
        conns: f.fanout_conns,
        groups: f.groups,
        rates: f.rates.clone(),
        step: Duration::from_secs_f64(f.step_secs),
        p99_limit_ms: f.p99_limit_ms,
        pad: f.pad,
        workers: f.publishers,
    }
}

fn tag(v: Value, scenario: &str, variant: &str, kind: Kind, run: usize, broker: Broker) -> Value {
    let mut line = json!({
        "scenario": scenario,
        "variant": variant,
        "target": kind,
        "run": run,
        "broker": broker,
    });
    if let (Some(o), Value::Object(fig)) = (line.as_object_mut(), v) {
        o.extend(fig);
    }
    line
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let nofile = taskstream_bench::procstat::raise_nofile();
    eprintln!("taskstream-bench: open-file limit {nofile}");
    let mut bins = Bins::beside_me();
    if let Some(p) = &args.sidecar_bin {
        bins.sidecar = p.clone();
    }
    if let Some(p) = &args.baseline_bin {
        bins.baseline = p.clone();
    }
    let ctx = Ctx {
        bins,
        broker: args.broker,
        concurrency: args.concurrency,
        deadline: Duration::from_secs(args.deadline_secs),
        min_secs: Duration::from_secs_f64(args.min_secs),
        redis_resp2: args.redis_resp2,
    };
    let scenario_cmd = args.scenario.clone();
    let mut run = Run {
        args,
        ctx,
        lines: Vec::new(),
    };
    match &scenario_cmd {
        Scenario::All { fanout, svg } => {
            let all = [
                Scenario::Idle {
                    conns: vec![5000, 19000],
                    history_size: 0,
                },
                Scenario::Fanout(fanout.clone()),
                Scenario::Broadcast {
                    conns: 10_000,
                    repeats: 9,
                    period_ms: 500,
                },
                Scenario::Proxy {
                    secs: 3.0,
                    concurrency: 32,
                },
                Scenario::Reconnect {
                    conns: 10_000,
                    groups: 1000,
                    jitter_ms: 1000,
                    soak_secs: 0.0,
                    soak_rate: 20_000.0,
                    resume: false,
                    history_size: 1000,
                    outage_ms: 2000,
                },
            ];
            for s in &all {
                run.scenario(s).await?;
            }
            run.finish(Some(svg))?;
        }
        Scenario::Report { input, svg } => {
            let text = std::fs::read_to_string(input)
                .with_context(|| format!("read {}", input.display()))?;
            run.lines = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v.get("summary").is_none())
                .collect();
            run.args.out = None;
            run.finish(Some(svg))?;
        }
        s => {
            run.scenario(s).await?;
            run.finish(None)?;
        }
    }
    Ok(())
}
