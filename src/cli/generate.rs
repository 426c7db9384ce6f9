//! `smolbot generate`: one completion streamed to stdout, timings to stderr.
//!
//! The prompt is a user message rendered with the model's own chat template (optionally after
//! a `--system` message), or with `--raw` the exact text to continue. For a templated prompt
//! the model's reasoning (its `<think>` block) goes to stderr, dimmed on a terminal and
//! between `<think>` tags otherwise, and only the answer to stdout; with `--raw` stdout is the
//! model's text exactly.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use smolbot::inference::generate::{generate_with, GenerationRequest, StopReason, TokenAction};
use smolbot::inference::sampling::SamplingParams;
use smolbot::inference::GgufFile;
use smolbot::smollm3::chat_template::RenderContext;
use smolbot::smollm3::prompt::{model_template, render_prompt, special_token_kwargs};
use smolbot::smollm3::thinking::{ThinkingEvent, ThinkingParser};
use smolbot::smollm3::thinking_budget::{prompt_opens_reasoning, think_tag_ids, ThinkingBudget};
use smolbot::smollm3::{GgufTokenizer, LoadedModel, StreamDecoder};

use super::EngineArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The prompt: a user message, or with `--raw` the exact text to continue.
    #[arg(long, short)]
    prompt: String,
    /// Send the prompt as-is, with special tokens such as `<|im_start|>` recognised.
    #[arg(long)]
    raw: bool,
    /// A system message before the user's (templated prompts only).
    #[arg(long, conflicts_with = "raw")]
    system: Option<String>,
    /// Thinking mode on (`enable_thinking=true`; templated prompts only). Without `--think`
    /// or `--no-think` the template's default applies (on, for SmolLM3).
    #[arg(long, overrides_with = "no_think")]
    think: bool,
    /// Thinking mode off (`enable_thinking=false`).
    #[arg(long, overrides_with = "think")]
    no_think: bool,
    /// Close the reasoning with `</think>` once it has reached N tokens, so the model answers.
    #[arg(long, value_name = "N")]
    thinking_budget: Option<usize>,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 picks the most likely token every time.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// 0 disables top-k.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub fn run(args: GenerateArgs) -> anyhow::Result<ExitCode> {
    let device = args.engine.device();
    let model = LoadedModel::load(&args.engine.model, &device)?;
    let tk = &model.tokenizer;
    let mut prompt = if args.raw {
        let mut prompt = Vec::new();
        if tk.add_bos {
            prompt.extend(tk.bos);
        }
        prompt.extend(tk.encode(&args.prompt, true)?);
        prompt
    } else {
        templated_prompt(&args, tk)?
    };
    let tags = think_tag_ids(tk).ok();
    let mut budget = match args.thinking_budget {
        Some(max) => Some(ThinkingBudget::new(tk, max, &prompt)?),
        None => None,
    };
    if let Some(budget) = &mut budget {
        prompt.extend(budget.prompt_suffix());
    }
    let starts_in_reasoning =
        tags.is_some_and(|(open, close)| prompt_opens_reasoning(&prompt, open, close));
    let request = GenerationRequest {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            seed: args.seed,
            ..SamplingParams::default()
        },
        stop_tokens: tk.end_of_generation().to_vec(),
        ..GenerationRequest::default()
    };
    let mut decoder = StreamDecoder::new(tk);
    let stderr = std::io::stderr();
    let dim = stderr.is_terminal();
    let mut printer = Printer::new(
        std::io::stdout(),
        stderr,
        args.raw,
        starts_in_reasoning,
        dim,
    );
    let mut failure: Option<anyhow::Error> = None;
    let mut cache = model.transformer.new_cache();
    let stats = generate_with(&model.transformer, &mut cache, &prompt, &request, |id| {
        let inject = budget.as_mut().and_then(|b| b.observe(id));
        let ids = std::iter::once(id).chain(inject.iter().flatten().copied());
        for id in ids {
            let printed = decoder
                .push(id)
                .map_err(anyhow::Error::from)
                .and_then(|piece| piece.map_or(Ok(()), |p| printer.text(&p)));
            if let Err(e) = printed {
                failure = Some(e);
                return TokenAction::Stop;
            }
        }
        inject.map_or(TokenAction::Continue, TokenAction::Inject)
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(rest) = decoder.finish()? {
        printer.text(&rest)?;
    }
    printer.finish()?;
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s",
        stats.prompt_tokens,
        stats.prompt_tok_per_s(),
        stats.generated_tokens,
        stats.generation_tok_per_s()
    );
    if let (Some(budget), Some(max)) = (&budget, args.thinking_budget) {
        eprintln!("reasoning: {} tokens (budget {max})", budget.used());
    }
    match stats.stop {
        StopReason::ContextFull => eprintln!(
            "stopped: the context is full ({} tokens)",
            model.config.transformer.context_length
        ),
        StopReason::MaxTokens => eprintln!("stopped: reached --max-tokens {}", args.max_tokens),
        StopReason::EndToken | StopReason::Cancelled => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// The prompt as the model was trained on it: the user's text (after the `--system` message,
/// if any) rendered with the model's own template.
///
/// Tokenizing the rendered text with special tokens recognised, as llama.cpp does, would let
/// a user who types `<|im_end|>` end their own turn. `render_prompt` instead keeps
/// special-token text in the messages as plain characters and makes control tokens only of
/// the template's markup (see `smollm3::prompt`); for ordinary text the ids equal llama.cpp's.
fn templated_prompt(args: &GenerateArgs, tk: &GgufTokenizer) -> anyhow::Result<Vec<u32>> {
    let file = GgufFile::open(&args.engine.model)?;
    let template = model_template(&file)?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": args.prompt}));
    let mut ctx = RenderContext::new(messages);
    ctx.add_generation_prompt = true;
    ctx.enable_thinking = match (args.think, args.no_think) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    ctx.extra = special_token_kwargs(&file)?;
    Ok(render_prompt(&template, &ctx, tk)?.ids)
}

/// Sends generated text where it belongs: everything to `out` (stdout) in raw mode;
/// otherwise reasoning to `err` (stderr; dimmed on a terminal, between `<think>` tags when
/// not) and the answer, with its leading whitespace trimmed, to `out`.
struct Printer<O: Write, E: Write> {
    out: O,
    err: E,
    /// `None` in raw mode.
    parser: Option<ThinkingParser>,
    /// Whether the reasoning's opening mark was written to `err` and not yet closed.
    in_reasoning: bool,
    answer_started: bool,
    dim: bool,
}

impl<O: Write, E: Write> Printer<O, E> {
    fn new(out: O, err: E, raw: bool, starts_in_reasoning: bool, dim: bool) -> Self {
        let parser = (!raw).then(|| {
            if starts_in_reasoning {
                ThinkingParser::in_reasoning()
            } else {
                ThinkingParser::new()
            }
        });
        Self {
            out,
            err,
            parser,
            in_reasoning: false,
            answer_started: false,
            dim,
        }
    }

    fn text(&mut self, piece: &str) -> anyhow::Result<()> {
        match &mut self.parser {
            None => write_flush(&mut self.out, piece),
            Some(parser) => {
                let events = parser.push(piece);
                self.events(events)
            }
        }
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(parser) = &mut self.parser {
            let events = parser.finish();
            self.events(events)?;
            self.close_reasoning()?;
        }
        write_flush(&mut self.out, "\n")
    }

    fn events(&mut self, events: Vec<ThinkingEvent>) -> anyhow::Result<()> {
        for event in events {
            match event {
                ThinkingEvent::Reasoning(text) => {
                    if !self.in_reasoning {
                        self.in_reasoning = true;
                        let open = if self.dim { "\x1b[2m" } else { "<think>" };
                        write_flush(&mut self.err, open)?;
                    }
                    write_flush(&mut self.err, &text)?;
                }
                ThinkingEvent::Answer(text) => {
                    self.close_reasoning()?;
                    let text = if self.answer_started {
                        text.as_str()
                    } else {
                        text.trim_start()
                    };
                    if !text.is_empty() {
                        self.answer_started = true;
                        write_flush(&mut self.out, text)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn close_reasoning(&mut self) -> anyhow::Result<()> {
        if self.in_reasoning {
            self.in_reasoning = false;
            let close = if self.dim { "\x1b[0m\n" } else { "</think>\n" };
            write_flush(&mut self.err, close)?;
        }
        Ok(())
    }
}

fn write_flush(out: &mut impl Write, text: &str) -> anyhow::Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` to a printer and returns what reached stdout and stderr.
    fn print(raw: bool, starts_in_reasoning: bool, pieces: &[&str]) -> (String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut printer = Printer::new(&mut out, &mut err, raw, starts_in_reasoning, false);
        for piece in pieces {
            printer.text(piece).unwrap();
        }
        printer.finish().unwrap();
        drop(printer);
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn reasoning_goes_to_stderr_and_the_answer_to_stdout() {
        let pieces = [
            "<th",
            "ink>\nLet me",
            " think.\n</",
            "think>\n\nParis",
            " it is.",
        ];
        let (out, err) = print(false, false, &pieces);
        assert_eq!(out, "Paris it is.\n");
        assert_eq!(err, "<think>\nLet me think.\n</think>\n");
    }

    #[test]
    fn raw_mode_prints_the_model_text_exactly() {
        let pieces = ["<think>\nhm", "</think>\n", " Paris"];
        let (out, err) = print(true, false, &pieces);
        assert_eq!(out, "<think>\nhm</think>\n Paris\n");
        assert_eq!(err, "");
    }

    #[test]
    fn prompt_opened_reasoning_and_no_thinking_output() {
        let (out, err) = print(false, true, &["step", "</think>", "\nanswer"]);
        assert_eq!(
            (out.as_str(), err.as_str()),
            ("answer\n", "<think>step</think>\n")
        );
        let (out, err) = print(false, false, &["Just ", "the answer."]);
        assert_eq!((out.as_str(), err.as_str()), ("Just the answer.\n", ""));
    }

    #[test]
    fn unterminated_reasoning_is_closed_on_stderr() {
        let (out, err) = print(false, false, &["<think>", "still going"]);
        assert_eq!(
            (out.as_str(), err.as_str()),
            ("\n", "<think>still going</think>\n")
        );
    }
}
