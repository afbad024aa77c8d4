//! The HTTP side of `serve`: `/metrics`, `/leaks`, the page at `/` and its
//! `/flamegraph.svg`, from what the agent loop last published, on a port any local process (and with `--listen
//! 0.0.0.0` any host) can reach. So no client holds anything for long: a
//! request head must arrive whole within [`HEADER_READ_TIMEOUT`] (also the
//! limit for an idle kept-alive connection), a connection that moves no
//! byte for [`STALL_TIMEOUT`] is closed, heads are bounded in size, bodies
//! are refused, and at most [`MAX_CONNECTIONS`] are open: one more evicts
//! the oldest that never sent a request, so a flood of idle or slow
//! connections never keeps a scrape out, nor uses up serve's fds.

use std::{
    collections::VecDeque,
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body as _, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    time::{Instant, sleep, sleep_until},
};

use crate::view::{
    metrics::CONTENT_TYPE,
    page::{CONTENT_SECURITY_POLICY, STALE_MARKER},
};

/// The flame graph opened on its own runs inferno's script (zoom, search)
/// and may fetch nothing.
const FLAMEGRAPH_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
     style-src 'unsafe-inline'; script-src 'unsafe-inline'; frame-ancestors 'self'";

/// A request head must be complete this long after the server starts
/// waiting for it, on a new or a kept-alive connection: a slowloris client
/// and an idle keep-alive are both closed then.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection on which no byte moved either way for this long is closed:
/// a client that asks and never reads the answer.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Open connections at most (fewer if the fd limit is low). Prometheus
/// needs one per server that scrapes.
pub const MAX_CONNECTIONS: usize = 256;
/// Request line and headers together, and their number: a scrape sends a
/// few hundred bytes in a handful of headers.
pub const MAX_HEADER_BYTES: usize = 8 << 10;
pub const MAX_HEADERS: usize = 64;
/// hyper's read buffer; its floor is 8 KiB.
const READ_BUFFER_BYTES: usize = 16 << 10;
/// fds kept for everything else serve opens: its probe, /proc walks, one
/// socket per network namespace read.
const RESERVED_FDS: u64 = 256;

/// One refresh's documents.
#[derive(Clone)]
pub struct Bodies {
    pub metrics: Bytes,
    pub leaks: Bytes,
    /// The HTML page at `/`.
    pub page: Bytes,
    /// `Err`: why there is no flame graph (answered with 503).
    pub flamegraph: Result<Bytes, String>,
    /// When the host read they reflect began.
    pub as_of: Option<SystemTime>,
    /// Older than this, they are stale: the page says so.
    pub stale_after: Duration,
}

/// Before the first refresh, while the probe loads.
impl Default for Bodies {
    fn default() -> Self {
        Self {
            metrics: Bytes::new(),
            leaks: Bytes::new(),
            page: Bytes::new(),
            flamegraph: Err("tcptrace is starting: no report yet".to_owned()),
            as_of: None,
            stale_after: Duration::MAX,
        }
    }
}

/// What the HTTP side serves, rebuilt by the agent loop each refresh: a
/// response shares these bytes, so a scrape costs neither a walk of the
/// kernel's table nor a copy.
#[derive(Clone, Default)]
pub struct Published {
    bodies: Arc<Mutex<Bodies>>,
    /// accept() calls that failed (out of fds, mostly), since start.
    accept_errors: Arc<AtomicU64>,
}

impl Published {
    pub fn publish(&self, bodies: Bodies) {
        // A poisoned lock means a panic elsewhere; the bodies are whole.
        *self.bodies.lock().unwrap_or_else(|e| e.into_inner()) = bodies;
    }

    fn bodies(&self) -> Bodies {
        self.bodies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }
}

/// fds opened before anything else, so among the lowest: at fd exhaustion
/// one is closed, and the accept() that follows gets its number below the
/// limit, so a scrape is still answered from what was published. Another
/// thread may take it first; the next accept tries again.
struct FdReserve(Vec<std::fs::File>);

impl FdReserve {
    const SIZE: usize = 4;

    fn new() -> Self {
        let mut reserve = Self(Vec::with_capacity(Self::SIZE));
        reserve.refill();
        reserve
    }

    /// Back to its size, as far as fds allow: a no-op while it is full.
    fn refill(&mut self) {
        while self.0.len() < Self::SIZE {
            match std::fs::File::open("/dev/null") {
                Ok(file) => self.0.push(file),
                Err(_) => break,
            }
        }
    }

    fn is_full(&self) -> bool {
        self.0.len() == Self::SIZE
    }

    /// Closes one; `false` if none is left.
    fn release_one(&mut self) -> bool {
        self.0.pop().is_some()
    }
}

/// Said once per run of failed accepts, and when they end.
struct AcceptTrouble {
    failing_since: Option<u64>,
}

impl AcceptTrouble {
    fn failed(&mut self, error: &io::Error, total: u64) {
        if self.failing_since.is_none() {
            self.failing_since = Some(total);
            eprintln!(
                "tcptrace: cannot accept HTTP connections: {error}; answering scrapes with the fds kept in reserve, counted in tcptrace_http_accept_errors_total"
            );
        }
    }

    fn accepted(&mut self, total: u64) {
        if let Some(since) = self.failing_since.take() {
            eprintln!(
                "tcptrace: accepting HTTP connections again, after {} failed accepts",
                total.saturating_sub(since) + 1
            );
        }
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A document a browser renders: what it may load, and not to guess
/// another type than the one it is given.
fn with_policy(mut response: Response<Full<Bytes>>, policy: &'static str) -> Response<Full<Bytes>> {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(policy),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A refusal after which the connection is closed: what else the client
/// sent (a body, a tunnel after CONNECT) is not read.
fn refuse(status: StatusCode, message: &'static str) -> Response<Full<Bytes>> {
    let mut response = respond(status, "text/plain", Bytes::from_static(message.as_bytes()));
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

/// How old the published figures are now.
fn age(as_of: Option<SystemTime>) -> Option<Duration> {
    Some(SystemTime::now().duration_since(as_of?).unwrap_or_default())
}

/// The metrics with their age at this scrape, which the body built at the
/// read cannot know: before the closing `# EOF`.
fn with_read_age(metrics: Bytes, age: Option<Duration>) -> Bytes {
    let (Some(age), Some(body)) = (age, metrics.strip_suffix(b"# EOF\n")) else {
        return metrics;
    };
    let mut text = Vec::with_capacity(metrics.len() + 256);
    text.extend_from_slice(body);
    text.extend_from_slice(
        format!(
            "# HELP tcptrace_host_read_age_seconds Seconds since the read of the kernel's table and /proc that these figures come from began.\n\
             # TYPE tcptrace_host_read_age_seconds gauge\n\
             tcptrace_host_read_age_seconds {:.3}\n# EOF\n",
            age.as_secs_f64()
        )
        .as_bytes(),
    );
    Bytes::from(text)
}

/// The page, with a warning in place of its marker when its figures are
/// older than `stale_after`.
fn warn_if_stale(page: Bytes, age: Option<Duration>, stale_after: Duration) -> Bytes {
    let Some(age) = age.filter(|age| *age > stale_after) else {
        return page;
    };
    let Some(at) = page
        .windows(STALE_MARKER.len())
        .position(|w| w == STALE_MARKER.as_bytes())
    else {
        return page;
    };
    let warning = format!(
        "<p class=\"stale\">Stale: these figures are from a read of the host {:.0} s ago; tcptrace has not read it since (see its log, and tcptrace_host_read_failures_total).</p>",
        age.as_secs_f64()
    );
    let mut text = Vec::with_capacity(page.len() + warning.len());
    text.extend_from_slice(&page[..at]);
    text.extend_from_slice(warning.as_bytes());
    text.extend_from_slice(&page[at + STALE_MARKER.len()..]);
    Bytes::from(text)
}

fn route(published: &Published, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    if !request.body().is_end_stream() {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "no request bodies\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let bodies = published.bodies();
            let metrics = with_read_age(bodies.metrics, age(bodies.as_of));
            respond(StatusCode::OK, CONTENT_TYPE, metrics)
        }
        "/leaks" => respond(StatusCode::OK, "application/json", published.bodies().leaks),
        "/" => match published.bodies() {
            bodies if bodies.page.is_empty() => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from_static(b"tcptrace is starting: no report yet\n"),
            ),
            bodies => with_policy(
                respond(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    warn_if_stale(bodies.page, age(bodies.as_of), bodies.stale_after),
                ),
                CONTENT_SECURITY_POLICY,
            ),
        },
        "/flamegraph.svg" => match published.bodies().flamegraph {
            Ok(svg) => with_policy(
                respond(StatusCode::OK, "image/svg+xml", svg),
                FLAMEGRAPH_CONTENT_SECURITY_POLICY,
            ),
            Err(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                Bytes::from(format!("{why}\n")),
            ),
        },
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found\n"),
        ),
    }
}

/// When a byte last moved on a connection, in ms since it was accepted.
struct Progress {
    accepted: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn note(&self) {
        let ms = self.accepted.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.accepted + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A connection's socket that notes every byte moved.
struct Watched {
    stream: TcpStream,
    progress: Arc<Progress>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.progress.note();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.note();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.progress.note();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

struct Slot {
    id: u64,
    /// Whether a request ever arrived on it: one that never sent one is
    /// evicted first.
    requested: Arc<AtomicBool>,
    evict: oneshot::Sender<()>,
}

/// The open connections, oldest first.
struct Connections {
    max: usize,
    next_id: u64,
    open: VecDeque<Slot>,
}

impl Connections {
    fn new(max: usize) -> Self {
        Self {
            max,
            next_id: 0,
            open: VecDeque::new(),
        }
    }

    /// Makes room if full, and registers a new connection.
    fn admit(&mut self) -> (u64, Arc<AtomicBool>, oneshot::Receiver<()>) {
        while self.open.len() >= self.max {
            let victim = self
                .open
                .iter()
                .position(|slot| !slot.requested.load(Ordering::Relaxed))
                .unwrap_or(0);
            if let Some(slot) = self.open.remove(victim) {
                let _ = slot.evict.send(());
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let requested = Arc::new(AtomicBool::new(false));
        let (evict, evicted) = oneshot::channel();
        self.open.push_back(Slot {
            id,
            requested: requested.clone(),
            evict,
        });
        (id, requested, evicted)
    }

    fn remove(&mut self, id: u64) {
        if let Some(at) = self.open.iter().position(|slot| slot.id == id) {
            self.open.remove(at);
        }
    }
}

/// Serves one connection until it ends, stalls or is evicted.
async fn serve_connection(
    stream: TcpStream,
    published: Published,
    requested: Arc<AtomicBool>,
    mut evicted: oneshot::Receiver<()>,
) {
    let progress = Arc::new(Progress::new());
    let io = TokioIo::new(Watched {
        stream,
        progress: progress.clone(),
    });
    let service = service_fn(move |request: Request<Incoming>| {
        requested.store(true, Ordering::Relaxed);
        let response = route(&published, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        // Without a timer hyper silently disables its header read timeout.
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(READ_BUFFER_BYTES)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service);
    tokio::pin!(connection);
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            // Evicted (or the table is gone): dropping closes the socket.
            _ = &mut evicted => return,
            _ = sleep_until(progress.last() + STALL_TIMEOUT) => {
                if progress.last() + STALL_TIMEOUT <= Instant::now() {
                    return;
                }
            }
        }
    }
}

/// Connections at most: [`MAX_CONNECTIONS`], or fewer when the soft fd
/// limit leaves less room beside [`RESERVED_FDS`].
fn connection_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    let room = soft.saturating_sub(RESERVED_FDS) / 2;
    MAX_CONNECTIONS.min(usize::try_from(room).unwrap_or(usize::MAX).max(8))
}

async fn serve_http(listener: TcpListener, published: Published, mut reserve: FdReserve) {
    let connections = Arc::new(Mutex::new(Connections::new(connection_limit())));
    let mut trouble = AcceptTrouble {
        failing_since: None,
    };
    // Not while an fd was just given up for the accept that follows.
    let mut refill = true;
    loop {
        if refill {
            reserve.refill();
        }
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                // Only a full reserve says fds are free again: an accept
                // that took a reserve fd is part of the trouble.
                if reserve.is_full() {
                    trouble.accepted(published.accept_errors());
                }
                refill = true;
                stream
            }
            Err(error) => {
                let total = published.accept_errors.fetch_add(1, Ordering::Relaxed) + 1;
                trouble.failed(&error, total);
                refill = false;
                if !reserve.release_one() {
                    // None left to give up: back off rather than spin.
                    sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let (id, requested, evicted) = connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit();
        let published = published.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            serve_connection(stream, published, requested, evicted).await;
            connections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        });
    }
}

/// Runs the HTTP side on a thread and runtime of its own, so no number of
/// clients, slow or many, ever delays the thread that drains the ring
/// buffer. Returns once the port is bound (or could not be).
pub fn start(listen: SocketAddr, published: Published) -> anyhow::Result<SocketAddr> {
    // Here, before the thread and its runtime open theirs: the lowest fds.
    let reserve = FdReserve::new();
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
                serve_http(listener, published, reserve).await;
            });
        })
        .context("starting the HTTP thread")?;
    bound_result
        .recv()
        .context("the HTTP thread ended before binding")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_carries_the_age_of_its_figures_before_the_end() {
        let body = Bytes::from_static(b"# TYPE x gauge\nx 1\n# EOF\n");
        let aged = with_read_age(body.clone(), Some(Duration::from_millis(2500)));
        let text = std::str::from_utf8(&aged).unwrap();
        assert!(text.starts_with("# TYPE x gauge\nx 1\n# HELP tcptrace_host_read_age_seconds"));
        assert!(
            text.ends_with("tcptrace_host_read_age_seconds 2.500\n# EOF\n"),
            "{text}"
        );
        // Before the first read there is no age to give.
        assert_eq!(
            with_read_age(body, None),
            Bytes::from_static(b"# TYPE x gauge\nx 1\n# EOF\n")
        );
    }

    #[test]
    fn the_page_says_it_is_stale_only_past_its_limit() {
        let page = Bytes::from(format!("<header></header>{STALE_MARKER}<main>"));
        let limit = Duration::from_secs(90);
        assert_eq!(
            warn_if_stale(page.clone(), Some(Duration::from_secs(80)), limit),
            page
        );
        assert_eq!(warn_if_stale(page.clone(), None, limit), page);
        let stale = warn_if_stale(page, Some(Duration::from_secs(125)), limit);
        let text = std::str::from_utf8(&stale).unwrap();
        assert!(
            text.contains(
                "<p class=\"stale\">Stale: these figures are from a read of the host 125 s ago"
            ),
            "{text}"
        );
        assert!(!text.contains(STALE_MARKER));
        assert!(text.ends_with("</p><main>"));
    }

    #[test]
    fn a_full_table_evicts_the_oldest_that_never_asked() {
        let mut connections = Connections::new(3);
        let (_, first, mut first_evicted) = connections.admit();
        let (_, _, mut second_evicted) = connections.admit();
        let (third, _, _) = connections.admit();
        // The first is a scraper that asked; the second only holds on.
        first.store(true, Ordering::Relaxed);
        let _ = connections.admit();
        assert!(second_evicted.try_recv().is_ok());
        assert!(first_evicted.try_recv().is_err());
        assert_eq!(connections.open.len(), 3);
        // Everyone asked: the oldest goes.
        for slot in &connections.open {
            slot.requested.store(true, Ordering::Relaxed);
        }
        let _ = connections.admit();
        assert!(first_evicted.try_recv().is_ok());
        connections.remove(third);
        assert_eq!(connections.open.len(), 2);
    }
}
