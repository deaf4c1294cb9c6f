"""The simulated Gemini's function calling and structured output, on the native and the OpenAI-compatible surface.

What frameworks send today and how the fake answers it (deterministically: a prompt's hash picks every choice):
- Function calling. Native `tools[].functionDeclarations` (with `toolConfig.functionCallingConfig.mode` AUTO, ANY
  with `allowedFunctionNames`, or NONE) and OpenAI `tools[].function` (with `tool_choice` "auto", "required",
  "none" or one named function). Unless calling is off, a turn whose last message is not a tool's answer is
  answered with a call of one declared function, its arguments made from the declaration's parameter schema; once
  the conversation holds the function's answer (a `functionResponse` part, an OpenAI `tool` message) the model
  answers in text, as Gemini does.
- Structured output. `generationConfig.responseSchema` / `responseJsonSchema` with `responseMimeType:
  application/json`, and OpenAI `response_format` (`json_schema` with its schema, or `json_object`): the answer is a
  JSON document of that schema.
Schemas are read in both spellings Gemini takes: OpenAPI types in capitals (`OBJECT`, `STRING`) and JSON Schema's.
"""

from __future__ import annotations

import json
from typing import Any

from proxy_service.demo.fake_wire import bad

WORDS = ("alpha", "beacon", "cobalt", "delta", "ember", "fjord", "granite", "harbor")
MAX_DEPTH = 6  # a schema nested deeper than this (or recursive through $ref) gets null there


def sample(schema: Any, seed: int, depth: int = 0) -> Any:
    """A value of `schema` (a Gemini Schema or a JSON Schema object), the same for the same seed."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[seed % len(enum)]
    kind = schema.get("type")
    if isinstance(kind, list):  # JSON Schema: ["string", "null"]
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind or ("object" if "properties" in schema else "string")).lower()
    if kind == "object":
        props = schema.get("properties")
        props = props if isinstance(props, dict) else {}
        return {name: sample(sub, seed + i + 1, depth + 1) for i, (name, sub) in enumerate(props.items())}
    if kind == "array":
        return [sample(schema.get("items"), seed + i, depth + 1) for i in range(1 + seed % 3)]
    if kind == "integer":
        return seed % 100
    if kind == "number":
        return round((seed % 1000) / 10, 1)
    if kind == "boolean":
        return seed % 2 == 0
    if kind == "null":
        return None
    return f"{WORDS[seed % len(WORDS)]}-{seed % 97}"


def _declarations(body: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            decls = tool.get("functionDeclarations", tool.get("function_declarations"))
            out.extend(d for d in decls or [] if isinstance(d, dict) and isinstance(d.get("name"), str))
    return out


def _answered(contents: Any) -> bool:
    """The conversation's last turn carries a function's answer: the model now answers in text."""
    last = contents[-1] if isinstance(contents, list) and contents else None
    parts = last.get("parts") if isinstance(last, dict) else None
    return any(isinstance(p, dict) and ("functionResponse" in p or "function_response" in p) for p in parts or [])


def native_call(body: dict[str, Any], seed: int) -> dict[str, Any] | None:
    """The `functionCall` part's value the fake answers a native request with, or None for a text answer."""
    decls = _declarations(body)
    config = body.get("toolConfig", body.get("tool_config")) or {}
    calling = config.get("functionCallingConfig", config.get("function_calling_config")) or {}
    mode = str(calling.get("mode", "AUTO")).upper()
    if not decls or mode == "NONE" or _answered(body.get("contents")):
        return None
    allowed = calling.get("allowedFunctionNames", calling.get("allowed_function_names"))
    if isinstance(allowed, list) and allowed and mode == "ANY":
        decls = [d for d in decls if d["name"] in allowed]
        if not decls:
            raise bad(
                "* GenerateContentRequest.tool_config.function_calling_config.allowed_function_names: "
                "names no declared function.\n"
            )
    decl = decls[seed % len(decls)]
    schema = next(
        (decl[k] for k in ("parameters", "parametersJsonSchema", "parameters_json_schema") if k in decl), None
    )
    args = sample(schema, seed) if isinstance(schema, dict) else {}
    return {"name": decl["name"], "args": args if isinstance(args, dict) else {}}


def native_structured(cfg: dict[str, Any], seed: int) -> str | None:
    """The JSON text a native request's response schema asks for, or None without one."""
    if cfg.get("responseMimeType", cfg.get("response_mime_type")) != "application/json":
        return None
    schema = next(
        (
            cfg[k]
            for k in ("responseSchema", "response_schema", "responseJsonSchema", "response_json_schema")
            if k in cfg
        ),
        None,
    )
    return json.dumps(sample(schema, seed)) if isinstance(schema, dict) else None


def openai_call(body: dict[str, Any], seed: int) -> dict[str, Any] | None:
    """The tool call (`{"name", "arguments"}`, arguments as JSON text) an OpenAI chat request is answered with."""
    functions = [
        t["function"]
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
    ]
    choice = body.get("tool_choice", "auto")
    messages = body.get("messages") or []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if not functions or choice == "none" or last.get("role") == "tool":
        return None
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        functions = [f for f in functions if f["name"] == wanted]
        if not functions:
            raise bad(f"tool_choice names a function that is not in tools: {str(wanted)[:80]!r}.")
    f = functions[seed % len(functions)]
    args = sample(f.get("parameters"), seed) if isinstance(f.get("parameters"), dict) else {}
    return {"name": f["name"], "arguments": json.dumps(args if isinstance(args, dict) else {})}


def openai_config(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI request's `response_format` as the native generationConfig fields it stands for."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return {}
    if fmt.get("type") == "json_schema":
        inner = fmt.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if not isinstance(schema, dict):
            raise bad("response_format.json_schema.schema is required.")
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    if fmt.get("type") == "json_object":
        return {"responseMimeType": "application/json"}
    return {}
