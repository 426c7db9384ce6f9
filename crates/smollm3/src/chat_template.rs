//! SmolLM3's chat template, rendered as Hugging Face transformers renders it.
//!
//! The model was trained on prompts made by `tokenizer.apply_chat_template`, which runs the
//! template through Python's Jinja2 with transformers' settings; any byte that differs here
//! (a missing newline, `true` for `True`, a reordered tool schema) is a prompt the model never
//! saw. So the environment is set up as transformers sets up its own: `trim_blocks` and
//! `lstrip_blocks` on, a single trailing newline of the template dropped (Jinja2's default),
//! undefined values lenient, loop controls on, the globals `strftime_now` and
//! `raise_exception`, transformers' `tojson` (`json.dumps` with `ensure_ascii=False`), the
//! `{% generation %}` block as a plain wrapper, Python's string methods (`.replace`,
//! `.rstrip`, …), and Python's `str()` for `| string` and for printed values (see
//! [`super::pyformat`]).
//!
//! One departure remains: the `~` operator joins values with MiniJinja's own formatting, so
//! `"x" ~ true` gives `xtrue` where Jinja2 gives `xTrue`. SmolLM3's template only applies `~`
//! to strings.

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest, Serde, Value, ValueKind, ValueOrKwargs};
use minijinja::{
    escape_formatter, AutoEscape, Environment, Error, ErrorKind, Output, State, UndefinedBehavior,
};
use serde_json::{Map, Value as Json};

use super::error::Smollm3Error;
use super::pyformat::{self, JsonOptions};
use super::synthetic::CHAT_TEMPLATE;

/// Name under which the template is compiled; shows in error messages.
const TEMPLATE_NAME: &str = "chat_template";

/// Context key carrying [`RenderContext::today`] to `strftime_now`. A key of the render
/// context rather than state of the template, so one compiled template serves concurrent
/// renders with different dates.
const TODAY_KEY: &str = "__smolbot_strftime_now__";

/// A compiled chat template, ready to turn a conversation into the prompt text.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

/// What `apply_chat_template` is called with: the conversation and the keyword arguments
/// the template reads.
#[derive(Debug, Clone, Default)]
pub struct RenderContext {
    /// The conversation, each message a JSON object (`role`, `content`, …).
    pub messages: Vec<Json>,
    /// End the prompt with the opening of an assistant turn, for the model to continue.
    pub add_generation_prompt: bool,
    /// Thinking on or off; `None` leaves the template's default (on for SmolLM3).
    pub enable_thinking: Option<bool>,
    /// transformers' `tools` argument (JSON schemas); `None` passes Python's `None`.
    pub tools: Option<Json>,
    /// Tool schemas SmolLM3 is taught to call with `<tool_call>` JSON; `None` leaves it unset.
    pub xml_tools: Option<Json>,
    /// Tool signatures SmolLM3 is taught to call from `<code>` blocks; `None` leaves it unset.
    pub python_tools: Option<Json>,
    /// Any further keyword arguments (special tokens such as `bos_token`, `documents`, …).
    pub extra: Map<String, Json>,
    /// What `strftime_now` returns whatever its format, for reproducible prompts and tests;
    /// `None` formats the local clock as Python's `datetime.now().strftime` does.
    pub today: Option<String>,
}

impl RenderContext {
    /// A context for `messages` with every option at transformers' default.
    pub fn new(messages: Vec<Json>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }

    /// Builds a context from `apply_chat_template`'s keyword arguments as a JSON object, so
    /// callers holding a Python-style kwargs map need not sort it by hand. An
    /// `enable_thinking` that is not a boolean is passed on as given (a JSON `null` is Python's
    /// `None`, which the template reads as "off", unlike an absent one).
    pub fn from_kwargs(kwargs: &Map<String, Json>) -> Result<Self, Smollm3Error> {
        let mut ctx = Self::default();
        for (key, value) in kwargs {
            match (key.as_str(), value) {
                ("messages", Json::Array(messages)) => ctx.messages = messages.clone(),
                ("messages", other) => {
                    return Err(Smollm3Error::TemplateInput(format!(
                        "`messages` must be a list, not {other}"
                    )))
                }
                ("add_generation_prompt", Json::Bool(flag)) => ctx.add_generation_prompt = *flag,
                ("add_generation_prompt", other) => {
                    return Err(Smollm3Error::TemplateInput(format!(
                        "`add_generation_prompt` must be a boolean, not {other}"
                    )))
                }
                ("enable_thinking", Json::Bool(flag)) => ctx.enable_thinking = Some(*flag),
                ("tools", value) => ctx.tools = Some(value.clone()),
                ("xml_tools", value) => ctx.xml_tools = Some(value.clone()),
                ("python_tools", value) => ctx.python_tools = Some(value.clone()),
                _ => {
                    ctx.extra.insert(key.clone(), value.clone());
                }
            }
        }
        Ok(ctx)
    }

    /// The template's variables, laid out as transformers passes them: `messages`, `tools`
    /// and `documents` always defined (`None` by default), the rest only where given.
    fn to_value(&self) -> Value {
        let json = |value: &Json| Value::from(Serde(value));
        let mut pairs: Vec<(String, Value)> = vec![("documents".into(), Value::from(()))];
        pairs.extend(
            self.extra
                .iter()
                .map(|(key, value)| (key.clone(), json(value))),
        );
        pairs.push(("messages".into(), Value::from(Serde(&self.messages))));
        pairs.push((
            "tools".into(),
            self.tools.as_ref().map_or(Value::from(()), json),
        ));
        pairs.push((
            "add_generation_prompt".into(),
            Value::from(self.add_generation_prompt),
        ));
        if let Some(flag) = self.enable_thinking {
            pairs.push(("enable_thinking".into(), Value::from(flag)));
        }
        if let Some(tools) = &self.xml_tools {
            pairs.push(("xml_tools".into(), json(tools)));
        }
        if let Some(tools) = &self.python_tools {
            pairs.push(("python_tools".into(), json(tools)));
        }
        if let Some(today) = &self.today {
            pairs.push((TODAY_KEY.into(), Value::from(today.as_str())));
        }
        Value::from_pairs(pairs)
    }
}

impl ChatTemplate {
    /// Compiles a Jinja chat template (as found in `tokenizer.chat_template`).
    pub fn new(source: &str) -> Result<Self, Smollm3Error> {
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|err| Smollm3Error::TemplateCompile(describe(&err)))?;
        let mut env = Environment::new();
        env.set_syntax(syntax);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("string", string_filter);
        env.add_filter("tojson", tojson_filter);
        env.add_function("strftime_now", strftime_now);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))
            .map_err(|err| Smollm3Error::TemplateCompile(describe(&err)))?;
        Ok(Self { env })
    }

    /// SmolLM3's official template, for models whose file carries none.
    pub fn builtin() -> Result<Self, Smollm3Error> {
        Self::new(CHAT_TEMPLATE)
    }

    /// Renders the prompt text for `ctx`.
    pub fn render(&self, ctx: &RenderContext) -> Result<String, Smollm3Error> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|err| Smollm3Error::TemplateRender(describe(&err)))?;
        template
            .render(ctx.to_value())
            .map_err(|err| Smollm3Error::TemplateRender(describe(&err)))
    }
}

/// A MiniJinja error with its chain of causes, on one line.
fn describe(err: &Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Rewrites transformers' `{% generation %}…{% endgeneration %}` (an extension tag marking
/// assistant text for training masks; rendering just emits its body) into
/// `{% with %}…{% endwith %}`, MiniJinja's closest plain block: it renders its body, scopes
/// `set`s inside it like Jinja2's call block does, and keeps the tag's own whitespace control
/// (`-`, `+`, trim_blocks, lstrip_blocks), which deleting the tag would lose.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let (before, tag) = rest.split_at(start);
        out.push_str(before);
        match generation_tag(tag) {
            Some((replacement, consumed)) => {
                out.push_str(&replacement);
                rest = &tag[consumed..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `text` starts with a `generation` or `endgeneration` tag, its `with`/`endwith`
/// equivalent and the tag's length in bytes.
fn generation_tag(text: &str) -> Option<(String, usize)> {
    let body = &text[2..];
    let open_marker = body.strip_prefix(['-', '+']).map_or("", |_| &body[..1]);
    let after_marker = &body[open_marker.len()..];
    let name_start = after_marker.trim_start();
    let leading_space = &after_marker[..after_marker.len() - name_start.len()];
    let name_len = name_start.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    let replacement_name = match &name_start[..name_len] {
        "generation" => "with",
        "endgeneration" => "endwith",
        _ => return None,
    };
    let after_name = &name_start[name_len..];
    let close_start = after_name.trim_start();
    let trailing_space = &after_name[..after_name.len() - close_start.len()];
    let close_marker = close_start
        .strip_prefix(['-', '+'])
        .map_or("", |_| &close_start[..1]);
    if !close_start[close_marker.len()..].starts_with("%}") {
        return None;
    }
    let consumed = text.len() - close_start.len() + close_marker.len() + 2;
    let replacement = format!(
        "{{%{open_marker}{leading_space}{replacement_name}{trailing_space}{close_marker}%}}"
    );
    Some((replacement, consumed))
}

/// Prints values as Jinja2 does, through Python's `str()`, where that differs from
/// MiniJinja's formatting (`True`, `None`, `1e+16`, dict and list reprs).
fn python_formatter(out: &mut Output, state: &mut State, value: &Value) -> Result<(), Error> {
    if pyformat::formats_differently(value) {
        out.write_str(&pyformat::python_str(value)?)?;
        Ok(())
    } else {
        escape_formatter(out, state, value)
    }
}

/// Jinja2's `string` filter: Python's `str()`, so a dict becomes its repr. Strings pass
/// through unchanged (keeping their safe mark).
fn string_filter(value: &Value) -> Result<Value, Error> {
    if value.kind() == ValueKind::String {
        return Ok(value.clone());
    }
    Ok(Value::from(pyformat::python_str(value)?))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`: `json.dumps` with those options, positionally or by keyword.
fn tojson_filter(value: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let mut slots: [Option<Value>; 4] = Default::default();
    let mut kwargs = None;
    let mut position = 0;
    for arg in args.0 {
        let arg = arg.into_value();
        if arg.is_kwargs() {
            kwargs = Some(Kwargs::try_from(arg)?);
        } else {
            let slot = slots.get_mut(position).ok_or_else(|| {
                Error::new(
                    ErrorKind::TooManyArguments,
                    "tojson takes at most 4 arguments",
                )
            })?;
            *slot = Some(arg);
            position += 1;
        }
    }
    if let Some(kwargs) = kwargs {
        for (slot, name) in slots.iter_mut().zip(NAMES) {
            if let Some(given) = kwargs.get::<Option<Value>>(name)? {
                if slot.is_some() {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        format!("tojson got multiple values for argument '{name}'"),
                    ));
                }
                *slot = Some(given);
            }
        }
        kwargs.assert_all_used()?;
    }
    let [ensure_ascii, indent, separators, sort_keys] = slots;
    let options = JsonOptions {
        ensure_ascii: ensure_ascii.is_some_and(|flag| flag.is_true()),
        indent: indent.map(json_indent).transpose()?.flatten(),
        separators: separators.map(json_separators).transpose()?.flatten(),
        sort_keys: sort_keys.is_some_and(|flag| flag.is_true()),
    };
    Ok(Value::from(pyformat::python_json(value, &options)?))
}

/// `json.dumps`' `indent`: `None` for none, an int for that many spaces, a string as is.
fn json_indent(indent: Value) -> Result<Option<String>, Error> {
    match indent.kind() {
        ValueKind::None | ValueKind::Undefined => Ok(None),
        ValueKind::String => Ok(Some(indent.as_str().unwrap_or_default().to_owned())),
        ValueKind::Bool => Ok(Some(if indent.is_true() { " " } else { "" }.to_owned())),
        ValueKind::Number if indent.is_integer() => {
            let width = i64::try_from(indent)?;
            Ok(Some(" ".repeat(usize::try_from(width).unwrap_or(0))))
        }
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson indent must be an int or a string, not {kind}"),
        )),
    }
}

/// `json.dumps`' `separators`: `None`, or an `(item_separator, key_separator)` pair.
fn json_separators(separators: Value) -> Result<Option<(String, String)>, Error> {
    if separators.is_none() || separators.is_undefined() {
        return Ok(None);
    }
    let parts: Vec<Value> = separators.try_iter()?.collect();
    match parts.as_slice() {
        [item, key] => match (item.as_str(), key.as_str()) {
            (Some(item), Some(key)) => Ok(Some((item.to_owned(), key.to_owned()))),
            _ => Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson separators must be strings",
            )),
        },
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson separators must be a pair",
        )),
    }
}

/// transformers' `strftime_now(format)`: the local time formatted like Python's `strftime`,
/// or the render context's fixed `today` when one is set.
fn strftime_now(state: &State, format: &str) -> Result<String, Error> {
    if let Some(today) = state.lookup(TODAY_KEY) {
        if let Some(today) = today.as_str() {
            return Ok(today.to_owned());
        }
    }
    let items: Vec<chrono::format::Item<'_>> = chrono::format::StrftimeItems::new(format).collect();
    if items
        .iter()
        .any(|item| matches!(item, chrono::format::Item::Error))
    {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        ));
    }
    Ok(chrono::Local::now()
        .format_with_items(items.into_iter())
        .to_string())
}

/// transformers' `raise_exception(message)`: lets a template reject its input.
fn raise_exception(message: &str) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(source: &str, ctx: &RenderContext) -> String {
        ChatTemplate::new(source)
            .expect("compiles")
            .render(ctx)
            .expect("renders")
    }

    fn with_extra(pairs: Json) -> RenderContext {
        let Json::Object(extra) = pairs else {
            panic!("test context must be an object")
        };
        RenderContext {
            extra,
            ..RenderContext::default()
        }
    }

    #[test]
    fn string_filter_gives_python_repr_of_dicts_in_order() {
        let ctx = with_extra(
            json!({"tool": {"name": "f", "ok": true, "none": null, "xs": [1, 2.5, "it's"]}}),
        );
        assert_eq!(
            render("{{ tool | string }}", &ctx),
            "{'name': 'f', 'ok': True, 'none': None, 'xs': [1, 2.5, \"it's\"]}"
        );
    }

    #[test]
    fn printed_values_use_python_str() {
        let ctx = with_extra(
            json!({"flag": false, "nothing": null, "list": ["a"], "big": 1e16, "s": "x"}),
        );
        assert_eq!(
            render(
                "{{ flag }}|{{ nothing }}|{{ list }}|{{ big }}|{{ s }}|{{ missing }}",
                &ctx
            ),
            "False|None|['a']|1e+16|x|"
        );
        assert_eq!(
            render("{{ flag | string }}{{ missing | string }}", &ctx),
            "False"
        );
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let ctx = with_extra(json!({"v": {"b": "<é>", "a": [1, 2]}}));
        assert_eq!(
            render("{{ v | tojson }}", &ctx),
            "{\"b\": \"<é>\", \"a\": [1, 2]}"
        );
        assert_eq!(
            render("{{ v | tojson(indent=2, sort_keys=true) }}", &ctx),
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": \"<é>\"\n}"
        );
        assert_eq!(render("{{ v.b | tojson(true) }}", &ctx), "\"<\\u00e9>\"");
    }

    #[test]
    fn python_string_methods_work() {
        let ctx = with_extra(json!({"s": "\n /think hi /no_think  "}));
        assert_eq!(
            render(
                "[{{ s.replace('/no_think', '').replace('/think', '').rstrip() }}]",
                &ctx
            ),
            "[\n  hi]"
        );
        assert_eq!(
            render("[{{ s.lstrip('\\n') }}]", &ctx),
            "[ /think hi /no_think  ]"
        );
        assert_eq!(render("{{ s.strip().startswith('/think') }}", &ctx), "True");
        assert_eq!(render("{{ 'a,b'.split(',') }}", &ctx), "['a', 'b']");
    }

    #[test]
    fn containment_in_undefined_is_false() {
        assert_eq!(
            render("{{ 'x' in undefined_thing }}", &RenderContext::default()),
            "False"
        );
    }

    #[test]
    fn generation_block_renders_its_body_with_its_whitespace_control() {
        let source = "a\n  {% generation %}\nb\n  {%- endgeneration %}\nc";
        assert_eq!(render(source, &RenderContext::default()), "a\nbc");
        assert_eq!(
            rewrite_generation_tags("{%- generation -%}x{%+endgeneration%}{% if generation %}"),
            "{%- with -%}x{%+endwith%}{% if generation %}"
        );
    }

    #[test]
    fn trailing_newline_is_dropped_and_blocks_trimmed() {
        let source = "{% if true %}\n  yes\n  {% endif %}\nend\n";
        assert_eq!(render(source, &RenderContext::default()), "  yes\nend");
    }

    #[test]
    fn strftime_now_uses_the_fixed_date_or_the_clock() {
        let fixed = RenderContext {
            today: Some("01 January 2030".into()),
            ..RenderContext::default()
        };
        assert_eq!(
            render("{{ strftime_now('%d %B %Y') }}", &fixed),
            "01 January 2030"
        );
        let year = render("{{ strftime_now('%Y') }}", &RenderContext::default());
        assert_eq!(year.len(), 4);
        assert!(year.chars().all(|c| c.is_ascii_digit()));
        let bad = ChatTemplate::new("{{ strftime_now('%Q') }}").expect("compiles");
        assert!(matches!(
            bad.render(&RenderContext::default()),
            Err(Smollm3Error::TemplateRender(_))
        ));
    }

    #[test]
    fn raise_exception_fails_the_render_with_its_message() {
        let template =
            ChatTemplate::new("{{ raise_exception('no system role') }}").expect("compiles");
        match template.render(&RenderContext::default()) {
            Err(Smollm3Error::TemplateRender(message)) => {
                assert!(message.contains("no system role"))
            }
            other => panic!("expected a render error, got {other:?}"),
        }
    }

    #[test]
    fn template_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }

    #[test]
    fn broken_template_is_a_compile_error() {
        assert!(matches!(
            ChatTemplate::new("{% if %}"),
            Err(Smollm3Error::TemplateCompile(_))
        ));
    }

    #[test]
    fn from_kwargs_sorts_known_and_extra_arguments() {
        let Json::Object(kwargs) = json!({
            "messages": [{"role": "user", "content": "hi"}],
            "add_generation_prompt": true,
            "enable_thinking": null,
            "xml_tools": [],
            "bos_token": "<s>",
        }) else {
            panic!("object")
        };
        let ctx = RenderContext::from_kwargs(&kwargs).expect("valid kwargs");
        assert_eq!(ctx.messages.len(), 1);
        assert!(ctx.add_generation_prompt);
        assert_eq!(ctx.enable_thinking, None);
        assert_eq!(ctx.extra.get("enable_thinking"), Some(&Json::Null));
        assert_eq!(ctx.xml_tools, Some(json!([])));
        assert_eq!(ctx.extra.get("bos_token"), Some(&json!("<s>")));
        let Json::Object(bad) = json!({"messages": "hi"}) else {
            panic!("object")
        };
        assert!(matches!(
            RenderContext::from_kwargs(&bad),
            Err(Smollm3Error::TemplateInput(_))
        ));
    }

    #[test]
    fn builtin_template_renders_a_simple_turn() {
        let mut ctx = RenderContext::new(vec![json!({"role": "user", "content": "Hi"})]);
        ctx.add_generation_prompt = true;
        ctx.enable_thinking = Some(false);
        ctx.today = Some("26 November 2026".into());
        let prompt = ChatTemplate::builtin()
            .expect("compiles")
            .render(&ctx)
            .expect("renders");
        assert!(prompt.starts_with("<|im_start|>system\n## Metadata\n\n"));
        assert!(prompt.contains("Today Date: 26 November 2026\nReasoning Mode: /no_think\n"));
        assert!(prompt.ends_with(
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n"
        ));
    }
}
