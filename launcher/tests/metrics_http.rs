//! The metrics endpoint's HTTP server against hostile clients, on loopback: malformed and
//! oversized requests get an error and a closed connection, idle clients cannot hold more
//! than a few slots (the next one gets 503) and free them when they go, a client that
//! vanishes mid-request harms nothing, and the server keeps answering throughout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::metrics::{http_exchange, http_get, split_response, HTTP_TIMEOUT};
use launcher::metrics::http::{self, MAX_CONNECTIONS, MAX_REQUEST_BYTES};

const BODY: &str = "# HELP vu_x X.\n# TYPE vu_x gauge\nvu_x 1\n";

fn server() -> SocketAddr {
    let l = http::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = l.local_addr();
    l.serve_in_background(Arc::new(|| BODY.to_string()));
    addr
}

fn status_of(addr: SocketAddr, request: &[u8]) -> u16 {
    split_response(&http_exchange(addr, request).expect("exchange")).0
}

fn still_serves(addr: SocketAddr) {
    let (status, _, body) = http_get(addr, "/metrics").expect("get");
    assert_eq!((status, body.as_str()), (200, BODY));
}

#[test]
fn requests_get_the_answer_their_path_and_method_deserve() {
    let addr = server();
    still_serves(addr);
    assert_eq!(
        status_of(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        200
    );
    assert_eq!(
        status_of(addr, b"GET /metrics?name[]=x HTTP/1.1\r\n\r\n"),
        200
    );
    let head = http_exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").expect("head");
    let (status, head, body) = split_response(&head);
    assert_eq!((status, body.as_str()), (200, ""), "{head}");
    assert!(
        head.contains(&format!("Content-Length: {}", BODY.len())),
        "{head}"
    );
    assert_eq!(status_of(addr, b"GET / HTTP/1.1\r\n\r\n"), 404);
    assert_eq!(
        status_of(addr, b"GET /../../etc/passwd HTTP/1.1\r\n\r\n"),
        404
    );
    assert_eq!(status_of(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n"), 405);
    for bad in [
        &b"\r\n\r\n"[..],
        b"GET /metrics\r\n\r\n",
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n",
    ] {
        assert_eq!(status_of(addr, bad), 400, "{bad:?}");
    }
    still_serves(addr);
}

#[test]
fn an_oversized_request_head_is_refused_and_closed() {
    let addr = server();
    let mut req = b"GET /metrics HTTP/1.1\r\nX-Junk: ".to_vec();
    req.resize(MAX_REQUEST_BYTES * 4, b'a');
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    // The server may close before taking everything: a failed write is fine.
    let _ = s.write_all(&req);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let (status, head, _) = split_response(&raw);
    // 431, unless the kernel reset the connection over the unread bytes first.
    assert!(status == 431 || raw.is_empty(), "{status} {head}");
    still_serves(addr);
}

#[test]
fn idle_clients_hold_few_slots_and_free_them_when_they_go() {
    let addr = server();
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            // Half a request line, then nothing.
            s.write_all(b"GET /met").expect("write");
            s
        })
        .collect();
    // Every slot is taken (the server counts a client once its thread runs): the next
    // client is turned away at once, with a 503 (or a reset, if its request came after the
    // server closed).
    let deadline = Instant::now() + HTTP_TIMEOUT;
    loop {
        let status = match http_exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n") {
            Ok(raw) => split_response(&raw).0,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 503,
            Err(e) => panic!("exchange: {e}"),
        };
        if status == 503 {
            break;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "never turned away");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(idle);
    // Their slots come back as soon as the server sees them gone.
    let deadline = Instant::now() + HTTP_TIMEOUT;
    loop {
        // Until then: 503, or a reset.
        let status = http_get(addr, "/metrics").map_or(0, |r| r.0);
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots never freed ({status})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn clients_that_vanish_or_trickle_harm_nothing() {
    let addr = server();
    for cut in [0usize, 3, 10] {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(&b"GET /metrics HTTP/1.1\r\n\r\n"[..cut])
            .expect("write");
        drop(s);
    }
    // A request one byte at a time is still a request.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(HTTP_TIMEOUT)).expect("timeout");
    for b in b"GET /metrics HTTP/1.0\r\n\r\n" {
        s.write_all(&[*b]).expect("write");
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    assert_eq!(split_response(&raw).0, 200);
    // A client that sends a body and never reads still gets its answer first.
    let raw = http_exchange(
        addr,
        b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    )
    .expect("exchange");
    assert_eq!(split_response(&raw).0, 200);
    still_serves(addr);
}

#[test]
fn binding_an_address_in_use_names_it() {
    let addr = server();
    let e = http::bind(addr).expect_err("in use");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}
