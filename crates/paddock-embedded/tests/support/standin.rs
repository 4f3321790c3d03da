// A stand-in for `paddock-runtime` used by the tests until the real one is available:
// listens on 0.0.0.0:49983 (or `--listen ADDR`) and answers every request with 204.
use std::io::{Read, Write};
use std::net::TcpListener;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "0.0.0.0:49983".to_string());
    let listener = TcpListener::bind(&addr).expect("bind");
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        let _ = c.set_nodelay(true);
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf);
        let _ = c.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    }
}
