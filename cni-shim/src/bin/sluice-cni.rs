//! sluice-cni: the CNI plugin the container runtime executes. It reads the CNI_*
//! environment and the network config on stdin, forwards the command to the node agent
//! (sluice-node) over its Unix socket, and prints the spec's result or error JSON.
//! Exit status 0 on success, 1 with error JSON on stdout otherwise. Even a panic (a bug)
//! ends as error JSON (code 101) on stdout, with one line on stderr.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::process::ExitCode;

use sluice_cni::cni::{code, CniError, Invocation};
use sluice_cni::shim;

fn main() -> ExitCode {
    sluice_api::process::one_line_panics("sluice-cni");
    let mut invocation = None;
    let outcome = shim::catching(|| {
        let mut stdin = Vec::new();
        std::io::stdin().read_to_end(&mut stdin).map_err(|e| {
            CniError::new(
                code::IO_FAILURE,
                format!("reading the network config from stdin: {e}"),
            )
        })?;
        let parsed = invocation.insert(Invocation::parse(|k| std::env::var(k).ok(), &stdin)?);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::new(code::IO_FAILURE, format!("starting the runtime: {e}")))?
            .block_on(shim::run(parsed))
    });
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(json)) => {
            let _ = writeln!(out, "{json}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(out, "{}", shim::error_json(&err, invocation.as_ref()));
            ExitCode::FAILURE
        }
    }
}
