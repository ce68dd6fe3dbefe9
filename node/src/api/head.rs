//! The bound on a request's head: its request line and headers together are at most
//! [`MAX_HEAD_BYTES`] bytes, or the answer is 431 naming the size and the limit, before a
//! handler runs.
//!
//! actix has no setting for it. What actix itself bounds (actix-http 3, HTTP/1): a head
//! still incomplete after 128 KiB of input, or of more than 96 headers, is answered 431
//! with an empty body and the connection closed; a head not received within 5 s
//! (`client_request_timeout`) is answered 408. Below those, this bound answers in the
//! API's error shape and is counted in the request metrics like any other answer.
//!
//! Not for: bodies (see `events`) or query parameters (see `params`).

use std::future::{ready, Future};

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use futures::future::Either;
use futures::FutureExt;

use super::ApiError;

/// The most bytes a request's line and headers may have together: room for any URL the
/// API takes (an id is at most 384 bytes percent-encoded) and tokens of several KiB.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// The head's size as it was sent in HTTP/1.1: `METHOD target HTTP/1.1`, each header as
/// `name: value`, each line with its CRLF, and the empty line that ends the head.
fn head_bytes(req: &ServiceRequest) -> usize {
    const CRLF: usize = 2;
    let target = req.uri().path_and_query().map_or(1, |t| t.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1".len() + CRLF;
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + CRLF)
        .sum();
    line + headers + CRLF
}

/// Answers 431 for a head over [`MAX_HEAD_BYTES`], else calls the app.
pub(super) fn bound<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> impl Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let size = head_bytes(&req);
    if size > MAX_HEAD_BYTES {
        let e = ApiError::HeadersTooLarge(format!(
            "headers: {size} bytes with the request line, more than the limit of {MAX_HEAD_BYTES} bytes"
        ));
        return Either::Left(ready(Ok(req.error_response(e).map_into_right_body())));
    }
    Either::Right(
        srv.call(req)
            .map(|res| res.map(ServiceResponse::map_into_left_body)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test as actix_test, web, App, HttpResponse};

    #[actix_web::test]
    async fn a_head_is_bounded_at_the_limit_with_the_request_line_counted() {
        let app = actix_test::init_service(
            App::new()
                .wrap_fn(bound)
                .route("/x", web::get().to(HttpResponse::Ok)),
        )
        .await;
        // "GET /x HTTP/1.1\r\n" (17), "a: <value>\r\n" (5 + value), "\r\n" (2).
        let fixed = 17 + 5 + 2;
        for (extra, status) in [(0, 200), (1, 431)] {
            let value = "v".repeat(MAX_HEAD_BYTES - fixed + extra);
            let req = actix_test::TestRequest::get()
                .uri("/x")
                .insert_header(("a", value))
                .to_request();
            let res = actix_test::call_service(&app, req).await;
            assert_eq!(res.status().as_u16(), status, "{extra} byte(s) over");
            if status == 431 {
                let body: serde_json::Value = actix_test::read_body_json(res).await;
                let size = MAX_HEAD_BYTES + 1;
                let error = format!(
                    "headers: {size} bytes with the request line, more than the limit of 32768 bytes"
                );
                assert_eq!(body["error"], error.as_str());
            }
        }
    }
}
