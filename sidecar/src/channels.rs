//! Drop-in for Django Channels: the sidecar speaks the two `channels_redis` 4.x wire protocols,
//! so an app's unmodified `group_send(group, {"type": ..., "data": ...})` reaches browsers.
//!
//! ```text
//!  group_send (Celery task, view)            sidecar (one process)
//!  ------------------------------            -----------------------------------------------
//!  RedisChannelLayer:                        [core]   ZADD <p>:group:<g> specific.<id>!<g>
//!    ZADD <p>specific.<id>! <12 rnd><msg>    [drain]  BZPOPMIN <p>specific.<id>! --+
//!  RedisPubSubChannelLayer:                                                       +--> [codec] -> hub.publish(g)
//!    PUBLISH <p>__group__<g> <msg>           [redis]  SUBSCRIBE (per shard) -------+
//! ```
//!
//! - [`settings`]: the `--channels-*` flags and their validated form.
//! - [`codec`]: optional Fernet decryption, msgpack decoding, and the msgpack -> JSON rule.
//! - [`core`]: membership in the groups local clients need (a link on the broker's link driver).
//! - [`drain`]: draining the process's inbox (a second link, on the same driver).
//! - [`pubsub`]: a [`crate::broker::wire::Wire`] for the pub/sub layer, run by the Redis source.
//! - [`hash`]: sharding over `--channels-hosts`, the same as channels_redis (`_consistent_hash`).

pub mod codec;
pub mod core;
pub mod drain;
pub mod hash;
pub mod pubsub;
pub mod settings;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::settings::{ChannelsConfig, Layer};
use crate::error::ConfigError;
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Starts the source for `config`; it runs until `shutdown`.
pub fn spawn(
    config: ChannelsConfig,
    hub: Arc<Hub>,
    health: Arc<Health>,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, ConfigError> {
    let codec = Arc::new(codec::Codec::new(&config.keys, config.message));
    match config.layer {
        Layer::Core => {
            let core = core::Core::new(&config, codec)?;
            Ok(tokio::spawn(core.run(hub, health, metrics, shutdown)))
        }
        Layer::Pubsub => pubsub::spawn(&config, codec, hub, health, metrics, shutdown),
    }
}
