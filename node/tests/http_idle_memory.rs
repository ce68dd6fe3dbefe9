//! What an idle HTTP/1.1 connection holds on the heap of the node's HTTP stack. actix-http
//! as published keeps an 8 KiB read and an 8 KiB write buffer for a connection's whole
//! life; the copy in vendor/ releases them whenever they are empty, which is most of what
//! an idle WebSocket subscriber used to cost (docs/ARCHITECTURE.md, "Push").
//!
//! Counted by a global allocator that tracks the bytes live in this process (not RSS, which
//! moves with the allocator's own choices), in a test binary of its own so that no other
//! test allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
mod raw_http;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::thread;
use std::time::Duration;

use actix_web::{web, HttpResponse};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; the counter only observes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout goes to the system allocator unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` or `realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as for `dealloc`; the caller's new size goes through unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CONNECTIONS: usize = 300;
/// Bytes of heap an idle connection may hold: the dispatcher's state and the runtime's
/// registration, well under the 16 KiB of the two buffers it used to keep.
const MAX_BYTES_EACH: isize = 6 * 1024;
/// The same for a WebSocket that has had one message: its session's channels and reader
/// too, but not the 8 KiB read buffer its first message used to keep alive.
const MAX_WS_BYTES_EACH: isize = 8 * 1024;

/// `GET /hello` answers "hi"; `GET /ws` is a WebSocket that answers each text message
/// with the same text.
fn start_server() -> SocketAddr {
    raw_http::serve(|cfg| {
        cfg.route(
            "/hello",
            web::get().to(|| async { HttpResponse::Ok().body("hi") }),
        )
        .route("/ws", web::get().to(raw_http::echo));
    })
}

/// Sends one request and reads its answer to the end (it ends with the body "hi"), with
/// no heap of its own, and returns the connection, kept alive.
fn served_connection(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("request");
    let mut answer = [0u8; 1024];
    let mut len = 0;
    while !answer[..len].ends_with(b"\r\n\r\nhi") {
        let n = stream.read(&mut answer[len..]).expect("answer");
        assert!(n > 0, "the server closed the connection");
        len += n;
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"), "a 200 answer");
    stream
}

/// Opens a WebSocket, sends one text message and reads its echo, with no heap of its own;
/// returns the socket, left open.
fn echoed_websocket(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .expect("upgrade");
    let mut head = [0u8; 1024];
    let mut len = 0;
    while !head[..len].ends_with(b"\r\n\r\n") {
        let n = stream
            .read(&mut head[len..len + 1])
            .expect("upgrade answer");
        assert!(n > 0, "the server closed the connection");
        len += n;
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "the upgrade is accepted: {}",
        String::from_utf8_lossy(&head[..len])
    );
    // A masked text frame "ping" (a client's frames are masked), then its echo, unmasked.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 4];
    frame.extend_from_slice(&mask);
    frame.extend(b"ping".iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    stream.write_all(&frame).expect("message");
    let mut echo = [0u8; 6];
    stream.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"\x81\x04ping", "the message comes back");
    stream
}

/// The heap each of `CONNECTIONS` connections made by `open` holds once idle.
fn heap_per_idle_connection(open: impl Fn() -> TcpStream) -> isize {
    // Warm up: the server's first connection makes its worker's lasting state.
    drop(open());
    thread::sleep(Duration::from_millis(300));
    let mut kept = Vec::with_capacity(CONNECTIONS);
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..CONNECTIONS {
        kept.push(open());
    }
    thread::sleep(Duration::from_millis(500));
    let each = (LIVE.load(Ordering::Relaxed) - before) / CONNECTIONS as isize;
    drop(kept);
    thread::sleep(Duration::from_millis(300));
    each
}

/// One test, so that the two measurements never run at the same time.
#[test]
fn idle_connections_hold_no_buffers() {
    let addr = start_server();
    let each = heap_per_idle_connection(|| served_connection(addr));
    println!("an idle keep-alive connection holds {each} bytes of heap");
    assert!(
        each <= MAX_BYTES_EACH,
        "an idle connection holds {each} bytes of heap, more than {MAX_BYTES_EACH}: are its \
         read and write buffers released (vendor/actix-http)?"
    );
    let each = heap_per_idle_connection(|| echoed_websocket(addr));
    println!("an idle WebSocket that has had a message holds {each} bytes of heap");
    assert!(
        each <= MAX_WS_BYTES_EACH,
        "an idle WebSocket holds {each} bytes of heap, more than {MAX_WS_BYTES_EACH}: is its \
         first message copied out of the read buffer (vendor/actix-http, take_chunk)?"
    );
}
