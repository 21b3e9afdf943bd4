//! What a reverse proxy written directly on hyper costs per request here:
//! the "what would close the gap" experiment for the gateway's framework
//! cost (benches/README.md). It checks nothing — like the plain nginx and
//! HAProxy peers — and is not a product: one single-threaded runtime,
//! hyper's HTTP/1 server, hyper-util's pooled keep-alive client, mimalloc.
//!
//! Usage: hyper_proxy LISTEN UPSTREAM   (e.g. 127.0.0.1:8000 127.0.0.1:9000)

use std::net::SocketAddr;

use hyper::{
    Request, Uri,
    body::Incoming,
    http::uri::{Authority, Scheme},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let usage = "usage: hyper_proxy LISTEN UPSTREAM";
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let upstream: Authority = args.next().and_then(|a| a.parse().ok()).expect(usage);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async move {
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let client = client.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let mut parts = std::mem::take(req.uri_mut()).into_parts();
                    parts.scheme = Some(Scheme::HTTP);
                    parts.authority = Some(upstream.clone());
                    if parts.path_and_query.is_none() {
                        parts.path_and_query = Some("/".parse().expect("a valid path"));
                    }
                    *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
                    client.request(req)
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
}
