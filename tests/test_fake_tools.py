"""The fake's function calling and structured output (demo/fake_tools.py), as frameworks use them today: the real
google-genai SDK (tools, automatic function calling, response schemas, systemInstruction on /v1 and /v1beta) and the
real openai SDK (tools, tool_choice, streamed tool calls, response_format), through Keyrack."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from google import genai
from google.genai import types
from pydantic import BaseModel

from proxy_service.demo import fake_tools
from tests.conftest import CLIENT_TOKEN, Proxy

FLASH = "gemini-2.5-flash"
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="The weather in a city",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={"city": types.Schema(type=types.Type.STRING), "days": types.Schema(type=types.Type.INTEGER)},
        required=["city"],
    ),
)
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}  # JSON Schema (openai)
TIME = types.FunctionDeclaration(name="get_time", parameters=types.Schema(type=types.Type.OBJECT, properties={}))


class Recipe(BaseModel):
    name: str
    servings: int
    vegetarian: bool
    ingredients: list[str]


def sdk(proxy: Proxy, version: str) -> genai.Client:
    return genai.Client(api_key=CLIENT_TOKEN, http_options=types.HttpOptions(base_url=proxy.url, api_version=version))


def no_auto(**kw: Any) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True), **kw
    )


@pytest.mark.parametrize("version", ["v1beta", "v1"])
def test_a_declared_function_is_called_then_its_answer_is_used(proxy: Proxy, version: str) -> None:
    client = sdk(proxy, version)
    tools = [types.Tool(function_declarations=[WEATHER])]
    asked = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")])
    first = client.models.generate_content(model=FLASH, contents=[asked], config=no_auto(tools=tools))
    calls = first.function_calls
    assert calls and calls[0].name == "get_weather" and calls[0].args is not None
    assert isinstance(calls[0].args["city"], str) and isinstance(calls[0].args["days"], int)
    answer = types.Part.from_function_response(name="get_weather", response={"temperature_c": 21})
    history = [asked, first.candidates[0].content, types.Content(role="user", parts=[answer])]  # type: ignore[index]
    second = client.models.generate_content(model=FLASH, contents=history, config=no_auto(tools=tools))
    assert second.text and not second.function_calls


def test_automatic_function_calling_and_calling_modes(proxy: Proxy) -> None:
    client = sdk(proxy, "v1")
    seen: list[str] = []

    def get_weather(city: str) -> dict[str, Any]:
        """The weather in a city."""
        seen.append(city)
        return {"temperature_c": 21}

    r = client.models.generate_content(
        model=FLASH, contents="Weather in Oslo?", config=types.GenerateContentConfig(tools=[get_weather])
    )
    assert len(seen) == 1 and r.text  # the SDK ran the function and sent its answer back; the model then answered
    both = [types.Tool(function_declarations=[WEATHER, TIME])]
    only_time = types.ToolConfig(
        function_calling_config=types.FunctionCallingConfig(
            mode=types.FunctionCallingConfigMode.ANY, allowed_function_names=["get_time"]
        )
    )
    for prompt in ("a", "b", "c", "d"):
        r = client.models.generate_content(
            model=FLASH, contents=prompt, config=no_auto(tools=both, tool_config=only_time)
        )
        assert [c.name for c in r.function_calls or []] == ["get_time"]
    off = types.ToolConfig(
        function_calling_config=types.FunctionCallingConfig(mode=types.FunctionCallingConfigMode.NONE)
    )
    r = client.models.generate_content(model=FLASH, contents="Weather?", config=no_auto(tools=both, tool_config=off))
    assert r.text and not r.function_calls


@pytest.mark.parametrize("version", ["v1beta", "v1"])
def test_structured_output_and_a_system_instruction(proxy: Proxy, version: str) -> None:
    client = sdk(proxy, version)
    config = types.GenerateContentConfig(
        system_instruction="You are a chef.", response_mime_type="application/json", response_schema=Recipe
    )
    r = client.models.generate_content(model=FLASH, contents="A soup recipe", config=config)
    assert isinstance(r.parsed, Recipe) and r.parsed.ingredients
    chunks = list(client.models.generate_content_stream(model=FLASH, contents="A soup recipe", config=config))
    assert Recipe.model_validate_json("".join(c.text or "" for c in chunks)) == r.parsed  # same prompt, same answer


def test_openai_tools_tool_choice_streams_and_response_format(proxy: Proxy) -> None:
    oa = openai.OpenAI(api_key=CLIENT_TOKEN, base_url=f"{proxy.url}/v1beta/openai")
    tools: list[Any] = [
        {"type": "function", "function": {"name": "get_weather", "parameters": CITY}},
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    ]
    messages: list[Any] = [{"role": "user", "content": "Weather in Rome?"}]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    r = oa.chat.completions.create(model=FLASH, messages=messages, tools=tools, tool_choice=choice)  # type: ignore[arg-type]
    call = r.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments)["city"], str)  # type: ignore[union-attr]
    messages += [r.choices[0].message, {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 19}'}]
    done = oa.chat.completions.create(model=FLASH, messages=messages, tools=tools)
    assert done.choices[0].message.content and not done.choices[0].message.tool_calls
    stream = oa.chat.completions.create(
        model=FLASH, messages=messages[:1], tools=tools, tool_choice="required", stream=True
    )
    deltas = [c.choices[0] for c in stream if c.choices]
    streamed = [t for d in deltas for t in d.delta.tool_calls or []]
    assert streamed and streamed[0].function.name in ("get_weather", "get_time")  # type: ignore[union-attr]
    assert deltas[-1].finish_reason == "tool_calls"
    assert (
        oa.chat.completions.create(model=FLASH, messages=messages[:1], tools=tools, tool_choice="none")
        .choices[0]
        .message.content
    )
    parsed = oa.chat.completions.parse(
        model=FLASH, messages=[{"role": "user", "content": "A recipe"}], response_format=Recipe
    )
    assert isinstance(parsed.choices[0].message.parsed, Recipe)


def test_schemas_in_both_spellings_give_values_of_their_types() -> None:
    gemini = {
        "type": "OBJECT",
        "properties": {
            "n": {"type": "INTEGER"},
            "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
            "kind": {"type": "STRING", "enum": ["a", "b"]},
        },
    }
    jsonschema = {
        "type": "object",
        "properties": {"n": {"type": ["integer", "null"]}, "x": {"type": "number"}, "ok": {"type": "boolean"}},
    }
    for seed in range(20):
        g = fake_tools.sample(gemini, seed)
        assert isinstance(g["n"], int) and all(isinstance(t, str) for t in g["tags"]) and g["kind"] in ("a", "b")
        j = fake_tools.sample(jsonschema, seed)
        assert isinstance(j["n"], int) and isinstance(j["x"], float) and isinstance(j["ok"], bool)
    deep: dict[str, Any] = {"type": "object", "properties": {}}
    deep["properties"]["self"] = deep  # recursive: cut at MAX_DEPTH, never endless
    assert json.dumps(fake_tools.sample(deep, 1)).count("self") == fake_tools.MAX_DEPTH + 1
