"""Stripe-style form parameters: decode `a[b]=c` bodies, refuse unknown ones, read typed values."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl

from flashsale.stripe_sim.api_errors import StripeApiError, invalid, missing, unknown

Params = dict[str, object]

KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
INTEGER = re.compile(r"^-?\d{1,18}$")
MAX_FIELDS = 1000
METADATA_MAX_KEYS = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500


def parse_form(raw: bytes | str, into: Params | None = None) -> Params:
    """Decode an application/x-www-form-urlencoded body into nested dicts and lists."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        pairs = parse_qsl(
            text, keep_blank_values=True, strict_parsing=True, max_num_fields=MAX_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise invalid(
            "Invalid request: the body must be application/x-www-form-urlencoded "
            "parameters, e.g. amount=2000&currency=usd"
        ) from None
    params: Params = {} if into is None else into
    for key, value in pairs:
        put(params, key, value)
    return params


def put(params: Params, key: str, value: str) -> None:
    """Place one `a[b][]=v` pair in params, refusing a name used both as value and as object."""
    match = KEY.match(key)
    if not match:
        raise unknown(key)
    path = [match.group(1)]
    if match.group(2):
        path += match.group(2)[1:-1].split("][")
    node: object = params
    for depth, segment in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if segment:  # only `a[]` appends; `a[0]` arrives as dict keys and is fine too
                raise invalid(f"Invalid array: {key}", path[0])
            if last:
                node.append(value)
                return
            child: object = {}
            node.append(child)
            node = child
            continue
        assert isinstance(node, dict)
        if last:
            if isinstance(node.get(segment), dict | list):
                raise invalid(f"Invalid value for {key}: it is also given as an object", path[0])
            node[segment] = value
            return
        nxt = node.get(segment)
        if nxt is None:
            nxt = [] if path[depth + 1] == "" else {}
            node[segment] = nxt
        elif not isinstance(nxt, dict | list):
            raise invalid(f"Invalid value for {key}: it is also given as a plain value", path[0])
        node = nxt


def refuse_unknown(params: Params, allowed: Iterable[str], prefix: str = "") -> None:
    allowed_set = allowed if isinstance(allowed, set | frozenset) else set(allowed)
    for name in params:
        if name not in allowed_set:
            raise unknown(f"{prefix}[{name}]" if prefix else name)


def get_str(params: Params, name: str, required: bool = False, label: str = "") -> str | None:
    """A string value; '' counts as unset, as in Stripe's form encoding."""
    value = params.get(name)
    label = label or name
    if value is None or value == "":
        if required:
            raise missing(label)
        return None
    if not isinstance(value, str):
        raise invalid(f"Invalid string: {render_value(value)}", label)
    return value


def get_int(params: Params, name: str, required: bool = False) -> int | None:
    value = params.get(name)
    if value is None or (value == "" and not required):
        if required:
            raise missing(name)
        return None
    if not isinstance(value, str) or not INTEGER.match(value):
        raise StripeApiError(
            400,
            f"Invalid integer: {render_value(value)}",
            param=name,
            code="parameter_invalid_integer",
        )
    return int(value)


def get_bool(params: Params, name: str) -> bool | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if value not in ("true", "false"):
        raise invalid(f"Invalid boolean: {render_value(value)}", name)
    return value == "true"


def get_list(params: Params, name: str) -> list[object] | None:
    """An array parameter: a[]=x, a[0]=x (stripe-python's form) or a lone a=x."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value[key] for key in sorted(value, key=lambda k: (len(k), k))]
    return [value]


def get_metadata(params: Params, name: str = "metadata") -> dict[str, str] | None:
    """Stripe's metadata rules: up to 50 keys of 40 chars, values up to 500; '' unsets."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, dict):
        raise invalid("Invalid object", name)
    if len(value) > METADATA_MAX_KEYS:
        raise invalid(f"Invalid {name}: {name} cannot have more than 50 keys", name)
    metadata: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise invalid(f"Invalid string: {render_value(item)}", f"{name}[{key}]")
        if len(key) > METADATA_KEY_MAX:
            raise invalid(f"Invalid {name}: keys can be at most 40 characters long ({key!r})", name)
        if len(item) > METADATA_VALUE_MAX:
            raise invalid(
                f"Invalid {name}: values can be at most 500 characters long ({key!r})",
                f"{name}[{key}]",
            )
        if item:
            metadata[key] = item
    return metadata or None


def render_value(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {render_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    return str(value)
