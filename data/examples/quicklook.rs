//! Renders a quicklook of a NetCDF file: `cargo run -p berth-data --example quicklook --
//! FILE VAR OUT.png [DIM=INDEX...]` (uses a temporary library).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: quicklook FILE VAR OUT.png [DIM=INDEX...]".into());
    }
    let root = std::env::temp_dir().join(format!("berth-quicklook-{}", std::process::id()));
    let lib = berth_data::Library::open(&root)?;
    let v = lib.add("ql", &[args[0].clone().into()], Default::default(), &|_| {})?;
    let mut at = Vec::new();
    for a in &args[3..] {
        let (d, i) = a.split_once('=').ok_or("DIM=INDEX")?;
        at.push((d.to_string(), i.parse()?));
    }
    let q = lib.render_png(&format!("ql@{}", v.id()), &args[1], &at, args[2].as_ref())?;
    println!("{}", serde_json::to_string_pretty(&q)?);
    std::fs::remove_dir_all(root)?;
    Ok(())
}
