//! Adds sources to a library (until `berth data add` exists; used by `bench/data-http`):
//! `cargo run --release -p berth-data --example ingest -- ROOT NAME SOURCE...`. Prints the
//! version id.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: ingest ROOT NAME SOURCE...".into());
    }
    let lib = berth_data::Library::open(&args[0])?;
    let sources: Vec<std::path::PathBuf> = args[2..].iter().map(Into::into).collect();
    let v = lib.add(&args[1], &sources, Default::default(), &|_| {})?;
    println!("{}", v.id());
    Ok(())
}
