//! The conversation store in PostgreSQL, for several servers behind one load balancer.
//!
//! Same tables and columns as the SQLite file, in PostgreSQL's types, with its own migration
//! list under the same version numbers (`migrations/postgres/`), applied under an advisory
//! lock so servers starting together do not race. Every operation is the SQLite store's,
//! statement for statement, so both read and write alike.
//!
//! What servers sharing it add: a draft being generated names the server writing it
//! (`owner`, its node id) and until when its claim holds (`lease_until`, renewed by a
//! heartbeat). The question and the draft are committed in one transaction that first locks
//! the conversation's row and refuses when a live draft of another server is there, so two
//! sends from two servers give exactly one refusal. A server marks `interrupted` only its own
//! leftovers and drafts whose claim ran out, never another live server's answer. Every save
//! of a message is announced on the channel [`DRAFTS_CHANNEL`] (`NOTIFY`, the conversation's
//! id as payload), so the other servers can follow an answer as it grows
//! ([`crate::services::elsewhere`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::{AsyncMessage, Client, GenericClient, NoTls, Row};

use super::{
    assemble, check_title, not_found, title_from, tool_calls_text, Conversation, ConversationPatch,
    ConversationSettings, MessageStats, MessageStatus, MessageUpdate, NewMessage, StoredMessage,
    Turn, VersionedRow,
};
use crate::services::chat::Role;
use crate::services::error::ServiceError;

/// The schema, one step per file, numbered as SQLite's.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_init.sql"),
    include_str!("migrations/postgres/0002_builtin_tools.sql"),
    include_str!("migrations/postgres/0003_interrupted.sql"),
    include_str!("migrations/postgres/0004_thinking_budget.sql"),
    include_str!("migrations/postgres/0005_typed_tool_calls.sql"),
    include_str!("migrations/postgres/0006_answer_timings.sql"),
    include_str!("migrations/postgres/0007_answer_versions.sql"),
    include_str!("migrations/postgres/0008_truncation.sql"),
    include_str!("migrations/postgres/0009_run_owner.sql"),
];

/// How long a server's claim on the draft it writes holds without renewal: a server that
/// died leaves its answer `generating` this long at most before another marks it
/// `interrupted`. Renewed every third of it.
pub const RUN_LEASE: Duration = Duration::from_secs(30);

/// The advisory lock key serializing migrations (any constant; "smolbot" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_6d6f_6c62_6f74;

/// The database's clock in milliseconds: every server reads the same one, so a lease means
/// the same to all of them whatever their own clocks say.
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The channel on which every save of a message is announced, its conversation's id the
/// payload.
const DRAFTS_CHANNEL: &str = "smolbot_drafts";

/// Announcements kept for a follower that is slow to read them; one that falls further
/// behind looks at the database at once (`Lagged`), so nothing is lost but the wait.
const ANNOUNCEMENTS_KEPT: usize = 256;

/// The PostgreSQL side of [`super::SessionStore`].
pub(super) struct PgStore {
    url: String,
    /// One connection, opened again when it broke (the server restarted, say).
    client: Mutex<Option<Client>>,
    /// A second connection that `LISTEN`s to [`DRAFTS_CHANNEL`], opened when something
    /// first follows another server's answer (and again when it broke).
    listener: Mutex<Option<Listener>>,
    /// This server's name in `owner`.
    node: String,
    lease_ms: i64,
}

fn pg(action: &'static str) -> impl Fn(tokio_postgres::Error) -> ServiceError {
    move |err| {
        tracing::error!("conversation database: cannot {action}: {err}");
        ServiceError::Storage { action }
    }
}

/// `url` without its password, for logs and messages.
pub(super) fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((user, host)) => {
                let user = user.split(':').next().unwrap_or("");
                format!("{scheme}://{user}@{host}")
            }
            None => url.to_owned(),
        },
        None => "(a connection string)".to_owned(),
    }
}

/// The listening connection and the announcements it hands on.
struct Listener {
    /// Kept so the connection stays open; it runs no queries after `LISTEN`.
    client: Client,
    announcements: broadcast::Sender<String>,
}

impl Listener {
    /// Opens a connection that listens to [`DRAFTS_CHANNEL`] and hands each announcement's
    /// payload to every receiver of `announcements`.
    async fn open(url: &str) -> Result<Self, ServiceError> {
        let (client, mut connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|err| unreachable(url, &err))?;
        let (announcements, _) = broadcast::channel(ANNOUNCEMENTS_KEPT);
        let sender = announcements.clone();
        tokio::spawn(async move {
            // Polling for messages is also what drives the connection.
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(note)) => {
                        // No receiver at the moment is no error: nobody follows that answer.
                        let _ = sender.send(note.payload().to_owned());
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!("conversation database: listening connection closed: {err}");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {DRAFTS_CHANNEL}"))
            .await
            .map_err(pg("listen for answers written elsewhere"))?;
        Ok(Self {
            client,
            announcements,
        })
    }
}

/// The database at `url` could not be reached: the error, naming it without its password.
fn unreachable(url: &str, err: &tokio_postgres::Error) -> ServiceError {
    ServiceError::Database {
        reason: format!("{}: {err}", redacted(url)),
    }
}

async fn connect(url: &str) -> Result<Client, ServiceError> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|err| unreachable(url, &err))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!("conversation database connection closed: {err}");
        }
    });
    Ok(client)
}

impl PgStore {
    /// Connects, brings the schema up to date, marks this node's leftovers and expired
    /// drafts `interrupted` and starts renewing this node's claims.
    pub(super) async fn open(
        url: &str,
        node: String,
        lease: Duration,
    ) -> Result<Arc<Self>, ServiceError> {
        let mut client = connect(url).await?;
        migrate(&mut client).await?;
        let store = Arc::new(Self {
            url: url.to_owned(),
            client: Mutex::new(Some(client)),
            listener: Mutex::new(None),
            node,
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX),
        });
        let interrupted = store.recover(true).await?;
        if interrupted > 0 {
            tracing::warn!(
                "{interrupted} answer(s) were cut off by a server that stopped; kept as interrupted"
            );
        }
        if !lease.is_zero() {
            tokio::spawn(heartbeat(Arc::downgrade(&store), lease / 3));
        }
        Ok(store)
    }

    pub(super) fn node(&self) -> &str {
        &self.node
    }

    pub(super) fn location(&self) -> String {
        redacted(&self.url)
    }

    /// The connection, opened again when the last one broke.
    async fn client(&self) -> Result<MappedMutexGuard<'_, Client>, ServiceError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(connect(&self.url).await?);
        }
        Ok(MutexGuard::map(guard, |c| {
            c.as_mut().expect("connected above")
        }))
    }

    /// The ids of the conversations whose messages are saved from now on, by any server
    /// (this one too); the listening connection is opened on the first call.
    pub(super) async fn announcements(&self) -> Result<broadcast::Receiver<String>, ServiceError> {
        let mut guard = self.listener.lock().await;
        if guard
            .as_ref()
            .is_none_or(|listener| listener.client.is_closed())
        {
            *guard = Some(Listener::open(&self.url).await?);
        }
        Ok(guard
            .as_ref()
            .expect("opened above")
            .announcements
            .subscribe())
    }

    /// Marks `interrupted` the drafts whose claim ran out (and, with `own`, this node's:
    /// at a start nothing of this node is running yet). Returns how many.
    pub(super) async fn recover(&self, own: bool) -> Result<u64, ServiceError> {
        let client = self.client().await?;
        client
            .execute(
                &format!(
                    "UPDATE messages SET status = 'interrupted', owner = NULL, \
                     lease_until = NULL WHERE status = 'generating' AND (owner IS NULL \
                     OR lease_until < {DB_NOW_MS} OR ($1 AND owner = $2))"
                ),
                &[&own, &self.node],
            )
            .await
            .map_err(pg("recover interrupted answers"))
    }

    /// Renews this node's claims on the drafts it writes.
    async fn renew(&self) -> Result<u64, ServiceError> {
        let client = self.client().await?;
        client
            .execute(
                &format!(
                    "UPDATE messages SET lease_until = {DB_NOW_MS} + $2 \
                     WHERE status = 'generating' AND owner = $1"
                ),
                &[&self.node, &self.lease_ms],
            )
            .await
            .map_err(pg("renew the answers' claims"))
    }

    /// Marks this node's drafts `stopped` at a shutdown; other servers' are theirs.
    pub(super) async fn close(&self) -> Result<usize, ServiceError> {
        let client = self.client().await?;
        let stopped = client
            .execute(
                "UPDATE messages SET status = 'stopped', owner = NULL, lease_until = NULL \
                 WHERE status = 'generating' AND owner = $1",
                &[&self.node],
            )
            .await
            .map_err(pg("stop interrupted answers"))?;
        Ok(usize::try_from(stopped).unwrap_or(usize::MAX))
    }

    pub(super) async fn create(
        &self,
        title: Option<String>,
        settings: ConversationSettings,
    ) -> Result<Conversation, ServiceError> {
        let client = self.client().await?;
        create(&*client, title, &settings).await
    }

    pub(super) async fn list(
        &self,
        query: Option<&str>,
    ) -> Result<Vec<Conversation>, ServiceError> {
        let client = self.client().await?;
        let query = query.map(str::trim).filter(|q| !q.is_empty());
        let limit = super::LIST_LIMIT as i64;
        let rows = match query {
            None => client
                .query(
                    &format!(
                        "SELECT {} FROM conversations \
                         ORDER BY updated_at DESC, id DESC LIMIT $1",
                        super::CONVERSATION_COLUMNS
                    ),
                    &[&limit],
                )
                .await
                .map_err(pg("list conversations"))?,
            Some(query) => client
                .query(
                    &format!(
                        "SELECT {} FROM conversations AS c \
                         WHERE c.title ILIKE $1 ESCAPE '\\' \
                            OR EXISTS (SELECT 1 FROM messages AS m \
                                       WHERE m.conversation_id = c.id \
                                       AND (m.content ILIKE $1 ESCAPE '\\' \
                                            OR m.reasoning ILIKE $1 ESCAPE '\\')) \
                         ORDER BY updated_at DESC, id DESC LIMIT $2",
                        super::CONVERSATION_COLUMNS
                    ),
                    &[&super::like_pattern(query), &limit],
                )
                .await
                .map_err(pg("search conversations"))?,
        };
        rows.iter()
            .map(conversation_row)
            .collect::<Result<_, _>>()
            .map_err(pg("list conversations"))
    }

    pub(super) async fn get(&self, id: &str) -> Result<Conversation, ServiceError> {
        let client = self.client().await?;
        get(&*client, id).await
    }

    pub(super) async fn update(
        &self,
        id: &str,
        patch: ConversationPatch,
    ) -> Result<Conversation, ServiceError> {
        let client = self.client().await?;
        let mut conversation = get(&*client, id).await?;
        if let Some(title) = patch.title {
            conversation.title = title_from(&title);
        }
        if let Some(settings) = patch.settings {
            conversation.settings = settings;
        }
        conversation.updated_at = change_time(&*client).await?;
        let settings_json = super::settings_json(&conversation.settings)?;
        client
            .execute(
                "UPDATE conversations SET title = $2, settings = $3, updated_at = $4 \
                 WHERE id = $1",
                &[
                    &id,
                    &conversation.title,
                    &settings_json,
                    &conversation.updated_at,
                ],
            )
            .await
            .map_err(pg("update a conversation"))?;
        Ok(conversation)
    }

    /// Deletes the rows; PostgreSQL frees their space at its next vacuum (autovacuum).
    pub(super) async fn delete(&self, id: &str) -> Result<(), ServiceError> {
        let client = self.client().await?;
        let deleted = client
            .execute("DELETE FROM conversations WHERE id = $1", &[&id])
            .await
            .map_err(pg("delete a conversation"))?;
        if deleted == 0 {
            return Err(not_found(id));
        }
        Ok(())
    }

    pub(super) async fn messages(&self, id: &str) -> Result<Vec<StoredMessage>, ServiceError> {
        let client = self.client().await?;
        get(&*client, id).await?;
        Ok(assemble(all_rows(&*client, id).await?))
    }

    pub(super) async fn append(
        &self,
        conversation: &str,
        message: &NewMessage,
    ) -> Result<StoredMessage, ServiceError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(pg("start a transaction"))?;
        let stored = self.append_in(&tx, conversation, message).await?;
        tx.commit().await.map_err(pg("save a message"))?;
        Ok(stored)
    }

    pub(super) async fn update_message(
        &self,
        id: i64,
        u: &MessageUpdate,
    ) -> Result<StoredMessage, ServiceError> {
        let client = self.client().await?;
        self.update_message_in(&*client, id, u).await
    }

    pub(super) async fn import(
        &self,
        title: Option<String>,
        messages: &[NewMessage],
    ) -> Result<Conversation, ServiceError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(pg("start a transaction"))?;
        let conversation = create(&tx, title, &ConversationSettings::default()).await?;
        for message in messages {
            self.append_in(&tx, &conversation.id, message).await?;
        }
        let conversation = get(&tx, &conversation.id).await?;
        tx.commit()
            .await
            .map_err(pg("save the imported conversation"))?;
        Ok(conversation)
    }

    pub(super) async fn new_version(&self, conversation: &str) -> Result<i64, ServiceError> {
        let client = self.client().await?;
        get(&*client, conversation).await?;
        new_version(&*client, conversation).await
    }

    pub(super) async fn select_version(
        &self,
        conversation: &str,
        question: i64,
        version: i64,
    ) -> Result<(), ServiceError> {
        let mut client = self.client().await?;
        get(&*client, conversation).await?;
        let shown = assemble(all_rows(&*client, conversation).await?);
        super::check_version(&shown, question, version)?;
        let now = change_time(&*client).await?;
        let tx = client
            .transaction()
            .await
            .map_err(pg("start a transaction"))?;
        tx.execute(
            "UPDATE messages SET selected_version = $2 WHERE id = $1",
            &[&question, &version],
        )
        .await
        .map_err(pg("select an answer version"))?;
        tx.execute(
            "UPDATE conversations SET updated_at = $2 WHERE id = $1",
            &[&conversation, &now],
        )
        .await
        .map_err(pg("select an answer version"))?;
        tx.commit().await.map_err(pg("select an answer version"))
    }

    pub(super) async fn truncate(
        &self,
        conversation: &str,
        from: i64,
    ) -> Result<usize, ServiceError> {
        let mut client = self.client().await?;
        get(&*client, conversation).await?;
        let tx = client
            .transaction()
            .await
            .map_err(pg("start a transaction"))?;
        let deleted = truncate(&tx, conversation, from).await?;
        tx.commit().await.map_err(pg("delete messages"))?;
        Ok(deleted)
    }

    /// The façade's commit of a new answer (see [`super::SessionStore::commit_turn`]): with
    /// the conversation's row locked, refuses when another live server writes a draft in
    /// it, marks drafts whose claim ran out `interrupted`, then stores the change, the
    /// question and the draft, claimed by this node, all in one transaction.
    pub(super) async fn commit_turn(
        &self,
        conversation: &str,
        turn: &Turn,
    ) -> Result<(Option<StoredMessage>, StoredMessage), ServiceError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(pg("start a transaction"))?;
        self.claim(&tx, conversation).await?;
        if let Some(from) = turn.replace_from {
            truncate(&tx, conversation, from).await?;
        }
        if turn.new_version {
            new_version(&tx, conversation).await?;
        }
        let question = match &turn.question {
            Some(text) => Some(
                self.append_in(
                    &tx,
                    conversation,
                    &NewMessage::text(Role::User, text.clone()),
                )
                .await?,
            ),
            None => None,
        };
        let draft = NewMessage {
            status: MessageStatus::Generating,
            ..NewMessage::text(Role::Assistant, "")
        };
        let draft = self.append_in(&tx, conversation, &draft).await?;
        tx.commit().await.map_err(pg("save a message"))?;
        Ok((question, draft))
    }

    /// [`super::SessionStore::resume`]: the claim of [`Self::commit_turn`], then the answer
    /// `generating` again, claimed by this node.
    pub(super) async fn resume(
        &self,
        conversation: &str,
        message: i64,
        u: &MessageUpdate,
    ) -> Result<StoredMessage, ServiceError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(pg("start a transaction"))?;
        self.claim(&tx, conversation).await?;
        let resumed = self.update_message_in(&tx, message, u).await?;
        tx.commit().await.map_err(pg("save a message"))?;
        Ok(resumed)
    }

    /// Locks the conversation for the rest of `tx` and refuses when a live draft of
    /// another server is in it; drafts whose claim ran out become `interrupted`.
    async fn claim(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        conversation: &str,
    ) -> Result<(), ServiceError> {
        tx.query_opt(
            "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE",
            &[&conversation],
        )
        .await
        .map_err(pg("read a conversation"))?
        .ok_or_else(|| not_found(conversation))?;
        let live = tx
            .query_opt(
                &format!(
                    "SELECT owner FROM messages WHERE conversation_id = $1 \
                     AND status = 'generating' AND owner IS NOT NULL \
                     AND lease_until >= {DB_NOW_MS} LIMIT 1"
                ),
                &[&conversation],
            )
            .await
            .map_err(pg("read messages"))?;
        if let Some(row) = live {
            let node: String = row.try_get(0).map_err(pg("read messages"))?;
            return Err(ServiceError::AnsweringElsewhere {
                id: conversation.to_owned(),
                node,
            });
        }
        tx.execute(
            "UPDATE messages SET status = 'interrupted', owner = NULL, lease_until = NULL \
             WHERE conversation_id = $1 AND status = 'generating'",
            &[&conversation],
        )
        .await
        .map_err(pg("recover interrupted answers"))?;
        Ok(())
    }

    async fn append_in(
        &self,
        c: &impl GenericClient,
        conversation: &str,
        m: &NewMessage,
    ) -> Result<StoredMessage, ServiceError> {
        let current = get(c, conversation).await?;
        let now = change_time(c).await?;
        let version = match m.role {
            Role::User => 1,
            _ => current_version(c, conversation).await?,
        };
        let owner = (m.status == MessageStatus::Generating).then_some(self.node.as_str());
        let row = c
            .query_one(
                &format!(
                    "INSERT INTO messages (conversation_id, role, content, reasoning, \
                     tool_calls, tool_call_id, status, finish_reason, prompt_tokens, \
                     completion_tokens, prompt_ms, generation_ms, created_at, first_token_ms, \
                     reasoning_ms, reasoning_tokens, version, owner, lease_until) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                     $15, $16, $17, $18::text, \
                     CASE WHEN $18::text IS NULL THEN NULL ELSE {DB_NOW_MS} + $19 END) \
                     RETURNING id"
                ),
                &[
                    &conversation,
                    &m.role.as_str(),
                    &m.content,
                    &m.reasoning,
                    &tool_calls_text(&m.tool_calls),
                    &m.tool_call_id,
                    &m.status.as_str(),
                    &m.finish_reason,
                    &m.stats.prompt_tokens,
                    &m.stats.completion_tokens,
                    &m.stats.prompt_ms,
                    &m.stats.generation_ms,
                    &now,
                    &m.stats.first_token_ms,
                    &m.stats.reasoning_ms,
                    &m.stats.reasoning_tokens,
                    &version,
                    &owner,
                    &self.lease_ms,
                ],
            )
            .await
            .map_err(pg("save a message"))?;
        let id: i64 = row.try_get(0).map_err(pg("save a message"))?;
        let title = match (&current.title, m.role) {
            (None, Role::User) => title_from(&m.content),
            _ => current.title,
        };
        c.execute(
            "UPDATE conversations SET updated_at = $2, title = $3 WHERE id = $1",
            &[&conversation, &now, &title],
        )
        .await
        .map_err(pg("save a message"))?;
        get_message(c, id).await
    }

    /// Saves a message; a `generating` one stays (or becomes) this node's, its claim
    /// renewed, and another live server's draft is left alone (not found).
    async fn update_message_in(
        &self,
        c: &impl GenericClient,
        id: i64,
        u: &MessageUpdate,
    ) -> Result<StoredMessage, ServiceError> {
        let owner = (u.status == MessageStatus::Generating).then_some(self.node.as_str());
        let changed = c
            .execute(
                &format!(
                    "UPDATE messages SET content = $2, reasoning = $3, tool_calls = $4, \
                     status = $5, finish_reason = $6, prompt_tokens = $7, \
                     completion_tokens = $8, prompt_ms = $9, generation_ms = $10, \
                     first_token_ms = $11, reasoning_ms = $12, reasoning_tokens = $13, \
                     owner = $14::text, \
                     lease_until = CASE WHEN $14::text IS NULL THEN NULL \
                                        ELSE {DB_NOW_MS} + $15 END \
                     WHERE id = $1 AND (status <> 'generating' OR owner IS NULL \
                                        OR owner = $16 OR lease_until < {DB_NOW_MS})"
                ),
                &[
                    &id,
                    &u.content,
                    &u.reasoning,
                    &tool_calls_text(&u.tool_calls),
                    &u.status.as_str(),
                    &u.finish_reason,
                    &u.stats.prompt_tokens,
                    &u.stats.completion_tokens,
                    &u.stats.prompt_ms,
                    &u.stats.generation_ms,
                    &u.stats.first_token_ms,
                    &u.stats.reasoning_ms,
                    &u.stats.reasoning_tokens,
                    &owner,
                    &self.lease_ms,
                    &self.node,
                ],
            )
            .await
            .map_err(pg("save a message"))?;
        if changed == 0 {
            return Err(ServiceError::MessageNotFound { id });
        }
        let now = change_time(c).await?;
        c.query(
            &format!(
                "WITH touched AS (UPDATE conversations SET updated_at = GREATEST(updated_at, $2) \
                 WHERE id = (SELECT conversation_id FROM messages WHERE id = $1) RETURNING id) \
                 SELECT pg_notify('{DRAFTS_CHANNEL}', id) FROM touched"
            ),
            &[&id, &now],
        )
        .await
        .map_err(pg("save a message"))?;
        get_message(c, id).await
    }
}

/// Renews this node's claims every `every` while the store lives, and marks drafts whose
/// claim ran out (a server that died) `interrupted`.
async fn heartbeat(store: Weak<PgStore>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(store) = store.upgrade() else { return };
        if let Err(err) = store.renew().await {
            tracing::warn!("renewing the answers' claims failed: {err}");
        }
        match store.recover(false).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "{n} answer(s) of a server that stopped renewing them kept as interrupted"
            ),
            Err(err) => tracing::warn!("recovering interrupted answers failed: {err}"),
        }
    }
}

/// Applies the steps the database has not seen, all in one transaction holding an advisory
/// lock: servers starting together wait for one another, and the second finds it done.
async fn migrate(client: &mut Client) -> Result<(), ServiceError> {
    let tx = client
        .transaction()
        .await
        .map_err(pg("start a migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg("lock the schema"))?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS smolbot_schema (version BIGINT NOT NULL)")
        .await
        .map_err(pg("read the schema version"))?;
    let version: Option<i64> = tx
        .query_opt("SELECT version FROM smolbot_schema", &[])
        .await
        .map_err(pg("read the schema version"))?
        .map(|row| row.try_get(0))
        .transpose()
        .map_err(pg("read the schema version"))?;
    let known = MIGRATIONS.len() as i64;
    let version = version.unwrap_or(0);
    if version > known {
        return Err(ServiceError::SchemaTooNew {
            found: version,
            known,
        });
    }
    for sql in MIGRATIONS.iter().skip(version.max(0) as usize) {
        tx.batch_execute(sql)
            .await
            .map_err(pg("migrate the schema"))?;
    }
    tx.execute("DELETE FROM smolbot_schema", &[])
        .await
        .map_err(pg("record the schema version"))?;
    tx.execute(
        "INSERT INTO smolbot_schema (version) VALUES ($1)",
        &[&known],
    )
    .await
    .map_err(pg("record the schema version"))?;
    tx.commit().await.map_err(pg("migrate the schema"))
}

/// The schema version recorded in the database (tests look).
#[cfg(test)]
pub(super) async fn schema_version(store: &PgStore) -> i64 {
    let client = store.client().await.expect("connected");
    client
        .query_one("SELECT version FROM smolbot_schema", &[])
        .await
        .and_then(|row| row.try_get(0))
        .expect("version")
}

/// Runs `sql` on the store's database (tests look at rows directly).
#[cfg(test)]
pub(super) async fn query_i64(store: &PgStore, sql: &str) -> i64 {
    let client = store.client().await.expect("connected");
    client
        .query_one(sql, &[])
        .await
        .and_then(|row| row.try_get(0))
        .expect("query")
}

fn conversation_row(row: &Row) -> Result<Conversation, tokio_postgres::Error> {
    let settings: String = row.try_get(2)?;
    Ok(Conversation {
        id: row.try_get(0)?,
        title: row.try_get(1)?,
        settings: serde_json::from_str(&settings).unwrap_or_default(),
        created_at: row.try_get(3)?,
        updated_at: row.try_get(4)?,
    })
}

/// The time to stamp a change with: the database's now, after every earlier change.
async fn change_time(c: &impl GenericClient) -> Result<i64, ServiceError> {
    c.query_one(
        &format!(
            "SELECT GREATEST({DB_NOW_MS}, COALESCE(MAX(updated_at), 0) + 1) FROM conversations"
        ),
        &[],
    )
    .await
    .and_then(|row| row.try_get(0))
    .map_err(pg("read the clock"))
}

async fn create(
    c: &impl GenericClient,
    title: Option<String>,
    settings: &ConversationSettings,
) -> Result<Conversation, ServiceError> {
    check_title("title", title.as_deref())?;
    let id = format!("conv_{}", super::random_token(16));
    let now = change_time(c).await?;
    let title = title.and_then(|t| title_from(&t));
    let settings_json = super::settings_json(settings)?;
    c.execute(
        "INSERT INTO conversations (id, title, settings, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4)",
        &[&id, &title, &settings_json, &now],
    )
    .await
    .map_err(pg("create a conversation"))?;
    Ok(Conversation {
        id,
        title,
        settings: settings.clone(),
        created_at: now,
        updated_at: now,
    })
}

async fn get(c: &impl GenericClient, id: &str) -> Result<Conversation, ServiceError> {
    let row = c
        .query_opt(
            &format!(
                "SELECT {} FROM conversations WHERE id = $1",
                super::CONVERSATION_COLUMNS
            ),
            &[&id],
        )
        .await
        .map_err(pg("read a conversation"))?
        .ok_or_else(|| not_found(id))?;
    conversation_row(&row).map_err(pg("read a conversation"))
}

fn message_row(row: &Row) -> Result<StoredMessage, tokio_postgres::Error> {
    let role: String = row.try_get(1)?;
    let status: String = row.try_get(6)?;
    let tool_calls: Option<String> = row.try_get(4)?;
    Ok(StoredMessage {
        id: row.try_get(0)?,
        // Both columns are CHECKed to the known names.
        role: super::parse_role(&role).unwrap_or(Role::Assistant),
        content: row.try_get(2)?,
        reasoning: row.try_get(3)?,
        tool_calls: tool_calls.map_or_else(Vec::new, |text| super::stored_calls(&text)),
        tool_call_id: row.try_get(5)?,
        status: MessageStatus::parse(&status).unwrap_or(MessageStatus::Failed),
        finish_reason: row.try_get(7)?,
        stats: MessageStats {
            prompt_tokens: row.try_get(8)?,
            completion_tokens: row.try_get(9)?,
            prompt_ms: row.try_get(10)?,
            generation_ms: row.try_get(11)?,
            first_token_ms: row.try_get(13)?,
            reasoning_ms: row.try_get(14)?,
            reasoning_tokens: row.try_get(15)?,
        },
        created_at: row.try_get(12)?,
        versions: None,
    })
}

async fn all_rows(
    c: &impl GenericClient,
    conversation: &str,
) -> Result<Vec<VersionedRow>, ServiceError> {
    let rows = c
        .query(
            &format!(
                "SELECT {} FROM messages WHERE conversation_id = $1 ORDER BY id",
                super::MESSAGE_COLUMNS
            ),
            &[&conversation],
        )
        .await
        .map_err(pg("read messages"))?;
    rows.iter()
        .map(|row| {
            Ok(VersionedRow {
                message: message_row(row)?,
                version: row.try_get(16)?,
                selected: row.try_get(17)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(pg("read messages"))
}

async fn get_message(c: &impl GenericClient, id: i64) -> Result<StoredMessage, ServiceError> {
    let row = c
        .query_one(
            &format!(
                "SELECT {} FROM messages WHERE id = $1",
                super::MESSAGE_COLUMNS
            ),
            &[&id],
        )
        .await
        .map_err(pg("read a message"))?;
    message_row(&row).map_err(pg("read a message"))
}

async fn current_version(c: &impl GenericClient, conversation: &str) -> Result<i64, ServiceError> {
    let row = c
        .query_opt(
            "SELECT selected_version FROM messages \
             WHERE conversation_id = $1 AND role = 'user' ORDER BY id DESC LIMIT 1",
            &[&conversation],
        )
        .await
        .map_err(pg("read messages"))?;
    let selected: Option<i64> = match row {
        Some(row) => row.try_get(0).map_err(pg("read messages"))?,
        None => None,
    };
    Ok(selected.unwrap_or(1))
}

/// [`super::SessionStore::new_version`]'s work.
async fn new_version(c: &impl GenericClient, conversation: &str) -> Result<i64, ServiceError> {
    let row = c
        .query_opt(
            "SELECT id, selected_version FROM messages \
             WHERE conversation_id = $1 AND role = 'user' ORDER BY id DESC LIMIT 1",
            &[&conversation],
        )
        .await
        .map_err(pg("read messages"))?
        .ok_or_else(super::no_question)?;
    let question: i64 = row.try_get(0).map_err(pg("read messages"))?;
    let selected: Option<i64> = row.try_get(1).map_err(pg("read messages"))?;
    let selected = selected.unwrap_or(1);
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE conversation_id = $1 AND id > $2 \
             AND version = $3), \
             (SELECT COALESCE(MAX(version), 1) FROM messages \
              WHERE conversation_id = $1 AND id > $2)",
            &[&conversation, &question, &selected],
        )
        .await
        .map_err(pg("read messages"))?;
    let answered: bool = row.try_get(0).map_err(pg("read messages"))?;
    let latest: i64 = row.try_get(1).map_err(pg("read messages"))?;
    if !answered {
        return Ok(selected);
    }
    let next = latest.max(selected) + 1;
    c.execute(
        "UPDATE messages SET selected_version = $2 WHERE id = $1",
        &[&question, &next],
    )
    .await
    .map_err(pg("start a new answer version"))?;
    Ok(next)
}

/// [`super::SessionStore::truncate`]'s work.
async fn truncate(
    c: &impl GenericClient,
    conversation: &str,
    from: i64,
) -> Result<usize, ServiceError> {
    let now = change_time(c).await?;
    let deleted = c
        .execute(
            "DELETE FROM messages WHERE conversation_id = $1 AND id >= $2",
            &[&conversation, &from],
        )
        .await
        .map_err(pg("delete messages"))?;
    c.execute(
        "UPDATE conversations SET updated_at = $2 WHERE id = $1",
        &[&conversation, &now],
    )
    .await
    .map_err(pg("delete messages"))?;
    Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
}
