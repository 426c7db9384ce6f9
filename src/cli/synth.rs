//! `smolbot synth`: writes a synthetic SmolLM3 GGUF file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use smolbot::smollm3::synthetic::{write_gguf, SyntheticSpec};

#[derive(Clone, Copy, ValueEnum)]
enum Size {
    /// 8 layers, hidden 256: a few MB, for tests.
    Tiny,
    /// SmolLM3-3B's true dimensions (~1.9 GB), for benchmarks.
    Full,
}

#[derive(Args)]
pub struct SynthArgs {
    #[arg(long, value_enum, default_value = "tiny")]
    size: Size,
    /// Where to write the file.
    #[arg(long, short)]
    out: PathBuf,
}

pub fn run(args: SynthArgs) -> anyhow::Result<ExitCode> {
    let spec = match args.size {
        Size::Tiny => SyntheticSpec::tiny(),
        Size::Full => SyntheticSpec::full_3b(),
    };
    write_gguf(&spec, &args.out)?;
    let size = std::fs::metadata(&args.out)?.len();
    eprintln!("wrote {} ({:.1} MB)", args.out.display(), size as f64 / 1e6);
    Ok(ExitCode::SUCCESS)
}
