//! Compiles the XDP programs in `bpf/` with clang and generates their libbpf-rs skeletons
//! into `OUT_DIR` (included by `src/nic/skel.rs`). The objects stay there as
//! `<stem>.bpf.o` (embedded by `src/stubs/`, which opens the object itself).
//!
//! Needs clang (any version with the BPF target; Debian 12's 14 works) and the kernel's
//! uapi headers (linux-libc-dev); scripts/setup.sh installs both. libbpf's own headers
//! (`bpf/bpf_helpers.h`, ...) come from the libbpf-sys crate, so the build does not depend
//! on a system libbpf.

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

/// Each program, by the stem of its `bpf/<stem>.bpf.c`.
const PROGRAMS: &[&str] = &["gateway", "stubs"];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let bpf_dir = manifest_dir.join("bpf");

    // Only the C sources and headers matter; without this cargo reruns the script on any
    // change in the package.
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");

    let mut clang_args = vec![
        "-Wall".to_string(),
        "-Werror".to_string(),
        format!("-I{}", bpf_dir.display()),
    ];
    // `-target bpf` drops the host's multiarch include directory, where Debian keeps
    // <asm/types.h> (pulled in by <linux/bpf.h>).
    if let Some(dir) = multiarch_include_dir() {
        clang_args.push(format!("-I{}", dir.display()));
    }

    for stem in PROGRAMS {
        let source = bpf_dir.join(format!("{stem}.bpf.c"));
        let skeleton = out_dir.join(format!("{stem}.skel.rs"));
        let mut builder = SkeletonBuilder::new();
        builder
            .source(&source)
            .obj(out_dir.join(format!("{stem}.bpf.o")))
            .clang_args(&clang_args);
        if let Some(clang) = env::var_os("CLANG") {
            builder.clang(clang);
        }
        if let Err(e) = builder.build_and_generate(&skeleton) {
            // `{:#}` prints the whole anyhow chain, including clang's diagnostics.
            panic!(
                "building the XDP program {}: {e:#}\n(is clang installed? scripts/setup.sh installs it)",
                source.display()
            );
        }
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
