//! `cargo run -p herald-plugin-host --example inspect -- FILE.wasm`
//!
//! Prints what a component exports and imports, its `describe()` answer and
//! API version — or precisely why it is not a valid Herald plugin (the same
//! report `herald plugin inspect` prints). Exits 1 when it is not valid.
fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: inspect FILE.wasm");
        std::process::exit(2);
    };
    match herald_plugin_host::inspect(std::path::Path::new(&path)) {
        Ok(report) => {
            println!("{report}");
            if !report.is_valid() {
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("{}: {e}", std::path::Path::new(&path).display());
            std::process::exit(1);
        }
    }
}
