//! The operations endpoint: `GET /metrics`, `/healthz` and `/readyz` over HTTP/1.1.
//!
//! Plain hyper with an accept loop: three fixed routes do not need a router, and every answer
//! is computed from in-memory figures, so a slow client cannot hold anything but its own
//! connection.

use std::convert::Infallible;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::exposition;
use super::figures::FIGURES;

/// A client that sends nothing for this long is dropped: it would otherwise hold a task.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `stop` fires, then drops every open connection.
#[tracing::instrument(name = "metrics_http", skip_all)]
pub async fn serve(
    listener: TcpListener,
    readiness: impl Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                debug!(%error, "metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let readiness = readiness.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| {
                let readiness = readiness.clone();
                async move { Ok::<_, Infallible>(answer(&request, &readiness)) }
            });
            let served = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                debug!(%peer, %error, "metrics connection ended with an error");
            }
        });
    }
    connections.abort_all();
}

fn answer<B>(
    request: &Request<B>,
    readiness: &impl Fn() -> Result<(), String>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/metrics" => {
            let body = exposition::render(&FIGURES.snapshot());
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(exposition::CONTENT_TYPE),
            );
            response
        }
        "/healthz" => text(StatusCode::OK, "alive\n".to_owned()),
        "/readyz" => match readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
        path => text(
            StatusCode::NOT_FOUND,
            format!("no {path:?} here; try /metrics, /healthz or /readyz\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).expect("a request")
    }

    #[test]
    fn readyz_answers_503_with_the_reason_as_plain_text() {
        let not_ready = || Err("not connected to the upstream broker".to_owned());
        let response = answer(&get("/readyz"), &not_ready);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let response = answer(&get("/readyz"), &|| Ok(()));
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn healthz_is_200_even_when_not_ready() {
        let response = answer(&get("/healthz"), &|| Err("setup".to_owned()));
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn metrics_are_served_as_openmetrics_text() {
        let response = answer(&get("/metrics"), &|| Ok(()));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            exposition::CONTENT_TYPE
        );
    }

    #[test]
    fn other_paths_are_404_and_other_methods_405() {
        let response = answer(&get("/metrics/extra"), &|| Ok(()));
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let post = Request::post("/metrics").body(()).expect("a request");
        assert_eq!(
            answer(&post, &|| Ok(())).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
