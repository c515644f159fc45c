//! Compiles `bpf/bench.bpf.c` (the sink, the XDP forwarder and an XDP_PASS program) with
//! clang into `OUT_DIR/bench.bpf.o`, which `src/xdp.rs` embeds and opens. No skeleton is
//! generated: the loader finds programs and maps by name, so the crate needs no generated
//! unsafe code. Needs clang with the BPF target (scripts/setup.sh installs it).

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let bpf_dir = manifest_dir.join("bpf");
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");

    let mut clang_args = vec!["-Wall".to_string(), "-Werror".to_string()];
    // `-target bpf` drops the multiarch include directory where Debian keeps <asm/types.h>.
    if let Some(dir) = multiarch_include_dir() {
        clang_args.push(format!("-I{}", dir.display()));
    }
    let source = bpf_dir.join("bench.bpf.c");
    let mut builder = SkeletonBuilder::new();
    builder
        .source(&source)
        .obj(out_dir.join("bench.bpf.o"))
        .clang_args(&clang_args);
    if let Some(clang) = env::var_os("CLANG") {
        builder.clang(clang);
    }
    if let Err(e) = builder.build() {
        panic!(
            "building the XDP program {}: {e:#}\n(is clang installed? scripts/setup.sh installs it)",
            source.display()
        );
    }
}

/// `/usr/include/<arch>-linux-gnu` for the target, when it exists.
fn multiarch_include_dir() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let os = env::var("CARGO_CFG_TARGET_OS").ok()?;
    let target_env = env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let triple = match target_env.as_str() {
        "" => format!("{arch}-{os}"),
        e => format!("{arch}-{os}-{e}"),
    };
    let dir = Path::new("/usr/include").join(triple);
    dir.is_dir().then_some(dir)
}
