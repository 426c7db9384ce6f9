//! `smolbot chat`: an interactive chat in the terminal, on the same engine, chat pipeline and
//! conversation store as the server, so a terminal conversation shows up in the server's
//! list and the web page like any other.
//!
//! The line editor (history with the arrow keys) runs on the main thread; each answer is
//! streamed inside the async runtime until it ends or Ctrl-C stops it. While the editor waits
//! for a line the terminal is in raw mode, so Ctrl-C reaches it as a key and exits; while an
//! answer streams the terminal is cooked again, so Ctrl-C is a signal that only stops the
//! answer.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use rustyline::error::ReadlineError;
use smolbot::inference::sampling::SamplingParams;
use smolbot::services::chat::{ChatMessage, ChatRequest, Role};
use smolbot::services::events::{FinishReason, GenerationEvent};
use smolbot::services::sessions::{
    tool_calls_json, ConversationPatch, ConversationSettings, MessageStats, MessageStatus,
    MessageUpdate, NewMessage,
};
use smolbot::services::{Engine, EngineLimits, SessionStore};
use smolbot::smollm3::tool_calls::ToolCall;
use tokio::runtime::Runtime;

use super::serve::{init_logging, load_engine, ModelArgs};

/// The prompt of the line editor.
const PROMPT: &str = ">>> ";

/// ANSI "dim" and "reset": how the model's reasoning is set apart from its answer.
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

const HELP: &str = "\
/think         let the model reason before answering (shown dimmed)
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
        engine,
        store,
        runtime,
        thinking: !args.no_think,
        system: args.system.filter(|s| !s.trim().is_empty()),
        history: Vec::new(),
        conversation: None,
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    chat.repl()?;
    Ok(ExitCode::SUCCESS)
}

/// One terminal chat session.
struct Chat {
    engine: Engine,
    store: SessionStore,
    runtime: Runtime,
    thinking: bool,
    system: Option<String>,
    /// The conversation so far, as the model sees it (answers without their reasoning).
    history: Vec<ChatMessage>,
    /// The stored conversation; created with the first message, so an empty session leaves
    /// nothing behind in the list.
    conversation: Option<String>,
    color: bool,
}

/// What a line typed at the prompt asks for.
#[derive(Debug, PartialEq)]
enum Input<'a> {
    Message(&'a str),
    Think(bool),
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
        "think" => Input::Think(true),
        "no_think" | "nothink" => Input::Think(false),
        "system" => Input::System((!rest.is_empty()).then_some(rest)),
        "clear" | "new" => Input::Clear,
        "help" | "?" => Input::Help,
        "exit" | "quit" | "bye" => Input::Exit,
        _ => Input::Unknown(name),
    }
}

/// How an answer ended, for the store.
struct Ending {
    status: MessageStatus,
    finish_reason: Option<String>,
    stats: MessageStats,
}

impl Chat {
    fn repl(&mut self) -> anyhow::Result<()> {
        let mut editor = rustyline::DefaultEditor::new().context("cannot open the terminal")?;
        println!(
            "smolbot chat · {} · thinking {} · /help for commands, /exit to quit",
            self.engine.info().id,
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
                Input::Think(on) => {
                    self.thinking = on;
                    self.save_settings()?;
                    println!("thinking {}", on_off(on));
                }
                Input::System(text) => {
                    self.system = text.map(str::to_owned);
                    self.save_settings()?;
                    match text {
                        Some(_) => println!("system prompt set"),
                        None => println!("system prompt cleared"),
                    }
                }
                Input::Clear => {
                    self.history.clear();
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
                .block_on(self.store.update(id.clone(), patch))
                .context("cannot save the conversation's settings")?;
        }
        Ok(())
    }

    /// Sends `text`, streams the answer and stores both. A refused or failed answer is
    /// reported and the chat goes on.
    fn send(&mut self, text: &str) -> anyhow::Result<()> {
        let mut messages = Vec::with_capacity(self.history.len() + 2);
        if let Some(system) = &self.system {
            messages.push(ChatMessage::new(Role::System, system.as_str()));
        }
        messages.extend(self.history.iter().cloned());
        messages.push(ChatMessage::new(Role::User, text));
        let request = ChatRequest {
            messages,
            enable_thinking: Some(self.thinking),
            sampling: SamplingParams {
                seed: rand::random(),
                ..SamplingParams::default()
            },
            ..ChatRequest::default()
        };
        let generation = self
            .engine
            .codec()
            .prepare(&request)
            .and_then(|chat| self.engine.submit(chat));
        let generation = match generation {
            Ok(generation) => generation,
            Err(err) => {
                eprintln!("error: {err}");
                return Ok(());
            }
        };
        let conversation = match &self.conversation {
            Some(id) => id.clone(),
            None => {
                let created = self
                    .runtime
                    .block_on(self.store.create(None, self.settings()))
                    .context("cannot store the conversation")?;
                self.conversation = Some(created.id.clone());
                created.id
            }
        };
        let store = self.store.clone();
        let color = self.color;
        let (answer, ending) = self.runtime.block_on(async move {
            store
                .append(conversation.clone(), NewMessage::text(Role::User, text))
                .await?;
            let draft = store
                .append(
                    conversation,
                    NewMessage {
                        status: MessageStatus::Generating,
                        ..NewMessage::text(Role::Assistant, "")
                    },
                )
                .await?;
            let (answer, ending) = stream(generation, color).await;
            store
                .update_message(draft.id, answer.update(&ending))
                .await?;
            anyhow::Ok((answer, ending))
        })?;
        if matches!(
            ending.status,
            MessageStatus::Complete | MessageStatus::Stopped
        ) {
            self.history.push(ChatMessage::new(Role::User, text));
            if !answer.content.is_empty() || !answer.calls.is_empty() {
                self.history.push(ChatMessage {
                    role: Role::Assistant,
                    content: answer.content,
                    tool_calls: answer.calls,
                });
            }
        }
        Ok(())
    }
}

/// An answer as it streams.
#[derive(Default)]
struct Answer {
    content: String,
    reasoning: String,
    calls: Vec<ToolCall>,
}

impl Answer {
    fn update(&self, ending: &Ending) -> MessageUpdate {
        MessageUpdate {
            content: self.content.clone(),
            reasoning: (!self.reasoning.is_empty()).then(|| self.reasoning.clone()),
            tool_calls: tool_calls_json(&self.calls),
            status: ending.status,
            finish_reason: ending.finish_reason.clone(),
            stats: ending.stats,
        }
    }
}

/// Prints the answer as it arrives, reasoning dimmed, until it ends or Ctrl-C stops it
/// (dropping the stream cancels the generation within a token).
async fn stream(
    mut generation: smolbot::services::GenerationStream,
    color: bool,
) -> (Answer, Ending) {
    let mut out = std::io::stdout();
    let mut answer = Answer::default();
    let mut in_reasoning = false;
    // One listener for the whole answer, so a Ctrl-C between two events is not missed.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let ending = loop {
        let event = tokio::select! {
            _ = &mut ctrl_c => None,
            event = generation.next() => Some(event),
        };
        let Some(event) = event else {
            if in_reasoning && color {
                let _ = write!(out, "{RESET}");
            }
            let _ = writeln!(out, "\n[stopped]");
            break Ending {
                status: MessageStatus::Stopped,
                finish_reason: None,
                stats: MessageStats::default(),
            };
        };
        match event {
            Some(GenerationEvent::Progress(_)) => {}
            Some(GenerationEvent::Reasoning(text)) => {
                if !in_reasoning && answer.reasoning.is_empty() {
                    in_reasoning = true;
                    let _ = write!(out, "{}", if color { DIM } else { "[thinking] " });
                }
                answer.reasoning.push_str(&text);
                let _ = write!(out, "{text}");
            }
            Some(GenerationEvent::Content(text)) => {
                if in_reasoning {
                    in_reasoning = false;
                    let end = if color { RESET } else { "\n[answer]" };
                    let _ = write!(out, "{end}\n\n");
                }
                let text = if answer.content.is_empty() {
                    text.trim_start_matches('\n')
                } else {
                    &text
                };
                answer.content.push_str(text);
                let _ = write!(out, "{text}");
            }
            Some(GenerationEvent::ToolCall(call)) => {
                let _ = write!(out, "\n[tool call] {} {}", call.name, call.arguments);
                answer.calls.push(call);
            }
            Some(GenerationEvent::Done(done)) => {
                if in_reasoning && color {
                    let _ = write!(out, "{RESET}");
                }
                let _ = writeln!(out);
                if done.finish_reason == FinishReason::Length {
                    let _ = writeln!(out, "[the answer reached its length limit]");
                }
                break Ending {
                    status: MessageStatus::Complete,
                    finish_reason: Some(done.finish_reason.as_str().to_owned()),
                    stats: MessageStats::from(&done),
                };
            }
            Some(GenerationEvent::Failed(message)) => {
                if in_reasoning && color {
                    let _ = write!(out, "{RESET}");
                }
                let _ = writeln!(out);
                eprintln!("error: {message}");
                break Ending {
                    status: MessageStatus::Failed,
                    finish_reason: None,
                    stats: MessageStats::default(),
                };
            }
            None => {
                let _ = writeln!(out);
                eprintln!("error: the engine stopped");
                break Ending {
                    status: MessageStatus::Failed,
                    finish_reason: None,
                    stats: MessageStats::default(),
                };
            }
        }
        let _ = out.flush();
    };
    let _ = out.flush();
    (answer, ending)
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
        assert_eq!(parse_input("/think"), Input::Think(true));
        assert_eq!(parse_input("/no_think"), Input::Think(false));
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
