//! A real `redis-server` on a free port, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{WAIT, free_port};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` (installed by scripts/install-test-deps.sh) and waits for PING.
    pub async fn start() -> Self {
        let mut s = Self {
            port: free_port(),
            child: None,
        };
        s.spawn().await;
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server: run scripts/install-test-deps.sh first");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut c) = self.conn().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer PING on {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A fresh multiplexed connection.
    pub async fn conn(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    /// `PUBLISH channel payload`, returning the number of receivers.
    pub async fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> usize {
        let mut c = self.conn().await.expect("connect to redis");
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload.as_ref())
            .query_async(&mut c)
            .await
            .expect("PUBLISH")
    }

    /// `PUBSUB CHANNELS`, sorted.
    pub async fn channels(&self) -> Vec<String> {
        let mut c = self.conn().await.expect("connect to redis");
        let mut v: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query_async(&mut c)
            .await
            .expect("PUBSUB CHANNELS");
        v.sort();
        v
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
