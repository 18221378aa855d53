//! `dataplane-cni`: the CNI plugin binary (docs/cni.md). The runtime runs it
//! with `CNI_*` variables and the network configuration on stdin; it prints
//! a result or the spec's error JSON on stdout and logs to stderr. The work
//! is the library's (`dataplane_user::frontends::cni`).

use std::io::{Read as _, Write as _};

use dataplane_user::frontends::cni::{code, plugin, CniError, DEFAULT_VERSION};

fn main() -> std::process::ExitCode {
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Err(e) => plugin::Outcome {
            stdout: CniError::new(
                code::IO_FAILURE,
                "reading the network configuration from stdin",
            )
            .with_details(e.to_string())
            .to_json(DEFAULT_VERSION)
            .to_string(),
            success: false,
        },
        Ok(_) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(plugin::run(|k| std::env::var(k).ok(), &stdin)),
            Err(e) => plugin::Outcome {
                stdout: CniError::new(code::IO_FAILURE, "starting the tokio runtime")
                    .with_details(e.to_string())
                    .to_json(DEFAULT_VERSION)
                    .to_string(),
                success: false,
            },
        },
    };
    if !outcome.success {
        // The runtime shows stdout's JSON; stderr is for whoever reads logs.
        eprintln!("dataplane-cni: {}", outcome.stdout);
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| out.flush());
    if outcome.success && written.is_ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
