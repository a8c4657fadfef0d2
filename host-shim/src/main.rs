//! `host-shim`: see the library documentation (`host_shim`) and `host-shim --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match host_shim::cli::parse(std::env::args_os()) {
        Ok(cli) => ExitCode::from(host_shim::cli::execute(cli)),
        Err(status) => ExitCode::from(status),
    }
}
