//! A small actix-web server on 127.0.0.1 for tests that speak raw HTTP/1.1 to the node's
//! HTTP stack (actix-web over vendor/actix-http).

use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::thread;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// Serves the routes `configure` adds, with one worker, on a thread of its own for the
/// rest of the test process; returns the address once it accepts connections.
pub fn serve(configure: fn(&mut web::ServiceConfig)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let (ready, started) = mpsc::channel();
    thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || App::new().configure(configure))
                .workers(1)
                .max_connections(10_000)
                .listen(listener)
                .expect("listen")
                .run();
            ready.send(()).expect("started");
            server.await.expect("server");
        });
    });
    started.recv().expect("server thread started");
    addr
}

/// A WebSocket that answers each text message with the same text.
pub async fn echo(req: HttpRequest, body: web::Payload) -> actix_web::Result<HttpResponse> {
    let (response, mut session, mut messages) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(async move {
        while let Some(Ok(message)) = messages.recv().await {
            if let actix_ws::Message::Text(text) = message {
                if session.text(text).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(response)
}
