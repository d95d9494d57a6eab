"""The live log of several replicas (``redis://``): one Redis stream per running response, and cancel signals.

An entry's stream id is ``{sequence_number + 1}-0``: a retried append cannot duplicate (``XADD`` refuses an id at
or below the top) and "after N" is the range read ``(N+1-0 .. +``. The terminal entry is marked and moves the
stream's last id to the maximum, so nothing follows it. Every key has a TTL (set by the first append, refreshed
every ttl/4 seconds by the appends, shortened to ``final_ttl`` by the terminal batch) and a length cap (``MAXLEN
~``). Appends are coalesced: one writer task per process sends every batch queued by any run while its previous
call was in flight (or in the same loop iteration) as one script call over all their streams, so a busy process
sends one call per round trip, not one per batch; likewise for expiries (one call for all that ended meanwhile,
after the appends queued with them). The runs of this process also keep their log in memory (a ``MemoryLiveLog``):
their own followers never wait on Redis. Followers of another replica's run share one reader task per process, on
one connection: a blocking ``XREAD`` over every stream they wait on, woken by ``CLIENT UNBLOCK`` when one is
added. Redis being away costs no event: the store has every entry first, and a follower whose log is gone reads
the store (``live.base``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .base import Entry, LiveLog, LiveRead
from .memory import MemoryLiveLog

__all__ = ["RedisLiveLog"]

log = logging.getLogger("headwater.server.live")

# One call appends the batches of many responses (everything queued while the previous call was in flight).
# KEYS: one stream per batch (a key may come twice: its batches in order). ARGV: ttl_ms, final_ttl_ms, maxlen,
# then per batch: flags, n, and n x (id, type, payload). Flags: 'e' the batch ends the log, 't' the stream's
# TTL is to be (re)set, 'm' an entry may take the stream past maxlen (so XADD trims; below that it cannot: ids
# are distinct sequence numbers + 1, so a stream holds at most its top id's number of entries). XADD with an
# explicit id refuses one at or below the stream's top, so a retried append adds nothing twice; the terminal
# batch marks its last entry ('e') and moves the stream's last id to the maximum (XSETID), so that no id
# whatsoever is taken after the end -- no read of the top per append. An empty batch creates the (empty)
# stream. A stream that took an entry (or was created) gets its TTL when the batch says so (the writer asks for
# it at a stream's first append from this process and every ttl/4 seconds after; the terminal batch and a
# created stream always): ttl_ms, final_ttl_ms once ended. Returns how many entries were added in all.
_APPEND = """
local maxlen = ARGV[3]
local at = 4
local added = 0
for k = 1, #KEYS do
  local key = KEYS[k]
  local flags = ARGV[at]
  local ended = string.find(flags, 'e', 1, true) ~= nil
  local ttl = ended or string.find(flags, 't', 1, true) ~= nil
  local trim = string.find(flags, 'm', 1, true) ~= nil
  local n = tonumber(ARGV[at + 1])
  at = at + 2
  local took = 0
  if n == 0 and redis.call('EXISTS', key) == 0 then
    redis.call('XGROUP', 'CREATE', key, 'headwater', '$', 'MKSTREAM')
    redis.call('XGROUP', 'DESTROY', key, 'headwater')
    took = 1
    ttl = true
  end
  for i = 1, n do
    local ok
    if ended and i == n then
      if trim then
        ok = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, ARGV[at], 't', ARGV[at + 1], 'd', ARGV[at + 2], 'e', '1')
      else
        ok = redis.pcall('XADD', key, ARGV[at], 't', ARGV[at + 1], 'd', ARGV[at + 2], 'e', '1')
      end
    elseif trim then
      ok = redis.pcall('XADD', key, 'MAXLEN', '~', maxlen, ARGV[at], 't', ARGV[at + 1], 'd', ARGV[at + 2])
    else
      ok = redis.pcall('XADD', key, ARGV[at], 't', ARGV[at + 1], 'd', ARGV[at + 2])
    end
    if type(ok) ~= 'table' or not ok.err then took = took + 1 end
    at = at + 3
  end
  if took > 0 then
    if ended then
      redis.pcall('XSETID', key, '18446744073709551615-18446744073709551615')
      redis.call('PEXPIRE', key, ARGV[2])
    elseif ttl then
      redis.call('PEXPIRE', key, ARGV[1])
    end
    added = added + took
  end
end
return added
"""

# KEYS: streams; ARGV[k]: milliseconds for KEYS[k] (0: now). Sooner only: a later expiry never postpones an
# earlier one. One call carries every expiry queued meanwhile (the runs of a busy process end together).
_EXPIRE = """
for k = 1, #KEYS do
  local ms = tonumber(ARGV[k])
  if ms <= 0 then
    redis.call('DEL', KEYS[k])
  else
    local left = redis.call('PTTL', KEYS[k])
    if left ~= -2 and (left < 0 or ms < left) then redis.call('PEXPIRE', KEYS[k], ms) end
  end
end
return 0
"""

_CALL_ENTRIES = 5000  # at most about this many entries in one append call (Redis runs a script alone)
_BLOCK_MS = 1000  # the shared reader's blocking read returns at least this often
_POLL = 1.0  # a follower whose stream is quiet checks this often that it still exists


def _split_url(url: str) -> tuple[str, dict[str, str]]:
    """The URL for redis-py and our own query parameters, removed from it."""
    parts = urlsplit(url)
    ours = {"prefix", "ttl", "final_ttl", "maxlen", "max_connections", "local"}
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in query if k in ours}
    rest = urlencode([(k, v) for k, v in query if k not in ours])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), options


def _pack_args(args: list[bytes]) -> bytes:
    """Arguments in the Redis protocol (each ``$len``, its bytes), without the command's ``*N`` head."""
    return b"".join([b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args])


class _Packed:
    """Arguments already in the Redis protocol (``parts``, joined as they are) and how many they are."""

    __slots__ = ("count", "parts")

    def __init__(self, args: list[bytes]) -> None:
        self.parts = [_pack_args(args)]
        self.count = len(args)


def _stream_id(sequence_number: int) -> str:
    return f"{sequence_number + 1}-0"


def _entry(stream_id: bytes, fields: dict[bytes, bytes]) -> Entry:
    return Entry(int(stream_id.split(b"-", 1)[0]) - 1, fields[b"t"].decode(), fields[b"d"])


def _decode(rows: Any) -> tuple[list[Entry], bool]:
    """Stream rows as entries, and whether the last one ended the log."""
    entries = [_entry(stream_id, fields) for stream_id, fields in rows]
    return entries, bool(rows) and b"e" in rows[-1][1]


# One ``append`` waiting for the writer: (its stream's key, its entries, whether they end the log, the future
# resolved once its call is answered or failed). A tuple: one is made per response per group commit.
_Batch = tuple[bytes, Sequence[Entry], bool, asyncio.Future[None]]


def _packed(arg: bytes) -> bytes:
    """One argument in the Redis protocol."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


# The arguments an append call repeats, already in the Redis protocol: an entry's stream id by its sequence
# number (the first ones; about a third of an entry's packing otherwise), a batch's entry count, its flags.
_PACKED_IDS = [_packed(b"%d-0" % (n + 1)) for n in range(2048)]
_PACKED_COUNTS = [_packed(b"%d" % n) for n in range(64)]
_PACKED_FLAGS = {flags: _packed(flags) for flags in (b"-", b"t", b"e", b"-m", b"tm", b"em")}


@dataclass(eq=False)
class _Tail:
    """What this process's reader has read of one stream, shared by every follower waiting on it."""

    key: str
    entries: list[Entry] = field(default_factory=list)
    ended: bool = False
    last_id: str = "0-0"
    followers: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def after(self, starting_after: int) -> list[Entry]:
        entries = self.entries
        if not entries or entries[-1].sequence_number <= starting_after:
            return []
        low, high = 0, len(entries)  # the first entry after starting_after (entries are in order)
        while low < high:
            middle = (low + high) // 2
            if entries[middle].sequence_number <= starting_after:
                low = middle + 1
            else:
                high = middle
        return entries[low:]

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class RedisLiveLog(LiveLog):
    """``redis://host:port/db?prefix=headwater&ttl=600&final_ttl=60&maxlen=100000&max_connections=32``
    (``ttl``/``final_ttl`` in seconds; ``local=0`` reads even this process's runs through Redis: tests)."""

    def __init__(self, url: str) -> None:
        self._url, options = _split_url(url)
        self.prefix = options.get("prefix", "headwater")
        self._key_prefix = f"{self.prefix}:events:".encode()
        self.ttl_ms = int(float(options.get("ttl", 600)) * 1000)
        self.final_ttl_ms = int(float(options.get("final_ttl", 60)) * 1000)
        self.maxlen = int(options.get("maxlen", 100_000))
        self._max_connections = int(options.get("max_connections", 32))
        self._local = MemoryLiveLog() if options.get("local", "1") not in ("0", "false") else None
        self._redis: aioredis.Redis | None = None
        self._append_sha = b""
        self._expire_sha = b""
        self._types: dict[str, bytes] = {}  # event type -> its bytes
        # The streams whose TTL this process's appends have set since ``_ttl_since``: their next appends set no
        # TTL (one PEXPIRE per stream every ttl/4 seconds, not one per append). Cleared every ttl/4 seconds and
        # whenever Redis may have restarted (an error, a new connection, the script unknown).
        self._ttl_keys: set[bytes] = set()
        self._ttl_since = 0.0
        self._ttl_every = self.ttl_ms / 4000
        self._tails: dict[str, _Tail] = {}
        self._reader: asyncio.Task[None] | None = None
        self._reader_client: aioredis.Redis | None = None
        self._reader_id: int | None = None
        self._reader_blocked = False
        self._cancels: asyncio.Task[None] | None = None
        self._closing = False
        self._queue: list[_Batch] = []
        self._expiries: list[tuple[bytes, int, asyncio.Future[None]]] = []  # (key, ms, resolved once sent)
        self._writer: asyncio.Task[None] | None = None
        self.writes = 0  # append calls sent (each carries the batches queued meanwhile): for the bench
        self.batches = 0  # batches they carried
        self.commands = 0  # Redis commands this process sent (appends, reads, signals): for the bench
        self.errors = 0  # Redis errors seen (the live log went on without Redis)
        self.latency: Callable[[str, float], None] | None = None  # metrics hook: (operation, seconds)

    def describe(self) -> str:
        parts = urlsplit(self._url)
        return f"redis {parts.hostname}:{parts.port or 6379} (prefix {self.prefix})"

    def _key(self, response_id: str) -> str:
        return f"{self.prefix}:events:{response_id}"

    def _key_bytes(self, response_id: str) -> bytes:
        return self._key_prefix + response_id.encode()

    @property
    def _channel(self) -> str:
        return f"{self.prefix}:cancel"

    async def open(self) -> None:
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url, max_connections=self._max_connections, timeout=5, socket_timeout=5, socket_connect_timeout=5
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._append_sha = hashlib.sha1(_APPEND.encode()).hexdigest().encode()
        self._expire_sha = hashlib.sha1(_EXPIRE.encode()).hexdigest().encode()
        with contextlib.suppress(RedisError, OSError):  # Redis may come later: the live log degrades, see docs
            await self._redis.ping()

    async def close(self) -> None:
        if self._writer is not None:  # what is queued still goes (bounded by the client's timeouts)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._writer), 10)
        self._closing = True
        for task in (self._writer, self._reader, self._cancels):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._writer = self._reader = self._cancels = None
        for tail in self._tails.values():
            tail.notify()
        if self._local is not None:
            await self._local.close()
        for client in (self._reader_client, self._redis):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._reader_client = self._redis = None

    def _timed(self, name: str, start: float) -> None:
        if self.latency is not None:
            self.latency(name, time.perf_counter() - start)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self._ttl_keys.clear()  # (Redis may have restarted: each stream's next append sets its TTL again)
        log.warning("Redis live log: %s failed: %s", what, exc)

    @property
    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("the Redis live log is not open")
        return self._redis

    # --- writing ----------------------------------------------------------------------------------------

    async def append(self, response_id: str, entries: Sequence[Entry], *, ended: bool = False) -> None:
        """This process's followers get the entries at once; then the process's writer adds them to the stream,
        together with every other append queued meanwhile, and this returns. When Redis cannot be reached the
        entries are only counted as lost here (never raised): the store has them."""
        if self._local is not None:
            self._local.append_now(response_id, entries, ended=ended)
        written = asyncio.get_running_loop().create_future()
        self._queue.append((self._key_bytes(response_id), entries, ended, written))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write(), name="headwater-redis-writer")
        await written

    async def append_many(self, batches: Sequence[tuple[str, Sequence[Entry], bool]]) -> list[BaseException | None]:
        """``append`` of every batch, this process's followers served at once, with one wait for the writer for
        all of them (no task, future and wake-up per response)."""
        outcomes, written = self.append_many_nowait(batches)
        await written
        return outcomes

    def append_many_nowait(self, batches: Sequence[tuple[str, Sequence[Entry], bool]]
                           ) -> tuple[list[BaseException | None], asyncio.Future[None]]:
        """``append_many`` without waiting: this process's followers are served now and the batches queued for
        the writer (which sends them in the order queued); the outcome of each batch's local append, and a
        future resolved once the writer has sent them (never with an error: Redis failures are counted)."""
        outcomes: list[BaseException | None] = []
        loop = asyncio.get_running_loop()
        written: asyncio.Future[None] = loop.create_future()
        queue, local, prefix = self._queue, self._local, self._key_prefix
        for response_id, entries, ended in batches:
            if local is not None:
                try:
                    local.append_now(response_id, entries, ended=ended)
                except Exception as exc:  # (as ``append`` raises it, before its batch is queued)
                    outcomes.append(exc)
                    continue
            outcomes.append(None)
            queue.append((prefix + response_id.encode(), entries, ended, written))
        if not self._queue or self._queue[-1][3] is not written:  # (nothing of these queued)
            written.set_result(None)
            return outcomes, written
        if self._writer is None:
            self._writer = loop.create_task(self._write(), name="headwater-redis-writer")
        return outcomes, written

    async def _write(self) -> None:
        """The process's one writer: one script call for every batch queued, until none is. A batch queued
        while a call is in flight goes into the next one (so a busy process sends fewer, bigger calls)."""
        try:
            while self._queue or self._expiries:
                if not self._queue:
                    await self._send_expiries()
                    continue
                batches = self._take()
                # ARGV in the Redis protocol already (``_Packed``): each entry's three arguments in one format.
                argv = _Packed([b"%d" % self.ttl_ms, b"%d" % self.final_ttl_ms, b"%d" % self.maxlen])
                parts, types = argv.parts, self._types
                now = time.monotonic()
                if now - self._ttl_since >= self._ttl_every:  # (a new window: every stream's TTL is set again)
                    self._ttl_keys.clear()
                    self._ttl_since = now
                ttl_keys, maxlen = self._ttl_keys, self.maxlen
                ids, known_ids, counts, packed_flags = _PACKED_IDS, len(_PACKED_IDS), _PACKED_COUNTS, _PACKED_FLAGS
                add = parts.extend
                for key, entries, ended, _ in batches:
                    count = len(entries)
                    if ended:
                        flags = b"e"
                        ttl_keys.discard(key)
                    elif key not in ttl_keys:
                        flags = b"t"
                        ttl_keys.add(key)
                    else:
                        flags = b"-"
                    if entries and entries[-1].sequence_number >= maxlen:
                        flags += b"m"
                    add((packed_flags[flags], counts[count] if count < 64 else _packed(b"%d" % count)))
                    argv.count += 2 + 3 * count
                    for entry in entries:
                        kind = types.get(entry.type)
                        if kind is None:
                            kind = _packed(entry.type.encode())
                            if len(types) < 1024:  # (the protocol's types; a relayed upstream may have more)
                                types[entry.type] = kind
                        seq = entry.sequence_number
                        payload = entry.payload
                        add((ids[seq] if seq < known_ids else _packed(b"%d-0" % (seq + 1)), kind,
                             b"$%d\r\n" % len(payload), payload, b"\r\n"))
                start = time.perf_counter()
                self.commands += 1
                self.writes += 1
                self.batches += len(batches)
                try:
                    if await self._call_append(batches, argv):
                        self._restarted(batches)
                except Exception as exc:  # (Redis away, or closed): the store has every entry
                    self._ttl_keys.clear()  # (it may come back empty: the streams made again need their TTL)
                    self.errors += len(batches) - 1  # (one more in _failed)
                    self._failed(f"append of {len(batches)} batch(es)", exc)
                finally:
                    self._timed("append", start)
                    for *_, written in batches:
                        if not written.done():
                            written.set_result(None)
                if self._expiries:  # (after the appends queued with them: a DEL never precedes its stream's last XADD)
                    await self._send_expiries()
        finally:  # (normally nothing is left; when cancelled by close, what was queued is not waited for)
            self._writer = None
            for *_, written in self._queue:
                if not written.done():
                    written.set_result(None)
            for *_, sent in self._expiries:
                if not sent.done():
                    sent.set_result(None)
            self._queue, self._expiries = [], []

    def _restarted(self, batches: list[_Batch]) -> None:
        """The last call found Redis restarted (a new connection, or the script unknown): it may have made these
        streams again without a TTL, and any other stream's next append must set its TTL again. These get theirs
        by an expiry call next (which never lengthens a TTL: it gives one to a stream without)."""
        self._ttl_keys.clear()
        loop = asyncio.get_running_loop()
        for key in dict.fromkeys(key for key, _, ended, _ in batches if not ended):
            sent: asyncio.Future[None] = loop.create_future()
            self._expiries.append((key, self.ttl_ms, sent))

    async def _send_expiries(self) -> None:
        expiries, self._expiries = self._expiries, []
        self.commands += 1
        try:
            await self._call(_EXPIRE, self._expire_sha, [key for key, _, _ in expiries],
                             [b"%d" % ms for _, ms, _ in expiries])
        except Exception as exc:  # (Redis away: the streams expire by their TTL)
            self.errors += len(expiries) - 1
            self._failed(f"expiry of {len(expiries)} stream(s)", exc)
        finally:
            for *_, sent in expiries:
                if not sent.done():
                    sent.set_result(None)

    async def _call_append(self, batches: list[_Batch], argv: _Packed) -> bool:
        return await self._call(_APPEND, self._append_sha, [key for key, *_ in batches], argv)

    async def _call(self, script: str, sha: bytes, keys: list[bytes], args: list[bytes] | _Packed) -> bool:
        """``EVALSHA`` of ``script``, packed here in one pass (redis-py's generic path costs microseconds per
        argument, and an append has three per entry); ``EVAL`` when Redis does not know the script (it was
        restarted). A connection that broke (Redis restarted) is replaced once: both scripts are idempotent.
        True when Redis may have restarted since the last call (the connection was replaced, or the script was
        unknown)."""
        pool = self._client.connection_pool
        argv = args if isinstance(args, _Packed) else _Packed(args)
        head = b"*%d\r\n" % (3 + len(keys) + argv.count)
        packed_keys = _pack_args([b"%d" % len(keys), *keys])
        for attempt in (1, 2):
            connection = await pool.get_connection()
            try:
                await connection.send_packed_command(
                    b"".join([head, _pack_args([b"EVALSHA", sha]), packed_keys, *argv.parts]), check_health=False)
                try:
                    await connection.read_response()
                except NoScriptError:
                    await connection.send_packed_command(
                        b"".join([head, _pack_args([b"EVAL", script.encode()]), packed_keys, *argv.parts]),
                        check_health=False)
                    await connection.read_response()
                    return True
                return attempt == 2
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await connection.disconnect()
                if attempt == 2:
                    raise
            except BaseException:  # (cancelled with the reply unread: the connection must not be reused)
                await connection.disconnect()
                raise
            finally:
                await pool.release(connection)
        raise AssertionError("not reached: the second attempt returns or raises")

    def _take(self) -> list[_Batch]:
        """The queued batches up to about ``_CALL_ENTRIES`` entries (at least one batch)."""
        queue = self._queue
        count = 0
        for index, (_, entries, _, _) in enumerate(queue):
            count += len(entries) + 1
            if count > _CALL_ENTRIES and index > 0:
                taken, self._queue = queue[:index], queue[index:]
                return taken
        self._queue = []
        return queue

    async def expire(self, response_id: str, after: float = 0.0) -> None:
        """Forget the local copy and the stream ``after`` seconds from now (sooner only). A reader of another
        replica that finds no stream reads the store, which has everything."""
        if self._local is not None:
            await self._local.expire(response_id, after)
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[None] = loop.create_future()
        self._expiries.append((self._key_bytes(response_id), max(0, int(after * 1000)), sent))
        if self._writer is None:  # (the writer sends it, with every other expiry queued meanwhile)
            self._writer = loop.create_task(self._write(), name="headwater-redis-writer")
        await sent

    # --- reading ----------------------------------------------------------------------------------------

    async def _range(self, response_id: str, starting_after: int) -> LiveRead:
        key = self._key(response_id)
        start = time.perf_counter()
        self.commands += 2
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.exists(key)
                pipe.xrange(key, min=f"({_stream_id(starting_after)}", max="+")
                exists, rows = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(f"read of {response_id}", exc)
            return LiveRead(found=False)
        finally:
            self._timed("read", start)
        if not exists:
            return LiveRead(found=False)
        entries, ended = _decode(rows)
        if not ended and not entries:
            ended = await self._has_ended(response_id)
        return LiveRead(entries, ended)

    async def _has_ended(self, response_id: str) -> bool:
        self.commands += 1
        try:
            top: Any = await self._client.xrevrange(self._key(response_id), count=1)
        except (RedisError, OSError):
            return False
        return bool(top) and b"e" in top[0][1]

    async def read(self, response_id: str, starting_after: int = -1, *, wait: float = 0.0) -> LiveRead:
        if self._local is not None:
            local = await self._local.read(response_id, starting_after, wait=wait)
            if local.found:
                return local
        got = await self._range(response_id, starting_after)
        if not got.found or got.entries or got.ended or wait <= 0:
            return got
        async with self._watch(response_id) as tail:
            entries = tail.after(starting_after)
            if not entries and not tail.ended:
                changed = tail.changed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await changed.wait()
                entries = tail.after(starting_after)
            return LiveRead(entries, tail.ended)

    def follow(self, response_id: str, starting_after: int = -1, *, keepalive: float) -> AsyncIterator[list[Entry]]:
        """A run of this process: its in-process log itself (no layer of ours in between: an event per stream
        passes every layer once); any other: the stream in Redis, through this process's shared reader."""
        if self._local is not None and self._local.has(response_id):
            return self._local.follow(response_id, starting_after, keepalive=keepalive)
        return self._follow_stream(response_id, starting_after, keepalive=keepalive)

    async def _follow_stream(
        self, response_id: str, starting_after: int = -1, *, keepalive: float
    ) -> AsyncIterator[list[Entry]]:
        first = await self._range(response_id, starting_after)
        if not first.found:
            return
        if first.entries:
            yield first.entries
        if first.ended:
            return
        position = first.entries[-1].sequence_number if first.entries else starting_after
        async with self._watch(response_id) as tail:
            quiet = 0.0
            while True:
                got = tail.after(position)
                if got:
                    yield got
                    position = got[-1].sequence_number
                    quiet = 0.0
                    continue  # (more may have come while the batch was being written)
                if tail.ended or self._closing:
                    return
                changed = tail.changed
                waited = min(_POLL, keepalive)
                try:
                    async with asyncio.timeout(waited):
                        await changed.wait()
                    continue
                except TimeoutError:
                    quiet += waited
                if not await self._exists(response_id):
                    return  # expired or lost (a Redis restart): the caller reads the store after ``position``
                if quiet >= keepalive:
                    quiet = 0.0
                    yield []

    async def _exists(self, response_id: str) -> bool:
        self.commands += 1
        try:
            return bool(await self._client.exists(self._key(response_id)))
        except (RedisError, OSError) as exc:
            self._failed(f"check of {response_id}", exc)
            return False

    @contextlib.asynccontextmanager
    async def _watch(self, response_id: str) -> AsyncIterator[_Tail]:
        """While inside, this process's reader tails the response's stream (shared by all its followers)."""
        tail = self._tails.get(response_id)
        if tail is None:
            tail = self._tails[response_id] = _Tail(self._key(response_id))
            self._wake_reader()
        tail.followers += 1
        try:
            yield tail
        finally:
            tail.followers -= 1
            if tail.followers == 0 and self._tails.get(response_id) is tail:
                del self._tails[response_id]

    @property
    def readers(self) -> int:
        """How many streams this process's reader tails right now."""
        return len(self._tails)

    def _wake_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_loop(), name="headwater-redis-reader")
        elif self._reader_blocked and self._reader_id is not None:
            asyncio.get_running_loop().create_task(self._unblock(self._reader_id))

    async def _unblock(self, client_id: int) -> None:
        with contextlib.suppress(RedisError, OSError, RuntimeError):
            self.commands += 1
            await self._client.client_unblock(client_id)

    async def _read_loop(self) -> None:
        """The process's one reader: a blocking XREAD over every watched stream, until none is watched."""
        backoff = 0.1
        while self._tails and not self._closing:
            try:
                if self._reader_client is None:
                    self._reader_client = aioredis.Redis.from_url(
                        self._url, socket_connect_timeout=5, socket_timeout=_BLOCK_MS / 1000 + 5,
                        single_connection_client=True, client_name=f"{self.prefix}:reader",
                    )
                    self._reader_id = int(await self._reader_client.client_id())
                tails = {tail.key: tail for tail in self._tails.values() if not tail.ended}
                if not tails:
                    await asyncio.sleep(_BLOCK_MS / 1000)
                    continue
                self._reader_blocked = True
                self.commands += 1
                start = time.perf_counter()
                try:
                    replies: Any = await self._reader_client.xread(
                        {key: tail.last_id for key, tail in tails.items()}, count=1000, block=_BLOCK_MS
                    )
                finally:
                    self._reader_blocked = False
                    self._timed("xread", start)
                backoff = 0.1
                for key, rows in replies or ():
                    tail = tails.get(key.decode() if isinstance(key, bytes) else key)
                    if tail is None or not rows:
                        continue
                    entries, ended = _decode(rows)
                    tail.entries.extend(entries)
                    tail.ended = tail.ended or ended
                    last = rows[-1][0]
                    tail.last_id = last.decode() if isinstance(last, bytes) else last
                    tail.notify()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._failed("the shared reader", exc)
                if self._reader_client is not None:
                    with contextlib.suppress(Exception):
                        await self._reader_client.aclose()
                    self._reader_client = None
                for tail in self._tails.values():
                    tail.notify()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    # --- cancel signals ---------------------------------------------------------------------------------

    async def publish_cancel(self, response_id: str) -> int:
        """Tell every replica to cancel ``response_id`` (its owner does); how many processes heard it."""
        self.commands += 1
        try:
            heard: int = await self._client.publish(self._channel, response_id)
        except (RedisError, OSError) as exc:
            self._failed(f"cancel of {response_id}", exc)
            return 0
        return heard

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(response_id)`` for every cancel signal (from any replica), from now until close."""
        self._cancels = asyncio.get_running_loop().create_task(self._listen(callback), name="headwater-cancels")

    async def _listen(self, callback: Callable[[str], None]) -> None:
        backoff = 0.1
        while not self._closing:
            client = aioredis.Redis.from_url(self._url, socket_connect_timeout=5)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._channel)
                    backoff = 0.1
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            data = message["data"]
                            callback(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._failed("the cancel channel", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
