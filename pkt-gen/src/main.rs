//! pkt-gen: netmap's traffic generator for valed's VALE ports. See pkt-gen(8).

use std::process::ExitCode;

use pkt_gen::args::{self, Parsed, USAGE};
use pkt_gen::{d, os, run};

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match args::parse(&argv) {
        Ok(Parsed::Run(c)) => c,
        Ok(Parsed::Help) => {
            eprint!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            d!("main", "{}", e);
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let stop = match os::stop_flag() {
        Ok(s) => s,
        Err(e) => {
            d!("main", "failed to install ^C handler: {}", e);
            return ExitCode::FAILURE;
        }
    };
    match run::run(&cfg, stop) {
        Ok(o) => {
            run::print_final(&cfg, &o);
            if o.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            d!("main", "{}", e);
            d!("main", "aborting");
            ExitCode::FAILURE
        }
    }
}
