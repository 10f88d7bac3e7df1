//! taskstream-bench: what one sidecar costs per connection and per event, measured beside a
//! minimal tokio-tungstenite baseline in the same run.
//!
//! ```text
//!                     +--> taskstream-sidecar (JWT, --broker memory|redis) --+
//! [publisher] --------+                                                      +--ws--> [client fleet] --> histograms
//!  (admin POST or     +--> taskstream-bench-baseline broadcast -------------+            |
//!   redis PUBLISH)                                                               /proc/<pid>: CPU, RSS
//! ```
//!
//! Every scenario targets loopback only, is bounded in count and time, and stops by itself.

pub mod baseline;
pub mod clients;
pub mod hist;
pub mod http;
pub mod procs;
pub mod procstat;
pub mod publish;
pub mod report;
pub mod scenario;
pub mod seen;
pub mod sidecar_metrics;
