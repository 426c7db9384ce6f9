//! Tools the server runs itself, offered to the model when a conversation enables them:
//! `calculator` (exact arithmetic, [`calculator`]) and `current_time` (the clock in UTC or
//! at a fixed offset, [`time`]).
//!
//! This module is the tools' contract and nothing else: their definitions for the prompt
//! ([`builtin_specs`]), a test for whether a call is ours ([`is_builtin`]) and running one
//! ([`run_builtin`]). The turn loop that offers them, runs the model's calls and feeds the
//! results back as tool messages (at most [`MAX_TOOL_ROUNDS`] times) belongs to the caller.
//!
//! A call that fails is not a server error: [`ToolError`]'s message is written for the
//! model, which sees it as the tool message and can correct its call.

pub mod calculator;
pub mod time;

use chrono::{DateTime, Utc};
use serde_json::{json, Value as Json};

use crate::services::chat::json_kind;
use crate::smollm3::tool_calls::ToolCall;

/// Rounds of "the model calls tools, the server answers them" in one turn before the model
/// must answer without tools: enough for a calculation that needs a step or two, and a
/// bound on a model that keeps calling.
pub const MAX_TOOL_ROUNDS: usize = 4;

/// The calculator's name, as the model calls it.
pub const CALCULATOR: &str = "calculator";

/// The clock's name, as the model calls it.
pub const CURRENT_TIME: &str = "current_time";

/// Why a built-in tool call gave no result. Each message is meant for the model: the
/// caller puts it into the tool message as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("there is no built-in tool named `{name}`; the built-in tools are `calculator` and `current_time`")]
    UnknownTool { name: String },
    #[error("bad arguments for `{tool}`: {problem}")]
    BadArguments { tool: &'static str, problem: String },
    #[error("cannot read the expression at character {position}: {problem}")]
    Parse { position: usize, problem: String },
    #[error("the expression has {chars} characters; the calculator takes at most {limit}")]
    ExpressionTooLong { chars: usize, limit: usize },
    #[error(
        "the expression nests parentheses, signs or powers more than {limit} deep \
         (at character {position})"
    )]
    TooDeep { position: usize, limit: usize },
    #[error("division by zero")]
    DivisionByZero,
    #[error(
        "a number in the calculation is too large: numerators and denominators must stay \
         within ±170141183460469231731687303715884105727 (about 1.7e38) for exact results"
    )]
    TooLarge,
    #[error("the exponent {exponent} is not an integer; only integer powers are exact")]
    ExponentNotInteger { exponent: String },
    #[error(
        "the exponent {exponent} is too large; exponents must be between -{limit} and {limit}"
    )]
    ExponentTooLarge { exponent: i128, limit: i128 },
    #[error(
        "unknown time zone `{given}`: this server has no time-zone database, so give \"UTC\" \
         or a fixed offset from UTC such as \"+02:00\", \"-05:30\" or \"UTC+2\""
    )]
    UnknownTimezone { given: String },
    #[error("the offset `{given}` is out of range: offsets from UTC run from -14:00 to +14:00")]
    OffsetOutOfRange { given: String },
}

/// The built-in tools as function definitions for the chat template's tool list: objects
/// with `name`, `description` and a JSON-schema `parameters`, the shape SmolLM3's chat
/// template lists.
pub fn builtin_specs() -> Vec<Json> {
    vec![
        json!({
            "name": CALCULATOR,
            "description": "Exact arithmetic on numbers with + - * / ^ and parentheses, \
                            e.g. \"(1.5 + 2) * 3^2\". Returns the exact result: an integer, \
                            a decimal, or a fraction with its decimal approximation.",
            "parameters": {
                "type": "object",
                "properties": {
                    "expression": {
                        "type": "string",
                        "description": "The arithmetic expression to evaluate"
                    }
                },
                "required": ["expression"]
            }
        }),
        json!({
            "name": CURRENT_TIME,
            "description": "The current date, time and weekday.",
            "parameters": {
                "type": "object",
                "properties": {
                    "timezone": {
                        "type": "string",
                        "description": "\"UTC\" (the default) or a fixed offset from UTC \
                                        such as \"+02:00\" or \"UTC-5\""
                    }
                },
                "required": []
            }
        }),
    ]
}

/// Whether `name` is one of the built-in tools, so its call is the server's to run.
pub fn is_builtin(name: &str) -> bool {
    name == CALCULATOR || name == CURRENT_TIME
}

/// Runs a built-in tool call now and returns the tool message's content as plain text:
///
/// - `calculator`: the exact result, `1024`, `0.3` or `1/3 ≈ 0.333333333333`;
/// - `current_time`: `2026-11-26T21:16:47+02:00 (Thursday, UTC+02:00)`.
///
/// On error, the error's message is the tool message's content.
pub fn run_builtin(call: &ToolCall) -> Result<String, ToolError> {
    run_builtin_at(call, Utc::now())
}

/// [`run_builtin`] with the clock given, for deterministic tests.
pub fn run_builtin_at(call: &ToolCall, now: DateTime<Utc>) -> Result<String, ToolError> {
    match call.name.as_str() {
        CALCULATOR => {
            let expression = string_argument(call, CALCULATOR, "expression")?.ok_or_else(|| {
                ToolError::BadArguments {
                    tool: CALCULATOR,
                    problem: "`expression` is required, e.g. {\"expression\": \"2 + 2\"}"
                        .to_owned(),
                }
            })?;
            calculator::calculate(expression)
        }
        CURRENT_TIME => {
            let timezone = string_argument(call, CURRENT_TIME, "timezone")?;
            time::current_time(now, timezone)
        }
        other => Err(ToolError::UnknownTool {
            name: other.to_owned(),
        }),
    }
}

/// The string argument `key` of `call`, `None` when absent or null. Arguments other than
/// the tool's own are ignored.
fn string_argument<'a>(
    call: &'a ToolCall,
    tool: &'static str,
    key: &str,
) -> Result<Option<&'a str>, ToolError> {
    let bad = |problem: String| ToolError::BadArguments { tool, problem };
    let arguments = match &call.arguments {
        Json::Null => return Ok(None),
        Json::Object(arguments) => arguments,
        other => {
            return Err(bad(format!(
                "arguments must be a JSON object, got {}",
                json_kind(other)
            )))
        }
    };
    match arguments.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(value)) => Ok(Some(value)),
        Some(other) => Err(bad(format!(
            "`{key}` must be a string, got {}",
            json_kind(other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn call(name: &str, arguments: Json) -> ToolCall {
        ToolCall {
            name: name.to_owned(),
            arguments,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 26, 19, 16, 47)
            .single()
            .expect("valid time")
    }

    #[test]
    fn specs_name_both_tools_in_the_template_shape() {
        let specs = builtin_specs();
        let names: Vec<&str> = specs.iter().filter_map(|s| s["name"].as_str()).collect();
        assert_eq!(names, [CALCULATOR, CURRENT_TIME]);
        for spec in &specs {
            assert!(spec["description"].is_string(), "{spec}");
            assert_eq!(spec["parameters"]["type"], "object", "{spec}");
            assert!(is_builtin(spec["name"].as_str().unwrap_or_default()));
        }
        assert_eq!(specs[0]["parameters"]["required"], json!(["expression"]));
        assert!(specs[0]["parameters"]["properties"]["expression"].is_object());
        assert!(specs[1]["parameters"]["properties"]["timezone"].is_object());
        assert!(!is_builtin("calculate"));
        assert!(!is_builtin("get_weather"));
    }

    #[test]
    fn runs_the_calculator_and_the_clock() {
        let run = |c: ToolCall| run_builtin_at(&c, now());
        assert_eq!(
            run(call(CALCULATOR, json!({"expression": "17 * (3+4)"}))),
            Ok("119".to_owned())
        );
        assert_eq!(
            run(call(
                CALCULATOR,
                json!({"expression": "1/3", "note": "ignored"})
            )),
            Ok("1/3 ≈ 0.333333333333".to_owned())
        );
        assert_eq!(
            run(call(CURRENT_TIME, json!({}))),
            Ok("2026-11-26T19:16:47+00:00 (Thursday, UTC)".to_owned())
        );
        assert_eq!(
            run(call(CURRENT_TIME, Json::Null)),
            Ok("2026-11-26T19:16:47+00:00 (Thursday, UTC)".to_owned())
        );
        assert_eq!(
            run(call(CURRENT_TIME, json!({"timezone": "UTC+2"}))),
            Ok("2026-11-26T21:16:47+02:00 (Thursday, UTC+02:00)".to_owned())
        );
        // The real clock gives the same shape.
        let live = run_builtin(&call(CURRENT_TIME, json!({}))).expect("time");
        assert!(
            live.ends_with("UTC)") && live.contains("+00:00 ("),
            "{live}"
        );
    }

    /// A call as the model writes it, parsed by the tool-call parser, runs as is.
    #[test]
    fn runs_a_call_parsed_from_model_output() {
        let answer = "Let me compute.\n<tool_call>\n{\"name\": \"calculator\", \
                      \"arguments\": {\"expression\": \"0.1 + 0.2\"}}\n</tool_call>";
        let parsed = crate::smollm3::tool_calls::parse_tool_calls(answer);
        let call = &parsed.tool_calls[0];
        assert!(is_builtin(&call.name));
        assert_eq!(run_builtin_at(call, now()), Ok("0.3".to_owned()));
    }

    #[test]
    fn each_error_has_a_message_for_the_model() {
        let run = |c: ToolCall| run_builtin_at(&c, now()).expect_err("an error");
        for (error, words) in [
            (
                run(call("calculate", json!({}))),
                "no built-in tool named `calculate`",
            ),
            (run(call(CALCULATOR, json!({}))), "`expression` is required"),
            (
                run(call(CALCULATOR, json!({"expression": 2}))),
                "`expression` must be a string, got a number",
            ),
            (
                run(call(CALCULATOR, json!(["1+1"]))),
                "arguments must be a JSON object, got an array",
            ),
            (
                run(call(CURRENT_TIME, json!({"timezone": 2}))),
                "`timezone` must be a string",
            ),
            (
                run(call(CALCULATOR, json!({"expression": "1 +"}))),
                "at character 4",
            ),
            (
                run(call(CALCULATOR, json!({"expression": "1/0"}))),
                "division by zero",
            ),
            (
                run(call(CALCULATOR, json!({"expression": "10^100"}))),
                "too large",
            ),
            (
                run(call(CALCULATOR, json!({"expression": "2^0.5"}))),
                "not an integer",
            ),
            (
                run(call(CALCULATOR, json!({"expression": "2^99999999"}))),
                "between -10000 and 10000",
            ),
            (
                run(call(CALCULATOR, json!({"expression": "1".repeat(1001)}))),
                "at most 1000",
            ),
            (
                run(call(CURRENT_TIME, json!({"timezone": "Europe/Paris"}))),
                "no time-zone database",
            ),
            (
                run(call(CURRENT_TIME, json!({"timezone": "+15:00"}))),
                "-14:00 to +14:00",
            ),
        ] {
            let message = error.to_string();
            assert!(message.contains(words), "{message:?} lacks {words:?}");
        }
    }
}
