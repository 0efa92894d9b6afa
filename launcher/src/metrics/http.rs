//! A small HTTP/1.1 server for `GET /metrics` (`launcher start --metrics ADDR:PORT`).
//!
//! Whoever can reach the port is a stranger: the request head is read up to
//! [`MAX_REQUEST_BYTES`] within [`REQUEST_TIMEOUT`], at most [`MAX_CONNECTIONS`] clients are
//! served at once (others get 503 and are closed), every connection is closed after one
//! answer, and nothing a client sends can make the server panic or allocate beyond those
//! bounds. `GET` and `HEAD` of `/metrics` (any query string) get the exposition; other paths
//! get 404, other methods 405, anything malformed 400.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::render::CONTENT_TYPE;

/// Largest request head (request line and headers) read.
pub const MAX_REQUEST_BYTES: usize = 8192;
/// How long a client has to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Clients served at once.
pub const MAX_CONNECTIONS: usize = 4;
/// The path that serves the metrics.
pub const METRICS_PATH: &str = "/metrics";

/// What produces the exposition for a scrape.
pub type Producer = Arc<dyn Fn() -> String + Send + Sync>;

/// Why the metrics endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Binding failed (address in use, not an address of this host, a privileged port).
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A bound metrics endpoint, not yet served.
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
    addr: SocketAddr,
}

/// Binds `addr` (port 0: any free port; [`MetricsListener::local_addr`] tells which).
pub fn bind(addr: SocketAddr) -> Result<MetricsListener, HttpError> {
    let err = |source| HttpError::Bind { addr, source };
    let listener = TcpListener::bind(addr).map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    Ok(MetricsListener { listener, addr })
}

impl MetricsListener {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves scrapes in background threads, each answered with `produce()`.
    pub fn serve_in_background(self, produce: Producer) {
        tracing::info!("serving metrics on http://{}{METRICS_PATH}", self.addr);
        let spawned = std::thread::Builder::new()
            .name("metrics-accept".into())
            .spawn(move || accept_loop(&self.listener, &produce));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot serve metrics");
        }
    }
}

fn accept_loop(listener: &TcpListener, produce: &Producer) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and the like: wait rather than spin.
                vu_core::warn_ratelimited!(error = %e, "metrics accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            busy(stream);
            continue;
        }
        let produce = produce.clone();
        let guard = Slot(active.clone());
        let spawned = std::thread::Builder::new()
            .name("metrics-client".into())
            .spawn(move || {
                let _slot = guard;
                serve(stream, &produce);
            });
        if let Err(e) = spawned {
            vu_core::warn_ratelimited!(error = %e, "cannot start a metrics client thread");
        }
    }
}

/// Frees a connection slot when the client's thread ends (or never started).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Too many clients: a 503 if it can be written at once, then close, never waiting (this
/// runs on the accept thread). What the client already sent is read first, so that closing
/// over unread bytes does not reset the connection before it reads the answer; a client
/// whose request comes later may see a reset instead, which is as good a refusal.
fn busy(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let mut sink = [0u8; 1024];
    for _ in 0..(MAX_REQUEST_BYTES / sink.len()) {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = stream.write_all(&response(
        "503 Service Unavailable",
        "text/plain",
        "",
        b"busy\n",
        false,
    ));
    let _ = stream.shutdown(Shutdown::Write);
}

/// One client: read its request head, answer, close.
fn serve(mut stream: TcpStream, produce: &Producer) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let answer = match read_head(&mut stream) {
        Ok(head) => answer(&head, produce),
        Err(HeadError::TooLarge) => error_response("431 Request Header Fields Too Large"),
        // Timed out or gone: nobody to answer.
        Err(HeadError::Io) => return,
    };
    if stream.write_all(&answer).is_ok() {
        let _ = stream.flush();
    }
    // Close without discarding an answer the client has not read yet: end our side, then
    // read (bounded) until the client closes, so that unread request bytes do not make the
    // kernel reset the connection.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut sink = [0u8; 1024];
    for _ in 0..64 {
        match stream.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    TooLarge,
    Io,
}

/// Reads up to the blank line that ends the head, within [`REQUEST_TIMEOUT`] in all.
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Io);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| HeadError::Io)?;
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Io),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HeadError::Io),
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Where the head ends (after its blank line: CRLF CRLF, or LF LF as tolerant servers take).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The answer to a request head.
fn answer(head: &[u8], produce: &Producer) -> Vec<u8> {
    let Some((method, target)) = request_line(head) else {
        return error_response("400 Bad Request");
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != METRICS_PATH {
        return error_response("404 Not Found");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return response(
                "405 Method Not Allowed",
                "text/plain",
                "Allow: GET, HEAD\r\n",
                b"only GET and HEAD\n",
                false,
            )
        }
    };
    let body = produce();
    response("200 OK", CONTENT_TYPE, "", body.as_bytes(), head_only)
}

/// The method and target of a well-formed HTTP/1.x request line.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line_end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !target.bytes().all(|b| b.is_ascii_graphic())
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return None;
    }
    Some((method, target))
}

fn error_response(status: &str) -> Vec<u8> {
    let body = format!("{status}\n");
    response(status, "text/plain", "", body.as_bytes(), false)
}

/// A complete response that closes the connection; `extra` holds more header lines (each
/// ending in CRLF). With `head_only`, the headers say what the body would be but it is not
/// sent (HEAD).
fn response(
    status: &str,
    content_type: &str,
    extra: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {extra}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        r.extend_from_slice(body);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn producer() -> Producer {
        Arc::new(|| "# HELP vu_x X.\n# TYPE vu_x gauge\nvu_x 1\n".to_string())
    }

    fn status(r: &[u8]) -> String {
        let s = String::from_utf8_lossy(r);
        s.lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn requests_are_answered_by_path_and_method() {
        let p = producer();
        let ok = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", &p);
        let text = String::from_utf8(ok).expect("utf-8");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(text.contains("Content-Length: 40\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n# HELP vu_x X.\n# TYPE vu_x gauge\nvu_x 1\n"));
        let q = answer(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", &p);
        assert_eq!(status(&q), "HTTP/1.1 200 OK");
        let head = answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", &p);
        assert!(String::from_utf8_lossy(&head)
            .ends_with("Content-Length: 40\r\nConnection: close\r\n\r\n"));
        assert_eq!(
            status(&answer(b"GET / HTTP/1.1\r\n\r\n", &p)),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status(&answer(b"GET /metricsx HTTP/1.1\r\n\r\n", &p)),
            "HTTP/1.1 404 Not Found"
        );
        let post = answer(b"POST /metrics HTTP/1.1\r\n\r\n", &p);
        let post = String::from_utf8_lossy(&post);
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert!(post.contains("\r\nAllow: GET, HEAD\r\n"), "{post}");
        assert!(post.ends_with("\r\n\r\nonly GET and HEAD\n"), "{post}");
    }

    #[test]
    fn malformed_request_lines_are_bad_requests() {
        let p = producer();
        for bad in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /m\xffetrics HTTP/1.1\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
            b"GET /metrics\tHTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                status(&answer(bad, &p)),
                "HTTP/1.1 400 Bad Request",
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b""), None);
    }
}
