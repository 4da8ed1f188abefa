"""Request bodies of the OpenAI API, as pydantic models. Unknown fields are ignored (as OpenAI
does for fields it has deprecated); known fields are type-checked and bounded."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# The most prompts one /v1/completions request, and texts one /v1/embeddings request, may hold:
# each costs model time, and a request must not be able to hold the server for minutes.
MAX_ITEMS = 400


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Body):
    url: str  # a data URL (data:image/png;base64,...); the server fetches nothing
    detail: str | None = None  # accepted, unused: the picture's text is read at full size


class ContentPart(_Body):
    type: str  # "text", or "image_url" (its text is read by OCR: genforge/serve/content.py)
    text: str | None = None
    image_url: ImageURL | str | None = None  # a bare URL string too, as some clients send it


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # a 64-bit integer, as OpenAI's
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions that llama.cpp and vLLM servers take too.
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    dry_multiplier: float | None = Field(None, ge=0, le=5)
    dry_base: float | None = Field(None, ge=1, le=4)
    dry_allowed_length: int | None = Field(None, ge=1)


class RagOptions(_Body):
    """Ground a chat in a document store (an extension: `extra_body={"rag": {...}}`)."""

    store: str | None = None  # default: the server's first --rag-store
    k: int = Field(4, ge=1, le=50)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    path: str | None = None  # a glob on the source path
    min_similarity: float | None = Field(None, ge=-1, le=1)  # default: genforge.rag.answer's


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # Unset: one call per answer, as llama.cpp's server (OpenAI's default is true): small models
    # asked for calls tend to go on writing more of them, invented, until max_tokens.
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    rag: RagOptions | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=5)
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingRequest(_Body):
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class RagSearchRequest(_Body):
    query: str
    store: str | None = None
    k: int = Field(5, ge=1, le=50)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    path: str | None = None


class RagIndexRequest(_Body):
    paths: list[str] = Field(min_length=1, max_length=1000)
    store: str | None = None


class AgentRunRequest(_Body):
    """`POST /v1/agents/runs`: a task for an agent (genforge.agents.loop.Agent)."""

    model: str
    task: str
    tools: list[str] | None = None  # default: every tool the server enabled
    style: Literal["tools", "code"] = "tools"
    max_steps: int = Field(8, ge=1, le=32)
    max_tokens: int | None = Field(None, ge=1)  # the model's tokens in the whole run
    time_limit: float = Field(300, gt=0, le=3600)  # seconds of the whole run
    temperature: float | None = Field(None, ge=0, le=2)  # default: greedy
    stream: bool = True


class ImageRequest(_Body):
    """`POST /v1/images/generations`: OpenAI's fields, and genforge's sampling settings.

    `n`, `steps`, `guidance` and `sampler` are bounded by `genforge.image.sampling.check_request`,
    whose one-sentence messages the client gets."""

    prompt: str
    model: str | None = None  # default: the server's --image-model
    n: int = 1
    size: str | None = None  # "WxH": the model's own size times 1, 2, 4 or 8; default its own
    response_format: str | None = None  # b64_json only
    output_format: str | None = None  # png only
    user: str | None = None
    steps: int = 25
    guidance: float = 3.0
    seed: int | None = Field(None, ge=0, lt=2**63)  # picture i draws from seed + i; default random
    sampler: str = "dpm"


# characters of text one speech request may give (OpenAI's limit is 4,096; an answer read aloud
# may be longer, and it is spoken a sentence at a time)
MAX_SPEECH_INPUT = 16_384


class SpeechRequest(_Body):
    """`POST /v1/audio/speech`: OpenAI's fields (genforge/serve/routes/audio.py checks them)."""

    input: str = Field(max_length=MAX_SPEECH_INPUT)
    model: str | None = None
    voice: Any = None  # a name; OpenAI's newer clients may send an object
    response_format: str = "wav"
    speed: float = 1.0
    instructions: str | None = None  # accepted, unused: Piper has no style prompt
