//! `smolbot chat --stub` driven in a real terminal: tmux runs it in a detached session of its
//! own (a private server socket), the test types with `send-keys` and reads the screen with
//! `capture-pane`, polling until the text it waits for appears (or a generous deadline, which
//! only bounds a hang; nothing is asserted about time). Also: the conversation lands in the
//! server's store, and a chat killed mid-answer leaves the question and the partial answer
//! there, marked `interrupted` by the next opening.
//!
//! Without tmux the tests are skipped with a message, except under CI (`CI` set), where a
//! missing tmux is a failure: `.ci/run` installs it.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use smolbot::services::sessions::MessageStatus;
use smolbot::services::SessionStore;

/// Bounds a wait so a hang fails the test instead of blocking CI; never a measurement.
const DEADLINE: Duration = Duration::from_secs(120);

/// True when tmux can run; false (after saying so) when the test should be skipped.
fn tmux_available() -> bool {
    let found = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is not installed, and CI is set: .ci/run must install it"
        );
        eprintln!("SKIPPED: tmux is not installed (apt-get install tmux); the chat test needs it");
    }
    found
}

/// One `smolbot chat` in a detached tmux session on a private socket, killed when dropped.
struct Terminal {
    socket: String,
}

impl Terminal {
    fn start(name: &str, data_dir: &Path, config_home: &Path, extra: &[&str]) -> Self {
        let socket = format!("smolbot-test-{}-{name}", std::process::id());
        let term = Self { socket };
        let mut args: Vec<String> = [
            "new-session",
            "-d",
            "-s",
            "chat",
            "-x",
            "150",
            "-y",
            "50",
            "-e",
        ]
        .map(str::to_owned)
        .to_vec();
        args.push(format!("XDG_CONFIG_HOME={}", config_home.display()));
        // Through a shell that prints the exit status, so the screen tells how it ended; the
        // shell shares the terminal's process group, so it must outlive the test's Ctrl-C.
        args.extend(
            [
                "sh",
                "-c",
                "trap : INT; \"$0\" \"$@\"; echo \"[exit status $?]\"",
            ]
            .map(str::to_owned),
        );
        args.push(env!("CARGO_BIN_EXE_smolbot").to_owned());
        args.extend(["chat", "--stub", "--data-dir"].map(str::to_owned));
        args.push(data_dir.display().to_string());
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let out = term.tmux(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "tmux new-session: {out:?}");
        // Keep the pane after the program ends, to read how it ended.
        term.tmux(&["set-option", "-t", "chat", "remain-on-exit", "on"]);
        term
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-u", "-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// Types `text` literally and presses Enter.
    fn type_line(&self, text: &str) {
        assert!(self
            .tmux(&["send-keys", "-t", "chat", "-l", text])
            .status
            .success());
        self.key("Enter");
    }

    fn key(&self, key: &str) {
        assert!(self
            .tmux(&["send-keys", "-t", "chat", key])
            .status
            .success());
    }

    /// The whole pane with its scrollback, wrapped lines joined; `escapes` keeps the colours.
    fn screen(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-J", "-S", "-", "-t", "chat"];
        if escapes {
            args.push("-e");
        }
        String::from_utf8_lossy(&self.tmux(&args).stdout).into_owned()
    }

    /// Polls the screen until `ready` holds; panics with the screen at the deadline.
    fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen(false);
            if ready(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "waited in vain for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the prompt is back, after `count` answers have ended.
    fn wait_for_prompt(&self, what: &str, count: usize) -> String {
        self.wait_for(what, |s| {
            s.lines().filter(|l| l.starts_with(">>>")).count() > count
                && s.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .is_some_and(|l| l.trim_end() == ">>>")
        })
    }

    /// The program's exit status, once it has ended.
    fn exit_status(&self) -> Option<i32> {
        let screen = self.screen(false);
        let (_, rest) = screen.split_once("[exit status ")?;
        rest.split(']').next()?.parse().ok()
    }

    fn wait_for_exit(&self) -> i32 {
        let screen = self.wait_for("the chat to exit", |s| s.contains("[exit status "));
        self.exit_status()
            .unwrap_or_else(|| panic!("no exit status on the screen:\n{screen}"))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// A stored message: role, status, content.
type Stored = (String, MessageStatus, String);

/// The chat's store in `data_dir`, with a runtime to read it on.
fn open_store(data_dir: &Path) -> (tokio::runtime::Runtime, SessionStore) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = runtime
        .block_on(SessionStore::open(data_dir))
        .expect("open the store");
    (runtime, store)
}

/// The stored conversations: title and messages.
fn stored(data_dir: &Path) -> Vec<(Option<String>, Vec<Stored>)> {
    let (runtime, store) = open_store(data_dir);
    runtime.block_on(async {
        let mut all = Vec::new();
        for conversation in store.list(None).await.expect("list") {
            let messages = store.messages(conversation.id.clone()).await.unwrap();
            let messages = messages
                .into_iter()
                .map(|m| (m.role.as_str().to_owned(), m.status, m.content))
                .collect();
            all.push((conversation.title, messages));
        }
        all
    })
}

#[test]
fn streams_answers_and_switches_thinking_and_exits() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let term = Terminal::start(
        "fast",
        &data,
        dir.path(),
        &["--stub-tokens-per-second", "0"],
    );
    term.wait_for_prompt("the first prompt", 0);

    term.type_line("Hello there");
    let screen = term.wait_for_prompt("the first answer", 1);
    assert!(screen.contains("stub answer to"), "{screen}");
    assert!(screen.contains("| Thinking | on |"), "{screen}");
    assert!(
        screen.contains("The user wrote"),
        "thinking on shows the reasoning: {screen}"
    );
    // The reasoning is dimmed (SGR 2) and the answer is not.
    let colored = term.screen(true);
    let reasoning = colored.find("The user wrote").expect("reasoning");
    let dim = colored[..reasoning].rfind("\x1b[2m");
    assert!(dim.is_some(), "the reasoning is not dimmed:\n{colored:?}");

    term.type_line("/no_think");
    term.wait_for("the switch", |s| s.contains("thinking off"));
    term.type_line("Second question");
    let screen = term.wait_for_prompt("the second answer", 3);
    assert!(screen.contains("| Thinking | off |"), "{screen}");
    assert_eq!(
        screen.matches("The user wrote").count(),
        1,
        "no reasoning once thinking is off: {screen}"
    );

    term.type_line("/exit");
    assert_eq!(term.wait_for_exit(), 0, "{}", term.screen(false));

    let conversations = stored(&data);
    assert_eq!(conversations.len(), 1, "{conversations:?}");
    let (title, messages) = &conversations[0];
    assert_eq!(title.as_deref(), Some("Hello there"));
    let roles: Vec<&str> = messages.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert!(messages
        .iter()
        .all(|m| m.1 == MessageStatus::Complete && !m.2.is_empty()));
    assert!(messages[3].2.contains("| Thinking | off |"));
}

#[test]
fn think_n_sets_the_conversation_s_thinking_budget() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let term = Terminal::start(
        "budget",
        &data,
        dir.path(),
        &["--stub-tokens-per-second", "0"],
    );
    term.wait_for_prompt("the first prompt", 0);
    term.type_line("/think many");
    term.wait_for("the usage", |s| s.contains("/think takes a number"));
    term.type_line("/think 3");
    term.wait_for("the budget", |s| s.contains("at most 3 tokens of it"));
    term.type_line("Hello there");
    term.wait_for_prompt("the answer", 3);
    term.type_line("/exit");
    assert_eq!(term.wait_for_exit(), 0, "{}", term.screen(false));
    let (runtime, store) = open_store(&data);
    let listed = runtime.block_on(store.list(None)).expect("list");
    let settings: Vec<_> = listed.into_iter().map(|c| c.settings).collect();
    assert_eq!(settings.len(), 1, "{settings:?}");
    assert_eq!(settings[0].thinking_budget, Some(3), "{settings:?}");
    assert_eq!(settings[0].thinking, Some(true));
}

#[test]
fn ctrl_c_stops_an_answer_and_a_second_one_exits() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Slow enough that the whole answer would take minutes: Ctrl-C lands mid-answer.
    let term = Terminal::start(
        "slow",
        &data,
        dir.path(),
        &["--stub-tokens-per-second", "4"],
    );
    term.wait_for_prompt("the first prompt", 0);
    term.type_line("Tell me everything");
    term.wait_for("the answer to start", |s| s.contains("The user"));
    term.key("C-c");
    let screen = term.wait_for_prompt("the prompt after Ctrl-C", 1);
    assert!(screen.contains("[stopped]"), "{screen}");
    assert!(
        !screen.contains("Hello from smolbot-stub"),
        "the answer ran to its end: {screen}"
    );
    assert_eq!(term.exit_status(), None, "one Ctrl-C only stops the answer");

    term.key("C-c");
    assert_eq!(term.wait_for_exit(), 0, "{}", term.screen(false));

    let conversations = stored(&data);
    assert_eq!(conversations.len(), 1, "{conversations:?}");
    let messages = &conversations[0].1;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[1].1, MessageStatus::Stopped, "{messages:?}");
}

/// The process running the chat: the child of the pane's shell.
fn chat_pid(term: &Terminal) -> u32 {
    let out = term.tmux(&["display-message", "-p", "-t", "chat", "#{pane_pid}"]);
    let shell = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
        .expect("the pane's shell lists its children");
    children
        .split_whitespace()
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no chat process under the shell {shell}"))
}

/// The words of the reasoning on the screen, after the question's line.
fn reasoning_words(screen: &str, question: &str) -> Vec<String> {
    let (_, after) = screen
        .split_once(question)
        .unwrap_or_else(|| panic!("the question is not on the screen:\n{screen}"));
    after.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn a_killed_chat_keeps_the_question_and_the_partial_answer_as_interrupted() {
    if !tmux_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let term = Terminal::start(
        "killed",
        &data,
        dir.path(),
        &["--stub-tokens-per-second", "10"],
    );
    term.wait_for_prompt("the first prompt", 0);
    term.type_line("Tell me everything");
    term.wait_for("a few words of the answer", |s| {
        s.split_once("Tell me everything")
            .is_some_and(|(_, after)| after.split_whitespace().count() >= 4)
    });
    // Everything on the screen now was streamed more than a second before the kill.
    let early = reasoning_words(&term.screen(false), "Tell me everything");
    std::thread::sleep(Duration::from_secs(2));
    let pid = chat_pid(&term);
    let killed = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    term.wait_for_exit();

    let database = data.join(smolbot::services::sessions::DATABASE_FILE);
    let connection = rusqlite::Connection::open(&database).expect("open the database");
    let verdict: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    assert_eq!(verdict, "ok");
    drop(connection);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let messages = runtime.block_on(async {
        let store = SessionStore::open(&data).await.expect("open the store");
        let conversation = store.list(None).await.expect("list").remove(0);
        store.messages(conversation.id).await.expect("messages")
    });
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert_eq!(messages[0].content, "Tell me everything");
    assert_eq!(messages[0].status, MessageStatus::Complete);
    assert_eq!(messages[1].status, MessageStatus::Interrupted);
    let stored: Vec<&str> = messages[1]
        .reasoning
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // The last word on the screen may have been cut mid-token.
    let whole = &early[..early.len() - 1];
    assert!(
        stored.len() >= whole.len() && stored[..whole.len()] == whole[..],
        "the reasoning streamed a second before the kill is kept: {early:?} / {stored:?}"
    );
}
