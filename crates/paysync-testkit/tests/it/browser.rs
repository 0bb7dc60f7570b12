//! The headless browser against a tiny local page: reading it, a phone-width viewport and a
//! full-page screenshot.

use std::path::Path;
use std::time::Instant;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use paysync_testkit::browser::Browser;
use paysync_testkit::fantoccini::Locator;

/// The tall page's height in CSS pixels: far more than any viewport.
const TALL: u32 = 2400;

/// Serves `/` (a title and a greeting) and `/tall` (a page `TALL` px high) on a free port.
async fn serve_pages() -> (String, tokio::task::JoinHandle<()>) {
    let app = Router::new()
        .route(
            "/",
            get(|| async {
                Html(
                    "<!doctype html><html><head><title>paysync browser test</title></head>\
                     <body><h1 id=\"greeting\">Hello from paysync</h1></body></html>",
                )
            }),
        )
        .route(
            "/tall",
            get(|| async {
                Html(format!(
                    "<!doctype html><html><head><title>tall</title>\
                     <meta name=\"viewport\" content=\"width=device-width\">\
                     <style>body {{ margin: 0 }} div {{ height: {TALL}px; \
                     background: linear-gradient(#0b6, #06b) }}</style></head>\
                     <body><div></div></body></html>"
                ))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, server)
}

/// A PNG's (width, height), from its IHDR chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (w, h)
}

#[tokio::test]
async fn browser_reads_a_page_and_shoots_it_whole_at_phone_width() {
    let (base, server) = serve_pages().await;
    let started = Instant::now();
    let browser = Browser::start().await.unwrap();
    eprintln!("browser started in {:?}", started.elapsed());
    let client = browser.client();

    client.goto(&format!("{base}/")).await.unwrap();
    assert_eq!(client.title().await.unwrap(), "paysync browser test");
    let greeting = client.find(Locator::Css("#greeting")).await.unwrap();
    assert_eq!(greeting.text().await.unwrap(), "Hello from paysync");

    browser.set_width(390).await.unwrap();
    let inner = client
        .execute("return window.innerWidth;", vec![])
        .await
        .unwrap();
    assert_eq!(inner, 390);

    client.goto(&format!("{base}/tall")).await.unwrap();
    let page_height = browser.page_height().await.unwrap();
    assert_eq!(page_height, TALL);
    let (_, viewport_height) = browser.viewport().await.unwrap();
    assert!(
        viewport_height < TALL,
        "the page must be taller than the viewport"
    );

    let dir = std::env::temp_dir().join(format!("paysync-shot-{}", paysync_testkit::unique_id()));
    let path = dir.join("nested").join("tall.png");
    let shot = Instant::now();
    browser.screenshot_full(&path).await.unwrap();
    eprintln!("full-page screenshot in {:?}", shot.elapsed());
    assert_eq!(png_size(&path), (390, TALL));
    // The window got its height back.
    assert_eq!(browser.viewport().await.unwrap(), (390, viewport_height));

    browser.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
    server.abort();
}
