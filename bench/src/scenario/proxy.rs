//! Proxy: plain HTTP `GET /` to the tiny app, straight and through the sidecar, with the same
//! load. Two phases per path: one connection in series (the latency the proxy adds), then
//! `concurrency` connections flat out (throughput).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use super::{Ctx, r3};
use crate::hist::Histogram;
use crate::http::Conn;
use crate::procs::{App, Feed, Kind, Server};
use crate::procstat;

/// Requests per connection at most, whatever the duration.
const MAX_REQUESTS: u64 = 5_000_000;

#[derive(Clone, Debug)]
pub struct Args {
    pub secs: Duration,
    pub concurrency: usize,
}

struct Phase {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

async fn load(addr: SocketAddr, conns: usize, secs: Duration) -> Result<Phase> {
    let hist = Arc::new(Histogram::default());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let hist = hist.clone();
        tasks.spawn(async move {
            let mut errors = 0u64;
            let Ok(mut c) = Conn::open(addr).await else {
                return 1;
            };
            for _ in 0..MAX_REQUESTS {
                if start.elapsed() >= secs {
                    break;
                }
                let t = Instant::now();
                match c.send(Method::GET, "/", Bytes::new()).await {
                    Ok((200, _)) => hist.record(t.elapsed().as_micros() as u64),
                    _ => {
                        errors += 1;
                        match Conn::open(addr).await {
                            Ok(n) => c = n,
                            Err(_) => return errors,
                        }
                    }
                }
            }
            errors
        });
    }
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        errors += r.unwrap_or(1);
    }
    let wall = start.elapsed().as_secs_f64();
    Ok(Phase {
        rps: hist.count() as f64 / wall,
        p50_ms: hist.quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.quantile(0.99) as f64 / 1000.0,
        errors,
    })
}

/// Runs both paths; `kind` Baseline means straight to the app, Sidecar through it.
pub async fn run(ctx: &Ctx, args: &Args) -> Result<Value> {
    let app = App::start(&ctx.bins).await?;
    let sidecar = Server::start(Kind::Sidecar, &ctx.bins, Feed::Admin, Some(app.addr)).await?;
    let mut out = serde_json::Map::new();
    for (name, addr) in [("direct", app.addr), ("sidecar", sidecar.public)] {
        let s0 = sidecar.usage().cpu;
        let o0 = procstat::own().cpu;
        let a0 = app.usage().cpu;
        let serial = load(addr, 1, args.secs).await?;
        let t = Instant::now();
        let par = load(addr, args.concurrency, args.secs).await?;
        let wall = t.elapsed().as_secs_f64();
        let s = sidecar.usage().cpu.saturating_sub(s0).as_secs_f64();
        let o = procstat::own().cpu.saturating_sub(o0).as_secs_f64();
        let a = app.usage().cpu.saturating_sub(a0).as_secs_f64();
        out.insert(
            name.into(),
            json!({
                "serial_p50_ms": serial.p50_ms,
                "serial_p99_ms": serial.p99_ms,
                "serial_rps": r3(serial.rps),
                "loaded_rps": r3(par.rps),
                "loaded_p50_ms": par.p50_ms,
                "loaded_p99_ms": par.p99_ms,
                "errors": serial.errors + par.errors,
                "sidecar_cpu_secs": r3(s),
                "app_cpu_secs": r3(a),
                "tool_cpu_pct": r3(o * 100.0 / (wall + args.secs.as_secs_f64())),
            }),
        );
    }
    let g = |path: &str, k: &str| out[path][k].as_f64().unwrap_or(0.0);
    let added_p50 = g("sidecar", "serial_p50_ms") - g("direct", "serial_p50_ms");
    let added_p99 = g("sidecar", "serial_p99_ms") - g("direct", "serial_p99_ms");
    let ratio = g("sidecar", "loaded_rps") / g("direct", "loaded_rps").max(1e-9);
    out.insert("added_p50_ms".into(), json!(r3(added_p50)));
    out.insert("added_p99_ms".into(), json!(r3(added_p99)));
    out.insert("throughput_ratio".into(), json!(r3(ratio)));
    out.insert("concurrency".into(), json!(args.concurrency));
    Ok(Value::Object(out))
}
