//! The floor under the gateway: a pingora reverse proxy that decides
//! nothing — no route table, no identity, no metrics, no logging — set up
//! exactly as the gateway sets pingora up (its `server_conf` and
//! `client_listener`, no downstream modules, mimalloc).
//! `benches/load/run.sh` runs it beside the gateway, HAProxy and
//! `hyper_proxy` to split the gateway's cost into pingora's and its own.
//!
//! Usage: pingora_floor LISTEN UPSTREAM   (e.g. 127.0.0.1:8000 127.0.0.1:9000)

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::{
    modules::http::HttpModules,
    prelude::HttpPeer,
    proxy::{ProxyHttp, Session},
    server::Server,
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Floor(SocketAddr);

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let usage = "usage: pingora_floor LISTEN UPSTREAM";
    let mut args = std::env::args().skip(1);
    let listen = args.next().expect(usage);
    let upstream: SocketAddr = args.next().and_then(|a| a.parse().ok()).expect(usage);
    // Stop at once on SIGTERM (run.sh's clean-up).
    let conf = bouncer_gateway::server_conf(1);
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Floor(upstream));
    proxy.add_listener(bouncer_gateway::client_listener(&listen));
    server.add_service(proxy);
    server.run_forever();
}
