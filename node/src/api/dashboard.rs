//! The live dashboard: a page and its assets, compiled into the binary, served at `/`.
//!
//! The page needs no network access beyond the node itself: it subscribes to pushed updates
//! (`/v1/subscribe`), polling the REST queries while the socket cannot be opened, with the
//! key the user gives it. The files are plain JavaScript, CSS and HTML, with no build step;
//! `app.js` says how the page is put together, README ("The dashboard") what it shows, and
//! `tests/browser/` checks it in a real browser.
//!
//! Not for: data; the page only calls the public API.

use actix_web::http::header;
use actix_web::{web, HttpResponse};

/// Each asset: its path under `/dashboard/`, its content type, its bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/style.css"),
    ),
];

/// `GET /`: the page.
pub(super) async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(include_str!("dashboard/index.html"))
}

/// `GET /dashboard/{file}`: one asset, or 404.
pub(super) async fn asset(file: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(name, _, _)| *name == file.as_str()) {
        Some((_, content_type, body)) => HttpResponse::Ok()
            .content_type(*content_type)
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .body(*body),
        None => HttpResponse::NotFound()
            .json(serde_json::json!({ "error": format!("dashboard: no asset {file}") })),
    }
}
