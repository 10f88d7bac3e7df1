//! The HTTPRoute watch, started whenever the Gateway API is there: at start-up, or later, when
//! someone installs its CRDs while the operator runs.
//!
//! ```text
//! discovery of gateway.networking.k8s.io/v1 ──(every RECHECK until httproutes is served)──┐
//!                                                                                          v
//!   found: ─> one "reconcile all" (TaskStreams left Degraded GatewayAPIMissing retry now)
//!          ─> metadata watcher(HTTPRoutes, managed-by label) ─> cache ─> owns_stream
//! ```
//!
//! While discovery says no, `unserved` is set: the cache then answers "no HTTPRoute" without a
//! request (none can exist).
//!
//! A watch of a resource the API server does not serve would fail and back off forever, so the
//! watch starts only once discovery lists `httproutes`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::channel::oneshot;
use futures::{Stream, StreamExt, future, stream};
use gateway_api::httproutes::HttpRoute;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::store::Writer;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tracing::{debug, info};

/// Group version of the HTTPRoutes the operator applies.
const GATEWAY_API: &str = "gateway.networking.k8s.io/v1";
/// How often discovery is asked again while the Gateway API is missing: the wait between
/// installing its CRDs and route status reaching TaskStreams, at worst.
pub const RECHECK: Duration = Duration::from_secs(30);

/// Whether the API server serves HTTPRoutes (the Gateway API CRDs are installed). Discovery is
/// readable by every authenticated user; any failure counts as "no".
pub async fn serves_httproutes(client: &Client) -> bool {
    match client.list_api_group_resources(GATEWAY_API).await {
        Ok(list) => list.resources.iter().any(|r| r.name == "httproutes"),
        Err(e) => {
            debug!(error = %e, "gateway API discovery");
            false
        }
    }
}

/// Owned HTTPRoutes as a controller trigger: waits (asking discovery every `recheck`, with
/// `unserved` set meanwhile) until the API server serves HTTPRoutes, signals `found` if it had
/// to wait, then watches their metadata with `config` into `cache` (`Api<PartialObjectMeta<_>>`
/// asks the API server for metadata only).
pub fn httproutes(
    api: Api<PartialObjectMeta<HttpRoute>>,
    client: Client,
    config: watcher::Config,
    recheck: Duration,
    found: oneshot::Sender<()>,
    unserved: Arc<AtomicBool>,
    cache: Writer<PartialObjectMeta<HttpRoute>>,
) -> impl Stream<Item = Result<PartialObjectMeta<HttpRoute>, watcher::Error>> + Send + 'static {
    let served = async move {
        let mut logged = false;
        while !serves_httproutes(&client).await {
            unserved.store(true, Ordering::Relaxed);
            if !logged {
                info!(
                    recheck = ?recheck,
                    "the Gateway API (HTTPRoute) is not installed: spec.gateway waits for it"
                );
                logged = true;
            }
            tokio::time::sleep(recheck).await;
        }
        // From here the cache answers, once its first list is in.
        unserved.store(false, Ordering::Relaxed);
        if logged {
            info!("the Gateway API (HTTPRoute) is installed: watching HTTPRoutes");
            // Only when it came late: at start-up every TaskStream is being reconciled anyway.
            // A send error means the controller is gone (shutting down): nothing left to tell.
            let _ = found.send(());
        }
    };
    stream::once(served)
        .flat_map(move |()| watcher(api.clone(), config.clone()))
        .default_backoff()
        .modify(super::cache::slim_meta)
        .reflect(cache)
        .touched_objects()
}

/// One "reconcile every TaskStream" once `found` fires; nothing if it is dropped unsent.
pub fn when_found(found: oneshot::Receiver<()>) -> impl Stream<Item = ()> + Send + 'static {
    stream::once(found).filter_map(|r| future::ready(r.ok()))
}

#[cfg(test)]
mod tests {
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::json;

    use super::*;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    async fn discovery(handle: &mut Handle, served: bool) {
        let (request, send) = handle.next_request().await.expect("discovery request");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/apis/gateway.networking.k8s.io/v1");
        let response = if served {
            let list = json!({
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GATEWAY_API,
                "resources": [
                    {"name": "gateways", "singularName": "gateway", "namespaced": true,
                     "kind": "Gateway", "verbs": ["get", "list", "watch"]},
                    {"name": "httproutes", "singularName": "httproute", "namespaced": true,
                     "kind": "HTTPRoute", "verbs": ["get", "list", "watch", "patch"]},
                ],
            });
            Response::builder()
                .body(Body::from(serde_json::to_vec(&list).expect("json")))
                .expect("response")
        } else {
            // What a real API server answers for a group it does not serve.
            Response::builder()
                .status(StatusCode::NOT_FOUND)
                .header("content-type", "text/plain; charset=utf-8")
                .body(Body::from(b"404 page not found\n".to_vec()))
                .expect("response")
        };
        send.send_response(response);
    }

    /// CRDs installed after start: discovery says no, then yes after one `RECHECK`; the list of
    /// HTTPRoutes then starts and its objects reach the controller, and "reconcile all" fires.
    #[tokio::test(start_paused = true)]
    async fn watch_starts_when_the_crds_appear_later() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "apps");
        let (found_tx, found_rx) = oneshot::channel();
        let config = watcher::Config::default().labels("app.kubernetes.io/managed-by=x");
        let unserved = Arc::new(AtomicBool::new(false));
        let (_, writer) = kube::runtime::reflector::store();
        let routes = httproutes(
            Api::all(client.clone()),
            client,
            config,
            RECHECK,
            found_tx,
            unserved.clone(),
            writer,
        );
        let consumer = tokio::spawn(async move {
            let mut routes = Box::pin(routes);
            routes
                .next()
                .await
                .expect("an HTTPRoute")
                .expect("no error")
        });
        let mut found = Box::pin(when_found(found_rx));

        let started = tokio::time::Instant::now();
        discovery(&mut handle, false).await;
        discovery(&mut handle, true).await;
        assert_eq!(started.elapsed(), RECHECK, "asked again after one recheck");
        tokio::time::timeout(Duration::from_secs(1), found.next())
            .await
            .expect("found in time")
            .expect("reconcile-all fires once");
        assert!(!unserved.load(Ordering::Relaxed), "served now");

        let (request, send) = handle.next_request().await.expect("list request");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(
            request.uri().path(),
            "/apis/gateway.networking.k8s.io/v1/httproutes"
        );
        let query = request.uri().query().unwrap_or_default();
        assert!(
            query.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dx"),
            "{query}"
        );
        let list = json!({
            "apiVersion": GATEWAY_API, "kind": "HTTPRouteList",
            "metadata": {"resourceVersion": "900"},
            "items": [{
                "apiVersion": GATEWAY_API, "kind": "HTTPRoute",
                "metadata": {"name": "shop", "namespace": "apps", "resourceVersion": "899"},
                "spec": {"parentRefs": [{"name": "public", "namespace": "edge"}]},
            }],
        });
        send.send_response(
            Response::builder()
                .body(Body::from(serde_json::to_vec(&list).expect("json")))
                .expect("response"),
        );
        let route = tokio::time::timeout(Duration::from_secs(1), consumer)
            .await
            .expect("route in time")
            .expect("consumer");
        assert_eq!(route.metadata.name.as_deref(), Some("shop"));
        assert!(
            found.next().await.is_none(),
            "reconcile-all fires only once"
        );
    }

    /// With the CRDs there at start, the watch starts at once: no recheck wait, no reconcile-all.
    #[tokio::test(start_paused = true)]
    async fn watch_starts_at_once_when_served() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "apps");
        let (found_tx, found_rx) = oneshot::channel();
        let routes = httproutes(
            Api::all(client.clone()),
            client,
            watcher::Config::default(),
            RECHECK,
            found_tx,
            Arc::default(),
            kube::runtime::reflector::store().1,
        );
        let _consumer = tokio::spawn(async move { Box::pin(routes).next().await });
        let started = tokio::time::Instant::now();
        discovery(&mut handle, true).await;
        let (request, _send) = handle.next_request().await.expect("list request");
        assert_eq!(
            request.uri().path(),
            "/apis/gateway.networking.k8s.io/v1/httproutes"
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
        let mut found = Box::pin(when_found(found_rx));
        assert!(
            found.next().await.is_none(),
            "no reconcile-all: the start-up reconciles every TaskStream anyway"
        );
    }
}
