"""The Redis broker transport: kombu's, changed so that a message is always somewhere a
sweep can see it.

kombu's transport takes a message with ``BRPOP`` and records it as unacknowledged with a
second command; a consumer killed between the two lost the message (docs/reliability.md).
Here a consumer blocks on a *wake-up* list instead (one token a message, pushed with it), and
then takes the message and records it in one Lua script, which Redis runs atomically: at every
moment the message is in its queue or in the unacknowledged set, where the visibility sweep
gives it back. A token lost with a killed consumer costs a wait, never a message: consumers
also look at their queues every ``brpop_timeout`` (1 s), and each take sets the wake-up lists
back to their queues' lengths (messages restored by the sweep, or sent by a client without
tokens, get theirs there).

Channels also survive closing after a broker loss (``_QoS.restore_unacked``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from time import monotonic, time
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

# At most this many tokens are added to a wake-up list by one take: enough to wake every
# consumer of a queue; the next takes add the rest.
_WAKE_BURST = 64

# KEYS: the unacknowledged hash and its time index, each queue's wake-up list, then every
# (priority, queue) list in the order kombu's BRPOP would try them (priority first).
# ARGV: the time to record, the number of queues, the number of priority steps.
# Returns {queue number, message} or false. A message that is not kombu's JSON could never be
# delivered: it moves to the queue's ``unreadable`` list rather than vanish.
_TAKE = """
local unacked, index = KEYS[1], KEYS[2]
local now, queues, steps = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local function list(step, queue) return KEYS[2 + queues + step * queues + queue] end
local taken, from = false, 0
for step = 0, steps - 1 do
  for queue = 1, queues do
    local item = redis.call('RPOP', list(step, queue))
    while item do
      local ok, message = pcall(cjson.decode, item)
      local properties = ok and type(message) == 'table' and message['properties']
      local tag = type(properties) == 'table' and properties['delivery_tag']
      if type(tag) == 'string' then
        local info = properties['delivery_info']
        if type(info) ~= 'table' then info = {} end
        redis.call('HSET', unacked, tag, '[' .. item .. ',' .. cjson.encode(info['exchange'])
                   .. ',' .. cjson.encode(info['routing_key']) .. ']')
        redis.call('ZADD', index, now, tag)
        taken, from = item, queue
        break
      end
      redis.call('LPUSH', list(step, queue) .. ':unreadable', item)
      item = redis.call('RPOP', list(step, queue))
    end
    if taken then break end
  end
  if taken then break end
end
for queue = 1, queues do
  local waiting = 0
  for step = 0, steps - 1 do waiting = waiting + redis.call('LLEN', list(step, queue)) end
  local wake = KEYS[2 + queue]
  local tokens = redis.call('LLEN', wake)
  if tokens < waiting then
    local add = {}
    for i = 1, math.min(waiting - tokens, tonumber(ARGV[4])) do add[i] = '1' end
    redis.call('LPUSH', wake, unpack(add))
  elseif tokens > waiting then
    if waiting == 0 then redis.call('DEL', wake) else redis.call('LTRIM', wake, 0, waiting - 1) end
  end
end
if taken then return {from, taken} end
return false
"""


class _QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        """The take recorded this message in Redis already: remember it here only."""
        channel: Any = self.channel
        if delivery_tag == channel.taken_tag:
            channel.taken_tag = None
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)

    def restore_unacked(self, client: Any = None) -> Any:
        """Messages this channel holds go back to their queue when it closes. On a broker
        loss the channel closes after its connection is gone (kombu 5.7 then fails on
        ``None.hostname`` and the worker exits): leave them in the broker's unacked set
        instead, where the visibility sweep gives them back, scheduled ones included."""
        if client is None and self.channel.connection.client is None:
            return self._leave_in_broker("broker connection lost")
        try:
            return super().restore_unacked(client)
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return self._leave_in_broker("broker unreachable")

    def ack(self, delivery_tag: str) -> None:
        if self._closed():
            return self._forget(delivery_tag, "acknowledged")
        return super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self._closed():
            return self._forget(delivery_tag, "rejected")
        return super().reject(delivery_tag, requeue=requeue)

    def _closed(self) -> bool:
        """Whether a broker loss closed this channel: a task that ran through the outage
        settles after it, on the closed channel, whose Redis calls fail on ``None.client``
        (kombu 5.7), which stopped the worker."""
        return getattr(self.channel, "connection", None) is None

    def _forget(self, delivery_tag: str, what: str) -> None:
        held: Any = self._delivered
        held.pop(delivery_tag, None)
        log.warning("a message %s after the broker connection was lost returns after the "
                    "visibility timeout (its task is idempotent)", what)

    def _leave_in_broker(self, why: str) -> None:
        held: Any = self._delivered
        log.warning("%s: %d held messages return after the visibility timeout", why, len(held))
        held.clear()


class _Channel(kombu_redis.Channel):
    QoS = _QoS
    # The delivery tag of the message the last take recorded in Redis.
    taken_tag: str | None = None
    # The queues the pending wait is for, in the order to take from them.
    _waiting_on: tuple[str, ...] = ()
    _in_poll: Any = False
    _brpop_sent_at: Any = None

    def wake_key(self, queue: str) -> str:
        return f"{queue}{self.sep}wake"

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        """The message and its wake-up token, in one round trip."""
        batch = kwargs.get("_publish_batch")
        wake = self.wake_key(queue)
        # A queue that expires (a reply queue) takes its wake-up list with it.
        expires = self._expires.get(queue) if self._expires else None
        if batch is not None:
            super()._put(queue, message, **kwargs)
            batch.add("lpush", wake, "1")
            if expires is not None:
                batch.add("pexpire", wake, expires)
            return
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            pipe.lpush(key, dumps(message))
            pipe.lpush(wake, "1")
            if expires is not None:
                for name in (*(self._q_for_pri(queue, step) for step in self.priority_steps),
                             wake):
                    pipe.pexpire(name, expires)
            pipe.execute()

    def _brpop_start(self, timeout: float | None = None) -> None:
        """Wait for a wake-up token of the queues in turn (the message stays queued)."""
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        self._waiting_on = tuple(queues)
        # Never 0 (wait for ever): a message without a token is taken on the next timeout.
        keys = [self.wake_key(queue) for queue in queues] + [
            timeout or self.brpop_timeout or 1]
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        command = ["BRPOP", *keys]
        if self.global_keyprefix:
            command = self.client._prefix_args(command)
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        """After a wake-up (or the wait's timeout), take a message and deliver it."""
        try:
            try:
                self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            taken = self.take(self._waiting_on)
            if taken is None:
                raise virtual.Empty()
            queue, payload = taken
            self._queue_cycle.rotate(queue)
            self.connection._deliver(payload, queue)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def take(self, queues: Sequence[str]) -> tuple[str, dict[str, Any]] | None:
        """The next message of these queues, moved into the unacknowledged set in the same
        step (its delivery tag kept in ``taken_tag``); None when they are empty."""
        if not queues:
            return None
        names = [self.qos.unacked_key, self.qos.unacked_index_key,
                 *(self.wake_key(queue) for queue in queues),
                 *(self._q_for_pri(queue, step) for step in self.priority_steps
                   for queue in queues)]
        keys = [self.global_keyprefix + name for name in names]
        with self.conn_or_acquire() as client:
            # (redis.Redis's own method: the keys carry the prefix already, and kombu's
            # client adds it to some commands' keys itself.)
            reply = redis.Redis.execute_command(client, "EVAL", _TAKE, len(keys), *keys,
                                                repr(time()), len(queues),
                                                len(self.priority_steps), _WAKE_BURST)
        if not reply:
            return None
        number, item = reply
        payload: dict[str, Any] = loads(bytes_to_str(item))
        self.taken_tag = payload["properties"]["delivery_tag"]
        return queues[int(number) - 1], payload


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with atomic takes, whose channels survive closing after a
    broker loss."""

    Channel = _Channel
