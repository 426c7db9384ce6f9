//! The fallback for a server without `/v1/completions`: the conversation sent as OpenAI chat
//! messages to `/v1/chat/completions`, and its streamed deltas read back. The server's own
//! template renders the prompt then and its parsers split reasoning and tool calls; what it
//! leaves in the answer text (`<think>`, `<tool_call>` blocks) still goes through smolbot's
//! parser.

use std::collections::VecDeque;

use serde_json::{json, Map, Value};

use super::super::chat::{ChatRequest, Role, ToolChoice};
use super::super::truncation;
use crate::smollm3::tool_calls::ToolCall;

/// The chat completions body for `request`, `dropped` messages left out as its truncation
/// decided; sampling and limits are added by the caller.
pub fn body(request: &ChatRequest, dropped: usize) -> Value {
    let messages = truncation::kept(&request.messages, dropped);
    // OpenAI links a tool's result to its call by id; SmolLM3's turns link them by order.
    let mut pending = VecDeque::new();
    let messages: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let mut wire = json!({"role": message.role.as_str(), "content": message.content});
            if !message.tool_calls.is_empty() {
                let calls: Vec<Value> = message
                    .tool_calls
                    .iter()
                    .enumerate()
                    .map(|(k, call)| {
                        let id = format!("call_{i}_{k}");
                        pending.push_back(id.clone());
                        json!({"id": id, "type": "function", "function": {
                            "name": call.name, "arguments": call.arguments.to_string()}})
                    })
                    .collect();
                wire["tool_calls"] = json!(calls);
            }
            if message.role == Role::Tool {
                if let Some(id) = pending.pop_front() {
                    wire["tool_call_id"] = json!(id);
                }
            }
            wire
        })
        .collect();
    let mut body = json!({ "messages": messages });
    if request.tool_choice != ToolChoice::None && !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| json!({"type": "function", "function": tool}))
            .collect();
        body["tools"] = json!(tools);
        body["tool_choice"] = match &request.tool_choice {
            ToolChoice::Named(name) => json!({"type": "function", "function": {"name": name}}),
            ToolChoice::Required => json!("required"),
            ToolChoice::Auto | ToolChoice::None => json!("auto"),
        };
    }
    let mut kwargs: Map<String, Value> = request.template_kwargs.clone();
    if let Some(thinking) = request.enable_thinking {
        kwargs.insert("enable_thinking".into(), json!(thinking));
    }
    if !kwargs.is_empty() {
        body["chat_template_kwargs"] = Value::Object(kwargs);
    }
    if request.continue_final {
        body["continue_final_message"] = json!(true);
        body["add_generation_prompt"] = json!(false);
    }
    body
}

/// Tool calls streamed in pieces (OpenAI sends a call's arguments as string fragments).
#[derive(Debug, Default)]
pub struct CallPieces {
    calls: Vec<(String, String)>,
}

impl CallPieces {
    /// Adds a delta's `tool_calls` fragments.
    pub fn push(&mut self, fragments: &Value) {
        for fragment in fragments.as_array().into_iter().flatten() {
            let index = fragment["index"]
                .as_u64()
                .map_or(self.calls.len(), |i| i as usize);
            if self.calls.len() <= index {
                self.calls.resize_with(index + 1, Default::default);
            }
            let (name, arguments) = &mut self.calls[index];
            if let Some(part) = fragment["function"]["name"].as_str() {
                name.push_str(part);
            }
            if let Some(part) = fragment["function"]["arguments"].as_str() {
                arguments.push_str(part);
            }
        }
    }

    /// The whole calls; an error naming the first whose arguments are not a JSON object.
    pub fn finish(self) -> Result<Vec<ToolCall>, String> {
        self.calls
            .into_iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, arguments)| {
                let arguments = if arguments.trim().is_empty() {
                    json!({})
                } else {
                    serde_json::from_str::<Value>(&arguments)
                        .ok()
                        .filter(Value::is_object)
                        .ok_or_else(|| {
                            format!(
                                "the model's output could not be used: the arguments of its \
                                 call to `{name}` are not a JSON object: {arguments}"
                            )
                        })?
                };
                Ok(ToolCall { name, arguments })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::chat::ChatMessage;

    #[test]
    fn tool_results_are_linked_to_their_calls_in_order() {
        let mut asked = ChatMessage::new(Role::Assistant, "");
        asked.tool_calls = vec![
            ToolCall {
                name: "a".into(),
                arguments: json!({"x": 1}),
            },
            ToolCall {
                name: "b".into(),
                arguments: json!({}),
            },
        ];
        let request = ChatRequest {
            messages: vec![
                ChatMessage::new(Role::User, "q"),
                asked,
                ChatMessage::new(Role::Tool, "ra"),
                ChatMessage::new(Role::Tool, "rb"),
            ],
            tools: vec![json!({"name": "a", "parameters": {}})],
            enable_thinking: Some(false),
            ..ChatRequest::default()
        };
        let body = body(&request, 0);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(
            messages[1]["tool_calls"][0]["function"]["arguments"],
            "{\"x\":1}"
        );
        assert_eq!(
            messages[2]["tool_call_id"],
            messages[1]["tool_calls"][0]["id"]
        );
        assert_eq!(
            messages[3]["tool_call_id"],
            messages[1]["tool_calls"][1]["id"]
        );
        assert_eq!(body["tools"][0]["function"]["name"], "a");
        assert_eq!(body["tool_choice"], "auto");
        assert_eq!(body["chat_template_kwargs"]["enable_thinking"], false);
    }

    #[test]
    fn streamed_call_fragments_join_into_calls() {
        let mut pieces = CallPieces::default();
        pieces.push(
            &json!([{"index": 0, "id": "c", "function": {"name": "get_weather", "arguments": ""}}]),
        );
        pieces.push(&json!([{"index": 0, "function": {"arguments": "{\"city\": "}}]));
        pieces.push(&json!([{"index": 0, "function": {"arguments": "\"Paris\"}"}}]));
        let calls = pieces.finish().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].name, "get_weather");
        assert_eq!(calls[0].arguments, json!({"city": "Paris"}));

        let mut broken = CallPieces::default();
        broken.push(&json!([{"index": 0, "function": {"name": "f", "arguments": "{"}}]));
        assert!(broken.finish().unwrap_err().contains("`f`"));
    }
}
