"""The `sim:` directives: what one chat request should do (`Behaviour`), read from
`sim:key=value` tokens in the last user message or from a scripted item."""
from __future__ import annotations

from dataclasses import dataclass

# Moonshot's own gateway gives up after about 5 minutes (504): the longest any simulated
# silence (sim:hang, a stall, silence after [DONE]) lasts.
HANG_LIMIT_S = 300.0

# Directive name -> value kind. Flags (bool) take no value; "_" in text values means a space.
DIRECTIVES = {
    "status": int, "type": str, "message": str, "retry_after": float,
    "delay": float, "hang": bool,
    "chunks": int, "interval": float, "duration": float, "first_delay": float, "reasoning": int,
    "break_after": int, "malformed_after": int, "misshapen_after": int, "no_done": bool, "top_usage": bool,
    "reply": str, "repeat": int, "cached": int, "html": bool,
    # Faults (see Behaviour): broken bodies, odd-but-valid JSON, echoed keys, endless replies.
    "body": str, "odd": str, "echo_key": str, "error_after": int, "drip": float, "endless_line": bool,
    "garbage_after": int, "retry_after_header": str, "done_then_silence": bool,
}
BODY_FAULTS = ("cut", "stall", "drip", "malformed")
ODD_REPLIES = ("negative_usage", "huge_usage", "float_usage", "surrogate", "list_content", "number_content",
               "null_content", "odd_model")
KEY_ECHOES = ("plain", "glued", "bare", "tail")


@dataclass
class Behaviour:
    """What one chat request should do; built from directives or from a script item."""
    status: int | None = None
    type: str | None = None
    message: str | None = None
    retry_after: float | None = None
    delay: float = 0.0
    hang: bool = False
    chunks: int = 8
    interval: float = 0.0
    duration: float | None = None
    first_delay: float = 0.0
    reasoning: int | None = None  # steps of reasoning; default: one when the model thinks
    break_after: int | None = None
    malformed_after: int | None = None
    misshapen_after: int | None = None  # valid JSON in the wrong shape
    no_done: bool = False
    top_usage: bool = False
    reply: str | None = None
    repeat: int = 1
    cached: int = 0
    html: bool = False  # an error answered with an HTML page, as Moonshot's gateway does for its 504
    body: str | None = None  # a non-streamed body that is cut, stalls, drips forever or is not JSON
    odd: str | None = None  # valid JSON that is odd (ODD_REPLIES), in the reply or the stream's deltas
    echo_key: str | None = None  # the error message quotes the caller's key (KEY_ECHOES)
    error_after: int | None = None  # a stream sends an error event after this many content chunks
    drip: float | None = None  # a stream sends content-less chunks this often, forever
    endless_line: bool = False  # a stream sends one line that never ends
    garbage_after: int | None = None  # a stream sends non-SSE lines after this many content chunks
    retry_after_header: str | None = None  # the Retry-After header exactly as given ("inf", "1e400")
    done_then_silence: bool = False  # a stream sends [DONE] and then neither ends nor sends anything


def parse_directives(text: str) -> dict:
    """The `sim:key=value` / `sim:flag` tokens in a message, as {key: str or True}."""
    found = {}
    for token in text.split():
        if token.startswith("sim:"):
            key, has_value, value = token[4:].partition("=")
            if key in ("message", "reply"):
                value = value.replace("_", " ")
            found[key] = value if has_value else True
    return found


def strip_directives(text: str) -> str:
    """The message without its directive tokens (what the default reply echoes)."""
    return " ".join(token for token in text.split() if not token.startswith("sim:"))


def make_behaviour(settings: dict) -> Behaviour:
    """Checks and converts directive/script values; raises ValueError naming the bad one."""
    behaviour = Behaviour()
    for key, value in settings.items():
        kind = DIRECTIVES.get(key)
        if kind is None:
            raise ValueError(f"unknown simulator directive sim:{key}")
        if kind is bool:
            flag = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            setattr(behaviour, key, flag)
            continue
        try:
            if isinstance(value, bool):  # a bare `sim:delay` has no value to convert
                raise ValueError
            converted = kind(value)
            # One bound rejects negatives, NaN and inf (time.sleep(inf) would raise).
            if kind is not str and not 0 <= converted <= 1_000_000:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"bad value for simulator directive sim:{key}={value}") from None
        setattr(behaviour, key, converted)
    if behaviour.status is not None and not 400 <= behaviour.status <= 599:
        raise ValueError("sim:status must be an HTTP error code (400-599)")
    if behaviour.chunks < 1 or behaviour.repeat < 1:
        raise ValueError("sim:chunks and sim:repeat must be at least 1")
    for name, allowed in (("body", BODY_FAULTS), ("odd", ODD_REPLIES), ("echo_key", KEY_ECHOES)):
        if getattr(behaviour, name) not in (None, *allowed):
            raise ValueError(f"sim:{name} must be one of {', '.join(allowed)}")
    if behaviour.drip == 0:
        raise ValueError("sim:drip must be a positive number of seconds")
    return behaviour
