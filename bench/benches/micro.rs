//! `cargo bench -p laminar-bench --bench micro [-- --tiny] [-- --write]`: the engine's
//! hot paths, printed as a table; `--write` keeps the results in
//! `bench/results/micro.json` for `laminar-bench report`.

#![forbid(unsafe_code)]

use laminar_bench::micro::{run, table, Mode};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = if args.iter().any(|a| a == "--tiny") { Mode::Tiny } else { Mode::Full };
    let results = run(mode);
    println!("{}", table(&results));
    if args.iter().any(|a| a == "--write") {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results/micro.json");
        let json = serde_json::to_string_pretty(&results).expect("results serialise");
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("micro: cannot write {}: {e}", path.display());
            std::process::exit(1);
        }
        eprintln!("wrote {}", path.display());
    }
}
