"""`truncation` on `/v1/chat/completions` through the official `openai` client (`extra_body`),
against `smolbot serve --stub --ctx-size 400`: a conversation longer than the context is
refused unless the request asks for its oldest exchanges to be dropped.
"""

import openai
import pytest

from conftest import Server

CONTEXT = 400
MAX_TOKENS = 20
MODEL = "smolbot-stub"


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    server = Server(["--stub", "--stub-tokens-per-second", "0", "--ctx-size", str(CONTEXT)],
                    tmp_path_factory.mktemp("logs") / "small.log")
    yield server
    server.stop()


def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0,
                         timeout=60)


def long_conversation():
    """A system prompt, three exchanges of about a third of the context each, a question."""
    messages = [{"role": "system", "content": "Be brief."}]
    for n in range(3):
        messages.append({"role": "user", "content": f"question {n} " + "word " * 110})
        messages.append({"role": "assistant", "content": f"answer {n}"})
    messages.append({"role": "user", "content": "And now?"})
    return messages


def test_a_conversation_over_the_context_is_refused_by_default(small_server):
    with pytest.raises(openai.BadRequestError) as refused:
        client(small_server).chat.completions.create(
            model=MODEL, messages=long_conversation(), max_tokens=MAX_TOKENS)
    error = refused.value.body
    assert error["code"] == "context_length_exceeded", error
    assert "the context holds 400" in error["message"], error
    with pytest.raises(openai.BadRequestError):
        client(small_server).chat.completions.create(
            model=MODEL, messages=long_conversation(), max_tokens=MAX_TOKENS,
            extra_body={"truncation": "disabled"})


def test_truncation_auto_drops_the_oldest_exchanges(small_server):
    reply = client(small_server).chat.completions.create(
        model=MODEL, messages=long_conversation(), max_tokens=MAX_TOKENS,
        extra_body={"truncation": "auto", "chat_template_kwargs": {"enable_thinking": False}})
    assert reply.choices[0].message.content
    assert reply.usage.prompt_tokens + MAX_TOKENS <= CONTEXT, reply.usage
    # The stub answers the last question it is sent: "And now?" stayed.
    assert reply.choices[0].message.content.startswith("Here is a stub answer to “A")


def test_truncation_auto_streams_too(small_server):
    stream = client(small_server).chat.completions.create(
        model=MODEL, messages=long_conversation(), max_tokens=MAX_TOKENS, stream=True,
        stream_options={"include_usage": True}, extra_body={"truncation": "auto"})
    chunks = list(stream)
    assert chunks[-1].usage.prompt_tokens + MAX_TOKENS <= CONTEXT


def test_an_unknown_truncation_is_a_clear_400(small_server):
    with pytest.raises(openai.BadRequestError) as refused:
        client(small_server).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}],
            extra_body={"truncation": "sometimes"})
    assert "truncation" in str(refused.value), refused.value
