//! A sandbox's log relay on the host, as a binary of its own (see
//! `paddock_contract::caplog`; the runtime binary still answers the same arguments).
//!
//! One relay lives as long as each sandbox. A static PIE relocates its pointer tables at
//! start, and each process keeps its own copy of those pages: the runtime's are ~296 KiB,
//! because of everything the runtime links. This binary links only the relay's loop, so
//! its copy is a few KiB, and it keeps address randomisation (it reads what sandbox root
//! writes).

fn main() {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match paddock_contract::caplog::relay_log(&argv) {
        Some(log) => std::process::exit(paddock_contract::caplog::relay(&log)),
        None => {
            eprintln!(
                "usage: paddock-logrelay {} LOG_FILE  (stdin: the output to keep)",
                paddock_contract::caplog::RELAY_ARGS.join(" ")
            );
            std::process::exit(2);
        }
    }
}
