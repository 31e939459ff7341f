"""The HTTP API's bodies (CONTRACT section 4), request limits, and OpenRLHF's query text.

Plain pydantic and string code, tested without Serve. Bodies are parsed in JSON mode, strict (no
``"4"`` for 4, no number for a string), so a wrong type is a 422 naming the field; limits are
checked after parsing and answered 400 naming the field; a body over ``max_body_bytes`` is a 413.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Limits", "ScoreRequest", "CompareRequest", "Annotation", "OnboardRequest", "AnnotationsRequest",
           "SurveyRequest", "RewardRequest", "LimitError", "bearer_ok", "check_text", "split_query", "label_user"]


class Limits(BaseModel):
    """Request-size limits (each answered 4xx with the field's name)."""

    model_config = ConfigDict(extra="forbid")

    max_body_bytes: int = Field(1_000_000, ge=1024, description="413 above this")
    max_responses: int = Field(64, ge=1, description="responses per /v1/score request")
    max_text_chars: int = Field(20_000, ge=1, description="characters per prompt / response / query")
    max_annotations: int = Field(256, ge=1, description="annotations per user (all requests together)")
    max_survey_pairs: int = Field(32, ge=1, description="largest n of /v1/survey")
    max_queries: int = Field(256, ge=1, description="queries per get_reward request")
    max_user_id_chars: int = Field(256, ge=1)


class LimitError(ValueError):
    """A value out of bounds: ``field`` names it (dotted path), the message says the bound."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ScoreRequest(_Body):
    user_id: str | None = None
    user_embedding: list[float] | None = Field(None, description="score for this embedding instead of a user")
    prompt: str
    responses: list[str]


class CompareRequest(_Body):
    user_id: str | None = None
    user_embedding: list[float] | None = None
    prompt: str
    response_a: str
    response_b: str


class Annotation(_Body):
    chosen_id: str
    rejected_id: str
    prompt_id: str | None = None


class OnboardRequest(_Body):
    user_id: str
    annotations: list[Annotation]


class AnnotationsRequest(_Body):
    annotations: list[Annotation]


class SurveyRequest(_Body):
    answers: list[Annotation] = Field(default_factory=list)
    n: int = 4


class RewardRequest(BaseModel):
    """OpenRLHF's remote reward body. Lenient: unknown keys are ignored (versions add keys)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    query: list[str]
    prompts: list[str] | None = None
    labels: list[Any] | None = None


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """True when no token is configured or the Authorization header carries it (constant-time)."""
    import hmac

    if token is None:
        return True
    return hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode())


def check_text(field: str, value: str, limits: Limits) -> None:
    if len(value) > limits.max_text_chars:
        raise LimitError(field, f"{len(value)} characters, at most {limits.max_text_chars}")


def check_user_id(field: str, value: str, limits: Limits) -> None:
    if not value or len(value) > limits.max_user_id_chars or value != value.strip():
        raise LimitError(field, f"must be 1..{limits.max_user_id_chars} characters without surrounding spaces")


# ----------------------------------------------------------------------------- OpenRLHF query text

# Chat-template markup and special tokens a generator's tokenizer.decode(..., skip_special_tokens=
# False) leaves in the query: role headers first (they carry the role word), then bare tokens.
_ROLE_HEADERS = re.compile(
    r"<\|im_start\|>\s*(system|user|assistant)\s*\n?"
    r"|<\|start_header_id\|>\s*\w+\s*<\|end_header_id\|>\s*"
    r"|<start_of_turn>\s*(user|model)\s*\n?"
    r"|<\|(system|user|assistant)\|>\s*\n?"
)
_SPECIAL = re.compile(r"<\|[^|<>]{1,40}\|>|</?s>|<(bos|eos|pad|unk|end_of_turn)>|\[/?INST\]|\[(EOS|PAD|CLS|SEP)\]")


def _clean(text: str) -> str:
    return _SPECIAL.sub("", _ROLE_HEADERS.sub("", text)).strip()


def _untemplate(prompt: str, response: str) -> tuple[str, str]:
    """Drop our own template's role words where a client already applied it."""
    prompt = re.sub(r"^\s*Human:\s?", "", prompt).strip()
    response = re.sub(r"^\s*Assistant:\s?", "", response).strip()
    return prompt, response


def split_query(query: str, prompt: str | None) -> tuple[str, str]:
    """(prompt text, response text) of an OpenRLHF query (prompt + generated response, decoded
    with special tokens).

    The prompt is taken off the front when the query starts with it (OpenRLHF >= 0.5.8 sends the
    ``prompts``); else our own training template ``Human: ... Assistant: ...`` is split; else the
    whole query is the response. Chat markup, BOS/EOS/pad tokens are removed from both parts,
    and so are our template's own role words (a client that applied it gets the same reward).
    """
    return _untemplate(*_split(query, prompt))


def _split(query: str, prompt: str | None) -> tuple[str, str]:
    if prompt is not None and prompt and query.startswith(prompt):
        return _clean(prompt), _clean(query[len(prompt):])
    if prompt is not None and prompt:
        cp, cq = _clean(prompt), _clean(query)
        if cp and cq.startswith(cp):
            return cp, cq[len(cp):].strip()
    text = _clean(query)
    m = re.match(r"^\s*Human:\s?(.*?)\s*Assistant:\s?(.*)$", text, flags=re.S)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    return (_clean(prompt) if prompt else ""), text


def label_user(label: Any) -> str | None:
    """The user id a per-sample OpenRLHF label names: the label itself (a string) or its
    ``user_id`` key (a dict); None otherwise."""
    if isinstance(label, str):
        return label
    if isinstance(label, dict) and isinstance(label.get("user_id"), str):
        return label["user_id"]
    return None
