"""Which model serves a chat request, and what its upstream payload may carry: retired ids
answered by their replacements, sampling parameters a model fixes dropped, thinking sent in
each model's own form, the output budget under the name the model reads. Every chat surface
fits its payload here, so they all behave alike."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .errors import ApiError
from .moonshot.models import DEFAULT_MODEL, SAMPLING_PARAMS, builtin_aliases, facts_for

OUTPUT_PARAMS = ("max_tokens", "max_completion_tokens")
DROPPED_HEADER = "X-Kimi-Dropped-Params"


@dataclass
class Fitted:
    """A payload ready for the upstream, and what was changed on the way."""

    requested: str
    served: str
    payload: dict
    dropped: list[str] = field(default_factory=list)


class ModelPolicy:
    """Applies the model table, MODEL_ALIASES, ALLOWED_MODELS and DEFAULT_THINKING."""

    def __init__(self, default_model: str | None, aliases: dict[str, str], allowed: tuple[str, ...],
                 default_thinking: str, served_ids: Callable[[], frozenset[str] | None]):
        self.default_model = default_model or DEFAULT_MODEL
        # An .env written before the model line changed may name a retired id (ours once shipped
        # DEFAULT_MODEL=moonshot-v1-8k): it is then answered like any retired id, by the table's
        # default, never by itself.
        default_facts = facts_for(self.default_model)
        replacement = DEFAULT_MODEL if default_facts is not None and default_facts.retired else self.default_model
        self.aliases = builtin_aliases(replacement) | aliases
        # ALLOWED_MODELS is checked against the served id; an .env written for the original
        # service lists retired ids (ALLOWED_MODELS=moonshot-v1-8k,...), and each stands for the
        # model that now answers it, or that list would refuse every request it allowed.
        self.allowed = frozenset(allowed) | {self.aliases[name] for name in allowed if name in self.aliases}
        self.default_thinking = default_thinking
        self._served_ids = served_ids

    def resolve(self, requested: str) -> str:
        """The id to send: the requested one when the upstream serves it (its model list has
        it), else its alias when there is one. With no list from the upstream, every alias
        applies (the built-in ones name ids the table knows as retired)."""
        alias = self.aliases.get(requested)
        if alias is None:
            return requested
        served = self._served_ids()
        return requested if served is not None and requested in served else alias

    def fit(self, payload: dict, thinking: bool | None) -> Fitted:
        """Fits `payload` (model possibly absent) to the model that will serve it. Raises a
        400 `ApiError` for a model outside ALLOWED_MODELS or thinking the model cannot turn off."""
        requested = payload.get("model") or self.default_model
        served = self.resolve(requested)
        if self.allowed and served not in self.allowed:
            raise ApiError(400, "model_not_allowed",
                           f"Model '{served}' is not allowed here; use one of: {', '.join(sorted(self.allowed))}.")
        fitted = Fitted(requested, served, dict(payload, model=served))
        facts = facts_for(served)
        if facts is not None:
            if facts.fixed_sampling:
                fitted.dropped = [name for name in SAMPLING_PARAMS if name in payload]
                for name in fitted.dropped:
                    del fitted.payload[name]
            _rename_output_budget(fitted.payload, facts.output_param)
        self._apply_thinking(fitted, thinking)
        return fitted

    def _apply_thinking(self, fitted: Fitted, thinking: bool | None) -> None:
        facts = facts_for(fitted.served)
        requested_facts = facts_for(fitted.requested)
        explicit = thinking is not None
        if thinking is None:
            if requested_facts is not None and requested_facts.thinking == "always" and requested_facts.retired:
                thinking = True  # a retired thinking model's callers expect reasoning
            elif self.default_thinking != "model":
                thinking = self.default_thinking == "on"
        if thinking is None:
            return
        mode = facts.thinking if facts is not None else None
        if mode == "always":
            if explicit and not thinking:
                raise ApiError(400, "thinking_required",
                               f"Model '{fitted.served}' always thinks: thinking cannot be turned off. "
                               "Omit 'thinking' or choose a model whose thinking is optional.")
            return
        if mode == "none":
            if explicit and thinking:
                raise ApiError(400, "thinking_unsupported", f"Model '{fitted.served}' has no thinking mode.")
            return
        if mode == "optional" or explicit:
            # Moonshot's form (k2.6); for ids the table does not know, an explicit choice is
            # passed on in the same form.
            fitted.payload["thinking"] = {"type": "enabled" if thinking else "disabled"}


def _rename_output_budget(payload: dict, name: str) -> None:
    """Sends the output budget under the one name the model reads; clients may send either."""
    values = [payload.pop(other) for other in OUTPUT_PARAMS if other in payload]
    values = [value for value in values if value is not None]
    if values:
        payload[name] = values[-1]
