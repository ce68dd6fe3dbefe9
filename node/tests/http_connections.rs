//! HTTP/1.1 connections through the node's HTTP stack (actix-web over the patched
//! actix-http in vendor/, which releases a connection's read and write buffers whenever
//! they are empty): what crosses a released buffer arrives whole and in order.
//!
//! Each test talks raw HTTP/1.1 over a TCP socket to a small server on 127.0.0.1, so the
//! bytes meet the buffers exactly where they are released: a head split across writes, a
//! body trickled in pieces, pipelined requests, a connection reused after idling, an
//! answer larger than the socket takes at once, read slowly.

use std::io::{BufRead, BufReader, Read, Write};
mod raw_http;

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use actix_web::{web, HttpResponse};

/// Answers `GET /n/{n}` with the number, `POST /sum` with the body's length and byte sum,
/// and `GET /big/{bytes}` with that many bytes (byte i is i mod 251).
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::PayloadConfig::new(64 << 20))
        .route(
            "/n/{n}",
            web::get().to(|n: web::Path<u64>| async move {
                HttpResponse::Ok().body(n.into_inner().to_string())
            }),
        )
        .route(
            "/sum",
            web::post().to(|body: web::Bytes| async move {
                let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
                HttpResponse::Ok().body(format!("{} {sum}", body.len()))
            }),
        )
        .route(
            "/big/{bytes}",
            web::get().to(|n: web::Path<usize>| async move {
                let body: Vec<u8> = (0..n.into_inner()).map(|i| (i % 251) as u8).collect();
                HttpResponse::Ok().body(body)
            }),
        )
        .route("/ws", web::get().to(raw_http::echo));
}

fn start_server() -> SocketAddr {
    raw_http::serve(routes)
}

fn connect(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream.set_nodelay(true).expect("nodelay");
    let reader = BufReader::new(stream.try_clone().expect("clone"));
    (stream, reader)
}

/// Reads one response: its status code and body (Content-Length framed).
fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, Vec<u8>) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line, got {line:?}"));
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("header");
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().expect("content-length");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    (status, body)
}

fn text(body: &[u8]) -> &str {
    std::str::from_utf8(body).expect("utf-8 body")
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let addr = start_server();
    let (mut stream, mut reader) = connect(addr);
    let requests: String = (0..200)
        .map(|n| format!("GET /n/{n} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    stream.write_all(requests.as_bytes()).expect("write");
    for n in 0..200 {
        let (status, body) = read_response(&mut reader);
        assert_eq!((status, text(&body)), (200, n.to_string().as_str()));
    }
}

#[test]
fn a_connection_idle_between_requests_keeps_serving() {
    let addr = start_server();
    let (mut stream, mut reader) = connect(addr);
    for n in 0..5 {
        stream
            .write_all(format!("GET /n/{n} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .expect("write");
        let (status, body) = read_response(&mut reader);
        assert_eq!((status, text(&body)), (200, n.to_string().as_str()));
        thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn a_head_split_across_writes_is_kept_until_whole() {
    let addr = start_server();
    let (mut stream, mut reader) = connect(addr);
    let request =
        b"GET /n/4242 HTTP/1.1\r\nHost: t\r\nX-Padding: abcdefghijklmnopqrstuvwxyz\r\n\r\n";
    for piece in request.chunks(7) {
        stream.write_all(piece).expect("write");
        thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = read_response(&mut reader);
    assert_eq!((status, text(&body)), (200, "4242"));
}

#[test]
fn a_body_trickled_in_pieces_arrives_whole() {
    let addr = start_server();
    let (mut stream, mut reader) = connect(addr);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
    stream
        .write_all(
            format!(
                "POST /sum HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .expect("head");
    // Pieces of every size around the buffers' 1 KiB and 8 KiB marks, with pauses, so
    // the server sees empty buffers between them.
    let sizes = [1, 1023, 1024, 1025, 8191, 8192, 8193, 65_536];
    let (mut at, mut i) = (0, 0);
    while at < body.len() {
        let end = (at + sizes[i % sizes.len()]).min(body.len());
        stream.write_all(&body[at..end]).expect("piece");
        at = end;
        i += 1;
        if i % 4 == 0 {
            thread::sleep(Duration::from_millis(5));
        }
    }
    let (status, answer) = read_response(&mut reader);
    assert_eq!(
        (status, text(&answer)),
        (200, format!("{} {sum}", body.len()).as_str())
    );
}

#[test]
fn a_chunked_body_across_writes_arrives_whole() {
    let addr = start_server();
    let (mut stream, mut reader) = connect(addr);
    stream
        .write_all(b"POST /sum HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .expect("head");
    let mut expected = (0usize, 0u64);
    for size in [1usize, 10, 1000, 9000, 20_000, 3] {
        let chunk: Vec<u8> = (0..size).map(|i| (i % 200) as u8 + 1).collect();
        expected.0 += size;
        expected.1 += chunk.iter().map(|&b| u64::from(b)).sum::<u64>();
        let mut frame = format!("{size:x}\r\n").into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        // Each chunk in two writes, split inside its data.
        let (a, b) = frame.split_at(frame.len() / 2);
        stream.write_all(a).expect("chunk");
        thread::sleep(Duration::from_millis(10));
        stream.write_all(b).expect("chunk");
    }
    stream.write_all(b"0\r\n\r\n").expect("last chunk");
    let (status, answer) = read_response(&mut reader);
    assert_eq!(
        (status, text(&answer)),
        (200, format!("{} {}", expected.0, expected.1).as_str())
    );
}

#[test]
fn a_large_answer_read_slowly_arrives_whole_and_the_connection_goes_on() {
    let addr = start_server();
    let (mut stream, mut reader) = connect(addr);
    let size = 4 << 20;
    stream
        .write_all(
            format!(
                "GET /big/{size} HTTP/1.1\r\nHost: t\r\n\r\nGET /n/7 HTTP/1.1\r\nHost: t\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("write");
    // Let the server fill the socket and wait with the rest in its write buffer.
    thread::sleep(Duration::from_millis(300));
    let (status, body) = read_response(&mut reader);
    assert_eq!((status, body.len()), (200, size));
    assert!(
        body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "the answer's bytes are in order"
    );
    let (status, body) = read_response(&mut reader);
    assert_eq!((status, text(&body)), (200, "7"));
}

#[tokio::test]
async fn websocket_messages_of_every_size_come_back_whole() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let addr = start_server();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("websocket");
    // Around the frame header's length forms (125, 126, 65535) and the sizes where the
    // read buffer copies a chunk or splits it off (1 KiB) and grows (8 KiB); the echo
    // server takes frames up to 64 KiB.
    for size in [
        0, 1, 125, 126, 1023, 1024, 1025, 4000, 8191, 8192, 8193, 30_000, 65_000,
    ] {
        let text: String = (0..size)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        ws.send(Message::text(text.clone())).await.expect("send");
        match ws.next().await {
            Some(Ok(Message::Text(echo))) => {
                assert_eq!(echo.as_str(), text, "the {size}-byte message comes back")
            }
            other => panic!("the {size}-byte message's echo, got {other:?}"),
        }
    }
}
