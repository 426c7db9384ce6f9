//! The agent loop's parts apart from the run: which round still offers the built-in tools,
//! running the model's calls and storing their results, and the request for the next round.
//!
//! A run (`runs`) drives the loop: after a round that ends calling only built-in
//! tools it stores the call, [`answer_calls`] runs the tools and stores one tool message per
//! call, and [`ToolLoop::next_round`] submits the next round. Kept apart so the rules (at
//! most `max_rounds` rounds of tool execution, then an answer without tools) are plain
//! functions with tests of their own, and the run stays about logs and saving.

use super::chat::{ChatMessage, ChatRequest, Role, ToolChoice};
use super::engine::{Engine, GenerationStream};
use super::error::ServiceError;
use super::sessions::{
    ConversationSettings, MessageStatus, NewMessage, SessionStore, StoredToolCall,
};
use super::tools::{builtin_specs, is_builtin, run_builtin, MAX_TOOL_ROUNDS};

/// Whether a conversation's answers run the built-in tools; off unless the setting says so,
/// since offering tools changes the prompt and a model may call them unasked.
pub fn builtin_tools_on(settings: &ConversationSettings) -> bool {
    settings.builtin_tools.unwrap_or(false)
}

/// Whether generation round `round` (0 for the first) offers the tools: rounds
/// `0..max_rounds` may call them, so at most `max_rounds` rounds of calls are run, and the
/// round after the last allowed one must answer in text.
pub fn offers_tools(round: usize, max_rounds: usize) -> bool {
    round < max_rounds
}

/// Whether a round's calls are the server's to run: there are some, and all are built-in.
/// One call to a tool the server does not have stops the loop, and the calls are shown.
pub fn runs_calls(calls: &[StoredToolCall]) -> bool {
    !calls.is_empty() && calls.iter().all(|call| is_builtin(&call.name))
}

/// The result of one built-in call, as the tool message stores it and the log shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    /// The id of the call it answers.
    pub call_id: String,
    pub name: String,
    /// The result, or the error's message written for the model.
    pub content: String,
    pub is_error: bool,
}

/// Runs `calls` one after another off the async runtime; each result answers its call's
/// id. A tool that panics gives an error result rather than taking the run down.
pub async fn run_calls(calls: &[StoredToolCall]) -> Vec<ToolResult> {
    let mut results = Vec::with_capacity(calls.len());
    for call in calls {
        let owned = call.call();
        let outcome = match tokio::task::spawn_blocking(move || run_builtin(&owned)).await {
            Ok(result) => result.map_err(|err| err.to_string()),
            Err(err) => {
                tracing::error!("the built-in tool `{}` failed: {err}", call.name);
                Err(format!(
                    "the `{}` tool failed on these arguments",
                    call.name
                ))
            }
        };
        let (content, is_error) = match outcome {
            Ok(content) => (content, false),
            Err(message) => (message, true),
        };
        results.push(ToolResult {
            call_id: call.id.clone(),
            name: call.name.clone(),
            content,
            is_error,
        });
    }
    results
}

/// Runs `calls` ([`run_calls`]) and stores one tool message per call in `conversation`,
/// handing each result to `stored` once it is in the store, so whoever sees a result finds
/// it in the conversation. The error says, for the user, which result could not be saved.
pub async fn answer_calls(
    store: &SessionStore,
    conversation: &str,
    calls: &[StoredToolCall],
    mut stored: impl FnMut(ToolResult),
) -> Result<Vec<ToolResult>, String> {
    let results = run_calls(calls).await;
    for result in &results {
        let message = NewMessage {
            tool_call_id: Some(result.call_id.clone()).filter(|id| !id.is_empty()),
            ..NewMessage::text(Role::Tool, result.content.clone())
        };
        if let Err(err) = store.append(conversation.to_owned(), message).await {
            tracing::error!("a tool result could not be saved: {err}");
            return Err(format!(
                "the result of `{}` could not be saved: {err}",
                result.name
            ));
        }
        stored(result.clone());
    }
    Ok(results)
}

/// Appends an empty `generating` assistant message for the next round's answer and
/// returns its id: the draft the run writes the answer into as it grows.
pub async fn next_draft(store: &SessionStore, conversation: &str) -> Result<i64, String> {
    let draft = NewMessage {
        status: MessageStatus::Generating,
        ..NewMessage::text(Role::Assistant, "")
    };
    match store.append(conversation.to_owned(), draft).await {
        Ok(draft) => Ok(draft.id),
        Err(err) => {
            tracing::error!("the next answer's draft could not be saved: {err}");
            Err(format!("the next answer could not be saved: {err}"))
        }
    }
}

/// What a run needs to go on after a round of built-in calls: the engine and the request
/// so far, which grows by each round's call and results.
pub struct ToolLoop {
    engine: Engine,
    request: ChatRequest,
    max_rounds: usize,
    /// Generation rounds submitted so far (the first by the caller).
    round: usize,
}

impl ToolLoop {
    /// The loop over `request`, the first round's request as submitted (it offers
    /// [`builtin_specs`], see [`with_builtin_tools`]); at most [`MAX_TOOL_ROUNDS`] rounds.
    pub fn new(engine: Engine, request: ChatRequest) -> Self {
        Self {
            engine,
            request,
            max_rounds: MAX_TOOL_ROUNDS,
            round: 0,
        }
    }

    /// At most `max_rounds` rounds of tool execution (small in tests).
    pub fn with_max_rounds(mut self, max_rounds: usize) -> Self {
        self.max_rounds = max_rounds;
        self
    }

    /// Whether the round that just ended offered the tools, so its calls may run.
    pub fn offered(&self) -> bool {
        offers_tools(self.round, self.max_rounds)
    }

    /// Submits the next round: the request so far, the round's call (`content` and
    /// `calls`) and its `results` as tool messages; tools are offered while
    /// [`offers_tools`] allows, and left out (`tool_choice` none) after.
    pub async fn next_round(
        &mut self,
        content: &str,
        calls: &[StoredToolCall],
        results: &[ToolResult],
    ) -> Result<GenerationStream, ServiceError> {
        self.request.messages.push(ChatMessage {
            role: Role::Assistant,
            content: content.trim().to_owned(),
            tool_calls: calls.iter().map(StoredToolCall::call).collect(),
        });
        for result in results {
            self.request
                .messages
                .push(ChatMessage::new(Role::Tool, result.content.clone()));
        }
        self.round += 1;
        let mut request = self.request.clone();
        if !offers_tools(self.round, self.max_rounds) {
            request.tool_choice = ToolChoice::None;
        }
        self.engine.generate(request).await
    }
}

/// `request` offering the built-in tools in place of any others: only calls the server can
/// run keep the loop going.
pub fn with_builtin_tools(mut request: ChatRequest) -> ChatRequest {
    request.tools = builtin_specs();
    request
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::runs::{RunEvent, Runs};
    use serde_json::{json, Value as Json};

    fn call(name: &str, arguments: Json) -> StoredToolCall {
        StoredToolCall {
            id: format!("call_{name}"),
            name: name.to_owned(),
            arguments,
        }
    }

    #[test]
    fn tools_are_offered_for_max_rounds_then_not() {
        let offered: Vec<bool> = (0..6).map(|round| offers_tools(round, 4)).collect();
        assert_eq!(offered, [true, true, true, true, false, false]);
        assert!(!offers_tools(0, 0), "a max of 0 never offers them");
    }

    #[test]
    fn only_calls_that_are_all_built_in_run() {
        let calc = call("calculator", json!({"expression": "1+1"}));
        let weather = call("get_weather", json!({"location": "Lyon"}));
        assert!(runs_calls(std::slice::from_ref(&calc)));
        assert!(!runs_calls(&[]));
        assert!(!runs_calls(&[calc.clone(), weather.clone()]));
        assert!(!runs_calls(&[weather]));
    }

    #[tokio::test]
    async fn results_answer_their_call_ids_and_errors_are_text() {
        let mut calls = [
            call("calculator", json!({"expression": "17 * (3+4)"})),
            call("calculator", json!({"expression": "1/0"})),
        ];
        calls[0].id = "call_a".into();
        calls[1].id = "call_b".into();
        let results = run_calls(&calls).await;
        assert_eq!(
            results[0],
            ToolResult {
                call_id: "call_a".into(),
                name: "calculator".into(),
                content: "119".into(),
                is_error: false,
            }
        );
        assert_eq!(results[1].call_id, "call_b");
        assert!(results[1].is_error);
        assert_eq!(results[1].content, "division by zero");
    }

    /// A run on the stub whose every round offering tools calls the calculator
    /// (`tool_choice` required), at most `max_rounds` times.
    async fn calculator_loop(
        tokens_per_second: f64,
        max_rounds: usize,
    ) -> (Runs, String, std::sync::Arc<crate::services::runs::Run>) {
        let (engine, runs, conversation) =
            crate::services::runs::tests::setup(tokens_per_second).await;
        let request = with_builtin_tools(ChatRequest {
            messages: vec![ChatMessage::new(Role::User, "What is 17 * (3+4)?")],
            tool_choice: crate::services::chat::ToolChoice::Required,
            ..ChatRequest::default()
        });
        let prepared = engine.codec().prepare(&request).expect("prepare");
        let tools = ToolLoop::new(engine.clone(), request).with_max_rounds(max_rounds);
        let draft = crate::services::runs::tests::draft(&runs, &conversation).await;
        let run = runs.reserve(&conversation).expect("free").start_with_tools(
            engine.submit(prepared).expect("submit"),
            draft,
            true,
            Some(tools),
        );
        (runs, conversation, run)
    }

    /// Stopped right after the first result, the run ends `stopped` and every stored call
    /// has a tool message answering each of its ids.
    #[tokio::test]
    async fn a_stop_inside_the_loop_leaves_no_call_without_its_result() {
        let (runs, conversation, run) = calculator_loop(200.0, 4).await;
        let mut subscription = run.subscribe(0);
        let mut stopped = false;
        while let Some(entry) = subscription.next().await {
            match &entry.event {
                RunEvent::ToolResult(_) if !stopped => {
                    run.stop().expect("live");
                    stopped = true;
                }
                RunEvent::Stopped => assert!(stopped),
                _ => {}
            }
        }
        assert!(stopped, "a result came before the end");
        let messages = runs.store().messages(conversation).await.expect("messages");
        assert!(messages.len() >= 2, "{messages:#?}");
        for (index, message) in messages.iter().enumerate() {
            let calls = &message.tool_calls;
            if calls.is_empty() || message.status != MessageStatus::Complete {
                continue;
            }
            let answers: Vec<Option<&str>> = messages[index + 1..]
                .iter()
                .take_while(|m| m.role == Role::Tool)
                .map(|m| m.tool_call_id.as_deref())
                .collect();
            let ids: Vec<Option<&str>> = calls.iter().map(|c| Some(c.id.as_str())).collect();
            assert_eq!(answers, ids, "{messages:#?}");
        }
        let calls = messages.iter().filter(|m| !m.tool_calls.is_empty()).count();
        assert!(calls < 4, "the stop ended the loop early: {messages:#?}");
    }

    /// With `tool_choice` required the stub calls the calculator in every round that
    /// offers tools, so the loop runs exactly `max` rounds of calls and then answers in text.
    #[tokio::test]
    async fn the_loop_stops_offering_tools_after_its_maximum_of_rounds() {
        let (runs, conversation, run) = calculator_loop(0.0, 2).await;
        assert!(run.runs_tools());
        let mut subscription = run.subscribe(0);
        let mut log = Vec::new();
        while let Some(entry) = subscription.next().await {
            log.push(entry);
        }
        let results: Vec<&ToolResult> = log
            .iter()
            .filter_map(|e| match &e.event {
                RunEvent::ToolResult(result) => Some(result),
                _ => None,
            })
            .collect();
        assert_eq!(results.len(), 2, "{log:?}");
        assert!(results.iter().all(|r| r.content == "119" && !r.is_error));
        let messages = runs
            .store()
            .messages(conversation.clone())
            .await
            .expect("messages");
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        use Role::{Assistant, Tool};
        assert_eq!(roles, [Assistant, Tool, Assistant, Tool, Assistant]);
        for (call, result) in [(&messages[0], &messages[1]), (&messages[2], &messages[3])] {
            assert_eq!(call.tool_calls[0].name, "calculator");
            assert_eq!(call.finish_reason.as_deref(), Some("tool_calls"));
            let id = Some(call.tool_calls[0].id.as_str());
            assert_eq!(result.tool_call_id.as_deref(), id);
            assert_eq!(result.content, "119");
        }
        let last = &messages[4];
        assert!(last.tool_calls.is_empty(), "the last round had no tools");
        assert_eq!(last.finish_reason.as_deref(), Some("stop"));
        assert!(last.content.contains("119"), "{}", last.content);
        assert!(matches!(
            log.last().map(|e| &e.event),
            Some(RunEvent::Saved(Ok(saved))) if saved.id == last.id
        ));
    }

    #[test]
    fn the_setting_is_off_unless_set() {
        assert!(!builtin_tools_on(&ConversationSettings::default()));
        assert!(builtin_tools_on(&ConversationSettings {
            builtin_tools: Some(true),
            ..ConversationSettings::default()
        }));
    }
}
