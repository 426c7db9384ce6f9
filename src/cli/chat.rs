//! `smolbot chat`: an interactive chat in the terminal, on the same engine, conversation
//! service and store as the server, so a terminal conversation shows up in the server's
//! list and the web page like any other, and is saved the same way (the question first,
//! then the answer as a draft that grows; a killed chat leaves it `interrupted`).
//!
//! The line editor (history with the arrow keys) runs on the main thread; each answer is
//! streamed inside the async runtime until it ends or Ctrl-C stops it. While the editor waits
//! for a line the terminal is in raw mode, so Ctrl-C reaches it as a key and exits; while an
//! answer streams the terminal is cooked again, so Ctrl-C is a signal that only stops the
//! answer.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use rustyline::error::ReadlineError;
use smolbot::services::events::{FinishReason, GenerationEvent};
use smolbot::services::runs::{Run, RunEvent};
use smolbot::services::sessions::{ConversationPatch, ConversationSettings};
use smolbot::services::{Ask, Conversations, EngineLimits, Runs, SessionStore};
use tokio::runtime::Runtime;

use super::serve::{init_logging, load_engine, ModelArgs};

/// The prompt of the line editor.
const PROMPT: &str = ">>> ";

/// ANSI "dim" and "reset": how the model's reasoning is set apart from its answer.
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

const HELP: &str = "\
/think         let the model reason before answering (shown dimmed)
/think N       the same, with at most N tokens of reasoning per answer
/no_think      answer directly, without reasoning
/system TEXT   set the system prompt (/system alone clears it)
/clear         start a new conversation
/exit          quit (also Ctrl-D, or Ctrl-C at the prompt)
Ctrl-C while an answer streams stops it.";

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Start with the model's thinking off (`/think` turns it on again).
    #[arg(long, env = "SMOLBOT_NO_THINK")]
    no_think: bool,
    /// System prompt of the conversation (`/system TEXT` changes it).
    #[arg(long, env = "SMOLBOT_SYSTEM")]
    system: Option<String>,
    /// Folder of the conversation database, the server's (default: $XDG_DATA_HOME/smolbot or
    /// ~/.local/share/smolbot).
    #[arg(long, env = "SMOLBOT_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

pub fn run(mut args: ChatArgs) -> anyhow::Result<ExitCode> {
    // Only warnings: the chat itself is the terminal's content.
    if std::env::var_os("RUST_LOG").is_none() {
        // Safe: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    init_logging();
    args.model.prepare()?;
    let spec = args.model.spec(None)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // One user: a queue of one is enough.
    let limits = EngineLimits {
        queue_capacity: 1,
        parallel: 1,
        ..EngineLimits::default()
    };
    let engine = runtime.block_on(load_engine(spec, limits))?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(smolbot::services::sessions::default_data_dir);
    let store = runtime
        .block_on(SessionStore::open(&data_dir))
        .context("cannot open the conversation store")?;
    let mut chat = Chat {
        conversations: Conversations::new(engine, Runs::new(store)),
        runtime,
        thinking: !args.no_think,
        thinking_budget: None,
        system: args.system.filter(|s| !s.trim().is_empty()),
        conversation: None,
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    chat.repl()?;
    Ok(ExitCode::SUCCESS)
}

/// One terminal chat session.
struct Chat {
    conversations: Conversations,
    runtime: Runtime,
    thinking: bool,
    /// At most this many reasoning tokens per answer (`/think N`); `None` lets it reason.
    thinking_budget: Option<usize>,
    system: Option<String>,
    /// The stored conversation, whose messages are the history the model sees; created with
    /// the first message, so an empty session leaves nothing behind in the list.
    conversation: Option<String>,
    color: bool,
}

/// What a line typed at the prompt asks for.
#[derive(Debug, PartialEq)]
enum Input<'a> {
    Message(&'a str),
    /// `/think` (with a budget, `/think N`) or `/no_think`.
    Think {
        on: bool,
        budget: Option<usize>,
    },
    /// A command whose argument cannot be used; the text says what it takes.
    BadArgument(&'static str),
    System(Option<&'a str>),
    Clear,
    Help,
    Exit,
    Unknown(&'a str),
    Empty,
}

fn parse_input(line: &str) -> Input<'_> {
    let line = line.trim();
    if line.is_empty() {
        return Input::Empty;
    }
    let Some(command) = line.strip_prefix('/') else {
        return Input::Message(line);
    };
    let (name, rest) = command
        .split_once(char::is_whitespace)
        .map_or((command, ""), |(name, rest)| (name, rest.trim()));
    match name {
        "think" if rest.is_empty() => Input::Think {
            on: true,
            budget: None,
        },
        "think" => match rest.parse() {
            Ok(budget) => Input::Think {
                on: true,
                budget: Some(budget),
            },
            Err(_) => Input::BadArgument("/think takes a number of tokens, as in /think 200"),
        },
        "no_think" | "nothink" => Input::Think {
            on: false,
            budget: None,
        },
        "system" => Input::System((!rest.is_empty()).then_some(rest)),
        "clear" | "new" => Input::Clear,
        "help" | "?" => Input::Help,
        "exit" | "quit" | "bye" => Input::Exit,
        _ => Input::Unknown(name),
    }
}

impl Chat {
    fn repl(&mut self) -> anyhow::Result<()> {
        let mut editor = rustyline::DefaultEditor::new().context("cannot open the terminal")?;
        println!(
            "smolbot chat · {} · thinking {} · /help for commands, /exit to quit",
            self.conversations.engine().info().id,
            on_off(self.thinking)
        );
        loop {
            let line = match editor.readline(PROMPT) {
                Ok(line) => line,
                Err(ReadlineError::Interrupted | ReadlineError::Eof) => break,
                Err(err) => return Err(err).context("cannot read from the terminal"),
            };
            if !line.trim().is_empty() {
                let _ = editor.add_history_entry(line.as_str());
            }
            match parse_input(&line) {
                Input::Empty => {}
                Input::Message(text) => self.send(text)?,
                Input::Think { on, budget } => {
                    self.thinking = on;
                    // `/think` alone lifts a budget; `/no_think` keeps it for later, as
                    // the page's commands do.
                    if on {
                        self.thinking_budget = budget;
                    }
                    self.save_settings()?;
                    match budget {
                        Some(n) => println!("thinking on, at most {n} tokens of it"),
                        None => println!("thinking {}", on_off(on)),
                    }
                }
                Input::BadArgument(usage) => println!("{usage}"),
                Input::System(text) => {
                    self.system = text.map(str::to_owned);
                    self.save_settings()?;
                    match text {
                        Some(_) => println!("system prompt set"),
                        None => println!("system prompt cleared"),
                    }
                }
                Input::Clear => {
                    self.conversation = None;
                    println!("new conversation");
                }
                Input::Help => println!("{HELP}"),
                Input::Exit => break,
                Input::Unknown(name) => println!("unknown command /{name}; /help lists them"),
            }
        }
        Ok(())
    }

    fn settings(&self) -> ConversationSettings {
        ConversationSettings {
            system_prompt: self.system.clone(),
            thinking: Some(self.thinking),
            thinking_budget: self.thinking_budget,
            ..ConversationSettings::default()
        }
    }

    /// Keeps the stored conversation's settings in step, so the page continues it alike.
    fn save_settings(&self) -> anyhow::Result<()> {
        if let Some(id) = &self.conversation {
            let patch = ConversationPatch {
                title: None,
                settings: Some(self.settings()),
            };
            self.runtime
                .block_on(self.conversations.store().update(id.clone(), patch))
                .context("cannot save the conversation's settings")?;
        }
        Ok(())
    }

    /// Sends `text` through the conversation service and streams the answer, which the
    /// service stores. A refused or failed answer is reported and the chat goes on.
    fn send(&mut self, text: &str) -> anyhow::Result<()> {
        let store = self.conversations.store().clone();
        let (conversation, created) = match &self.conversation {
            Some(id) => (id.clone(), false),
            None => {
                let created = self
                    .runtime
                    .block_on(store.create(None, self.settings()))
                    .context("cannot store the conversation")?;
                (created.id, true)
            }
        };
        let started = self
            .runtime
            .block_on(self.conversations.send(&conversation, Ask::text(text)));
        let started = match started {
            Ok(started) => started,
            Err(err) => {
                eprintln!("error: {err}");
                // A refused first message leaves no empty conversation in the list.
                if created {
                    let _ = self.runtime.block_on(store.delete(conversation));
                }
                return Ok(());
            }
        };
        self.conversation = Some(conversation);
        let color = self.color;
        self.runtime.block_on(stream(&started.run, color));
        Ok(())
    }
}

/// Prints the answer as it arrives, reasoning dimmed, until it ends; Ctrl-C stops it (the
/// run saves what was written as `stopped`), and the log is read to its end either way.
async fn stream(run: &Arc<Run>, color: bool) {
    let mut out = std::io::stdout();
    let mut log = run.subscribe(0);
    let (mut in_reasoning, mut reasoned, mut answered) = (false, false, false);
    // One listener for the whole answer, so a Ctrl-C between two events is not missed.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut stopping = false;
    loop {
        let entry = tokio::select! {
            _ = &mut ctrl_c, if !stopping => {
                stopping = true;
                let _ = run.stop();
                continue;
            }
            entry = log.next() => entry,
        };
        let Some(entry) = entry else { break };
        let end_reasoning = |out: &mut std::io::Stdout, in_reasoning: bool| {
            if in_reasoning && color {
                let _ = write!(out, "{RESET}");
            }
        };
        match &entry.event {
            RunEvent::Generation(GenerationEvent::Progress(_)) => {}
            RunEvent::Generation(GenerationEvent::Reasoning(text)) => {
                if !in_reasoning && !reasoned {
                    in_reasoning = true;
                    reasoned = true;
                    let _ = write!(out, "{}", if color { DIM } else { "[thinking] " });
                }
                let _ = write!(out, "{text}");
            }
            RunEvent::Generation(GenerationEvent::Content(text)) => {
                if in_reasoning {
                    in_reasoning = false;
                    let end = if color { RESET } else { "\n[answer]" };
                    let _ = write!(out, "{end}\n\n");
                }
                let text = if answered {
                    text.as_str()
                } else {
                    text.trim_start_matches('\n')
                };
                answered |= !text.is_empty();
                let _ = write!(out, "{text}");
            }
            RunEvent::Generation(GenerationEvent::ToolCall(call)) => {
                let _ = write!(out, "\n[tool call] {} {}", call.name, call.arguments);
            }
            RunEvent::ToolResult(result) => {
                let _ = write!(out, "\n[tool result] {} {}\n", result.name, result.content);
            }
            RunEvent::Generation(GenerationEvent::Done(done)) => {
                end_reasoning(&mut out, in_reasoning);
                let _ = writeln!(out);
                if done.finish_reason == FinishReason::Length {
                    let _ = writeln!(out, "[the answer reached its length limit]");
                }
            }
            RunEvent::Generation(GenerationEvent::Failed(message)) => {
                end_reasoning(&mut out, in_reasoning);
                let _ = writeln!(out);
                eprintln!("error: {message}");
            }
            RunEvent::Stopped => {
                end_reasoning(&mut out, in_reasoning);
                let _ = writeln!(out, "\n[stopped]");
            }
            RunEvent::Saved(Ok(_)) | RunEvent::Thought(_) | RunEvent::Round(_) => {}
            RunEvent::Saved(Err(message)) => eprintln!("error: {message}"),
        }
        let _ = out.flush();
    }
    let _ = out.flush();
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_input, Input};

    #[test]
    fn slash_commands() {
        assert_eq!(
            parse_input("  hello /there "),
            Input::Message("hello /there")
        );
        let think = |on, budget| Input::Think { on, budget };
        assert_eq!(parse_input("/think"), think(true, None));
        assert_eq!(parse_input("/think 200"), think(true, Some(200)));
        assert!(matches!(parse_input("/think lots"), Input::BadArgument(_)));
        assert!(matches!(parse_input("/think -1"), Input::BadArgument(_)));
        assert_eq!(parse_input("/no_think"), think(false, None));
        assert_eq!(
            parse_input("/system  Be brief. "),
            Input::System(Some("Be brief."))
        );
        assert_eq!(parse_input("/system"), Input::System(None));
        assert_eq!(parse_input("/clear"), Input::Clear);
        assert_eq!(parse_input("/exit"), Input::Exit);
        assert_eq!(parse_input("/frobnicate x"), Input::Unknown("frobnicate"));
        assert_eq!(parse_input("   "), Input::Empty);
    }
}
