//! `vale-ctl`: manage the VALE switches that valed runs, with netmap's options
//! and output (see `vale-ctl.8`).

mod cli;
mod exec;
mod format;
mod stats;

use std::io::Write;
use std::process::ExitCode;

use netmap::ctrl::{socket_path, CtrlConn};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let inv = match cli::parse(&args) {
        Ok(inv) => inv,
        Err(cli::ParseError::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(cli::ParseError::Usage(msg)) => {
            let mut err = std::io::stderr().lock();
            if let Some(m) = msg {
                let _ = writeln!(err, "{m}");
            }
            let _ = err.write_all(cli::USAGE.as_bytes());
            return ExitCode::FAILURE;
        }
    };
    let path = socket_path(inv.socket.as_deref());
    let mut conn = match CtrlConn::connect(&path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{}", exec::connect_failed(&path, &e));
            return ExitCode::FAILURE;
        }
    };
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    let rc = exec::run(
        &inv,
        &mut conn,
        &mut exec::Out {
            out: &mut out,
            err: &mut err,
        },
    );
    if rc == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
