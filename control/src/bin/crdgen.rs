//! `crdgen`: writes the Vpc and Subnet CRDs, generated from the Rust types, into a
//! directory (default `config/crds`), one file per CRD; `--stdout` prints them instead.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Write Sluice's CRDs (config/crds/*.yaml) from the Rust types")]
struct Args {
    /// Where to write the CRDs.
    #[arg(long, default_value = "config/crds")]
    dir: PathBuf,
    /// Print them (as one multi-document YAML) instead of writing files.
    #[arg(long)]
    stdout: bool,
}

fn main() {
    sluice_api::process::one_line_panics("crdgen");
    if let Err(e) = run(Args::parse()) {
        eprintln!("crdgen: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.stdout {
        print!("{}", sluice_control::kubernetes::crd::print_all());
        return Ok(());
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    for (file, yaml) in sluice_control::kubernetes::crd::crd_documents() {
        let path = args.dir.join(file);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
