//! `da3-mcap-recover IN.mcap OUT.mcap`: copies the readable part of an MCAP
//! file (every complete chunk; typically a recording cut short by a killed
//! recorder, which has no summary) into a finished MCAP file with a summary
//! and footer, which Rerun and Foxglove open. Works on any MCAP file.

use std::path::PathBuf;

use eyre::Result;
use recorder::mcap_recording::{recover, Compression};

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if args.len() != 2 || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: da3-mcap-recover IN.mcap OUT.mcap");
        std::process::exit(2);
    }
    let r = recover(&args[0], &args[1], Compression::Zstd)?;
    match &r.stopped {
        Some(why) => println!("{why}"),
        None => println!("`{}` is complete", args[0].display()),
    }
    println!("{} messages written to {}", r.messages, args[1].display());
    Ok(())
}
