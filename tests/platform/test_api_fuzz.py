"""Property-based fuzzing of every /api/v1 route in the URLconf (a new endpoint is fuzzed without
being listed here): random JSON bodies (huge integers, NaN, lone surrogates as escapes and as raw
bytes, deep nesting, raw bytes), bodies shaped like the documented request with real ids mixed in,
random path parameters and query strings, right and wrong methods, as a real user. The API never
answers 5xx and always answers JSON (but 204 and HEAD). A crash in a view raises here with its
traceback: Django's test client re-raises what a view raised."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from training.models import TrainingRun

from .test_api_schema import make_checkpoint, openapi_document
from .wire import datum_json, prompt_json

PREFIX = "api/v1/"
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- the routes, from the resolver ----------------------------------------------------------------


def _named_groups(regex: str) -> tuple[str, dict[str, str]]:
    """A `{name}` template of a route regex and each named group's own pattern."""
    template, groups, i = "", {}, 0
    while i < len(regex):
        if regex.startswith("(?P<", i):
            name = regex[i + 4 : regex.index(">", i)]
            start = j = regex.index(">", i) + 1
            depth = 1
            while depth:
                if regex[j] == "\\":
                    j += 1
                elif regex[j] == "(":
                    depth += 1
                elif regex[j] == ")":
                    depth -= 1
                j += 1
            groups[name] = regex[start : j - 1]
            template += "{" + name + "}"
            i = j
        else:
            template += regex[i]
            i += 1
    return template.removeprefix("^").removesuffix("$").removesuffix(r"\Z"), groups


def _route(prefix: str, pattern: URLPattern) -> dict:
    converters = getattr(pattern.pattern, "converters", {})
    if converters or hasattr(pattern.pattern, "_route"):  # path(): <converter:name>
        route = str(pattern.pattern)
        template = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)
        groups = {name: converter.regex for name, converter in converters.items()}
    else:  # re_path()
        template, groups = _named_groups(pattern.pattern.regex.pattern)
    cls = getattr(pattern.callback, "cls", None)
    methods = [m.upper() for m in getattr(cls, "http_method_names", [])] or ["GET", "POST"]
    return {"template": "/" + prefix + template, "groups": groups, "methods": methods}


def api_routes() -> list[dict]:
    found = []

    def walk(patterns, prefix: str) -> None:
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern) and prefix.startswith(PREFIX):
                found.append(_route(prefix, entry))

    walk(get_resolver().url_patterns, "")
    return found


ROUTES = api_routes()


def test_every_documented_operation_is_a_fuzzed_route(db):
    fuzzed = {route["template"] for route in ROUTES}
    documented = {path for path in openapi_document()["paths"] if path.startswith("/" + PREFIX)}
    assert documented - fuzzed == set() and len(ROUTES) >= 30


# ---- values ---------------------------------------------------------------------------------------

EDGE_INTS = [0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**30, -(10**400)]
surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
texts = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(codec="utf-8"), max_size=20),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=5), surrogates, st.text(max_size=5)),
    st.sampled_from(["", "\x00", "a\x00b", "tiny-llama", "tinker://x/weights/y", "../../etc/passwd", "é" * 300]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(EDGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 5e-324, -0.0]),
    texts,
)
keys = texts  # keys may hold lone surrogates too
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def deep(n: int, kind: str) -> str:
    return "[" * n + "]" * n if kind == "list" else '{"a":' * n + "1" + "}" * n


raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.builds(deep, st.integers(1, 40) | st.sampled_from([1000, 100_000]), st.sampled_from(["list", "dict"])),
    st.sampled_from(
        [b"", b"{", b"null", b"[]", b'"x"', b"1e999", b'{"a": NaN}', b'{"a": Infinity}', b"\xef\xbb\xbf{}"]
    ),
)


def from_openapi(node: Any, components: dict, ids: dict, key: str = "", depth: int = 0) -> st.SearchStrategy:
    """Values shaped by a documented schema (often right, sometimes wrong), real ids for id keys."""
    if "$ref" in node:
        node = components[node["$ref"].rsplit("/", 1)[1]]
    if "allOf" in node:
        node = node["allOf"][0]
        return from_openapi(node, components, ids, key, depth)
    wrong = json_values
    if key in ids:
        return st.one_of(*[st.sampled_from(ids[key])] * 4, wrong)
    kind = node.get("type")
    if depth > 5:
        return wrong
    if kind == "object" and "properties" in node:
        properties = {
            name: from_openapi(field, components, ids, name, depth + 1) for name, field in node["properties"].items()
        }
        required = set(node.get("required", []))
        shaped = st.fixed_dictionaries(
            {name: s for name, s in properties.items() if name in required},
            optional={name: s for name, s in properties.items() if name not in required},
        )
        return st.one_of(*[shaped] * 6, wrong)
    if kind == "object":
        values = from_openapi(node.get("additionalProperties") or {}, components, ids, "", depth + 1)
        return st.one_of(st.dictionaries(keys, values, max_size=3), wrong)
    if kind == "array":
        return st.one_of(
            st.lists(from_openapi(node.get("items", {}), components, ids, "", depth + 1), max_size=4), wrong
        )
    if "enum" in node:
        return st.one_of(st.sampled_from(node["enum"]), wrong)
    if kind == "integer":
        return st.one_of(st.integers(-2, 40), st.sampled_from(EDGE_INTS), wrong)
    if kind == "number":
        return st.one_of(st.floats(-10, 10), wrong)
    if kind == "boolean":
        return st.one_of(st.booleans(), wrong)
    if kind == "string":
        return st.one_of(texts, wrong)
    return wrong


def encode(value: Any, how: str) -> bytes:
    if how == "ascii":  # lone surrogates become \udXXX escapes; NaN/Infinity become their (non-JSON) tokens
        return json.dumps(value).encode()
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")  # raw, invalid UTF-8


def path_value(group: str, real: list[str]) -> st.SearchStrategy:
    random = [st.from_regex(re.compile(group), fullmatch=True).filter(lambda v: len(v) < 200), texts]
    return st.one_of(*[st.sampled_from(real)] * 3, *random) if real else st.one_of(*random)


def quoted(value: str) -> str:
    return quote(value, safe="/", errors="surrogatepass")


# ---- the world the fuzzed user sees ---------------------------------------------------------------


@pytest.fixture
def world(api, tmp_path, settings):
    """A session, model, sampler, futures and checkpoints of each type, whose ids the fuzz mixes in."""
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, long_poll_seconds=0.0)
    session = api.session()
    handle = api.post("create_model", {"session_id": session, "model_seq_id": 0, "base_model": "tiny-llama"})
    run = TrainingRun.objects.get(id=handle["model_id"])
    checkpoints = [make_checkpoint(run, kind, f"{kind}-1", tmp_path) for kind in ("training", "sampler", "external")]
    sampler = api.sampler(session, 0)
    fb = api.forward_backward(run.id, 1, [datum_json([3, 320, 265, 203])])
    paths = [c.tinker_path for c in checkpoints]
    ids = {
        "session_id": [session],
        "model_id": [run.id],
        "run_id": [run.id],
        "sampling_session_id": [sampler],
        "sampler_id": [sampler],
        "request_id": [handle["request_id"], fb["request_id"]],
        "checkpoint_id": [c.checkpoint_id for c in checkpoints],
        "tinker_path": paths,
        "path": [*paths, "new-name"],
        "model_path": paths,
        "base_model": ["tiny-llama"],
        "name": ["tiny-llama"],
        # whole valid parts, which random values seldom are
        "data": [[datum_json([3, 320, 265, 203])]],
        "prompt": [prompt_json([3, 320, 265])],
        "sampling_params": [{"max_tokens": 2}],
        "adam_params": [{"learning_rate": 1e-3}],
    }
    return World(api.client.client, ids, openapi_document())


@dataclasses.dataclass(repr=False)
class World:
    client: Any
    ids: dict[str, list[str]]
    document: dict

    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"World(ids={self.ids})"


def request_body(path: str, method: str, world: World) -> st.SearchStrategy:
    document = world.document
    operation = document["paths"].get(path, {}).get(method.lower(), {})
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    shaped = from_openapi(schema, document["components"]["schemas"], world.ids) if schema else json_values
    encoded = st.builds(
        encode, st.one_of(shaped, shaped, shaped, json_values), st.sampled_from(["ascii"] * 3 + ["raw"])
    )
    return st.one_of(encoded, encoded, encoded, raw_bodies)


def check(response, method: str, where: str) -> None:
    event(f"{method} {response.status_code}")  # see them with --hypothesis-show-statistics
    assert response.status_code < 500, (where, response.status_code, response.content[:500])
    assert response.status_code != 401, (where, "a real user's key was refused", response.content[:200])
    if response.status_code == 204 or method == "HEAD":
        return
    assert response["Content-Type"].startswith("application/json"), (where, response["Content-Type"])
    json.loads(response.content)


@pytest.mark.parametrize("route", ROUTES, ids=[r["template"].removeprefix("/" + PREFIX) for r in ROUTES])
@FUZZ
@given(data=st.data())
def test_fuzz_route(world, route, data):
    ids = world.ids
    params = {
        name: data.draw(path_value(group, ids.get(name, [])), label=name) for name, group in route["groups"].items()
    }
    path = route["template"].format(**{name: quoted(value) for name, value in params.items()})
    primary = st.sampled_from([m for m in route["methods"] if m != "OPTIONS"])
    method = data.draw(st.one_of(primary, primary, primary, st.sampled_from(ALL_METHODS)), label="method")
    query = data.draw(
        st.dictionaries(
            st.sampled_from(["limit", "offset", "format"]) | texts, texts | st.integers().map(str), max_size=3
        )
    )
    body = data.draw(request_body(route["template"], method, world), label="body")
    content_type = data.draw(st.sampled_from(["application/json", "text/plain", "multipart/form-data; boundary=x"]))
    url = path + ("?" + urlencode(query, errors="surrogatepass") if query else "")
    response = world.client.generic(method, url, body, content_type=content_type)
    check(response, method, f"{method} {url} {body[:300]!r}")


@FUZZ
@given(rest=st.lists(texts, min_size=1, max_size=4), method=st.sampled_from(ALL_METHODS))
def test_fuzz_unmatched_paths(world, rest, method):
    path = "/" + PREFIX + "/".join(quoted(part) for part in rest)
    response = world.client.generic(method, path, b"{}", content_type="application/json")
    check(response, method, f"{method} {path}")


def test_surrogate_in_a_key_is_a_400(api):
    response = api.client.client.post("/api/v1/optim_step", b'{"\\ud800": null}', content_type="application/json")
    assert response.status_code == 400 and json.loads(response.content)["field"]
