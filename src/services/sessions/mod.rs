//! Persistent conversations: [`SessionStore`] keeps conversations, their messages and their
//! settings in one embedded SQLite file (WAL mode) under the server's data directory.
//!
//! It is a service apart from the engine so that a restart, or a crash mid-generation, loses
//! nothing that was already said: every message is a row written in its own transaction; an
//! answer being generated is a row marked `generating` whose text is saved as it grows, and
//! opening the store again marks such leftovers `stopped`, keeping their partial text.
//!
//! The schema is versioned by the SQL files in `migrations/`, applied in order and tracked
//! with `PRAGMA user_version`. All SQLite work runs on tokio's blocking pool, never on a
//! worker thread.
//!
//! The same store can live in PostgreSQL instead ([`SessionStore::connect`], see
//! [`postgres`]), so that several servers share their conversations: same schema, same
//! operations, and a draft being generated is claimed by the server writing it.

mod export;
mod postgres;
mod tool_calls;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::distr::{Alphanumeric, SampleString};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::chat::{Role, Sampling};
use super::error::ServiceError;
use super::truncation::Truncation;
use crate::smollm3::tool_calls::ToolCall;

pub use export::{from_jsonl, to_jsonl, to_markdown};
pub use postgres::RUN_LEASE;
pub use tool_calls::{arguments_from_wire, fresh_id, wire_list, StoredToolCall};

/// The schema, one step per file; step `i` brings `user_version` from `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_builtin_tools.sql"),
    include_str!("migrations/0003_interrupted.sql"),
    include_str!("migrations/0004_thinking_budget.sql"),
    include_str!("migrations/0005_typed_tool_calls.sql"),
    include_str!("migrations/0006_answer_timings.sql"),
    include_str!("migrations/0007_answer_versions.sql"),
    include_str!("migrations/0008_truncation.sql"),
    include_str!("migrations/0009_run_owner.sql"),
];

/// What an in-memory store gives as its path, SQLite's name for such a database.
const IN_MEMORY_PATH: &str = ":memory:";

/// The database's file name inside the data directory.
pub const DATABASE_FILE: &str = "smolbot.sqlite3";

/// Characters of the first user message kept as a conversation's title: about a sidebar line.
pub const TITLE_CHARS: usize = 60;

/// Conversations a listing returns at most; a sidebar never shows more.
pub const LIST_LIMIT: usize = 500;

/// The data directory when none is given: `$XDG_DATA_HOME/smolbot`, else
/// `~/.local/share/smolbot`, else `./smolbot-data` (no home at all, as in some containers).
pub fn default_data_dir() -> PathBuf {
    let from_env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(xdg) = from_env("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("smolbot");
    }
    if let Some(home) = from_env("HOME") {
        return PathBuf::from(home)
            .join(".local")
            .join("share")
            .join("smolbot");
    }
    PathBuf::from("smolbot-data")
}

/// Settings of one conversation, used for every answer generated in it. `None` keeps the
/// server's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConversationSettings {
    pub system_prompt: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<i64>,
    /// SmolLM3's reasoning switch.
    pub thinking: Option<bool>,
    /// At most this many reasoning tokens per answer; `None` lets the model reason freely.
    pub thinking_budget: Option<usize>,
    /// Whether the server offers its built-in tools (`services::tools`: calculator, current
    /// time) to the model in this conversation and runs the calls it makes to them.
    pub builtin_tools: Option<bool>,
    /// What to do when the conversation outgrows the context: `auto` leaves its oldest
    /// exchanges out of the prompt (see [`crate::services::truncation`]); absent refuses.
    pub truncation: Option<Truncation>,
}

impl ConversationSettings {
    /// The sampling settings for the next answer: the stored ones, the defaults for the
    /// rest, and no seed, so asking again gives another answer.
    pub fn sampling(&self) -> Sampling {
        Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            ..Sampling::default()
        }
    }

    /// Refuses values no generation could use, naming the field, so a bad setting fails when
    /// it is saved rather than at the next message. The sampling ranges are the requests'
    /// own ([`Sampling::check`]).
    pub fn check(&self) -> Result<(), ServiceError> {
        let bad = |field, problem: String| Err(ServiceError::InvalidParameter { field, problem });
        if let Err(ServiceError::InvalidParameter { field, problem }) = self.sampling().check() {
            let field = match field {
                "temperature" => "settings.temperature",
                "top_p" => "settings.top_p",
                other => other,
            };
            return bad(field, problem);
        }
        if let Some(m) = self.max_tokens {
            if m < 1 {
                return bad(
                    "settings.max_tokens",
                    format!("must be at least 1, got {m}"),
                );
            }
        }
        Ok(())
    }
}

/// A conversation without its messages, as a listing shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conversation {
    pub id: String,
    /// `None` until the first user message or a rename gives it one.
    pub title: Option<String>,
    pub settings: ConversationSettings,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Milliseconds since the Unix epoch of the last change (a message, a rename).
    pub updated_at: i64,
}

/// Where a message stands: only `complete` answers ended on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Complete,
    /// Cut short: the client went away, or the server stopped, while it was generated.
    Stopped,
    /// The generation failed; the text is what came before the failure.
    Failed,
    /// Being generated now.
    Generating,
    /// Cut off by a server that did not shut down (killed, out of memory, power lost): the
    /// text is what was saved before; the next start marks what it finds `generating`.
    Interrupted,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Generating => "generating",
            Self::Interrupted => "interrupted",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Self> {
        [
            Self::Complete,
            Self::Stopped,
            Self::Failed,
            Self::Generating,
            Self::Interrupted,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Token counts and times of a generated message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MessageStats {
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub prompt_ms: Option<f64>,
    pub generation_ms: Option<f64>,
    /// From the send (or, in a tool turn, the round's start) to the first token; kept so a
    /// reload shows what the page showed live. `None` for answers stored before it was kept.
    pub first_token_ms: Option<f64>,
    /// How long the model reasoned, from its first token to the end of its reasoning.
    pub reasoning_ms: Option<f64>,
    /// Tokens of the answer's reasoning.
    pub reasoning_tokens: Option<i64>,
}

impl From<&crate::services::events::Completion> for MessageStats {
    /// The stats a finished generation leaves on its stored answer.
    fn from(done: &crate::services::events::Completion) -> Self {
        Self {
            prompt_tokens: i64::try_from(done.usage.prompt_tokens).ok(),
            completion_tokens: i64::try_from(done.usage.completion_tokens).ok(),
            prompt_ms: Some(done.timings.prompt_time.as_secs_f64() * 1000.0),
            generation_ms: Some(done.timings.predicted_time.as_secs_f64() * 1000.0),
            ..Self::default()
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredMessage {
    pub id: i64,
    #[serde(serialize_with = "serialize_role")]
    pub role: Role,
    pub content: String,
    pub reasoning: Option<String>,
    /// The calls an assistant message made; shown to API clients in OpenAI's form.
    #[serde(serialize_with = "tool_calls::serialize_wire")]
    pub tool_calls: Vec<StoredToolCall>,
    pub tool_call_id: Option<String>,
    pub status: MessageStatus,
    pub finish_reason: Option<String>,
    pub stats: MessageStats,
    pub created_at: i64,
    /// On a user message whose answer was generated more than once: the answer's versions
    /// and the one shown (and sent to the model). Not part of the API's message shape.
    #[serde(skip)]
    pub versions: Option<Versions>,
}

/// The versions of the answer to one user message (regenerating keeps the earlier ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// The version numbers stored, in order.
    pub all: Vec<i64>,
    /// The one shown and sent to the model.
    pub selected: i64,
}

#[cfg(test)]
impl StoredMessage {
    /// A message with only what unit tests of request building look at.
    pub(crate) fn for_test(role: Role, content: &str, status: MessageStatus) -> Self {
        Self {
            id: 1,
            role,
            content: content.into(),
            reasoning: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            status,
            finish_reason: None,
            stats: MessageStats::default(),
            created_at: 0,
            versions: None,
        }
    }
}

impl StoredMessage {
    /// The calls in the model's terms, as the chat template writes them back.
    pub fn calls(&self) -> Vec<ToolCall> {
        self.tool_calls.iter().map(StoredToolCall::call).collect()
    }
}

fn serialize_role<S: serde::Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(role.as_str())
}

/// A role from its OpenAI name.
pub fn parse_role(text: &str) -> Option<Role> {
    [Role::System, Role::User, Role::Assistant, Role::Tool]
        .into_iter()
        .find(|r| r.as_str() == text)
}

/// A message to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub role: Role,
    pub content: String,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<StoredToolCall>,
    pub tool_call_id: Option<String>,
    pub status: MessageStatus,
    pub finish_reason: Option<String>,
    pub stats: MessageStats,
}

impl NewMessage {
    /// A complete message with text only.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            reasoning: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            status: MessageStatus::Complete,
            finish_reason: None,
            stats: MessageStats::default(),
        }
    }
}

/// The new state of a message being generated.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageUpdate {
    pub content: String,
    pub reasoning: Option<String>,
    pub tool_calls: Vec<StoredToolCall>,
    pub status: MessageStatus,
    pub finish_reason: Option<String>,
    pub stats: MessageStats,
}

/// A change to a conversation; fields left `None` stay as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationPatch {
    pub title: Option<String>,
    /// Replaces all settings.
    pub settings: Option<ConversationSettings>,
}

/// Creates the data folder readable by its owner only (0700 on Unix): conversations are
/// private. A folder that exists already keeps its mode (the user chose it).
fn create_private(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// The database file readable by its owner only (0600 on Unix), set before SQLite makes its
/// WAL and shared-memory files, which copy the database's mode.
fn keep_private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Longest conversation title, and longest search text, in bytes: SQLite refuses LIKE patterns
/// over 50,000 bytes (a 500 before this bound), and a title is one line in a list.
pub const MAX_TITLE_BYTES: usize = 200;

/// `text` (a title or a search, named `field` in the error) within [`MAX_TITLE_BYTES`].
fn check_title(field: &'static str, text: Option<&str>) -> Result<(), ServiceError> {
    match text {
        Some(t) if t.len() > MAX_TITLE_BYTES => Err(ServiceError::InvalidParameter {
            field,
            problem: format!(
                "has {} bytes; at most {MAX_TITLE_BYTES} are accepted",
                t.len()
            ),
        }),
        _ => Ok(()),
    }
}

/// What the façade commits when an answer starts ([`SessionStore::commit_turn`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Turn {
    /// Messages from this id on are replaced by the new answer (and question).
    pub replace_from: Option<i64>,
    /// The answer to the last question is written as a new version, keeping the earlier.
    pub new_version: bool,
    /// The user turn to store before the answer.
    pub question: Option<String>,
}

/// Where the conversations are.
enum Backend {
    /// A SQLite file (or memory), one connection used from the blocking pool.
    Sqlite {
        connection: Mutex<Connection>,
        path: PathBuf,
    },
    /// A PostgreSQL database shared by several servers.
    Postgres(Arc<postgres::PgStore>),
}

/// The conversation database. Cheap to clone; every clone shares one connection.
#[derive(Clone)]
pub struct SessionStore {
    backend: Arc<Backend>,
    /// Set by [`SessionStore::close`]: from then on every operation is refused, so work
    /// still running at a shutdown cannot mark a stopped answer `generating` again.
    closed: Arc<AtomicBool>,
}

impl SessionStore {
    /// Opens (creating it if needed) the database in `data_dir`, brings its schema up to
    /// date and marks answers left `generating` by an earlier run as `interrupted`.
    pub async fn open(data_dir: impl Into<PathBuf>) -> Result<Self, ServiceError> {
        let data_dir = data_dir.into();
        tokio::task::spawn_blocking(move || Self::open_blocking(&data_dir))
            .await
            .map_err(|err| worker_failed(&err))?
    }

    /// [`SessionStore::open`] for callers outside an async runtime.
    pub fn open_blocking(data_dir: &Path) -> Result<Self, ServiceError> {
        let dir_error = |reason: String| ServiceError::DataDir {
            path: data_dir.to_path_buf(),
            reason,
        };
        create_private(data_dir).map_err(|err| dir_error(err.to_string()))?;
        let path = data_dir.join(DATABASE_FILE);
        let mut connection = Connection::open(&path)
            .map_err(|err| dir_error(format!("cannot open {}: {err}", path.display())))?;
        keep_private(&path).map_err(|err| dir_error(err.to_string()))?;
        configure(&connection).map_err(|err| dir_error(err.to_string()))?;
        migrate(&mut connection)?;
        let interrupted = connection
            .execute(
                "UPDATE messages SET status = 'interrupted' WHERE status = 'generating'",
                [],
            )
            .map_err(storage("recover interrupted answers"))?;
        if interrupted > 0 {
            tracing::warn!(
                "{interrupted} answer(s) were cut off by the last shutdown; kept as interrupted"
            );
        }
        Ok(Self::sqlite(connection, path))
    }

    fn sqlite(connection: Connection, path: PathBuf) -> Self {
        Self {
            backend: Arc::new(Backend::Sqlite {
                connection: Mutex::new(connection),
                path,
            }),
            closed: Arc::default(),
        }
    }

    /// Opens the store in the PostgreSQL database at `url` (`postgres://user:pass@host/db`)
    /// as server `node`, a name unique among the servers sharing it: brings the schema up to
    /// date, marks `interrupted` the answers this node left `generating` and those whose
    /// server stopped renewing its claim (see [`RUN_LEASE`]), and from then on renews this
    /// node's claims. TLS is not spoken: reach the database over a private network.
    pub async fn connect(url: &str, node: impl Into<String>) -> Result<Self, ServiceError> {
        Self::connect_with_lease(url, node.into(), RUN_LEASE).await
    }

    /// [`Self::connect`] with another claim length (zero: claims expire at once and nothing
    /// renews them; tests of a server that died).
    pub(crate) async fn connect_with_lease(
        url: &str,
        node: String,
        lease: std::time::Duration,
    ) -> Result<Self, ServiceError> {
        let store = postgres::PgStore::open(url, node, lease).await?;
        Ok(Self {
            backend: Arc::new(Backend::Postgres(store)),
            closed: Arc::default(),
        })
    }

    /// The PostgreSQL store, unless closed; `None` for SQLite.
    fn pg(&self) -> Option<Result<&postgres::PgStore, ServiceError>> {
        match &*self.backend {
            Backend::Postgres(store) => Some(if self.closed.load(Ordering::Acquire) {
                Err(closed_error())
            } else {
                Ok(store)
            }),
            Backend::Sqlite { .. } => None,
        }
    }

    /// Flushes the store for a shutdown: answers still `generating` are marked `stopped`
    /// (nothing will finish them now; their text so far is kept), and the write-ahead log is
    /// checkpointed into the main file. Returns how many answers were marked. Every commit is
    /// already durable (`synchronous = FULL`); this leaves the file complete on its own and
    /// the statuses true without waiting for the next start to repair them.
    ///
    /// Afterwards this store and all its clones refuse every operation, and a second
    /// `close` is an error too.
    pub async fn close(&self) -> Result<usize, ServiceError> {
        if let Some(store) = self.pg() {
            let stopped = store?.close().await?;
            self.closed.store(true, Ordering::Release);
            return Ok(stopped);
        }
        let closed = Arc::clone(&self.closed);
        self.with(move |c| {
            closed.store(true, Ordering::Release);
            let stopped = c
                .execute(
                    "UPDATE messages SET status = 'stopped' WHERE status = 'generating'",
                    [],
                )
                .map_err(storage("stop interrupted answers"))?;
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(storage("write the log into the database file"))?;
            Ok(stopped)
        })
        .await
    }

    /// The database file; `None` for a PostgreSQL database.
    pub fn path(&self) -> Option<&Path> {
        match &*self.backend {
            Backend::Sqlite { path, .. } => Some(path),
            Backend::Postgres(_) => None,
        }
    }

    /// Where the conversations are, for the log: the file, or the database's URL without
    /// its password.
    pub fn location(&self) -> String {
        match &*self.backend {
            Backend::Sqlite { path, .. } => path.display().to_string(),
            Backend::Postgres(store) => store.location(),
        }
    }

    /// This server's name among those sharing a PostgreSQL database; `None` for SQLite.
    pub fn node(&self) -> Option<&str> {
        match &*self.backend {
            Backend::Sqlite { .. } => None,
            Backend::Postgres(store) => Some(store.node()),
        }
    }

    /// The ids of conversations whose messages any server saves from now on, as they are
    /// saved; `None` for SQLite, where this server is the only one writing.
    pub async fn announcements(
        &self,
    ) -> Result<Option<tokio::sync::broadcast::Receiver<String>>, ServiceError> {
        match self.pg() {
            Some(store) => store?.announcements().await.map(Some),
            None => Ok(None),
        }
    }

    /// Whether the conversations outlive the process ([`Self::in_memory`]'s do not).
    pub fn is_on_disk(&self) -> bool {
        self.path()
            .is_none_or(|path| path.as_os_str() != IN_MEMORY_PATH)
    }

    /// Runs `work` on the connection on tokio's blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, ServiceError> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let backend = Arc::clone(&self.backend);
        let closed = Arc::clone(&self.closed);
        tokio::task::spawn_blocking(move || {
            let Backend::Sqlite { connection, .. } = &*backend else {
                unreachable!("SQLite work is given to a SQLite store only")
            };
            let mut guard = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if closed.load(Ordering::Acquire) {
                return Err(closed_error());
            }
            work(&mut guard)
        })
        .await
        .map_err(|err| worker_failed(&err))?
    }

    /// Starts a conversation.
    pub async fn create(
        &self,
        title: Option<String>,
        settings: ConversationSettings,
    ) -> Result<Conversation, ServiceError> {
        settings.check()?;
        check_title("title", title.as_deref())?;
        if let Some(store) = self.pg() {
            return store?.create(title, settings).await;
        }
        self.with(move |c| create(c, title, &settings)).await
    }

    /// Conversations, the most recently changed first; with `query`, only those whose title
    /// or any message contains it (case-insensitive for ASCII letters).
    pub async fn list(&self, query: Option<String>) -> Result<Vec<Conversation>, ServiceError> {
        check_title("q", query.as_deref().map(str::trim))?;
        if let Some(store) = self.pg() {
            return store?.list(query.as_deref()).await;
        }
        self.with(move |c| list(c, query.as_deref())).await
    }

    pub async fn get(&self, id: String) -> Result<Conversation, ServiceError> {
        if let Some(store) = self.pg() {
            return store?.get(&id).await;
        }
        self.with(move |c| get(c, &id)).await
    }

    /// Renames a conversation or replaces its settings.
    pub async fn update(
        &self,
        id: String,
        patch: ConversationPatch,
    ) -> Result<Conversation, ServiceError> {
        check_title("title", patch.title.as_deref())?;
        if let Some(settings) = &patch.settings {
            settings.check()?;
        }
        if let Some(store) = self.pg() {
            return store?.update(&id, patch).await;
        }
        self.with(move |c| update(c, &id, patch)).await
    }

    /// Deletes a conversation and all its messages, and overwrites them on disk.
    pub async fn delete(&self, id: String) -> Result<(), ServiceError> {
        if let Some(store) = self.pg() {
            return store?.delete(&id).await;
        }
        self.with(move |c| delete(c, &id)).await
    }

    /// A conversation's messages in order.
    pub async fn messages(&self, id: String) -> Result<Vec<StoredMessage>, ServiceError> {
        if let Some(store) = self.pg() {
            return store?.messages(&id).await;
        }
        self.with(move |c| {
            get(c, &id)?;
            messages(c, &id)
        })
        .await
    }

    /// Adds a message at the end of a conversation; the first user message names an untitled
    /// conversation.
    pub async fn append(
        &self,
        conversation: String,
        message: NewMessage,
    ) -> Result<StoredMessage, ServiceError> {
        if let Some(store) = self.pg() {
            return store?.append(&conversation, &message).await;
        }
        self.with(move |c| {
            let tx = c.transaction().map_err(storage("start a transaction"))?;
            let stored = append(&tx, &conversation, &message)?;
            tx.commit().map_err(storage("save a message"))?;
            Ok(stored)
        })
        .await
    }

    /// Saves the text and status of a message being generated.
    pub async fn update_message(
        &self,
        message: i64,
        update: MessageUpdate,
    ) -> Result<StoredMessage, ServiceError> {
        if let Some(store) = self.pg() {
            return store?.update_message(message, &update).await;
        }
        self.with(move |c| update_message(c, message, &update))
            .await
    }

    /// Commits the start of an answer in one transaction: the messages replaced
    /// (`turn.replace_from`), a new version of the last answer, the question, and the
    /// answer's `generating` draft. Returns the question stored (if any) and the draft.
    ///
    /// In PostgreSQL the draft is claimed by this server, and a conversation whose draft
    /// another live server writes is refused ([`ServiceError::AnsweringElsewhere`]) with
    /// nothing stored; one server's own runs are kept one at a time by [`super::Runs`].
    pub async fn commit_turn(
        &self,
        conversation: String,
        turn: Turn,
    ) -> Result<(Option<StoredMessage>, StoredMessage), ServiceError> {
        if let Some(store) = self.pg() {
            return store?.commit_turn(&conversation, &turn).await;
        }
        self.with(move |c| {
            let tx = c.transaction().map_err(storage("start a transaction"))?;
            get(&tx, &conversation)?;
            if let Some(from) = turn.replace_from {
                truncate(&tx, &conversation, from)?;
            }
            if turn.new_version {
                new_version(&tx, &conversation)?;
            }
            let question = match turn.question {
                Some(text) => Some(append(
                    &tx,
                    &conversation,
                    &NewMessage::text(Role::User, text),
                )?),
                None => None,
            };
            let draft = NewMessage {
                status: MessageStatus::Generating,
                ..NewMessage::text(Role::Assistant, "")
            };
            let draft = append(&tx, &conversation, &draft)?;
            tx.commit().map_err(storage("save a message"))?;
            Ok((question, draft))
        })
        .await
    }

    /// Makes `message`, the last answer of `conversation`, `generating` again with
    /// `update`, to go on with it; refused as [`Self::commit_turn`] refuses.
    pub async fn resume(
        &self,
        conversation: String,
        message: i64,
        update: MessageUpdate,
    ) -> Result<StoredMessage, ServiceError> {
        if let Some(store) = self.pg() {
            return store?.resume(&conversation, message, &update).await;
        }
        self.with(move |c| update_message(c, message, &update))
            .await
    }

    /// Creates a conversation holding `messages`, all in one transaction.
    pub async fn import(
        &self,
        title: Option<String>,
        messages: Vec<NewMessage>,
    ) -> Result<Conversation, ServiceError> {
        check_title("title", title.as_deref())?;
        if let Some(store) = self.pg() {
            return store?.import(title, &messages).await;
        }
        self.with(move |c| {
            let tx = c.transaction().map_err(storage("start a transaction"))?;
            let conversation = create(&tx, title, &ConversationSettings::default())?;
            for message in &messages {
                append(&tx, &conversation.id, message)?;
            }
            let conversation = get(&tx, &conversation.id)?;
            tx.commit()
                .map_err(storage("save the imported conversation"))?;
            Ok(conversation)
        })
        .await
    }
}

fn configure(c: &Connection) -> rusqlite::Result<()> {
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!("SQLite refused WAL mode (kept {mode}); the store still works");
    }
    // FULL: a committed message survives power loss too, not only a killed process.
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    // Deleted conversations are overwritten in the file, not just unlinked.
    c.pragma_update(None, "secure_delete", "ON")?;
    Ok(())
}

/// Applies the migrations the database has not seen yet, each in its own transaction.
fn migrate(c: &mut Connection) -> Result<(), ServiceError> {
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(storage("read the schema version"))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(ServiceError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = c.transaction().map_err(storage("start a migration"))?;
        tx.execute_batch(sql)
            .map_err(storage("migrate the schema"))?;
        tx.pragma_update(None, "user_version", step as i64 + 1)
            .map_err(storage("record the schema version"))?;
        tx.commit().map_err(storage("migrate the schema"))?;
    }
    Ok(())
}

/// Maps a SQLite error to [`ServiceError::Storage`], logging the detail.
fn storage(action: &'static str) -> impl Fn(rusqlite::Error) -> ServiceError {
    move |err| {
        tracing::error!("conversation store: cannot {action}: {err}");
        ServiceError::Storage { action }
    }
}

/// What every operation of a closed store gives.
fn closed_error() -> ServiceError {
    ServiceError::Storage {
        action: "take changes after the server began shutting down",
    }
}

fn settings_json(settings: &ConversationSettings) -> Result<String, ServiceError> {
    serde_json::to_string(settings).map_err(|err| {
        tracing::error!("cannot encode settings: {err}");
        ServiceError::Storage {
            action: "encode the settings",
        }
    })
}

/// Regenerating in a conversation without a question.
fn no_question() -> ServiceError {
    ServiceError::InvalidParameter {
        field: "conversation",
        problem: "has no user message to answer again".to_owned(),
    }
}

fn worker_failed(err: &tokio::task::JoinError) -> ServiceError {
    tracing::error!("conversation store worker failed: {err}");
    ServiceError::Storage {
        action: "finish its work",
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The time to stamp a change with: now, but always after every earlier change, so "most
/// recently changed first" is a strict order even within one millisecond.
fn change_time(c: &Connection) -> Result<i64, ServiceError> {
    let latest: i64 = c
        .query_row(
            "SELECT COALESCE(MAX(updated_at), 0) FROM conversations",
            [],
            |row| row.get(0),
        )
        .map_err(storage("read the clock"))?;
    Ok(now_ms().max(latest.saturating_add(1)))
}

fn random_token(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

/// A title from the first line of a message, at most [`TITLE_CHARS`] characters.
pub fn title_from(text: &str) -> Option<String> {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return None;
    }
    if flat.chars().count() <= TITLE_CHARS {
        return Some(flat);
    }
    let cut: String = flat.chars().take(TITLE_CHARS).collect();
    Some(format!("{}…", cut.trim_end()))
}

fn not_found(id: &str) -> ServiceError {
    ServiceError::ConversationNotFound { id: id.to_owned() }
}

const CONVERSATION_COLUMNS: &str = "id, title, settings, created_at, updated_at";

fn conversation_row(row: &Row<'_>) -> rusqlite::Result<Conversation> {
    let settings: String = row.get(2)?;
    Ok(Conversation {
        id: row.get(0)?,
        title: row.get(1)?,
        // Settings are written only by this module; a row that does not parse (edited by
        // hand) falls back to defaults rather than hiding the conversation.
        settings: serde_json::from_str(&settings).unwrap_or_default(),
        created_at: row.get(3)?,
        updated_at: row.get(4)?,
    })
}

fn create(
    c: &Connection,
    title: Option<String>,
    settings: &ConversationSettings,
) -> Result<Conversation, ServiceError> {
    let id = format!("conv_{}", random_token(16));
    let now = change_time(c)?;
    let title = title.and_then(|t| title_from(&t));
    let settings_json = settings_json(settings)?;
    c.execute(
        "INSERT INTO conversations (id, title, settings, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?4)",
        params![id, title, settings_json, now],
    )
    .map_err(storage("create a conversation"))?;
    Ok(Conversation {
        id,
        title,
        settings: settings.clone(),
        created_at: now,
        updated_at: now,
    })
}

fn get(c: &Connection, id: &str) -> Result<Conversation, ServiceError> {
    c.query_row(
        &format!("SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?1"),
        [id],
        conversation_row,
    )
    .optional()
    .map_err(storage("read a conversation"))?
    .ok_or_else(|| not_found(id))
}

/// `text` as a LIKE pattern matching it anywhere, with `%`, `_` and `\` taken literally.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::from("%");
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    pattern.push('%');
    pattern
}

fn list(c: &Connection, query: Option<&str>) -> Result<Vec<Conversation>, ServiceError> {
    let query = query.map(str::trim).filter(|q| !q.is_empty());
    let limit = LIST_LIMIT as i64;
    let rows = match query {
        None => {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {CONVERSATION_COLUMNS} FROM conversations \
                     ORDER BY updated_at DESC, rowid DESC LIMIT ?1"
                ))
                .map_err(storage("list conversations"))?;
            let rows = stmt
                .query_map([limit], conversation_row)
                .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>);
            rows
        }
        Some(query) => {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {CONVERSATION_COLUMNS} FROM conversations AS c \
                     WHERE c.title LIKE ?1 ESCAPE '\\' \
                        OR EXISTS (SELECT 1 FROM messages AS m WHERE m.conversation_id = c.id \
                                   AND (m.content LIKE ?1 ESCAPE '\\' \
                                        OR m.reasoning LIKE ?1 ESCAPE '\\')) \
                     ORDER BY updated_at DESC, rowid DESC LIMIT ?2"
                ))
                .map_err(storage("search conversations"))?;
            let rows = stmt
                .query_map(params![like_pattern(query), limit], conversation_row)
                .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>);
            rows
        }
    };
    rows.map_err(storage("list conversations"))
}

fn update(
    c: &Connection,
    id: &str,
    patch: ConversationPatch,
) -> Result<Conversation, ServiceError> {
    let mut conversation = get(c, id)?;
    if let Some(title) = patch.title {
        conversation.title = title_from(&title);
    }
    if let Some(settings) = patch.settings {
        conversation.settings = settings;
    }
    conversation.updated_at = change_time(c)?;
    let settings_json = settings_json(&conversation.settings)?;
    c.execute(
        "UPDATE conversations SET title = ?2, settings = ?3, updated_at = ?4 WHERE id = ?1",
        params![
            id,
            conversation.title,
            settings_json,
            conversation.updated_at
        ],
    )
    .map_err(storage("update a conversation"))?;
    Ok(conversation)
}

fn delete(c: &Connection, id: &str) -> Result<(), ServiceError> {
    let deleted = c
        .execute("DELETE FROM conversations WHERE id = ?1", [id])
        .map_err(storage("delete a conversation"))?;
    if deleted == 0 {
        return Err(not_found(id));
    }
    // Move the deletion out of the write-ahead log into the main file (where secure_delete
    // has zeroed it) and empty the log, so the deleted text is gone from disk as well.
    if let Err(err) = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!("checkpoint after a delete failed (it will happen later): {err}");
    }
    Ok(())
}

const MESSAGE_COLUMNS: &str = "id, role, content, reasoning, tool_calls, tool_call_id, status, \
     finish_reason, prompt_tokens, completion_tokens, prompt_ms, generation_ms, created_at, \
     first_token_ms, reasoning_ms, reasoning_tokens, version, selected_version";

/// A message row with the version it belongs to and, on a user message, the version of its
/// answer that is selected.
struct VersionedRow {
    message: StoredMessage,
    version: i64,
    selected: Option<i64>,
}

fn versioned_row(row: &Row<'_>) -> rusqlite::Result<VersionedRow> {
    Ok(VersionedRow {
        message: message_row(row)?,
        version: row.get(16)?,
        selected: row.get(17)?,
    })
}

fn message_row(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    let role: String = row.get(1)?;
    let status: String = row.get(6)?;
    let tool_calls: Option<String> = row.get(4)?;
    let bad = |column: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            format!("unknown {what}").into(),
        )
    };
    Ok(StoredMessage {
        id: row.get(0)?,
        role: parse_role(&role).ok_or_else(|| bad(1, "role"))?,
        content: row.get(2)?,
        reasoning: row.get(3)?,
        tool_calls: tool_calls.map_or_else(Vec::new, |text| stored_calls(&text)),
        tool_call_id: row.get(5)?,
        status: MessageStatus::parse(&status).ok_or_else(|| bad(6, "status"))?,
        finish_reason: row.get(7)?,
        stats: MessageStats {
            prompt_tokens: row.get(8)?,
            completion_tokens: row.get(9)?,
            prompt_ms: row.get(10)?,
            generation_ms: row.get(11)?,
            first_token_ms: row.get(13)?,
            reasoning_ms: row.get(14)?,
            reasoning_tokens: row.get(15)?,
        },
        created_at: row.get(12)?,
        versions: None,
    })
}

/// Every row of a conversation, every version of every answer included.
fn all_rows(c: &Connection, conversation: &str) -> Result<Vec<VersionedRow>, ServiceError> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ?1 ORDER BY id"
        ))
        .map_err(storage("read messages"))?;
    let rows = stmt
        .query_map([conversation], versioned_row)
        .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>);
    rows.map_err(storage("read messages"))
}

/// The conversation as it reads: each user message followed by the selected version of its
/// answer, with [`StoredMessage::versions`] on user messages answered more than once.
/// Rows before the first user message (an import may start with them) have no question and
/// are all kept.
fn messages(c: &Connection, conversation: &str) -> Result<Vec<StoredMessage>, ServiceError> {
    Ok(assemble(all_rows(c, conversation)?))
}

/// [`messages`] from the rows of one conversation in order.
fn assemble(rows: Vec<VersionedRow>) -> Vec<StoredMessage> {
    let mut out: Vec<StoredMessage> = Vec::new();
    // The current question's index in `out`, its selected version and the versions seen.
    let mut question: Option<(usize, i64, Vec<i64>)> = None;
    let close = |out: &mut Vec<StoredMessage>, question: Option<(usize, i64, Vec<i64>)>| {
        if let Some((at, selected, mut all)) = question {
            if !all.contains(&selected) {
                all.push(selected);
            }
            all.sort_unstable();
            if all.len() > 1 {
                out[at].versions = Some(Versions { all, selected });
            }
        }
    };
    for row in rows {
        if row.message.role == Role::User {
            close(&mut out, question.take());
            question = Some((out.len(), row.selected.unwrap_or(1), Vec::new()));
            out.push(row.message);
            continue;
        }
        match question.as_mut() {
            Some((_, selected, all)) => {
                if !all.contains(&row.version) {
                    all.push(row.version);
                }
                if row.version == *selected {
                    out.push(row.message);
                }
            }
            None => out.push(row.message),
        }
    }
    close(&mut out, question.take());
    out
}

/// The last user message of `conversation`: its id, selected version, and whether that
/// version has rows.
fn last_question(c: &Connection, conversation: &str) -> Result<(i64, i64, bool), ServiceError> {
    let (id, selected): (i64, Option<i64>) = c
        .query_row(
            "SELECT id, selected_version FROM messages \
             WHERE conversation_id = ?1 AND role = 'user' ORDER BY id DESC LIMIT 1",
            [conversation],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()
        .map_err(storage("read messages"))?
        .ok_or_else(no_question)?;
    let selected = selected.unwrap_or(1);
    let answered: bool = c
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE conversation_id = ?1 AND id > ?2 \
             AND version = ?3)",
            params![conversation, id, selected],
            |row| row.get(0),
        )
        .map_err(storage("read messages"))?;
    Ok((id, selected, answered))
}

/// The version new rows after the conversation's last user message belong to (1 before
/// any user message).
fn current_version(c: &Connection, conversation: &str) -> Result<i64, ServiceError> {
    let selected: Option<Option<i64>> = c
        .query_row(
            "SELECT selected_version FROM messages \
             WHERE conversation_id = ?1 AND role = 'user' ORDER BY id DESC LIMIT 1",
            [conversation],
            |row| row.get(0),
        )
        .optional()
        .map_err(storage("read messages"))?;
    Ok(selected.flatten().unwrap_or(1))
}

fn get_message(c: &Connection, id: i64) -> Result<StoredMessage, ServiceError> {
    c.query_row(
        &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ?1"),
        [id],
        message_row,
    )
    .map_err(storage("read a message"))
}

/// The calls of a `tool_calls` column; a value no version wrote is logged and read as none.
fn stored_calls(text: &str) -> Vec<StoredToolCall> {
    serde_json::from_str(text).unwrap_or_else(|err| {
        tracing::warn!("conversation store: unreadable tool calls ignored: {err}");
        Vec::new()
    })
}

/// The `tool_calls` column of `calls`: NULL when there are none.
fn tool_calls_text(calls: &[StoredToolCall]) -> Option<String> {
    (!calls.is_empty())
        .then(|| serde_json::to_string(calls).ok())
        .flatten()
}

fn append(
    c: &Connection,
    conversation: &str,
    m: &NewMessage,
) -> Result<StoredMessage, ServiceError> {
    let current = get(c, conversation)?;
    let now = change_time(c)?;
    // A user message starts its answer at version 1; anything else joins the version of the
    // last question's answer being shown (a regenerated answer is written into a new one).
    let version = match m.role {
        Role::User => 1,
        _ => current_version(c, conversation)?,
    };
    c.execute(
        "INSERT INTO messages (conversation_id, role, content, reasoning, tool_calls, \
         tool_call_id, status, finish_reason, prompt_tokens, completion_tokens, prompt_ms, \
         generation_ms, created_at, first_token_ms, reasoning_ms, reasoning_tokens, version) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
        params![
            conversation,
            m.role.as_str(),
            m.content,
            m.reasoning,
            tool_calls_text(&m.tool_calls),
            m.tool_call_id,
            m.status.as_str(),
            m.finish_reason,
            m.stats.prompt_tokens,
            m.stats.completion_tokens,
            m.stats.prompt_ms,
            m.stats.generation_ms,
            now,
            m.stats.first_token_ms,
            m.stats.reasoning_ms,
            m.stats.reasoning_tokens,
            version,
        ],
    )
    .map_err(storage("save a message"))?;
    let id = c.last_insert_rowid();
    let title = match (&current.title, m.role) {
        (None, Role::User) => title_from(&m.content),
        _ => current.title,
    };
    c.execute(
        "UPDATE conversations SET updated_at = ?2, title = ?3 WHERE id = ?1",
        params![conversation, now, title],
    )
    .map_err(storage("save a message"))?;
    get_message(c, id)
}

fn update_message(
    c: &Connection,
    id: i64,
    u: &MessageUpdate,
) -> Result<StoredMessage, ServiceError> {
    let changed = c
        .execute(
            "UPDATE messages SET content = ?2, reasoning = ?3, tool_calls = ?4, status = ?5, \
             finish_reason = ?6, prompt_tokens = ?7, completion_tokens = ?8, prompt_ms = ?9, \
             generation_ms = ?10, first_token_ms = ?11, reasoning_ms = ?12, \
             reasoning_tokens = ?13 WHERE id = ?1",
            params![
                id,
                u.content,
                u.reasoning,
                tool_calls_text(&u.tool_calls),
                u.status.as_str(),
                u.finish_reason,
                u.stats.prompt_tokens,
                u.stats.completion_tokens,
                u.stats.prompt_ms,
                u.stats.generation_ms,
                u.stats.first_token_ms,
                u.stats.reasoning_ms,
                u.stats.reasoning_tokens,
            ],
        )
        .map_err(storage("save a message"))?;
    if changed == 0 {
        return Err(ServiceError::MessageNotFound { id });
    }
    c.execute(
        "UPDATE conversations SET updated_at = MAX(updated_at, ?2) \
         WHERE id = (SELECT conversation_id FROM messages WHERE id = ?1)",
        params![id, change_time(c)?],
    )
    .map_err(storage("save a message"))?;
    get_message(c, id)
}

/// What the chat page needs beyond the API's operations.
impl SessionStore {
    /// A store that lives in memory only: the chat page's fallback when the server runs
    /// without a data directory, so the page has one code path whether or not it persists.
    pub fn in_memory() -> Result<Self, ServiceError> {
        let mut connection =
            Connection::open_in_memory().map_err(storage("open an in-memory database"))?;
        connection
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(storage("configure the in-memory database"))?;
        migrate(&mut connection)?;
        Ok(Self::sqlite(connection, PathBuf::from(IN_MEMORY_PATH)))
    }

    /// Starts a new version of the answer to the conversation's last user message, so the
    /// rows appended next are that version and the earlier answer is kept (and shown no
    /// more). A question whose shown version has no rows yet keeps it. Returns the version
    /// the next answer goes into.
    pub async fn new_version(&self, conversation: String) -> Result<i64, ServiceError> {
        if let Some(store) = self.pg() {
            return store?.new_version(&conversation).await;
        }
        self.with(move |c| {
            get(c, &conversation)?;
            new_version(c, &conversation)
        })
        .await
    }

    /// Shows version `version` of the answer to user message `question` of `conversation`
    /// (and sends it to the model from now on). Refuses a message that is not one of the
    /// conversation's user messages, or a version it does not have.
    pub async fn select_version(
        &self,
        conversation: String,
        question: i64,
        version: i64,
    ) -> Result<(), ServiceError> {
        if let Some(store) = self.pg() {
            return store?
                .select_version(&conversation, question, version)
                .await;
        }
        self.with(move |c| {
            get(c, &conversation)?;
            check_version(&messages(c, &conversation)?, question, version)?;
            let now = change_time(c)?;
            let tx = c.transaction().map_err(storage("start a transaction"))?;
            tx.execute(
                "UPDATE messages SET selected_version = ?2 WHERE id = ?1",
                params![question, version],
            )
            .map_err(storage("select an answer version"))?;
            tx.execute(
                "UPDATE conversations SET updated_at = ?2 WHERE id = ?1",
                params![conversation, now],
            )
            .map_err(storage("select an answer version"))?;
            tx.commit().map_err(storage("select an answer version"))?;
            Ok(())
        })
        .await
    }

    /// Deletes the messages of `conversation` from message `from` on (all of them with
    /// `from` = 0), for regenerating or editing the end of a conversation, or clearing it.
    /// Returns how many were deleted.
    pub async fn truncate(&self, conversation: String, from: i64) -> Result<usize, ServiceError> {
        if let Some(store) = self.pg() {
            return store?.truncate(&conversation, from).await;
        }
        self.with(move |c| {
            get(c, &conversation)?;
            let tx = c.transaction().map_err(storage("start a transaction"))?;
            let deleted = truncate(&tx, &conversation, from)?;
            tx.commit().map_err(storage("delete messages"))?;
            Ok(deleted)
        })
        .await
    }
}

/// Refuses a `question` that is not one of the user messages `shown`, or a `version` of
/// its answer that it does not have.
fn check_version(shown: &[StoredMessage], question: i64, version: i64) -> Result<(), ServiceError> {
    let versions = shown
        .iter()
        .find(|m| m.id == question && m.role == Role::User)
        .ok_or(ServiceError::MessageNotFound { id: question })?
        .versions
        .as_ref();
    if !versions.is_some_and(|v| v.all.contains(&version)) {
        return Err(ServiceError::InvalidParameter {
            field: "version",
            problem: format!("message {question} has no answer version {version}"),
        });
    }
    Ok(())
}

/// [`SessionStore::new_version`]'s work.
fn new_version(c: &Connection, conversation: &str) -> Result<i64, ServiceError> {
    let (question, selected, answered) = last_question(c, conversation)?;
    if !answered {
        return Ok(selected);
    }
    let latest: i64 = c
        .query_row(
            "SELECT COALESCE(MAX(version), 1) FROM messages \
             WHERE conversation_id = ?1 AND id > ?2",
            params![conversation, question],
            |row| row.get(0),
        )
        .map_err(storage("read messages"))?;
    let next = latest.max(selected) + 1;
    c.execute(
        "UPDATE messages SET selected_version = ?2 WHERE id = ?1",
        params![question, next],
    )
    .map_err(storage("start a new answer version"))?;
    Ok(next)
}

/// [`SessionStore::truncate`]'s work.
fn truncate(c: &Connection, conversation: &str, from: i64) -> Result<usize, ServiceError> {
    let now = change_time(c)?;
    let deleted = c
        .execute(
            "DELETE FROM messages WHERE conversation_id = ?1 AND id >= ?2",
            params![conversation, from],
        )
        .map_err(storage("delete messages"))?;
    c.execute(
        "UPDATE conversations SET updated_at = ?2 WHERE id = ?1",
        params![conversation, now],
    )
    .map_err(storage("delete messages"))?;
    Ok(deleted)
}

#[cfg(test)]
pub(crate) mod test_postgres;
#[cfg(test)]
mod tests;
