//! The store against a real SQLite file in a temporary directory.

use super::*;
use serde_json::{json, Value as Json};

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

async fn store(dir: &tempfile::TempDir) -> SessionStore {
    SessionStore::open(dir.path()).await.expect("store opens")
}

/// A new conversation with no title and default settings.
async fn untitled(s: &SessionStore) -> Conversation {
    s.create(None, ConversationSettings::default())
        .await
        .expect("create")
}

/// Where a test's store lives: a SQLite file in a temporary folder, or a fresh database on
/// this test process's PostgreSQL server.
enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Place {
    fn sqlite() -> Self {
        Self::Sqlite(temp())
    }

    fn postgres() -> Self {
        Self::Postgres(super::test_postgres::database())
    }

    /// The store, as node `node-a` in PostgreSQL.
    async fn open(&self) -> SessionStore {
        self.open_as("node-a").await
    }

    /// The store as server `node` (PostgreSQL; SQLite has one server).
    async fn open_as(&self, node: &str) -> SessionStore {
        match self {
            Self::Sqlite(dir) => store(dir).await,
            Self::Postgres(url) => SessionStore::connect(url, node)
                .await
                .expect("store connects"),
        }
    }

    /// A number `sql` reads from the store's database.
    async fn count(&self, s: &SessionStore, sql: &'static str) -> i64 {
        match &*s.backend {
            Backend::Sqlite { .. } => s
                .with(move |c| c.query_row(sql, [], |r| r.get(0)).map_err(storage("count")))
                .await
                .expect("count"),
            Backend::Postgres(store) => postgres::query_i64(store, sql).await,
        }
    }
}

/// Each test named runs twice: on a SQLite file and on a PostgreSQL database.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Place::sqlite()).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Place::postgres()).await;
                }
            )*
        }
    };
}

on_both_stores!(
    opening_twice_applies_migrations_once_and_keeps_data,
    crud_lists_newest_first_and_titles_from_the_first_user_message,
    messages_keep_every_field_and_a_partial_answer_is_updated_in_place,
    reopening_marks_cut_off_answers_interrupted_and_keeps_their_text,
    closing_stops_running_answers_and_empties_the_log,
    search_finds_titles_and_message_text_literally,
    delete_removes_the_conversation_and_its_messages_from_the_file,
    jsonl_export_imports_back_unchanged,
    versions_keep_their_rows_and_go_with_the_conversation,
    a_turn_commits_its_changes_the_question_and_the_draft_together,
);

fn assistant(content: &str, status: MessageStatus) -> NewMessage {
    NewMessage {
        status,
        ..NewMessage::text(Role::Assistant, content)
    }
}

async fn opening_twice_applies_migrations_once_and_keeps_data(place: Place) {
    let first = place.open().await;
    let conversation = first
        .create(Some("kept".into()), ConversationSettings::default())
        .await
        .expect("create");
    drop(first);
    let second = place.open().await;
    if let Backend::Postgres(store) = &*second.backend {
        assert_eq!(
            postgres::schema_version(store).await,
            postgres::MIGRATIONS.len() as i64
        );
        assert_eq!(
            postgres::MIGRATIONS.len(),
            MIGRATIONS.len(),
            "same versions"
        );
        assert_eq!(
            second.get(conversation.id.clone()).await.ok(),
            Some(conversation)
        );
        return;
    }
    let version: i64 = second
        .with(|c| {
            c.query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(storage("read"))
        })
        .await
        .expect("version");
    assert_eq!(version, MIGRATIONS.len() as i64);
    let mode: String = second
        .with(|c| {
            c.query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .map_err(storage("read"))
        })
        .await
        .expect("mode");
    assert_eq!(mode, "wal");
    assert_eq!(
        second.get(conversation.id.clone()).await.ok(),
        Some(conversation)
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused_with_both_versions() {
    let dir = temp();
    drop(store(&dir).await);
    let c = Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
    c.pragma_update(None, "user_version", 99)
        .expect("set version");
    drop(c);
    match SessionStore::open(dir.path()).await {
        Err(err @ ServiceError::SchemaTooNew { found: 99, .. }) => {
            assert!(err.to_string().contains("99"), "{err}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

/// A database from before `interrupted` (schema version 2) keeps its messages and their
/// ids, never gives a deleted message's id again, and takes the new status.
#[tokio::test]
async fn messages_migrate_to_the_interrupted_status_with_their_ids() {
    let dir = temp();
    {
        let mut c = Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
        let tx = c.transaction().expect("transaction");
        tx.execute_batch(MIGRATIONS[0]).expect("version 1 schema");
        tx.execute_batch(MIGRATIONS[1]).expect("version 2 schema");
        tx.pragma_update(None, "user_version", 2).expect("version");
        tx.execute_batch(
            "INSERT INTO conversations (id, title, settings, created_at, updated_at) \
             VALUES ('conv_old', 'old', '{}', 1, 1); \
             INSERT INTO messages (conversation_id, role, content, status, created_at) \
             VALUES ('conv_old', 'user', 'hi', 'complete', 1), \
                    ('conv_old', 'assistant', 'half', 'generating', 2), \
                    ('conv_old', 'assistant', 'gone', 'complete', 3); \
             DELETE FROM messages WHERE content = 'gone';",
        )
        .expect("old rows");
        tx.commit().expect("commit");
    }
    let s = store(&dir).await;
    let all = s.messages("conv_old".into()).await.expect("messages");
    let rows: Vec<(i64, &str, MessageStatus)> = all
        .iter()
        .map(|m| (m.id, m.content.as_str(), m.status))
        .collect();
    assert_eq!(
        rows,
        [
            (1, "hi", MessageStatus::Complete),
            (2, "half", MessageStatus::Interrupted)
        ]
    );
    let next = s
        .append("conv_old".into(), NewMessage::text(Role::User, "again"))
        .await
        .expect("append");
    assert_eq!(next.id, 4, "the deleted message's id 3 is not given again");
}

/// A database from before typed tool calls (schema version 4) holds them in OpenAI's wire
/// form; opening it converts every call in place: arguments text to a JSON value (text that
/// is not JSON kept as a string), ids kept or given, nameless entries dropped.
#[tokio::test]
async fn wire_form_tool_calls_migrate_to_typed_ones() {
    let dir = temp();
    {
        let mut c = Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
        let tx = c.transaction().expect("transaction");
        for step in &MIGRATIONS[..4] {
            tx.execute_batch(step).expect("old schema");
        }
        tx.pragma_update(None, "user_version", 4).expect("version");
        let calls = [
            json!([{"id": "call_a", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]),
            json!([{"type": "function", "function": {"name": "f", "arguments": "not json"}},
                   {"type": "function", "function": {"arguments": "{}"}},
                   {"id": "call_b", "function": {"name": "g", "arguments": {"n": [1, true]}}},
                   {"id": "call_c", "function": {"name": "h", "arguments": ""}}]),
            json!([{"function": {}}]),
        ];
        tx.execute(
            "INSERT INTO conversations (id, title, settings, created_at, updated_at) \
             VALUES ('conv_old', 'old', '{}', 1, 1)",
            [],
        )
        .expect("conversation");
        for calls in calls {
            tx.execute(
                "INSERT INTO messages (conversation_id, role, content, tool_calls, status, \
                 created_at) VALUES ('conv_old', 'assistant', '', ?1, 'complete', 1)",
                [calls.to_string()],
            )
            .expect("old call");
        }
        tx.commit().expect("commit");
    }
    let s = store(&dir).await;
    let all = s.messages("conv_old".into()).await.expect("messages");
    let typed = |id: &str, name: &str, arguments: Json| StoredToolCall {
        id: id.into(),
        name: name.into(),
        arguments,
    };
    assert_eq!(
        all[0].tool_calls,
        [typed("call_a", "get_weather", json!({"city": "Paris"}))]
    );
    assert_eq!(
        all[1].tool_calls,
        [
            typed("call_2_0", "f", json!("not json")),
            typed("call_b", "g", json!({"n": [1, true]})),
            typed("call_c", "h", json!({})),
        ]
    );
    assert!(all[2].tool_calls.is_empty(), "{:?}", all[2].tool_calls);
    let exported: Json =
        serde_json::from_str(to_jsonl(&all[..1]).trim_end()).expect("exported line");
    assert_eq!(
        exported["tool_calls"][0]["function"]["arguments"],
        json!("{\"city\":\"Paris\"}")
    );
}

/// A database from before `builtin_tools` (schema version 1) opens with its settings as
/// they were, and the new setting is stored, patched and read back like the others.
#[tokio::test]
async fn builtin_tools_setting_migrates_from_version_1_and_round_trips() {
    let dir = temp();
    {
        let mut c = Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
        let tx = c.transaction().expect("transaction");
        tx.execute_batch(MIGRATIONS[0]).expect("version 1 schema");
        tx.pragma_update(None, "user_version", 1).expect("version");
        tx.execute(
            "INSERT INTO conversations (id, title, settings, created_at, updated_at) \
             VALUES ('conv_old', 'old', '{\"system_prompt\":\"Be brief.\",\"thinking\":false}', 1, 1)",
            [],
        )
        .expect("old row");
        tx.commit().expect("commit");
    }
    let s = store(&dir).await;
    let version: i64 = s
        .with(|c| {
            c.query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(storage("read"))
        })
        .await
        .expect("version");
    assert_eq!(
        version,
        MIGRATIONS.len() as i64,
        "brought to the latest schema"
    );
    let old = s.get("conv_old".into()).await.expect("old conversation");
    assert_eq!(
        old.settings,
        ConversationSettings {
            system_prompt: Some("Be brief.".into()),
            thinking: Some(false),
            ..ConversationSettings::default()
        }
    );
    assert_eq!(old.settings.builtin_tools, None);

    for value in [Some(true), Some(false), None] {
        let settings = ConversationSettings {
            builtin_tools: value,
            ..old.settings.clone()
        };
        let patch = ConversationPatch {
            settings: Some(settings.clone()),
            ..ConversationPatch::default()
        };
        let updated = s.update("conv_old".into(), patch).await.expect("update");
        assert_eq!(updated.settings, settings);
        let reopened = store(&dir).await;
        assert_eq!(
            reopened.get("conv_old".into()).await.expect("get").settings,
            settings,
            "{value:?} survives reopening"
        );
    }

    let created = s
        .create(
            None,
            ConversationSettings {
                builtin_tools: Some(true),
                ..ConversationSettings::default()
            },
        )
        .await
        .expect("create");
    assert_eq!(
        s.get(created.id).await.expect("get").settings.builtin_tools,
        Some(true)
    );
    // The API's JSON form: a plain optional boolean, absent meaning the default.
    let parsed: ConversationSettings =
        serde_json::from_str(r#"{"builtin_tools": true}"#).expect("parses");
    assert_eq!(parsed.builtin_tools, Some(true));
    assert!(serde_json::from_str::<ConversationSettings>(r#"{"builtin_tools": "yes"}"#).is_err());
}

async fn crud_lists_newest_first_and_titles_from_the_first_user_message(place: Place) {
    let s = place.open().await;
    let a = untitled(&s).await;
    let b = untitled(&s).await;
    assert_eq!(a.title, None);
    let listed: Vec<String> = s
        .list(None)
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, vec![b.id.clone(), a.id.clone()]);

    let long = "word ".repeat(40);
    s.append(a.id.clone(), NewMessage::text(Role::User, long.clone()))
        .await
        .expect("append");
    let a_now = s.get(a.id.clone()).await.expect("get");
    let title = a_now.title.expect("titled");
    assert!(
        title.ends_with('…') && title.chars().count() <= TITLE_CHARS + 1,
        "{title}"
    );
    let listed: Vec<String> = s
        .list(None)
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        listed[0], a.id,
        "a message moves the conversation to the top"
    );

    s.append(a.id.clone(), NewMessage::text(Role::User, "second"))
        .await
        .expect("append");
    assert_eq!(
        s.get(a.id.clone()).await.expect("get").title.as_deref(),
        Some(title.as_str())
    );

    let settings = ConversationSettings {
        system_prompt: Some("Be brief.".into()),
        temperature: Some(0.2),
        top_p: Some(0.9),
        max_tokens: Some(128),
        thinking: Some(false),
        thinking_budget: Some(64),
        builtin_tools: Some(true),
        truncation: Some(crate::services::truncation::Truncation::Auto),
    };
    let renamed = s
        .update(
            b.id.clone(),
            ConversationPatch {
                title: Some("  Renamed\nchat ".into()),
                settings: Some(settings.clone()),
            },
        )
        .await
        .expect("update");
    assert_eq!(renamed.title.as_deref(), Some("Renamed chat"));
    assert_eq!(s.get(b.id.clone()).await.expect("get").settings, settings);

    let bad = ConversationPatch {
        settings: Some(ConversationSettings {
            top_p: Some(0.0),
            ..ConversationSettings::default()
        }),
        ..ConversationPatch::default()
    };
    assert!(matches!(
        s.update(b.id.clone(), bad).await,
        Err(ServiceError::InvalidParameter {
            field: "settings.top_p",
            ..
        })
    ));
    assert!(matches!(
        s.get("conv_missing".into()).await,
        Err(ServiceError::ConversationNotFound { .. })
    ));
    assert!(matches!(
        s.append("conv_missing".into(), NewMessage::text(Role::User, "x"))
            .await,
        Err(ServiceError::ConversationNotFound { .. })
    ));
}

async fn messages_keep_every_field_and_a_partial_answer_is_updated_in_place(place: Place) {
    let s = place.open().await;
    let c = untitled(&s).await;
    s.append(c.id.clone(), NewMessage::text(Role::User, "hi"))
        .await
        .expect("user");
    let draft = s
        .append(c.id.clone(), assistant("", MessageStatus::Generating))
        .await
        .expect("draft");
    let calls = vec![StoredToolCall::new(ToolCall {
        name: "calculator".into(),
        arguments: json!({"expression": "2+2"}),
    })];
    let stats = MessageStats {
        prompt_tokens: Some(12),
        completion_tokens: Some(7),
        prompt_ms: Some(1.5),
        generation_ms: Some(40.0),
        first_token_ms: Some(312.25),
        reasoning_ms: Some(8_200.5),
        reasoning_tokens: Some(120),
    };
    let done = s
        .update_message(
            draft.id,
            MessageUpdate {
                content: "Let me check.".into(),
                reasoning: Some("thinking".into()),
                tool_calls: calls.clone(),
                status: MessageStatus::Complete,
                finish_reason: Some("tool_calls".into()),
                stats,
            },
        )
        .await
        .expect("update");
    let all = s.messages(c.id.clone()).await.expect("messages");
    assert_eq!(all.len(), 2);
    assert_eq!(all[1], done);
    assert_eq!(done.stats, stats);
    assert_eq!(done.tool_calls, calls);
    assert_eq!(done.calls()[0].arguments, json!({"expression": "2+2"}));
    assert!(matches!(
        s.update_message(
            9_999,
            MessageUpdate {
                content: String::new(),
                reasoning: None,
                tool_calls: Vec::new(),
                status: MessageStatus::Stopped,
                finish_reason: None,
                stats: MessageStats::default(),
            }
        )
        .await,
        Err(ServiceError::MessageNotFound { id: 9_999 })
    ));
}

async fn reopening_marks_cut_off_answers_interrupted_and_keeps_their_text(place: Place) {
    let s = place.open().await;
    let c = untitled(&s).await;
    s.append(c.id.clone(), NewMessage::text(Role::User, "hi"))
        .await
        .expect("user");
    s.append(
        c.id.clone(),
        assistant("half an ans", MessageStatus::Generating),
    )
    .await
    .expect("draft");
    drop(s);
    // PostgreSQL: the same node started again.
    let s = place.open().await;
    let all = s.messages(c.id.clone()).await.expect("messages");
    assert_eq!(all[1].status, MessageStatus::Interrupted);
    assert_eq!(all[1].content, "half an ans");
}

async fn closing_stops_running_answers_and_empties_the_log(place: Place) {
    let s = place.open().await;
    let c = untitled(&s).await;
    s.append(c.id.clone(), NewMessage::text(Role::User, "hi"))
        .await
        .expect("user");
    s.append(c.id.clone(), assistant("done", MessageStatus::Complete))
        .await
        .expect("answer");
    let draft = s
        .append(
            c.id.clone(),
            assistant("half an ans", MessageStatus::Generating),
        )
        .await
        .expect("draft");
    assert_eq!(s.close().await.expect("close"), 1);
    // Work still running at shutdown cannot change anything any more.
    let update = MessageUpdate {
        content: "half an answer".into(),
        reasoning: None,
        tool_calls: Vec::new(),
        status: MessageStatus::Generating,
        finish_reason: None,
        stats: MessageStats::default(),
    };
    let late = s.clone().update_message(draft.id, update).await;
    assert!(
        matches!(late, Err(ServiceError::Storage { .. })),
        "{late:?}"
    );
    assert!(s.messages(c.id.clone()).await.is_err());
    assert!(s.close().await.is_err());

    let dir = match &place {
        Place::Sqlite(dir) => dir,
        Place::Postgres(_) => {
            // Another server sees the answer stopped with its text.
            let other = place.open_as("node-b").await;
            let all = other.messages(c.id.clone()).await.expect("messages");
            assert_eq!(
                (all[2].status, all[2].content.as_str()),
                (MessageStatus::Stopped, "half an ans")
            );
            return;
        }
    };
    // The file alone, without the repair a store does when it opens: the log is folded into
    // it and the answer is stopped with its text.
    let wal = dir.path().join(format!("{DATABASE_FILE}-wal"));
    assert_eq!(
        std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
        0,
        "the log is checkpointed into the database file"
    );
    drop(s);
    let raw = Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
    let rows: Vec<(String, String)> = raw
        .prepare("SELECT status, content FROM messages ORDER BY id")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(Iterator::collect)
        })
        .expect("read the file");
    assert_eq!(
        rows,
        [
            ("complete".to_owned(), "hi".to_owned()),
            ("complete".to_owned(), "done".to_owned()),
            ("stopped".to_owned(), "half an ans".to_owned()),
        ]
    );
}

async fn search_finds_titles_and_message_text_literally(place: Place) {
    let s = place.open().await;
    let pasta = s
        .create(
            Some("Pasta recipes".into()),
            ConversationSettings::default(),
        )
        .await
        .expect("a");
    let rust = untitled(&s).await;
    s.append(
        rust.id.clone(),
        NewMessage::text(Role::User, "How do lifetimes work?"),
    )
    .await
    .expect("user");
    s.append(
        rust.id.clone(),
        NewMessage::text(Role::Assistant, "They bound borrows: 100% safe_ly."),
    )
    .await
    .expect("assistant");
    let ids = |list: Vec<Conversation>| list.into_iter().map(|c| c.id).collect::<Vec<_>>();
    assert_eq!(
        ids(s.list(Some("PASTA".into())).await.expect("q")),
        vec![pasta.id.clone()]
    );
    assert_eq!(
        ids(s.list(Some("borrows".into())).await.expect("q")),
        vec![rust.id.clone()]
    );
    assert_eq!(
        ids(s.list(Some("100%".into())).await.expect("q")),
        vec![rust.id.clone()]
    );
    assert!(
        s.list(Some("0%x".into())).await.expect("q").is_empty(),
        "% is literal"
    );
    assert!(
        s.list(Some("s_f".into())).await.expect("q").is_empty(),
        "_ is literal"
    );
    assert_eq!(s.list(Some("   ".into())).await.expect("q").len(), 2);
}

async fn delete_removes_the_conversation_and_its_messages_from_the_file(place: Place) {
    let s = place.open().await;
    let c = untitled(&s).await;
    let secret = "zebra-unicorn-secret-7731";
    s.append(c.id.clone(), NewMessage::text(Role::User, secret))
        .await
        .expect("user");
    s.delete(c.id.clone()).await.expect("delete");
    assert!(matches!(
        s.messages(c.id.clone()).await,
        Err(ServiceError::ConversationNotFound { .. })
    ));
    assert!(matches!(
        s.delete(c.id.clone()).await,
        Err(ServiceError::ConversationNotFound { .. })
    ));
    assert_eq!(
        place.count(&s, "SELECT COUNT(*) FROM messages").await,
        0,
        "messages go with their conversation"
    );
    drop(s);
    // PostgreSQL keeps deleted rows on disk until a vacuum; the README says so.
    let Place::Sqlite(dir) = &place else { return };
    for entry in std::fs::read_dir(dir.path()).expect("list dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read file");
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} still holds the deleted text",
            path.display()
        );
    }
}

async fn jsonl_export_imports_back_unchanged(place: Place) {
    let s = place.open().await;
    let c = untitled(&s).await;
    let calls = vec![StoredToolCall::new(ToolCall {
        name: "get_weather".into(),
        arguments: json!({"city": "Paris"}),
    })];
    let mut call = assistant("Let me check.", MessageStatus::Complete);
    call.reasoning = Some("The user asks about Paris.\n\nA tool can tell.".into());
    call.tool_calls = calls.clone();
    let call_id = Some(calls[0].id.clone());
    let mut result = NewMessage::text(Role::Tool, "{\"temperature\": 21}");
    result.tool_call_id = call_id;
    let mut partial = assistant("It is 21 °C in Pa", MessageStatus::Stopped);
    partial.reasoning = Some(String::new());
    for message in [
        NewMessage::text(Role::System, "You are terse."),
        NewMessage::text(Role::User, "Weather in \"Paris\"?\nPlease"),
        call,
        result,
        partial,
    ] {
        s.append(c.id.clone(), message).await.expect("append");
    }
    let original = s.messages(c.id.clone()).await.expect("messages");
    let exported = to_jsonl(&original);
    assert_eq!(exported.lines().count(), 5);
    let first: Json = serde_json::from_str(exported.lines().nth(2).expect("line 3")).expect("json");
    assert_eq!(
        first["reasoning_content"],
        json!("The user asks about Paris.\n\nA tool can tell.")
    );
    assert_eq!(
        first["tool_calls"][0]["function"]["name"],
        json!("get_weather")
    );
    assert_eq!(first["tool_calls"][0]["type"], json!("function"));

    let imported = s
        .import(None, from_jsonl(&exported).expect("parses"))
        .await
        .expect("import");
    assert_eq!(
        imported.title.as_deref(),
        Some("Weather in \"Paris\"? Please")
    );
    let again = s.messages(imported.id.clone()).await.expect("messages");
    assert_eq!(to_jsonl(&again), exported, "the round trip changes nothing");
    for (a, b) in original.iter().zip(&again) {
        assert_eq!(
            (
                a.role,
                &a.content,
                &a.reasoning,
                &a.tool_calls,
                &a.tool_call_id,
                a.status
            ),
            (
                b.role,
                &b.content,
                &b.reasoning,
                &b.tool_calls,
                &b.tool_call_id,
                b.status
            )
        );
    }

    let markdown = to_markdown(&imported, &again);
    for needle in [
        "# Weather in \"Paris\"? Please",
        "## User",
        "> **Reasoning**",
        "**Tool call** `get_weather`",
        "\"city\": \"Paris\"",
        "## Tool result (`call_",
        "_(stopped before the answer was complete)_",
    ] {
        assert!(
            markdown.contains(needle),
            "markdown lacks {needle:?}:\n{markdown}"
        );
    }
}

#[test]
fn import_errors_name_the_line_and_the_field() {
    let cases = [
        (
            "{\"role\": \"user\", \"content\": \"a\"}\nnot json",
            "line 2: not valid JSON",
        ),
        ("[1]", "line 1: expected a message object"),
        ("{\"content\": \"a\"}", "line 1: `role` is missing"),
        ("{\"role\": \"robot\"}", "line 1: `role` must be"),
        (
            "{\"role\": \"user\", \"content\": 5}",
            "line 1: `content` must be a string",
        ),
        (
            "{\"role\": \"assistant\", \"tool_calls\": [{}]}",
            "line 1: `tool_calls[0].function.name`",
        ),
        (
            "{\"role\": \"assistant\", \"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": \"{oops\"}}]}",
            "line 1: `tool_calls[0].function.arguments` is not JSON",
        ),
        (
            "{\"role\": \"user\", \"status\": \"generating\"}",
            "line 1: `status` must be",
        ),
        ("\n\n", "holds no message"),
    ];
    for (text, needle) in cases {
        match from_jsonl(text) {
            Err(err @ ServiceError::InvalidImport { .. }) => {
                assert!(err.to_string().contains(needle), "{text:?}: {err}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn default_data_dir_follows_xdg_then_home() {
    let dir = default_data_dir();
    assert!(
        dir.ends_with("smolbot") || dir.ends_with("smolbot-data"),
        "{}",
        dir.display()
    );
}

#[cfg(unix)]
#[tokio::test]
async fn a_new_data_folder_and_its_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("smolbot-data");
    let store = SessionStore::open(&dir).await.expect("open");
    store
        .create(None, ConversationSettings::default())
        .await
        .expect("create");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "data folder");
    for entry in std::fs::read_dir(&dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

/// A database from before answer timings and versions (schema version 5) opens with its
/// messages as they were: no timings, one version each; new answers keep their timings.
#[tokio::test]
async fn answers_from_before_timings_and_versions_read_as_before() {
    let dir = temp();
    {
        let mut c = Connection::open(dir.path().join(DATABASE_FILE)).expect("open");
        let tx = c.transaction().expect("transaction");
        for step in &MIGRATIONS[..5] {
            tx.execute_batch(step).expect("old schema");
        }
        tx.pragma_update(None, "user_version", 5).expect("version");
        tx.execute(
            "INSERT INTO conversations (id, title, settings, created_at, updated_at) \
             VALUES ('conv_old', 'old', '{}', 1, 1)",
            [],
        )
        .expect("conversation");
        for (role, content, reasoning) in [
            ("user", "Hi", None),
            ("assistant", "Hello!", Some("greet back")),
            ("user", "Again", None),
            ("assistant", "Hello again.", None),
        ] {
            tx.execute(
                "INSERT INTO messages (conversation_id, role, content, reasoning, status, \
                 completion_tokens, generation_ms, created_at) \
                 VALUES ('conv_old', ?1, ?2, ?3, 'complete', 4, 100.0, 1)",
                params![role, content, reasoning],
            )
            .expect("old message");
        }
        tx.commit().expect("commit");
    }
    let s = store(&dir).await;
    let all = s.messages("conv_old".into()).await.expect("messages");
    let texts: Vec<&str> = all.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["Hi", "Hello!", "Again", "Hello again."]);
    assert!(all.iter().all(|m| m.versions.is_none()), "one version each");
    assert_eq!(all[1].reasoning.as_deref(), Some("greet back"));
    assert_eq!(all[1].stats.completion_tokens, Some(4));
    assert_eq!(
        (all[1].stats.first_token_ms, all[1].stats.reasoning_ms),
        (None, None)
    );

    // Regenerating the last answer keeps the old one as version 1.
    assert_eq!(s.new_version("conv_old".into()).await.expect("version"), 2);
    let shown = s.messages("conv_old".into()).await.expect("messages");
    assert_eq!(shown.len(), 3, "the new version has no rows yet");
    let versions = shown[2].versions.clone().expect("two versions");
    assert_eq!((versions.all, versions.selected), (vec![1, 2], 2));
    s.append(
        "conv_old".into(),
        NewMessage::text(Role::Assistant, "Hi there."),
    )
    .await
    .expect("new version");
    let shown = s.messages("conv_old".into()).await.expect("messages");
    assert_eq!(shown[3].content, "Hi there.");
    s.select_version("conv_old".into(), shown[2].id, 1)
        .await
        .expect("select");
    let shown = s.messages("conv_old".into()).await.expect("messages");
    assert_eq!(shown[3].content, "Hello again.", "the earlier answer again");
    assert_eq!(shown[2].versions.as_ref().map(|v| v.selected), Some(1));
    assert!(matches!(
        s.select_version("conv_old".into(), shown[2].id, 7).await,
        Err(ServiceError::InvalidParameter {
            field: "version",
            ..
        })
    ));
    assert!(matches!(
        s.select_version("conv_old".into(), shown[3].id, 1).await,
        Err(ServiceError::MessageNotFound { .. })
    ));
}

async fn versions_keep_their_rows_and_go_with_the_conversation(place: Place) {
    let s = place.open().await;
    let c = untitled(&s).await;
    s.append(c.id.clone(), NewMessage::text(Role::User, "Count"))
        .await
        .expect("user");
    for answer in ["one", "two", "three"] {
        s.new_version(c.id.clone()).await.expect("version");
        s.append(c.id.clone(), assistant(answer, MessageStatus::Complete))
            .await
            .expect("answer");
    }
    let shown = s.messages(c.id.clone()).await.expect("messages");
    let texts: Vec<&str> = shown.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["Count", "three"]);
    let versions = shown[0].versions.clone().expect("versions");
    assert_eq!((versions.all, versions.selected), (vec![1, 2, 3], 3));
    s.select_version(c.id.clone(), shown[0].id, 2)
        .await
        .expect("select");
    // A message sent now follows the version shown; the earlier question keeps its versions.
    s.append(c.id.clone(), NewMessage::text(Role::User, "More"))
        .await
        .expect("user");
    s.append(c.id.clone(), assistant("four", MessageStatus::Complete))
        .await
        .expect("answer");
    let shown = s.messages(c.id.clone()).await.expect("messages");
    let texts: Vec<&str> = shown.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["Count", "two", "More", "four"]);
    assert!(shown[2].versions.is_none());
    s.delete(c.id.clone()).await.expect("delete");
    assert_eq!(
        place.count(&s, "SELECT COUNT(*) FROM messages").await,
        0,
        "every version goes with its conversation"
    );
}

fn finished(content: &str) -> MessageUpdate {
    MessageUpdate {
        content: content.into(),
        reasoning: None,
        tool_calls: Vec::new(),
        status: MessageStatus::Complete,
        finish_reason: Some("stop".into()),
        stats: MessageStats::default(),
    }
}

fn ask(text: &str) -> Turn {
    Turn {
        question: Some(text.into()),
        ..Turn::default()
    }
}

async fn a_turn_commits_its_changes_the_question_and_the_draft_together(place: Place) {
    let s = place.open().await;
    let c = untitled(&s).await;
    let (question, draft) = s
        .commit_turn(c.id.clone(), ask("First"))
        .await
        .expect("turn");
    let question = question.expect("a question");
    assert_eq!(
        (question.role, question.content.as_str()),
        (Role::User, "First")
    );
    assert_eq!(draft.status, MessageStatus::Generating);
    s.update_message(draft.id, finished("One"))
        .await
        .expect("answer");
    assert_eq!(
        s.get(c.id.clone()).await.expect("get").title.as_deref(),
        Some("First")
    );

    // Regenerating: no question, a new version of the answer.
    let regenerate = Turn {
        new_version: true,
        ..Turn::default()
    };
    let (none, draft) = s.commit_turn(c.id.clone(), regenerate).await.expect("turn");
    assert!(none.is_none());
    s.update_message(draft.id, finished("Uno"))
        .await
        .expect("answer");
    let shown = s.messages(c.id.clone()).await.expect("messages");
    assert_eq!(shown[0].versions.as_ref().map(|v| v.all.len()), Some(2));

    // Editing: the question and its answers replaced.
    let edit = Turn {
        replace_from: Some(question.id),
        ..ask("First, edited")
    };
    let (_, draft) = s.commit_turn(c.id.clone(), edit).await.expect("turn");
    let shown = s.messages(c.id.clone()).await.expect("messages");
    let texts: Vec<(&str, MessageStatus)> = shown
        .iter()
        .map(|m| (m.content.as_str(), m.status))
        .collect();
    assert_eq!(
        texts,
        [
            ("First, edited", MessageStatus::Complete),
            ("", MessageStatus::Generating)
        ]
    );
    assert_eq!(shown[1].id, draft.id);
    assert!(matches!(
        s.commit_turn("conv_missing".into(), ask("x")).await,
        Err(ServiceError::ConversationNotFound { .. })
    ));
}

/// Several servers on one PostgreSQL database.
mod shared_database {
    use super::*;

    #[test]
    fn a_database_url_is_shown_without_its_password() {
        assert_eq!(
            postgres::redacted("postgres://smolbot:s3cret@db:5432/chat"),
            "postgres://smolbot@db:5432/chat"
        );
        assert_eq!(
            postgres::redacted("postgres://db/chat"),
            "postgres://db/chat"
        );
        assert!(!postgres::redacted("host=db password=s3cret").contains("s3cret"));
    }

    #[tokio::test]
    async fn an_unreachable_database_is_an_error_naming_it_without_the_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let url = format!("postgres://smolbot:s3cret@127.0.0.1:{port}/chat");
        match SessionStore::connect(&url, "a").await {
            Err(err @ ServiceError::Database { .. }) => {
                let text = err.to_string();
                assert!(text.contains(&format!("127.0.0.1:{port}/chat")), "{text}");
                assert!(!text.contains("s3cret"), "{text}");
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("connected to nothing"),
        }
    }

    async fn node(url: &str, name: &str) -> SessionStore {
        SessionStore::connect(url, name).await.expect("connects")
    }

    #[tokio::test]
    async fn servers_starting_together_migrate_once() {
        let url = super::super::test_postgres::database();
        let (a, b, c) = tokio::join!(node(&url, "a"), node(&url, "b"), node(&url, "c"));
        let conversation = untitled(&a).await;
        assert_eq!(
            c.get(conversation.id.clone()).await.expect("shared"),
            conversation
        );
        let Backend::Postgres(store) = &*b.backend else {
            unreachable!()
        };
        assert_eq!(
            postgres::schema_version(store).await,
            postgres::MIGRATIONS.len() as i64
        );
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_with_both_versions() {
        let url = super::super::test_postgres::database();
        let a = node(&url, "a").await;
        let Backend::Postgres(store) = &*a.backend else {
            unreachable!()
        };
        postgres::query_i64(
            store,
            "UPDATE smolbot_schema SET version = 99 RETURNING 0::bigint",
        )
        .await;
        match SessionStore::connect(&url, "b").await {
            Err(ServiceError::SchemaTooNew { found: 99, known }) => {
                assert_eq!(known, MIGRATIONS.len() as i64);
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("a newer schema was accepted"),
        }
    }

    #[tokio::test]
    async fn two_servers_sending_at_once_store_one_turn_and_refuse_the_other() {
        let url = super::super::test_postgres::database();
        let (a, b) = (node(&url, "a").await, node(&url, "b").await);
        let c = untitled(&a).await;
        for round in 0..5 {
            let (from_a, from_b) = tokio::join!(
                a.commit_turn(c.id.clone(), ask("from a")),
                b.commit_turn(c.id.clone(), ask("from b")),
            );
            let (winner, loser, refused) = match (from_a, from_b) {
                (Ok(turn), Err(err)) => (&a, "b", (turn, err)),
                (Err(err), Ok(turn)) => (&b, "a", (turn, err)),
                (a, b) => panic!("round {round}: {:?} / {:?}", a.is_ok(), b.is_ok()),
            };
            let ((_, draft), err) = refused;
            match err {
                ServiceError::AnsweringElsewhere { id, node } => {
                    assert_eq!(id, c.id);
                    assert_ne!(node, loser, "names the server writing the answer");
                }
                other => panic!("round {round}: {other}"),
            }
            let shown = a.messages(c.id.clone()).await.expect("messages");
            assert_eq!(
                shown.len(),
                2 * (round + 1),
                "nothing of the refused turn stored"
            );
            winner
                .update_message(draft.id, finished("done"))
                .await
                .expect("answer");
        }
    }

    #[tokio::test]
    async fn another_server_sees_the_draft_grow_and_cannot_send_meanwhile() {
        let url = super::super::test_postgres::database();
        let (a, b) = (node(&url, "a").await, node(&url, "b").await);
        let c = untitled(&a).await;
        let (_, draft) = a.commit_turn(c.id.clone(), ask("Hi")).await.expect("turn");
        let partial = MessageUpdate {
            status: MessageStatus::Generating,
            finish_reason: None,
            ..finished("Hel")
        };
        a.update_message(draft.id, partial).await.expect("partial");
        let seen = b.messages(c.id.clone()).await.expect("messages");
        assert_eq!(
            (seen[1].status, seen[1].content.as_str()),
            (MessageStatus::Generating, "Hel")
        );
        for refused in [
            b.commit_turn(c.id.clone(), ask("Again")).await.map(|_| ()),
            b.resume(c.id.clone(), draft.id, finished("x"))
                .await
                .map(|_| ()),
        ] {
            assert!(
                matches!(&refused, Err(ServiceError::AnsweringElsewhere { node, .. }) if node == "a"),
                "{refused:?}"
            );
        }
        // Nor can it write into the draft another server writes.
        assert!(matches!(
            b.update_message(draft.id, finished("mine")).await,
            Err(ServiceError::MessageNotFound { .. })
        ));
        a.update_message(draft.id, finished("Hello"))
            .await
            .expect("done");
        b.commit_turn(c.id.clone(), ask("Again"))
            .await
            .expect("free again");
    }

    /// The follower's next change; a minute without one is a failure, not a hang.
    async fn change(
        follower: &mut crate::services::elsewhere::Elsewhere,
    ) -> crate::services::elsewhere::DraftChange {
        tokio::time::timeout(std::time::Duration::from_secs(60), follower.next())
            .await
            .expect("a change within a minute")
            .expect("not over")
            .expect("no error")
    }

    #[tokio::test]
    async fn another_server_hears_each_save_and_follows_the_draft_to_its_end() {
        use crate::services::elsewhere::{DraftChange, Elsewhere};
        let url = super::super::test_postgres::database();
        let (a, b) = (node(&url, "a").await, node(&url, "b").await);
        let c = untitled(&a).await;
        let (_, draft) = a.commit_turn(c.id.clone(), ask("Hi")).await.expect("turn");
        let generating = |text: &str| MessageUpdate {
            status: MessageStatus::Generating,
            finish_reason: None,
            ..finished(text)
        };
        a.update_message(draft.id, generating("Hel"))
            .await
            .expect("partial");

        let mut heard = b
            .announcements()
            .await
            .expect("listens")
            .expect("PostgreSQL announces saves");
        let mut follower = Elsewhere::find(&b, &c.id)
            .await
            .expect("reads")
            .expect("a draft written elsewhere");
        assert_eq!(
            change(&mut follower).await,
            DraftChange::Content("Hel".into())
        );
        a.update_message(draft.id, generating("Hello, w"))
            .await
            .expect("more");
        // The save is announced (a follower does not wait for its next look).
        let announced = tokio::time::timeout(std::time::Duration::from_secs(60), heard.recv())
            .await
            .expect("announced within a minute")
            .expect("received");
        assert_eq!(announced, c.id);
        assert_eq!(
            change(&mut follower).await,
            DraftChange::Content("lo, w".into())
        );
        a.update_message(draft.id, finished("Hello, world"))
            .await
            .expect("done");
        assert_eq!(
            change(&mut follower).await,
            DraftChange::Content("orld".into())
        );
        match change(&mut follower).await {
            DraftChange::Done(message) => {
                assert_eq!(message.status, MessageStatus::Complete);
                assert_eq!(message.content, "Hello, world");
            }
            other => panic!("expected the end, got {other:?}"),
        }
        assert!(follower.next().await.is_none(), "nothing after the end");
        // Nothing is being written now: nothing to follow; nor on SQLite, ever.
        assert!(Elsewhere::find(&b, &c.id).await.expect("reads").is_none());
        let local = SessionStore::in_memory().expect("store");
        assert!(local.announcements().await.expect("none").is_none());
    }

    #[tokio::test]
    async fn a_starting_server_interrupts_only_its_own_and_abandoned_drafts() {
        let url = super::super::test_postgres::database();
        let a = node(&url, "a").await;
        let (mine, theirs) = (untitled(&a).await, untitled(&a).await);
        a.commit_turn(mine.id.clone(), ask("mine"))
            .await
            .expect("turn");
        let b = node(&url, "b").await;
        b.commit_turn(theirs.id.clone(), ask("theirs"))
            .await
            .expect("turn");
        drop(a);
        // `a` starts again: its own draft is interrupted, `b`'s keeps going.
        let a = node(&url, "a").await;
        let status = |s: &SessionStore, id: &str| {
            let (s, id) = (s.clone(), id.to_owned());
            async move { s.messages(id).await.expect("messages")[1].status }
        };
        assert_eq!(status(&a, &mine.id).await, MessageStatus::Interrupted);
        assert_eq!(status(&a, &theirs.id).await, MessageStatus::Generating);
        // A third server starting leaves `b`'s live draft alone too.
        node(&url, "c").await;
        assert_eq!(status(&a, &theirs.id).await, MessageStatus::Generating);
        // Closing `a` stops nothing of `b`'s.
        assert_eq!(a.close().await.expect("close"), 0);
        assert_eq!(status(&b, &theirs.id).await, MessageStatus::Generating);
    }

    #[tokio::test]
    async fn a_draft_whose_claim_ran_out_is_interrupted_with_its_text() {
        let url = super::super::test_postgres::database();
        // A server whose claims expire at once: as one that died and renews nothing.
        let dead = SessionStore::connect_with_lease(&url, "dead".into(), std::time::Duration::ZERO)
            .await
            .expect("connects");
        let c = untitled(&dead).await;
        let (_, draft) = dead
            .commit_turn(c.id.clone(), ask("Hi"))
            .await
            .expect("turn");
        let partial = MessageUpdate {
            status: MessageStatus::Generating,
            finish_reason: None,
            ..finished("half an ans")
        };
        dead.update_message(draft.id, partial)
            .await
            .expect("partial");
        let b = node(&url, "b").await;
        let seen = b.messages(c.id.clone()).await.expect("messages");
        assert_eq!(
            (seen[1].status, seen[1].content.as_str()),
            (MessageStatus::Interrupted, "half an ans")
        );
        b.commit_turn(c.id.clone(), ask("Again"))
            .await
            .expect("the conversation is free");
    }
}
