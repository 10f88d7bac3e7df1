//! `taskstream-bench-baseline`: the lean baseline broadcast server, or the tiny HTTP app.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use taskstream_bench::baseline::Config;

#[derive(Parser)]
#[command(name = "taskstream-bench-baseline", about)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Lean fan-out server: ws with `?token=<JWT>` (HS256; groups from the `groups` claim and
    /// `user:{sub}`), events from Redis `PUBLISH taskstream:<g>` or admin `POST /publish/<g>`.
    Broadcast {
        #[arg(long, env = "TASKSTREAM_BENCH_LISTEN")]
        listen: SocketAddr,
        #[arg(long, env = "TASKSTREAM_BENCH_ADMIN_LISTEN")]
        admin_listen: SocketAddr,
        /// HS256 secret the clients' tokens are signed with.
        #[arg(long, env = "TASKSTREAM_BENCH_JWT_SECRET")]
        jwt_secret: String,
        /// Subscribe to the groups' channels on this Redis (as the sidecar's `--broker redis`).
        #[arg(long, env = "TASKSTREAM_BENCH_REDIS_URL")]
        redis_url: Option<String>,
    },
    /// Tiny hyper app answering `200 hello, world` to everything.
    App {
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    taskstream_bench::procstat::raise_nofile();
    match Args::parse().what {
        What::Broadcast {
            listen,
            admin_listen,
            jwt_secret,
            redis_url,
        } => {
            let config = Config {
                listen,
                admin_listen,
                jwt_secret,
                redis_url,
            };
            taskstream_bench::baseline::broadcast(config).await
        }
        What::App { listen } => taskstream_bench::baseline::app(listen).await,
    }
}
