//! `smolbot tokenize`: the token ids and pieces a model's own tokenizer gives for a text, to
//! check tokenization against llama.cpp or transformers by eye or by script.
//!
//! Only the GGUF metadata is read (the tokenizer lives there); the weights stay on disk, so
//! this is quick even for a multi-gigabyte model.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use smolbot::inference::GgufFile;
use smolbot::smollm3::GgufTokenizer;

#[derive(Args)]
pub struct TokenizeArgs {
    /// Path to the GGUF model file whose tokenizer to use.
    #[arg(long, short = 'm', env = "SMOLBOT_MODEL")]
    model: PathBuf,
    /// The text to tokenize.
    #[arg(long, short)]
    text: String,
    /// Recognise special-token texts such as `<|im_start|>` as control tokens (as template
    /// markup is); without it they are plain characters, as user text is.
    #[arg(long)]
    special: bool,
    /// Print `{"ids": [...], "pieces": [...]}` instead of one line per token.
    #[arg(long)]
    json: bool,
}

pub fn run(args: TokenizeArgs) -> anyhow::Result<ExitCode> {
    let file = GgufFile::open(&args.model)?;
    let tokenizer = GgufTokenizer::from_gguf(&file)?;
    let ids = tokenizer.encode(&args.text, args.special)?;
    // Pieces are the vocabulary entries as the file stores them (byte-level form, e.g.
    // `Ġworld`), like transformers' `tokenize()`: lossless even for a token holding part of a
    // multi-byte character.
    let pieces = ids
        .iter()
        .map(|&id| {
            tokenizer
                .piece(id)
                .ok_or_else(|| anyhow::anyhow!("token id {id} is not in the vocabulary"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.json {
        println!("{}", serde_json::json!({ "ids": ids, "pieces": pieces }));
    } else {
        for (&id, piece) in ids.iter().zip(&pieces) {
            let text = tokenizer.decode(&[id])?;
            println!("{id:>7}  {piece:<20}  {text:?}");
        }
        eprintln!("{} tokens", ids.len());
    }
    Ok(ExitCode::SUCCESS)
}
