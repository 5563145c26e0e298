"""Checks and messages shared by every configuration model of the package.

The lowest layer of configuration: it imports nothing of the package but its errors, so
both the transport's knobs (:mod:`langchain_fastpipe.transport._config`) and
:class:`~langchain_fastpipe.config.FastpipeConfig` use it without importing each other.

- :func:`check_base_url` is the one base-URL validator; it quotes the user's own value
  (:func:`quote_url`: no credentials, query or fragment) and suggests the URL they
  probably meant.
- :func:`field_error` renders a pydantic ``ValidationError`` of a knob model as
  ``<Owner>.<field> must be <range>, got <value>``, naming the field the user wrote
  (``ChatFastpipe.breaker_window``, or ``BreakerPolicy.window`` when built directly).
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails, PydanticCustomError

from langchain_fastpipe.errors import ConfigError

__all__ = [
    "TYPE_WORDS",
    "UrlProblem",
    "check_base_url",
    "field_error",
    "field_of",
    "has_credentials",
    "is_secret_name",
    "quote_url",
    "range_text",
    "redact_url",
    "show_value",
    "suggest",
    "url_error",
]

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SECRET_WORDS = frozenset({"key", "apikey", "secret", "token", "password", "passwd"})


def redact_url(url: str) -> str:
    """``scheme://host:port/path`` of ``url``: no credentials, query or fragment.

    Args:
        url: Any URL string (it may be malformed).

    Returns:
        The redacted form, safe for messages, logs and statistics.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        # Malformed (e.g. a bad port): keep only what is certainly not a secret.
        head, sep, rest = url.partition("://")
        netloc = rest.split("/", 1)[0].rsplit("@", 1)[-1] if sep else ""
        return f"{head}://{netloc}" if sep else "<unparseable url>"
    scheme = parts.scheme.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None:
        port = _DEFAULT_PORTS.get(scheme)
    netloc = f"{host}:{port}" if port is not None else host
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def quote_url(url: str) -> str:
    """``url`` as the user wrote it, less anything that may be a secret, for messages.

    Unlike :func:`redact_url` nothing is normalised (no lower-casing, default port or
    trailing-slash removal, and a scheme-less ``host:port`` stays as written), so a
    message can quote the user's own value. Credentials (``user:password@``, also in a
    scheme-less value) are dropped and a query or fragment becomes ``?<redacted>``.

    Args:
        url: Any string given as a URL (it may be malformed).

    Returns:
        The value to quote.
    """
    cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=-1)
    text = url if cut < 0 else url[:cut]
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = authority.rpartition("@")[2]
    quoted = f"{scheme}{sep}{authority}{slash}{path}"
    return quoted if cut < 0 else f"{quoted}{url[cut]}<redacted>"


class UrlProblem(NamedTuple):
    """Why a base URL was refused (see :func:`check_base_url`).

    Attributes:
        problem: What is wrong, e.g. ``"must use http or https"``.
        shown: The user's value as it may be quoted (:func:`quote_url`).
        hint: A valid URL the user probably meant, or None.
    """

    problem: str
    shown: str
    hint: str | None

    def hint_text(self) -> str:
        """``"; did you mean '<hint>'?"``, or ``""`` without a hint."""
        return f"; did you mean {self.hint!r}?" if self.hint is not None else ""


_BASE_URL_FORM = "http(s)://host[:port][/path]"
_SCHEME_SLASHES = re.compile(r"^(https?):/*(?=[^/])", re.IGNORECASE)


def _url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a base URL, or None."""
    if not url.strip():
        return f"must be {_BASE_URL_FORM} (e.g. 'http://localhost:8080')"
    if url != url.strip():
        return "has leading or trailing whitespace"
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme.lower() not in _DEFAULT_PORTS:
        return "must use http or https"
    if not parts.hostname:
        return "has no host"
    if any(c.isspace() for c in url):
        return "must not contain whitespace"
    if "?" in url or "#" in url:
        # Paths are appended to base_url, so a query would end up in the middle of the
        # URL; and a query may hold a key (``?api-key=...``): it is never shown.
        return "must not have a query or fragment (pass keys as headers, not in the URL)"
    return None


def _suggestion(url: str) -> str | None:
    """A valid base URL the user probably meant by ``url``, or None.

    Covers a missing scheme (``localhost:8080`` -> ``http://localhost:8080``), a scheme
    with too few slashes (``http:localhost``), ``//host`` and surrounding whitespace.
    Nothing is suggested for a value with credentials, a query or a fragment.
    """
    candidate = url.strip()
    if "://" not in candidate:
        if candidate.startswith("//"):
            candidate = "http:" + candidate
        elif match := _SCHEME_SLASHES.match(candidate):
            candidate = f"{match.group(1)}://{candidate[match.end() :]}"
        else:
            candidate = "http://" + candidate
    if candidate == url or any(c in candidate for c in "@?#"):
        return None
    return candidate if _url_problem(candidate) is None else None


def check_base_url(url: str) -> UrlProblem | None:
    """Check that ``url`` is ``http(s)://host[:port][/path]`` (credentials are allowed).

    Args:
        url: The base URL as the user gave it.

    Returns:
        None when it is valid, else the problem with the value to quote and a hint.
    """
    problem = _url_problem(url)
    if problem is None:
        return None
    hint = None if problem.startswith("must not have a query") else _suggestion(url)
    return UrlProblem(problem, quote_url(url), hint)


def has_credentials(url: str) -> bool:
    """Whether ``url`` carries ``user:password@`` (False for a malformed URL)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return bool(parts.username or parts.password)


def suggest(name: str, candidates: list[str]) -> str | None:
    """The nearest of ``candidates`` to ``name`` (difflib), or None.

    Args:
        name: What the user wrote.
        candidates: The valid names.
    """
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def is_secret_name(name: str) -> bool:
    """Whether a key named ``name`` (or ending a dotted path) holds a secret.

    A word of the name (``api_key``, ``token``, ``password``...) says so; ``max_tokens``
    is no secret.
    """
    leaf = name.rsplit(".", 1)[-1].lower()
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z0-9]+", leaf))


def show_value(value: Any, name: str) -> str:
    """A value for an error message: secrets redacted, URLs without credentials, short.

    Args:
        value: The value the user gave.
        name: The key it was given for (a secret's value is never shown).
    """
    if is_secret_name(name) or type(value).__name__ == "SecretStr":
        return "<redacted>"
    if isinstance(value, str) and ("://" in value or name.endswith("url")):
        value = quote_url(value)  # also a scheme-less ``user:key@host`` or ``host/v1?key=``
    if isinstance(value, (dict, list)) and len(repr(value)) > 80:
        return f"<{type(value).__name__}>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def range_text(metadata: list[Any]) -> str:
    """The allowed range of a field from its constraints, e.g. ``"between 1 and 1000"``.

    Args:
        metadata: The field's ``FieldInfo.metadata`` (``annotated_types`` bounds).
    """
    low: tuple[str, Any] | None = None
    high: tuple[str, Any] | None = None
    for meta in metadata:
        if isinstance(meta, Ge):
            low = (">=", meta.ge)
        elif isinstance(meta, Gt):
            low = (">", meta.gt)
        elif isinstance(meta, Le):
            high = ("<=", meta.le)
        elif isinstance(meta, Lt):
            high = ("<", meta.lt)
    if low is not None and high is not None and low[0] == ">=" and high[0] == "<=":
        return f"between {low[1]:g} and {high[1]:g}"
    return " and ".join(f"{op} {bound:g}" for op, bound in (b for b in (low, high) if b))


def field_of(root: type[BaseModel], loc: tuple[int | str, ...]) -> Any:
    """The ``FieldInfo`` at ``loc`` in a model tree, or None."""
    model: Any = root
    field = None
    for part in loc:
        if not isinstance(part, str):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = field.annotation
    return field


#: Words of pydantic's type errors, as "must be <words>".
TYPE_WORDS = {
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "list_type": "a list of strings",
    "finite_number": "a finite number",
}


#: Words of pydantic's type errors for :func:`field_error` (Python's own type names).
_KNOB_TYPE_WORDS = {
    "bool_type": "a bool",
    "bool_parsing": "a bool",
    "int_type": "an int",
    "int_parsing": "an int",
    "int_from_float": "an int",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a str",
    "list_type": "a list",
    "frozen_set_type": "a set",
}

#: pydantic's bound errors: (operator, context key).
_BOUNDS = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _is_float(field: Any) -> bool:
    """Whether a FieldInfo holds a float (or an optional one)."""
    annotation = getattr(field, "annotation", None)
    return annotation is float or float in typing.get_args(annotation)


def _dotted(loc: tuple[int | str, ...]) -> str:
    """``("limits", "max_connections")`` -> ``"limits.max_connections"``; indexes as [i]."""
    out = ""
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else (f"{out}.{part}" if out else part)
    return out


def field_error(
    exc: ValidationError,
    model: type[BaseModel],
    owner: str,
    names: Mapping[str, str] | None = None,
    *,
    prefix: str = "",
) -> ConfigError:
    """One ConfigError for a knob model's ValidationError, naming the user's own fields.

    Each problem reads ``<owner>.<field> must be <range>, got <value>``; several are
    joined with ``"; "``. A secret's value is never shown.

    Args:
        exc: The validation error.
        model: The model that was validated (its fields give the ranges).
        owner: The class the user built (``"ChatFastpipe"``, ``"EndpointConfig"``...).
        names: The user-facing field of each dotted path of ``model`` (for example
            ``{"breaker.window": "breaker_window"}``); a path not listed is shown as is.
        prefix: The path of ``model`` within the owner's (``"breaker"``), if nested.
    """
    names = names or {}
    lines = [
        _describe_field(err, model, owner, names, prefix) for err in exc.errors(include_url=False)
    ]
    return ConfigError("; ".join(lines))


def _describe_field(
    err: ErrorDetails, model: type[BaseModel], owner: str, names: Mapping[str, str], prefix: str
) -> str:
    """One problem of :func:`field_error`."""
    loc = tuple(err["loc"])
    path = _dotted((prefix, *loc) if prefix else loc)
    where = f"{owner}.{names.get(path, path)}" if path else owner
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    shown = show_value(value, path)
    if kind == "fastpipe_url":
        return f"{where} {ctx['problem']}, got {ctx['shown']!r}{ctx['hint_text']}"
    if kind == "fastpipe_ref":  # a bound given by another field: name it as the user does
        other = ".".join(str(p) for p in (prefix, *loc[:-1], ctx["other"]) if p)
        return (
            f"{where} must be >= {owner}.{names.get(other, other)} ({ctx['bound']!r}), got {shown}"
        )
    if kind == "fastpipe_value":  # a check of the value alone: quote it
        return f"{where} {err['msg']}, got {shown}"
    if kind.startswith("fastpipe_"):
        return f"{where} {err['msg']}"
    if kind == "extra_forbidden":
        valid = [names.get(k, k) for k in model.model_fields]  # a nested model: not reached
        hint = suggest(str(loc[-1]), valid)
        more = f"; did you mean {hint!r}?" if hint else ""
        return f"{owner} has no field {str(loc[-1])!r}{more}"
    if kind == "missing":
        return f"{where} is required"
    field = field_of(model, loc)
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        finite = "finite and " if _is_float(field) else ""
        return f"{where} must be {finite}{op} {ctx[key]:g}, got {shown}"
    if kind == "finite_number":
        bounds = range_text(field.metadata) if field is not None else ""
        return f"{where} must be finite{' and ' if bounds else ''}{bounds}, got {shown}"
    if kind == "literal_error":
        return f"{where} must be one of {ctx.get('expected', '')}, got {shown}"
    words = _KNOB_TYPE_WORDS.get(kind)
    if words is not None:
        return f"{where} must be {words}, got {type(value).__name__} {shown}"
    return f"{where} is not valid ({err['msg']}), got {shown}"


def url_error(url: str) -> PydanticCustomError | None:
    """The pydantic error of a refused base URL (rendered by :func:`field_error`), or None."""
    found = check_base_url(url)
    if found is None:
        return None
    return PydanticCustomError(
        "fastpipe_url",
        "{problem}",
        {"problem": found.problem, "shown": found.shown, "hint_text": found.hint_text()},
    )
