//! Counts the operator's own requests to the API server, by verb, resource and answer, as
//! `taskstream_operator_api_requests_total{verb,resource,code}`: what a reconcile costs the API
//! server, and the proof that a converged fleet writes nothing.
//!
//! ```text
//! Api<K> ─> kube Client ─> [CountRequests] ─> auth, TLS, hyper ─> API server
//!                               └─> verb (get/list/watch/create/patch/update/delete),
//!                                   resource (`deployments`, `taskstreams/status`), code
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, Request, Response, Uri};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tower::{Layer, Service};

/// Label set of the request counter. Bounded: a dozen verbs x the resources the operator
/// touches x the HTTP codes answered (`error` when no answer came).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiRequestLabels {
    /// The Kubernetes verb: `get`, `list`, `watch`, `create`, `patch`, `update`, `delete`.
    pub verb: String,
    /// The resource, with its subresource (`taskstreams/status`); no namespace, no name.
    pub resource: String,
    /// The HTTP status code answered, or `error` (connection, TLS, timeout).
    pub code: String,
}

/// A tower layer for the kube client that counts every request into `requests`.
#[derive(Clone)]
pub struct CountRequests {
    requests: Family<ApiRequestLabels, Counter>,
}

impl CountRequests {
    pub fn new(requests: Family<ApiRequestLabels, Counter>) -> Self {
        Self { requests }
    }
}

impl<S> Layer<S> for CountRequests {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            requests: self.requests.clone(),
        }
    }
}

/// The service [`CountRequests`] wraps around the client's stack.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    requests: Family<ApiRequestLabels, Counter>,
}

impl<S, B, R> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (verb, resource) = classify(req.method(), req.uri());
        let requests = self.requests.clone();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let res = answer.await;
            // A watch counts when its stream opens (the response head), not when it ends.
            let code = match &res {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            requests
                .get_or_create(&ApiRequestLabels {
                    verb: verb.into(),
                    resource,
                    code,
                })
                .inc();
            res
        })
    }
}

/// The Kubernetes verb and resource of a request path: `/api/v1/namespaces/apps/services/shop`
/// is (`patch`, `services`) for a PATCH, `/apis/taskstream.dev/v1alpha1/taskstreams?watch=true`
/// is (`watch`, `taskstreams`). Paths that are not resources (`/version`) keep their first
/// segment.
pub fn classify(method: &Method, uri: &Uri) -> (&'static str, String) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    // `/api/v1/...` or `/apis/<group>/<version>/...`
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    };
    let Some(mut rest) = rest else {
        let first = segments.first().copied().unwrap_or("/").to_string();
        return (verb_of(method, uri, true), first);
    };
    // `namespaces/<ns>/<resource>...`, unless the namespace itself is the object.
    if rest.len() > 2 && rest[0] == "namespaces" {
        rest = &rest[2..];
    }
    let (resource, named) = match rest {
        [] => ("", false),
        [resource] => (*resource, false),
        [resource, _name] => (*resource, true),
        [resource, _name, sub, ..] => {
            return (verb_of(method, uri, false), format!("{resource}/{sub}"));
        }
    };
    (verb_of(method, uri, !named), resource.to_string())
}

fn verb_of(method: &Method, uri: &Uri, collection: bool) -> &'static str {
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    match *method {
        Method::GET if watch => "watch",
        Method::GET if collection => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if collection => "deletecollection",
        Method::DELETE => "delete",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(method: Method, uri: &str) -> (&'static str, String) {
        classify(&method, &uri.parse().expect("uri"))
    }

    #[test]
    fn requests_are_named_by_verb_and_resource() {
        assert_eq!(
            of(
                Method::PATCH,
                "/api/v1/namespaces/apps/services/shop?fieldManager=x"
            ),
            ("patch", "services".into())
        );
        assert_eq!(
            of(
                Method::PATCH,
                "/apis/taskstream.dev/v1alpha1/namespaces/apps/taskstreams/shop/status?force=true"
            ),
            ("patch", "taskstreams/status".into())
        );
        assert_eq!(
            of(
                Method::GET,
                "/apis/apps/v1/deployments?labelSelector=a%3Db&watch=true&resourceVersion=1"
            ),
            ("watch", "deployments".into())
        );
        assert_eq!(
            of(Method::GET, "/apis/apps/v1/namespaces/apps/deployments"),
            ("list", "deployments".into())
        );
        assert_eq!(
            of(
                Method::GET,
                "/apis/policy/v1/namespaces/apps/poddisruptionbudgets/shop"
            ),
            ("get", "poddisruptionbudgets".into())
        );
        assert_eq!(
            of(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/apps/events"
            ),
            ("create", "events".into())
        );
        assert_eq!(
            of(Method::GET, "/api/v1/namespaces/apps"),
            ("get", "namespaces".into())
        );
        assert_eq!(
            of(
                Method::DELETE,
                "/apis/autoscaling/v2/namespaces/apps/horizontalpodautoscalers/shop"
            ),
            ("delete", "horizontalpodautoscalers".into())
        );
        assert_eq!(of(Method::GET, "/version"), ("list", "version".into()));
    }

    #[tokio::test]
    async fn the_layer_counts_each_answer_by_code() {
        let requests = Family::<ApiRequestLabels, Counter>::default();
        let (mock, mut handle) = tower_test::mock::pair::<Request<()>, Response<()>>();
        let mut svc = CountRequests::new(requests.clone()).layer(mock);
        let server = tokio::spawn(async move {
            let (_, reply) = handle.next_request().await.expect("request");
            reply.send_response(Response::builder().status(404).body(()).expect("response"));
        });
        let req = Request::get("/api/v1/namespaces/apps/secrets/redis")
            .body(())
            .expect("request");
        futures::future::poll_fn(|cx| svc.poll_ready(cx))
            .await
            .expect("ready");
        let res = svc.call(req).await.expect("answer");
        assert_eq!(res.status(), 404);
        server.await.expect("server");
        let labels = ApiRequestLabels {
            verb: "get".into(),
            resource: "secrets".into(),
            code: "404".into(),
        };
        assert_eq!(requests.get_or_create(&labels).get(), 1);
    }
}
