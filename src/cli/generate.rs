//! `smolbot generate`: one completion streamed to stdout, timings to stderr.
//!
//! It runs on the server's pipeline: the engine thread, the codec's prepare (template,
//! sampling defaults and range checks, stop strings, thinking budget) and the reply parser
//! (reasoning apart from the answer, tool calls), so a prompt behaves here as it does over
//! the API. This module only turns the flags into a request and prints the events.
//!
//! The prompt is a user message rendered with the model's own chat template (optionally after
//! a `--system` message), or with `--raw` the exact text to continue. For a templated prompt
//! the model's reasoning goes to stderr, dimmed on a terminal and between `<think>` tags
//! otherwise, the answer to stdout, and each tool call (with `--tools`) to stdout as one JSON
//! line; with `--raw` stdout is the model's text exactly.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::Value as Json;
use smolbot::services::chat::{
    tool_call_json, ChatMessage, ChatRequest, CompletionPrompt, CompletionRequest, Role, Sampling,
    TokenLimit,
};
use smolbot::services::events::{Completion, FinishReason, GenerationEvent};
use smolbot::services::kv_budget::ContextRequest;
use smolbot::services::{BackendSpec, Engine, GenerationStream};
use smolbot::smollm3::tool_calls::ToolCall;

use super::EngineArgs;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The prompt: a user message, or with `--raw` the exact text to continue.
    #[arg(long, short, required_unless_present = "file", conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from this file instead (like llama.cpp's `-f`): long prompts do not
    /// fit in one command-line argument (Linux caps one at 128 KiB).
    #[arg(long, short, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Positions the sequence may hold, prompt and answer (like llama.cpp's `-c`); 0 or unset:
    /// the model's, as far as memory allows.
    #[arg(long, value_name = "N")]
    ctx_size: Option<usize>,
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
    /// End the output where this text first appears (not printed); may be repeated.
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// JSON file with the tools to offer (a list of function schemas, bare or in OpenAI's
    /// `{"type": "function", "function": …}`); the model's calls are printed as JSON lines.
    #[arg(long, value_name = "TOOLS.json", conflicts_with = "raw")]
    tools: Option<PathBuf>,
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
    args.engine.apply_env();
    let tools = args.tools.as_deref().map(read_tools).transpose()?;
    let prompt = match (&args.prompt, &args.file) {
        (Some(prompt), _) => prompt.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the prompt from {}", file.display()))?,
        (None, None) => anyhow::bail!("give the prompt with --prompt or --file"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(generate(&args, &prompt, tools.unwrap_or_default()))
}

async fn generate(args: &GenerateArgs, prompt: &str, tools: Vec<Json>) -> anyhow::Result<ExitCode> {
    let spec = BackendSpec::Gguf {
        path: args.engine.model.clone(),
        force_cpu: args.engine.cpu,
        alias: None,
        context: ContextRequest {
            ctx_size: args.ctx_size.filter(|&n| n > 0),
            kv_budget: None,
        },
    };
    // One request: a queue of one is enough.
    let engine = Engine::start(spec, 1).await?;
    let context_length = engine.info().context_length;
    // The flag's default may exceed a small model's context; the context then ends the output.
    let max_tokens = args.max_tokens.min(context_length);
    let stream = start(args, prompt, &engine, tools, max_tokens).await?;
    let stderr = std::io::stderr();
    let dim = stderr.is_terminal();
    let mut printer = Printer::new(std::io::stdout(), stderr, dim);
    let done = printer.print(stream).await?;
    let timings = &done.timings;
    eprintln!(
        "prompt: {} tokens, {:.1} tok/s | generation: {} tokens, {:.1} tok/s",
        done.usage.prompt_tokens,
        per_second(timings.prompt_tokens, timings.prompt_time),
        done.usage.completion_tokens,
        per_second(timings.predicted_tokens, timings.predicted_time),
    );
    if let Some(bytes) = smolbot::services::metrics::peak_rss_bytes() {
        eprintln!("peak memory: {} MB", bytes / 1_000_000);
    }
    if let (Some(used), Some(max)) = (done.usage.reasoning_tokens, args.thinking_budget) {
        eprintln!("reasoning: {used} tokens (budget {max})");
    }
    match done.finish_reason {
        FinishReason::Length if done.usage.completion_tokens >= max_tokens => {
            eprintln!("stopped: reached --max-tokens {max_tokens}")
        }
        FinishReason::Length => {
            eprintln!("stopped: the context is full ({context_length} tokens)")
        }
        FinishReason::ToolCalls => eprintln!("stopped: the model called a tool"),
        FinishReason::Stop => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Queues the request the flags describe: a chat turn, or with `--raw` a text completion.
async fn start(
    args: &GenerateArgs,
    prompt: &str,
    engine: &Engine,
    tools: Vec<Json>,
    max_tokens: usize,
) -> anyhow::Result<GenerationStream> {
    let max_tokens = Some(TokenLimit {
        field: "max_tokens",
        value: i64::try_from(max_tokens)?,
    });
    let sampling = Sampling {
        temperature: Some(args.temperature),
        top_k: Some(args.top_k),
        top_p: Some(args.top_p),
        min_p: Some(args.min_p),
        repeat_penalty: Some(args.repeat_penalty),
        seed: Some(args.seed),
        ..Sampling::default()
    };
    if args.raw {
        let request = CompletionRequest {
            prompt: CompletionPrompt::Text(prompt.to_string()),
            max_tokens,
            sampling,
            stop: args.stop.clone(),
            thinking_budget: args.thinking_budget,
            ..CompletionRequest::default()
        };
        let prepared = engine.prepare_completion(request).await?;
        return Ok(engine.submit(prepared)?);
    }
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(ChatMessage::new(Role::System, system.clone()));
    }
    messages.push(ChatMessage::new(Role::User, prompt.to_string()));
    let request = ChatRequest {
        messages,
        tools,
        enable_thinking: match (args.think, args.no_think) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        max_tokens,
        sampling,
        stop: args.stop.clone(),
        thinking_budget: args.thinking_budget,
        ..ChatRequest::default()
    };
    Ok(engine.generate(request).await?)
}

/// The function schemas of a `--tools` file, unwrapped from OpenAI's envelope if need be.
fn read_tools(path: &std::path::Path) -> anyhow::Result<Vec<Json>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let tools: Vec<Json> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a JSON list of tools", path.display()))?;
    Ok(tools
        .into_iter()
        .map(|tool| match tool.get("function") {
            Some(function) if tool.get("type").and_then(Json::as_str) == Some("function") => {
                function.clone()
            }
            _ => tool,
        })
        .collect())
}

fn per_second(tokens: usize, time: std::time::Duration) -> f64 {
    let seconds = time.as_secs_f64();
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}

/// Sends a generation's events where they belong: the answer (and, in raw mode, the whole
/// text) to `out`, each tool call to `out` as a JSON line, the reasoning to `err` (dimmed on
/// a terminal, between `<think>` tags when not).
struct Printer<O: Write, E: Write> {
    out: O,
    err: E,
    /// Whether the reasoning's opening mark was written to `err` and not yet closed.
    in_reasoning: bool,
    /// Whether `out` holds text not yet ended by a newline.
    open_line: bool,
    dim: bool,
}

impl<O: Write, E: Write> Printer<O, E> {
    fn new(out: O, err: E, dim: bool) -> Self {
        Self {
            out,
            err,
            in_reasoning: false,
            open_line: false,
            dim,
        }
    }

    /// Prints the stream to its end and returns its closing summary.
    async fn print(&mut self, mut stream: GenerationStream) -> anyhow::Result<Completion> {
        while let Some(event) = stream.next().await {
            match event {
                GenerationEvent::Done(done) => {
                    self.finish()?;
                    return Ok(done);
                }
                GenerationEvent::Failed(message) => {
                    self.finish()?;
                    anyhow::bail!("generation failed: {message}");
                }
                event => self.event(event)?,
            }
        }
        anyhow::bail!("the engine stopped")
    }

    fn event(&mut self, event: GenerationEvent) -> anyhow::Result<()> {
        match event {
            GenerationEvent::Reasoning(text) => {
                if !self.in_reasoning {
                    self.in_reasoning = true;
                    let open = if self.dim { "\x1b[2m" } else { "<think>" };
                    write_flush(&mut self.err, open)?;
                }
                write_flush(&mut self.err, &text)
            }
            GenerationEvent::Content(text) => {
                self.close_reasoning()?;
                self.open_line = !text.ends_with('\n');
                write_flush(&mut self.out, &text)
            }
            GenerationEvent::ToolCall(call) => {
                self.close_reasoning()?;
                self.tool_call(&call)
            }
            GenerationEvent::Progress(_)
            | GenerationEvent::Done(_)
            | GenerationEvent::Failed(_) => Ok(()),
        }
    }

    fn tool_call(&mut self, call: &ToolCall) -> anyhow::Result<()> {
        if self.open_line {
            write_flush(&mut self.out, "\n")?;
        }
        self.open_line = false;
        write_flush(&mut self.out, &format!("{}\n", tool_call_json(call)))
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.close_reasoning()?;
        if self.open_line {
            self.open_line = false;
            write_flush(&mut self.out, "\n")?;
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
    use serde_json::json;

    /// Feeds `events` to a printer and returns what reached stdout and stderr.
    fn print(events: Vec<GenerationEvent>) -> (String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut printer = Printer::new(&mut out, &mut err, false);
        for event in events {
            printer.event(event).unwrap();
        }
        printer.finish().unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn reasoning_goes_to_stderr_and_the_answer_to_stdout() {
        let (out, err) = print(vec![
            GenerationEvent::Reasoning("Let me".into()),
            GenerationEvent::Reasoning(" think.".into()),
            GenerationEvent::Content("Paris".into()),
            GenerationEvent::Content(" it is.".into()),
        ]);
        assert_eq!(out, "Paris it is.\n");
        assert_eq!(err, "<think>Let me think.</think>\n");
    }

    #[test]
    fn tool_calls_are_json_lines_after_the_answer() {
        let call = ToolCall {
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        };
        let (out, err) = print(vec![
            GenerationEvent::Content("Let me check.".into()),
            GenerationEvent::ToolCall(call.clone()),
            GenerationEvent::ToolCall(call),
        ]);
        let line = r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#;
        assert_eq!(out, format!("Let me check.\n{line}\n{line}\n"));
        assert_eq!(err, "");
    }

    #[test]
    fn unterminated_reasoning_is_closed_on_stderr() {
        let (out, err) = print(vec![GenerationEvent::Reasoning("still going".into())]);
        assert_eq!(
            (out.as_str(), err.as_str()),
            ("", "<think>still going</think>\n")
        );
    }

    #[test]
    fn a_tools_file_may_use_openai_s_envelope() {
        let path = std::env::temp_dir().join(format!("smolbot-tools-{}.json", std::process::id()));
        let bare = json!({"name": "calculator", "parameters": {}});
        let wrapped = json!({"type": "function", "function": {"name": "get_weather"}});
        std::fs::write(&path, json!([bare, wrapped]).to_string()).unwrap();
        let tools = read_tools(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(tools.unwrap(), vec![bare, json!({"name": "get_weather"})]);
    }
}
