"""An integration with Chronicle in Python (nats-py): the order events, on a durable
JetStream consumer of its own, each handled once across crashes and restarts.

    NATS_URL=nats://127.0.0.1:4222 python3 examples/python/order_listener.py ./listener-state

The same rules as the Rust example (examples/rust-order-listener):
- nothing missed: a message is acknowledged only after its work is done;
- nothing repeated: the work (a line in handled.log) carries the stream sequence, and a
  redelivered message at or below the last one written is acknowledged, not handled again;
- in order: one unacknowledged message at a time.

ORDER_LISTENER_CRASH_AFTER=N exits abruptly after the Nth message's work, before its ack.
"""

import asyncio
import json
import os
import sys

import nats


def last_handled(path):
    last = 0
    try:
        with open(path) as log:
            for line in log:
                first = line.split(" ", 1)[0]
                if first.isdigit():
                    last = int(first)
    except FileNotFoundError:
        pass
    return last


async def main():
    state = sys.argv[1] if len(sys.argv) > 1 else "listener-state"
    os.makedirs(state, exist_ok=True)
    log_path = os.path.join(state, "handled.log")
    last = last_handled(log_path)
    crash_after = int(os.environ.get("ORDER_LISTENER_CRASH_AFTER", "0")) or None

    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        "events.commerce.order.>",
        durable="order-listener-py",
        stream="EVENTS",
        # One unacknowledged message at a time: events in stream order, and a redelivery
        # before anything newer (else "at or below the last one" could skip undone work).
        config=nats.js.api.ConsumerConfig(ack_wait=5, max_ack_pending=1),
    )
    handled = 0
    with open(log_path, "a") as log:
        while True:
            try:
                messages = await sub.fetch(1, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for msg in messages:
                seq = msg.metadata.sequence.stream
                if seq <= last:
                    await msg.ack()
                    continue
                try:
                    event = json.loads(msg.data)
                    fields = (event["event_type"], event["event_version"], event["aggregate_id"], event["sequence"])
                except (ValueError, KeyError, TypeError) as e:
                    print(f"order-listener: skipping message {seq}: {e}", file=sys.stderr)
                    await msg.term()
                    last = seq
                    continue
                total = event.get("payload", {}).get("total_cents") if isinstance(event.get("payload"), dict) else None
                log.write("%d %s v%s %s#%d total_cents=%s\n" % (seq, *fields, "-" if total is None else total))
                log.flush()
                os.fsync(log.fileno())
                last = seq
                handled += 1
                if crash_after == handled:
                    os._exit(17)
                await msg.ack()


if __name__ == "__main__":
    asyncio.run(main())
