//! The HTTP side of `serve`: `/metrics` and `/leaks` from what the agent
//! loop last published.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, time::sleep};

use crate::metrics::CONTENT_TYPE;

/// What the HTTP side serves: rebuilt by the agent loop each refresh, so a
/// scrape costs a copy, never a walk of the kernel's table.
#[derive(Default)]
pub(crate) struct Published {
    pub(crate) metrics: String,
    pub(crate) leaks_json: String,
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

fn route(published: &Mutex<Published>, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    // A poisoned lock means a panic elsewhere; serve what is there.
    let published = published.lock().unwrap_or_else(|e| e.into_inner());
    match request.uri().path() {
        "/metrics" => respond(StatusCode::OK, CONTENT_TYPE, published.metrics.clone()),
        "/leaks" => respond(
            StatusCode::OK,
            "application/json",
            published.leaks_json.clone(),
        ),
        "/" => respond(
            StatusCode::OK,
            "text/plain",
            "tcptrace: /metrics (OpenMetrics), /leaks (JSON)\n".into(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

async fn serve_http(listener: TcpListener, published: Arc<Mutex<Published>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of fds, say: back off rather than spin.
            sleep(Duration::from_millis(100)).await;
            continue;
        };
        let published = published.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = route(&published, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Runs the HTTP side on a thread and runtime of its own, so no number of
/// clients, slow or many, ever delays the thread that drains the ring
/// buffer. Returns once the port is bound (or could not be).
pub(crate) fn start(
    listen: SocketAddr,
    published: Arc<Mutex<Published>>,
) -> anyhow::Result<SocketAddr> {
    let (bound, bound_result) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = bound.send(Err(anyhow::Error::from(error)));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match TcpListener::bind(listen).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        let _ = bound.send(Err(anyhow::Error::from(error)
                            .context(format!("cannot listen on {listen}"))));
                        return;
                    }
                };
                let _ = bound.send(listener.local_addr().map_err(anyhow::Error::from));
                serve_http(listener, published).await;
            });
        })
        .context("starting the HTTP thread")?;
    bound_result
        .recv()
        .context("the HTTP thread ended before binding")?
}
