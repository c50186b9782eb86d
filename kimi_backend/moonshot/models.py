"""The one table of Kimi models: every fact the service, the catalog's fallback list and the
simulator know about a model id lives here, and nowhere else lists model ids.

Facts follow the vendor's docs as retrieved 2026-09-29 (`shared/moonshot-api.md` §0). When
Moonshot retires or adds a model, this table is the one place to edit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

Thinking = Literal["always", "optional", "none"]

# The sampling parameters a fixed-sampling model refuses at any value but its own.
SAMPLING_PARAMS = ("temperature", "top_p", "n", "presence_penalty", "frequency_penalty")

# Where a retired id's requests go by default: the service's DEFAULT_MODEL, or a current
# thinking model (for ids whose callers expect reasoning).
DEFAULT = "default"
THINKING_REPLACEMENT = "kimi-k2.6"


@dataclass(frozen=True)
class ModelFacts:
    """What the service must know about one model id."""

    id: str
    context_length: int
    thinking: Thinking                      # always on / on by default, can be turned off / no thinking
    fixed_sampling: Mapping[str, float]     # parameter -> its only accepted value ({} = free)
    fixed_without_thinking: Mapping[str, float] = field(default_factory=dict)  # what differs with thinking off
    vision: bool = False
    tool_choice_required: bool = False      # whether `tool_choice: "required"` is accepted
    output_param: str = "max_tokens"        # the name the model reads the output budget from
    replaced_by: str | None = None          # None: current; else DEFAULT or a model id

    @property
    def retired(self) -> bool:
        """True for ids the vendor has retired (requests for them are a 404 upstream)."""
        return self.replaced_by is not None


def _fixed(temperature: float) -> dict[str, float]:
    return {"temperature": temperature, "top_p": 0.95, "n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0}


def _retired(model_id: str, context_length: int, replaced_by: str = DEFAULT, *, thinking: Thinking = "none",
             vision: bool = False) -> ModelFacts:
    return ModelFacts(model_id, context_length, thinking, {}, vision=vision, replaced_by=replaced_by)


MODELS: tuple[ModelFacts, ...] = (
    # Current models, the default first.
    ModelFacts("kimi-k2.6", 262_144, "optional", _fixed(1.0), {"temperature": 0.6}, vision=True,
               output_param="max_completion_tokens"),
    ModelFacts("kimi-k3", 1_048_576, "always", _fixed(1.0), vision=True, tool_choice_required=True,
               output_param="max_completion_tokens"),
    ModelFacts("kimi-k2.7-code", 262_144, "always", _fixed(1.0), output_param="max_completion_tokens"),
    # Not on the vendor's fixed-sampling list, so sampling values are passed on.
    ModelFacts("kimi-k2.7-code-highspeed", 262_144, "always", {}, output_param="max_completion_tokens"),
    # Retired: the docs' "Deprecated Models".
    _retired("moonshot-v1-8k", 8_192),
    _retired("moonshot-v1-32k", 32_768),
    _retired("moonshot-v1-128k", 131_072),
    _retired("moonshot-v1-auto", 131_072),
    _retired("moonshot-v1-8k-vision-preview", 8_192, vision=True),
    _retired("moonshot-v1-32k-vision-preview", 32_768, vision=True),
    _retired("moonshot-v1-128k-vision-preview", 131_072, vision=True),
    _retired("kimi-latest", 131_072, vision=True),
    _retired("kimi-k2-0711-preview", 131_072),
    _retired("kimi-k2-0905-preview", 262_144),
    _retired("kimi-k2-turbo-preview", 262_144),
    _retired("kimi-k2.5", 262_144, vision=True),
    _retired("kimi-thinking-preview", 131_072, THINKING_REPLACEMENT, thinking="always"),
    _retired("kimi-k2-thinking", 262_144, THINKING_REPLACEMENT, thinking="always"),
    _retired("kimi-k2-thinking-turbo", 262_144, THINKING_REPLACEMENT, thinking="always"),
)

BY_ID: dict[str, ModelFacts] = {facts.id: facts for facts in MODELS}
CURRENT: tuple[ModelFacts, ...] = tuple(facts for facts in MODELS if not facts.retired)
# The service's DEFAULT_MODEL unless configured otherwise: the cheapest current model and the
# only one whose thinking can be turned off, so a plain chat page can have fast answers.
DEFAULT_MODEL = CURRENT[0].id


def facts_for(model_id: str) -> ModelFacts | None:
    """The table's facts for an id, or None for an id the table does not know."""
    return BY_ID.get(model_id)


def builtin_aliases(default_model: str) -> dict[str, str]:
    """Retired id -> the current id that answers for it."""
    return {facts.id: default_model if facts.replaced_by == DEFAULT else facts.replaced_by
            for facts in MODELS if facts.retired}


def model_item(facts: ModelFacts) -> dict:
    """A `/v1/models` item in Moonshot's newer shape (capability fields included)."""
    return {"id": facts.id, "object": "model", "created": 1712151494, "owned_by": "moonshot",
            "context_length": facts.context_length, "supports_image_in": facts.vision,
            "supports_video_in": facts.vision, "supports_reasoning": facts.thinking != "none"}


def describe(facts: ModelFacts) -> dict:
    """What our model list adds to an item: thinking mode, fixed sampling, status."""
    return {"thinking": facts.thinking, "fixed_sampling": bool(facts.fixed_sampling),
            "status": "retired" if facts.retired else "current"}
