//! `taskstream-bench-baseline`: the baseline broadcast server, or the tiny HTTP app.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "taskstream-bench-baseline", about)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Minimal tokio-tungstenite broadcast server: ws `/ws?groups=a,b`, admin `POST /publish/<g>`.
    Broadcast {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        admin_listen: SocketAddr,
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
        } => taskstream_bench::baseline::broadcast(listen, admin_listen).await,
        What::App { listen } => taskstream_bench::baseline::app(listen).await,
    }
}
