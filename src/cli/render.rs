//! `smolbot render`: the exact prompt text a chat template makes of a conversation, to
//! compare with transformers' `apply_chat_template` or to see what the model is sent.
//!
//! With `--model` the template is the file's own (`tokenizer.chat_template`, SmolLM3's
//! official one when the file has none), given the special-token arguments transformers
//! passes; with `--template` it is a Jinja file. Only GGUF metadata is read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgGroup, Args};
use serde_json::Value as Json;
use smolbot::inference::GgufFile;
use smolbot::smollm3::chat_template::{ChatTemplate, RenderContext};
use smolbot::smollm3::prompt::{model_template, special_token_kwargs};

#[derive(Args)]
#[command(group(ArgGroup::new("source").required(true).args(["model", "template"])))]
pub struct RenderArgs {
    /// GGUF model whose own chat template to use.
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// A Jinja chat template file to use instead of a model's.
    #[arg(long)]
    template: Option<PathBuf>,
    /// JSON file: a list of messages, or an object of `apply_chat_template` keyword
    /// arguments holding `messages` (the options below override its entries).
    #[arg(long)]
    messages: PathBuf,
    /// Pass `enable_thinking`; absent, the template's own default applies.
    #[arg(long, value_name = "true|false")]
    enable_thinking: Option<bool>,
    /// JSON file with the tool schemas to pass as `xml_tools`.
    #[arg(long, value_name = "TOOLS.json")]
    xml_tools: Option<PathBuf>,
    /// JSON file with the tool signatures to pass as `python_tools`.
    #[arg(long, value_name = "TOOLS.json")]
    python_tools: Option<PathBuf>,
    /// Do not end the prompt with the opening of an assistant turn.
    #[arg(long)]
    no_generation_prompt: bool,
    /// The date `strftime_now` gives, e.g. "26 November 2026" (default: today).
    #[arg(long)]
    today: Option<String>,
}

pub fn run(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let mut ctx = match read_json(&args.messages)? {
        Json::Array(messages) => RenderContext {
            add_generation_prompt: true,
            ..RenderContext::new(messages)
        },
        Json::Object(kwargs) => {
            if !kwargs.contains_key("messages") {
                anyhow::bail!("{}: the object has no `messages`", args.messages.display());
            }
            let mut ctx = RenderContext::from_kwargs(&kwargs)
                .with_context(|| args.messages.display().to_string())?;
            if !kwargs.contains_key("add_generation_prompt") {
                ctx.add_generation_prompt = true;
            }
            ctx
        }
        _ => anyhow::bail!(
            "{}: expected a list of messages or an object with `messages`",
            args.messages.display()
        ),
    };
    if args.no_generation_prompt {
        ctx.add_generation_prompt = false;
    }
    if let Some(flag) = args.enable_thinking {
        ctx.enable_thinking = Some(flag);
    }
    if let Some(path) = &args.xml_tools {
        ctx.xml_tools = Some(read_json(path)?);
    }
    if let Some(path) = &args.python_tools {
        ctx.python_tools = Some(read_json(path)?);
    }
    if args.today.is_some() {
        ctx.today = args.today.clone();
    }
    let template = match (&args.model, &args.template) {
        (Some(model), _) => {
            let file = GgufFile::open(model)?;
            for (key, value) in special_token_kwargs(&file)? {
                ctx.extra.entry(key).or_insert(value);
            }
            model_template(&file)?
        }
        (None, Some(path)) => {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            ChatTemplate::new(&source).with_context(|| path.display().to_string())?
        }
        (None, None) => anyhow::bail!("give --model or --template"),
    };
    let text = template.render(&ctx)?;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn read_json(path: &Path) -> anyhow::Result<Json> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}
