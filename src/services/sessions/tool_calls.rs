//! A tool call as the store keeps it — the id its result answers, the function's name and
//! its arguments as a JSON value — and the one conversion to and from OpenAI's wire form
//! (`{"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}`).
//!
//! The store, the tool loop and the page work on the typed call; only the edges that speak
//! OpenAI's format (the conversations API's JSON, the JSONL export and import, the chat
//! completions API) convert, and they all convert here, so they agree on ids and on how
//! arguments are written and read.

use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

use crate::smollm3::tool_calls::ToolCall;

/// Characters of a call id after `call_`, as OpenAI's ids are long.
const ID_CHARS: usize = 24;

/// One call an assistant message made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredToolCall {
    /// What the tool message with its result names in `tool_call_id`.
    pub id: String,
    pub name: String,
    /// The arguments as JSON (an object, as SmolLM3 writes them).
    pub arguments: Json,
}

impl StoredToolCall {
    /// `call` with a fresh id.
    pub fn new(call: ToolCall) -> Self {
        Self {
            id: fresh_id(),
            name: call.name,
            arguments: call.arguments,
        }
    }

    /// The call in the model's terms, as the chat template writes it back.
    pub fn call(&self) -> ToolCall {
        ToolCall {
            name: self.name.clone(),
            arguments: self.arguments.clone(),
        }
    }

    /// OpenAI's form: arguments as JSON text.
    pub fn to_wire(&self) -> Json {
        json!({
            "id": self.id,
            "type": "function",
            "function": { "name": self.name, "arguments": self.wire_arguments() },
        })
    }

    /// The arguments as OpenAI's `function.arguments` carries them: JSON text.
    pub fn wire_arguments(&self) -> String {
        self.arguments.to_string()
    }

    /// Reads OpenAI's form; a missing id gets a fresh one. The error names the field below
    /// the call (`function.name`, `function.arguments`).
    pub fn from_wire(value: &Json) -> Result<Self, String> {
        let function = value.get("function");
        let name = function
            .and_then(|f| f.get("name"))
            .and_then(Json::as_str)
            .ok_or("`function.name` is missing")?;
        let arguments = arguments_from_wire(function.and_then(|f| f.get("arguments")))
            .map_err(|err| format!("`function.arguments` is not JSON: {err}"))?;
        let id = value
            .get("id")
            .and_then(Json::as_str)
            .map_or_else(fresh_id, str::to_owned);
        Ok(Self {
            id,
            name: name.to_owned(),
            arguments,
        })
    }
}

/// A fresh call id, `call_` and random letters and digits.
pub fn fresh_id() -> String {
    format!(
        "call_{}",
        Alphanumeric.sample_string(&mut rand::rng(), ID_CHARS)
    )
}

/// Arguments as OpenAI clients send them: JSON text (empty means none), or a JSON value,
/// which some clients send instead.
pub fn arguments_from_wire(value: Option<&Json>) -> Result<Json, serde_json::Error> {
    match value {
        None | Some(Json::Null) => Ok(Json::Object(Map::new())),
        Some(Json::String(text)) if text.trim().is_empty() => Ok(Json::Object(Map::new())),
        Some(Json::String(text)) => serde_json::from_str(text),
        Some(other) => Ok(other.clone()),
    }
}

/// OpenAI's `tool_calls` array of `calls`; `null` when there are none, as OpenAI sends it.
pub fn wire_list(calls: &[StoredToolCall]) -> Json {
    if calls.is_empty() {
        return Json::Null;
    }
    Json::Array(calls.iter().map(StoredToolCall::to_wire).collect())
}

/// Serializes a message's calls in OpenAI's form, for the conversations API.
pub(super) fn serialize_wire<S: serde::Serializer>(
    calls: &[StoredToolCall],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    wire_list(calls).serialize(serializer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> StoredToolCall {
        StoredToolCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        }
    }

    #[test]
    fn the_wire_form_round_trips() {
        let wire = weather().to_wire();
        assert_eq!(wire["function"]["arguments"], json!("{\"city\":\"Paris\"}"));
        assert_eq!(wire["type"], json!("function"));
        assert_eq!(StoredToolCall::from_wire(&wire), Ok(weather()));
    }

    #[test]
    fn wire_arguments_may_be_text_a_value_or_nothing() {
        let read = |arguments: Json| {
            let wire = json!({"id": "c", "function": {"name": "f", "arguments": arguments}});
            StoredToolCall::from_wire(&wire).map(|c| c.arguments)
        };
        assert_eq!(read(json!("{\"x\": 1}")), Ok(json!({"x": 1})));
        assert_eq!(read(json!({"x": 1})), Ok(json!({"x": 1})));
        assert_eq!(read(json!("  ")), Ok(json!({})));
        assert_eq!(read(Json::Null), Ok(json!({})));
        let err = read(json!("{oops")).unwrap_err();
        assert!(err.contains("`function.arguments` is not JSON"), "{err}");
    }

    #[test]
    fn a_call_needs_a_name_and_gets_an_id() {
        let err = StoredToolCall::from_wire(&json!({"function": {}})).unwrap_err();
        assert!(err.contains("`function.name`"), "{err}");
        let call = StoredToolCall::from_wire(&json!({"function": {"name": "f"}})).unwrap();
        assert!(call.id.starts_with("call_") && call.id.len() == 5 + ID_CHARS);
        assert_eq!(wire_list(&[]), Json::Null);
    }
}
