//! The mutating admission webhook of attach mode, served by every replica.
//!
//! ```text
//! API server ──HTTPS :9443 /mutate-pods──> server (rustls, cert hot-reloaded) ──> admission
//!                                                                  │  get TaskStream <label>
//!                                                                  └─> mutate (pure) ─> JSON patch
//! certs: Secret taskstream-webhook-tls (create-if-absent, rotate) ─> server ; caBundle patch
//! ```

pub mod admission;
pub mod certs;
pub mod keeper;
pub mod mutate;
pub mod server;
