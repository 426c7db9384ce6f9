"""The OpenAI-compatible API as the official `openai` Python package sees it, against a real
`smolbot serve` process: the stub for behaviour (reasoning split, tool calls, errors, auth)
and the tiny synthetic model for the real engine's path.
"""

import json
import urllib.error
import urllib.request

import openai
import pytest

from conftest import API_KEY

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def client(server, key="unused"):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0,
                         timeout=60)


def post(server, path, body):
    """Raw POST: (status, parsed JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.base_url + path, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def ask(text):
    return [{"role": "user", "content": text}]


def test_models_lists_the_stub(stub_server):
    assert [m.id for m in client(stub_server).models.list()] == ["smolbot-stub"]


def test_chat_non_streaming_splits_reasoning_and_counts_usage(stub_server):
    reply = client(stub_server).chat.completions.create(
        model="smolbot-stub", messages=ask("Show me some Markdown"))
    choice = reply.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.reasoning_content.startswith("The user wrote")
    assert "<think>" not in choice.message.content
    assert "The user wrote" not in choice.message.content
    assert "```rust" in choice.message.content and "| Setting | Value |" in choice.message.content

    usage = reply.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    _, rendered = post(stub_server, "/apply-template", {"messages": ask("Show me some Markdown")})
    _, prompt = post(stub_server, "/tokenize", {"content": rendered["prompt"], "add_special": True})
    assert usage.prompt_tokens == len(prompt["tokens"])
    generated = (f"<think>\n{choice.message.reasoning_content}\n</think>\n"
                 f"{choice.message.content}")
    _, completion = post(stub_server, "/tokenize", {"content": generated})
    assert usage.completion_tokens == len(completion["tokens"])


def test_chat_streaming_matches_non_streaming(stub_server):
    api = client(stub_server)
    whole = api.chat.completions.create(model="smolbot-stub", messages=ask("Stream this"))
    chunks = list(api.chat.completions.create(
        model="smolbot-stub", messages=ask("Stream this"), stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                        for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert reasoning == whole.choices[0].message.reasoning_content
    assert content == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_thinking_can_be_switched_off(stub_server):
    for extra in ({"chat_template_kwargs": {"enable_thinking": False}},
                  {"enable_thinking": False}):
        reply = client(stub_server).chat.completions.create(
            model="smolbot-stub", messages=ask("hi"), extra_body=extra)
        message = reply.choices[0].message
        assert getattr(message, "reasoning_content", None) is None
        assert "| Thinking | off |" in message.content


def test_tool_call_round_trip(stub_server):
    api = client(stub_server)
    messages = ask("What's the weather in Paris?")
    first = api.chat.completions.create(model="smolbot-stub", messages=messages,
                                        tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id,
                     "content": json.dumps({"celsius": 18, "sky": "sunny"})})
    final = api.chat.completions.create(model="smolbot-stub", messages=messages,
                                        tools=[WEATHER_TOOL])
    assert final.choices[0].finish_reason == "stop"
    assert not final.choices[0].message.tool_calls
    assert '"celsius": 18' in final.choices[0].message.content


def test_streamed_tool_call_accumulates_in_the_client_helper(stub_server):
    with client(stub_server).chat.completions.stream(
            model="smolbot-stub", messages=ask("What is 12*(3+4)?"),
            tools=[{**WEATHER_TOOL, "function": {
                "name": "calculate",
                "parameters": {"type": "object",
                               "properties": {"expression": {"type": "string"}}}}}],
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "calculate"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {
        "expression": "12*(3+4)"}


def test_stop_and_max_tokens(stub_server):
    api = client(stub_server)
    short = api.chat.completions.create(model="smolbot-stub", messages=ask("hi"), max_tokens=4)
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 4
    cut = api.chat.completions.create(model="smolbot-stub", messages=ask("hi"),
                                      stop=["stub answer"],
                                      extra_body={"enable_thinking": False})
    assert cut.choices[0].message.content == "Here is a"
    assert cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("kwargs, status, param, words", [
    ({"messages": []}, 400, "messages", "at least one message"),
    ({"messages": ask("x"), "max_tokens": 0}, 400, "max_tokens", "between 1 and 65536"),
    ({"messages": ask("x"), "max_completion_tokens": 10**6}, 400, "max_completion_tokens",
     "between 1 and 65536"),
    ({"messages": ask("x"), "temperature": "hot"}, 400, "temperature", "invalid type"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role", "wizard"),
    ({"messages": ask("x"), "model": "gpt-4o"}, 404, "model", "does not exist"),
])
def test_errors_have_openai_shape(stub_server, kwargs, status, param, words):
    kwargs.setdefault("model", "smolbot-stub")
    with pytest.raises(openai.APIStatusError) as caught:
        client(stub_server).chat.completions.create(**kwargs)
    error = caught.value
    assert error.status_code == status
    assert error.param == param
    assert words in error.message
    assert error.type


def test_prompt_longer_than_the_context_names_both_lengths(stub_server):
    with pytest.raises(openai.BadRequestError) as caught:
        client(stub_server).chat.completions.create(
            model="smolbot-stub", messages=ask("lorem " * 70_000))
    assert caught.value.code == "context_length_exceeded"
    assert "the context holds 65,536" in caught.value.message
    assert "the prompt has " in caught.value.message


def test_malformed_json_gets_an_openai_error(stub_server):
    status, body = post(stub_server, "/v1/chat/completions", b'{"messages": [')
    assert status == 400
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert "not valid JSON" in body["error"]["message"]


def test_api_key(keyed_server):
    with pytest.raises(openai.AuthenticationError):
        client(keyed_server, key="wrong").models.list()
    with pytest.raises(openai.AuthenticationError):
        client(keyed_server, key="wrong").chat.completions.create(
            model="smolbot-stub", messages=ask("hi"))
    reply = client(keyed_server, key=API_KEY).chat.completions.create(
        model="smolbot-stub", messages=ask("hi"), max_tokens=3)
    assert reply.usage.completion_tokens == 3
    with urllib.request.urlopen(keyed_server.base_url + "/health", timeout=10) as r:
        assert r.status == 200


def test_tiny_model_through_the_real_engine(tiny_server):
    api = client(tiny_server)
    model = api.models.list().data[0].id
    assert model == "tiny-smollm3"
    kwargs = dict(model=model, messages=ask("Hello"), max_tokens=5, temperature=0,
                  extra_body={"enable_thinking": False})
    whole = api.chat.completions.create(**kwargs)
    # The tiny model's random weights spread its probability almost evenly over the vocabulary
    # (about -5.3 nats for the best token, no end token among the best three at any step), so
    # greedy decoding cannot end on its own within five tokens: the limit cuts it at exactly 5.
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 5
    _, rendered = post(tiny_server, "/apply-template", {"messages": ask("Hello"),
                                                        "enable_thinking": False})
    _, prompt = post(tiny_server, "/tokenize", {"content": rendered["prompt"],
                                                "add_special": True})
    assert whole.usage.prompt_tokens == len(prompt["tokens"])
    chunks = list(api.chat.completions.create(**kwargs, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    streamed = "".join((c.choices[0].delta.content or "") +
                       (getattr(c.choices[0].delta, "reasoning_content", None) or "")
                       for c in chunks if c.choices)
    message = whole.choices[0].message
    assert streamed == (getattr(message, "reasoning_content", None) or "") + (message.content or "")


def test_tool_choice_required_and_named_force_a_call(stub_server):
    api = client(stub_server)
    calculator = {"type": "function", "function": {
        "name": "calculator",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}
    reply = api.chat.completions.create(model="smolbot-stub", messages=ask("Tell me a joke"),
                                        tools=[WEATHER_TOOL, calculator],
                                        tool_choice="required")
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
    named = api.chat.completions.create(
        model="smolbot-stub", messages=ask("Tell me a joke"), tools=[WEATHER_TOOL, calculator],
        tool_choice={"type": "function", "function": {"name": "calculator"}})
    assert named.choices[0].message.tool_calls[0].function.name == "calculator"


def test_chat_logprobs_and_penalties(stub_server):
    reply = client(stub_server).chat.completions.create(
        model="smolbot-stub", messages=ask("hi"), max_tokens=3, logprobs=True,
        top_logprobs=2, presence_penalty=0.5, frequency_penalty=0.5)
    content = reply.choices[0].logprobs.content
    assert len(content) == 3
    assert all(entry.top_logprobs[0].token == entry.token for entry in content)


def test_text_completion_scores_the_prompt_like_lm_eval_asks(tiny_server):
    api = client(tiny_server)
    model = api.models.list().data[0].id
    reply = api.completions.create(model=model, prompt="The cat sat on the mat", echo=True,
                                   logprobs=1, max_tokens=1, temperature=0, seed=1234)
    choice = reply.choices[0]
    assert choice.text.startswith("The cat sat on the mat")
    lp = choice.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.tokens) == reply.usage.prompt_tokens + 1
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    # Greedy: the generated token is the best of its alternatives.
    assert lp.token_logprobs[-1] == max(lp.top_logprobs[-1].values())
    text = api.completions.create(model=model, prompt="Once upon a", max_tokens=4,
                                  temperature=0)
    # As in the chat test above: no end token comes first, the limit ends it.
    assert text.usage.completion_tokens == 4
    assert text.choices[0].finish_reason == "length"
