//! `smolbot inspect`: what a GGUF file holds and whether this build can run it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use smolbot::inference::gguf::dtype_name;
use smolbot::inference::{GgufFile, RopeScaling};
use smolbot::smollm3::config::SMOLLM3_NOPE_STEP;
use smolbot::smollm3::{Architecture, GgufTokenizer, ModelConfig};

#[derive(Args)]
pub struct InspectArgs {
    /// Path to the GGUF model file.
    #[arg(long, short = 'm', env = "SMOLBOT_MODEL")]
    model: PathBuf,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let file = GgufFile::open(&args.model)?;
    let size = std::fs::metadata(&args.model)?.len();
    println!(
        "file:          {} ({:.1} MB)",
        args.model.display(),
        size as f64 / 1e6
    );
    let config = ModelConfig::from_gguf(&file)?;
    let c = &config.transformer;
    println!(
        "architecture:  {}{}",
        config.arch.name(),
        config
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    println!(
        "dimensions:    {} layers, hidden {}, {} heads ({} KV heads, head dim {}), FFN {}",
        c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff
    );
    println!("vocabulary:    {} tokens", c.vocab_size);
    println!("context:       {} tokens", c.context_length);
    println!(
        "rope:          theta {}, {} of {} head dims rotated",
        c.rope_theta, c.rope_dim, c.head_dim
    );
    println!("rope scaling:  {}", describe_scaling(&c.rope_scaling));
    let nope = c.nope_layers();
    let rule = match config.arch {
        Architecture::SmolLm3 => {
            format!(" (every {SMOLLM3_NOPE_STEP}th layer, as llama.cpp's smollm3 graph)")
        }
        Architecture::Llama => String::new(),
    };
    if nope.is_empty() {
        println!("NoPE layers:   none: every layer uses RoPE");
    } else {
        let list: Vec<String> = nope.iter().map(|i| i.to_string()).collect();
        println!(
            "NoPE layers:   {} of {}: {}{rule}",
            nope.len(),
            c.n_layer,
            list.join(", ")
        );
    }
    let mut mix: BTreeMap<&str, usize> = BTreeMap::new();
    for info in file.tensor_infos().values() {
        *mix.entry(dtype_name(info.ggml_dtype)).or_default() += 1;
    }
    let mix: Vec<String> = mix.iter().map(|(t, n)| format!("{t} ×{n}")).collect();
    println!(
        "quantization:  {} ({} tensors)",
        mix.join(", "),
        file.tensor_infos().len()
    );

    let mut problems = c.validate(&file);
    match GgufTokenizer::from_gguf(&file) {
        Ok(t) => println!(
            "tokenizer:     {} tokens, pre-tokenizer {}, BOS {:?}, end of generation {:?}",
            t.vocab_size(),
            file.opt_str("tokenizer.ggml.pre")
                .ok()
                .flatten()
                .unwrap_or("default"),
            t.bos,
            t.end_of_generation()
        ),
        Err(e) => problems.push(e.to_string()),
    }
    if problems.is_empty() {
        println!(
            "validation:    OK: every tensor present with the right shape and a supported type"
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("validation:    FAILED ({} problems)", problems.len());
        for p in &problems {
            eprintln!("error: {}: {p}", args.model.display());
        }
        Ok(ExitCode::FAILURE)
    }
}

fn describe_scaling(s: &RopeScaling) -> String {
    match s {
        RopeScaling::None => "none".into(),
        RopeScaling::Linear { factor } => format!("linear ×{factor}"),
        RopeScaling::Yarn {
            factor,
            original_context,
            ..
        } => format!("YaRN ×{factor} from {original_context} tokens"),
    }
}
