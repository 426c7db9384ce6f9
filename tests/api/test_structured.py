"""Structured outputs through the `openai` client against the tiny synthetic model.

The tiny model has random weights: left alone it writes noise. Every reply below that
validates does so because the server's grammar mask left the model no other choice, which
`test_without_the_schema_the_same_requests_are_not_json` confirms on the same prompts and
seeds. Schemas bound their strings, numbers and arrays so that a random model finishes a
document well inside `max_tokens`.
"""

import json
from typing import List, Literal, Optional

import jsonschema
import pydantic
import pytest
from openai import BadRequestError, OpenAI

NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
MAX_TOKENS = 400


def obj(properties, required=None):
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


SHORT = {"type": "string", "maxLength": 6}

SCHEMAS = {
    "string_max_length": obj({"name": SHORT}),
    "string_min_max_length": {"type": "string", "minLength": 2, "maxLength": 4},
    "string_pattern": {"type": "string", "pattern": "^[a-z]{3}-[0-9]{2}$"},
    "pattern_in_object": obj({"code": {"type": "string", "pattern": "^[A-Z][0-9]{3}$"}}),
    "string_enum": {"enum": ["red", "green", "blue"]},
    "unicode_enum": obj({"word": {"enum": ["café", "über", "niño"]}}),
    "mixed_enum": {"enum": [1, "two", None, True]},
    "const": obj({"version": {"const": 3}, "kind": {"const": "point"}}),
    "integer_range": {"type": "integer", "minimum": -5, "maximum": 5},
    "integer_exclusive": obj({"n": {"type": "integer", "exclusiveMinimum": 10,
                                    "exclusiveMaximum": 20}}),
    "number_range": obj({"x": {"type": "number", "minimum": 0, "maximum": 1}}),
    "number_negative_range": obj({"t": {"type": "number", "minimum": -40, "maximum": -10}}),
    "boolean": obj({"ok": {"type": "boolean"}}),
    "null": obj({"nothing": {"type": "null"}}),
    "nullable_string": obj({"note": {"type": ["string", "null"], "maxLength": 4}}),
    "array_min_max": {"type": "array", "items": {"type": "integer", "minimum": 0,
                                                  "maximum": 9},
                      "minItems": 2, "maxItems": 4},
    "array_of_enums": obj({"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]},
                                    "minItems": 1, "maxItems": 3}}),
    "array_exact_length": {"type": "array", "items": {"type": "boolean"},
                           "minItems": 3, "maxItems": 3},
    "array_of_arrays": {"type": "array", "maxItems": 2,
                        "items": {"type": "array", "maxItems": 2,
                                  "items": {"type": "integer", "minimum": 0, "maximum": 99}}},
    "tuple": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0, "maximum": 9},
                                               {"enum": ["x", "y"]}],
              "items": False},
    "nested_objects": obj({"user": obj({"name": SHORT,
                                        "address": obj({"zip": {"type": "string",
                                                                "pattern": "^[0-9]{5}$"}})})}),
    "array_of_objects": obj({"points": {"type": "array", "minItems": 1, "maxItems": 3,
                                        "items": obj({"x": {"type": "integer", "minimum": 0,
                                                            "maximum": 9},
                                                      "y": {"type": "integer", "minimum": 0,
                                                            "maximum": 9}})}}),
    "optional_properties": obj({"id": {"type": "integer", "minimum": 1, "maximum": 999},
                                "label": SHORT, "flag": {"type": "boolean"}},
                               required=["id"]),
    "all_optional": obj({"a": {"type": "boolean"}, "b": {"type": "null"}}, required=[]),
    "any_of_scalars": {"anyOf": [SHORT, {"type": "integer", "minimum": 0, "maximum": 100}]},
    "any_of_objects": {"anyOf": [obj({"circle": {"type": "integer", "minimum": 1,
                                                 "maximum": 9}}),
                                 obj({"square": {"type": "integer", "minimum": 1,
                                                 "maximum": 9}})]},
    "any_of_in_array": {"type": "array", "maxItems": 3,
                        "items": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}},
    "all_of": {"allOf": [obj({"a": {"type": "integer", "minimum": 0, "maximum": 3}}),
                         {"type": "object"}]},
    "defs_and_ref": {"$defs": {"small": {"type": "integer", "minimum": 0, "maximum": 7}},
                     **obj({"first": {"$ref": "#/$defs/small"},
                            "second": {"$ref": "#/$defs/small"}})},
    "deep_nesting": obj({"a": obj({"b": obj({"c": obj({"d": {"enum": [1, 2]}})})})}),
    "mixed_record": obj({"sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"},
                         "qty": {"type": "integer", "minimum": 1, "maximum": 50},
                         "price": {"type": "number", "minimum": 0, "maximum": 100},
                         "in_stock": {"type": "boolean"},
                         "colour": {"enum": ["red", "blue"]}}),
    "type_union": obj({"v": {"type": ["integer", "boolean"], "minimum": 0, "maximum": 9}}),
}


def ask(server, **kwargs):
    client = OpenAI(base_url=server.base_url + "/v1", api_key="unused")
    kwargs.setdefault("extra_body", NO_THINKING)
    return client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "Answer in JSON."}],
        max_tokens=MAX_TOKENS,
        seed=7,
        **kwargs,
    )


def schema_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                    "strict": True}}


def test_at_least_thirty_schemas_are_covered():
    assert len(SCHEMAS) >= 30


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_replies_validate_against_their_schema(tiny_server, name):
    schema = SCHEMAS[name]
    reply = ask(tiny_server, response_format=schema_format(name, schema))
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", (choice.finish_reason, choice.message.content)
    value = json.loads(choice.message.content)
    jsonschema.validate(value, schema)


def test_without_the_schema_the_same_requests_are_not_json(tiny_server):
    # The schema does not change the prompt, so these are the requests above, unconstrained.
    for seed in (7, 3, 5, 11, 2):
        client = OpenAI(base_url=tiny_server.base_url + "/v1", api_key="unused")
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id,
            messages=[{"role": "user", "content": "Answer in JSON."}],
            max_tokens=MAX_TOKENS, seed=seed, extra_body=NO_THINKING)
        text = reply.choices[0].message.content
        with pytest.raises(ValueError):
            json.loads(text)


def test_json_object_gives_an_object(tiny_server):
    reply = ask(tiny_server, response_format={"type": "json_object"},
                temperature=0.0)
    choice = reply.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:
        # An open-ended object may outlast max_tokens; what came is an object's beginning.
        assert choice.message.content.startswith("{")


def test_llama_server_json_schema_field(tiny_server):
    schema = SCHEMAS["mixed_record"]
    reply = ask(tiny_server, extra_body={**NO_THINKING, "json_schema": schema})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_lark_grammar_field(tiny_server):
    grammar = 'start: "yes" | "no" | "maybe " NUM\nNUM: /[0-9]{1,2}/\n'
    reply = ask(tiny_server, extra_body={**NO_THINKING, "grammar": grammar})
    text = reply.choices[0].message.content
    assert text in ("yes", "no") or (text.startswith("maybe ") and text[6:].isdigit()), text


def test_streaming_reply_validates_too(tiny_server):
    schema = SCHEMAS["array_of_objects"]
    client = OpenAI(base_url=tiny_server.base_url + "/v1", api_key="unused")
    stream = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "Points?"}],
        max_tokens=MAX_TOKENS, seed=3, stream=True, extra_body=NO_THINKING,
        response_format=schema_format("points", schema))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    jsonschema.validate(json.loads(text), schema)


def test_reasoning_stays_free_and_the_answer_follows_the_schema(tiny_server):
    schema = SCHEMAS["string_enum"]
    client = OpenAI(base_url=tiny_server.base_url + "/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "Pick a colour."}],
        max_tokens=MAX_TOKENS, seed=5, response_format=schema_format("c", schema),
        extra_body={"thinking_budget": 8})
    message = reply.choices[0].message
    jsonschema.validate(json.loads(message.content), schema)


def test_unsupported_schema_is_a_400_naming_the_keyword(tiny_server):
    for keyword, schema in [("uniqueItems", {"type": "array", "uniqueItems": True}),
                            ("not", {"not": {"type": "string"}})]:
        with pytest.raises(BadRequestError) as err:
            ask(tiny_server, response_format=schema_format("bad", schema))
        assert err.value.status_code == 400
        assert keyword in str(err.value)
        assert err.value.body["param"] == "response_format"


def test_bad_grammar_is_a_400(tiny_server):
    with pytest.raises(BadRequestError) as err:
        ask(tiny_server, extra_body={**NO_THINKING, "grammar": "start: undefined_rule"})
    assert "undefined_rule" in str(err.value)


def test_two_formats_at_once_are_refused(tiny_server):
    with pytest.raises(BadRequestError) as err:
        ask(tiny_server, response_format={"type": "json_object"},
            extra_body={**NO_THINKING, "grammar": 'start: "x"'})
    assert "at most one" in str(err.value)


class Colour(pydantic.BaseModel):
    name: Literal["red", "green", "blue"]
    intensity: int = pydantic.Field(ge=0, le=10)


class Palette(pydantic.BaseModel):
    title: str = pydantic.Field(max_length=8)
    colours: List[Colour] = pydantic.Field(min_length=1, max_length=3)
    favourite: Optional[Literal["red", "green", "blue"]]


def test_openai_parse_with_a_pydantic_model(tiny_server):
    client = OpenAI(base_url=tiny_server.base_url + "/v1", api_key="unused")
    completion = client.beta.chat.completions.parse(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "A palette, please."}],
        response_format=Palette, max_tokens=MAX_TOKENS, seed=11, extra_body=NO_THINKING)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Palette)
    assert 1 <= len(parsed.colours) <= 3


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": obj({"city": {"enum": ["Paris", "Rome", "Oslo"]},
                           "unit": {"enum": ["c", "f"]},
                           "days": {"type": "integer", "minimum": 1, "maximum": 7}}),
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time",
                 "parameters": obj({"zone": {"type": "string", "pattern": "^UTC[+-][0-9]$"}})},
}


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_time"}}])
def test_forced_tool_calls_have_schema_valid_arguments(tiny_server, choice):
    reply = ask(tiny_server, tools=[WEATHER, CLOCK], tool_choice=choice)
    result = reply.choices[0]
    assert result.finish_reason == "tool_calls", result.message
    call = result.message.tool_calls[0]
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}
    if isinstance(choice, dict):
        assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), schema[call.function.name])


def test_completions_take_a_schema_too(tiny_server):
    client = OpenAI(base_url=tiny_server.base_url + "/v1", api_key="unused")
    schema = SCHEMAS["nested_objects"]
    reply = client.completions.create(
        model=client.models.list().data[0].id, prompt="JSON:", max_tokens=MAX_TOKENS,
        seed=2, extra_body={"response_format": schema_format("n", schema)})
    jsonschema.validate(json.loads(reply.choices[0].text), schema)
