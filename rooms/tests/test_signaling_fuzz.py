"""Fuzz: 10,000 random and malformed frames against a live signaling consumer.

The client is alone in the room, so no frame can reach a peer: every frame must be answered
with exactly one message — an `error` with one of the protocol's codes, or the `heartbeat_ack`
of a valid heartbeat — and the socket must stay open and keep working. A crash in the consumer
surfaces here as an exception from the communicator.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rooms.protocol import CLIENT_TYPES, ProtocolError, message_read
from rooms.tests.signaling import Call, Socket, call_create, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

ERROR_CODES = {
    "binary_unsupported",
    "too_large",
    "bad_json",
    "not_an_object",
    "bad_version",
    "unknown_type",
    "bad_message",
    "peer_not_here",
    "already_joined",  # a `join` on a socket admitted at connect
}
FRAMES_PER_SOCKET = 100
SOCKETS = 100

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["to", "peer", "data", "state", "candidate_type", "rtt_ms", "packet_loss", "bitrate_in_kbps",
     "bitrate_out_kbps", "description", "candidate", "sdp", "x"]
)  # fmt: skip
description = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["offer", "answer", "rollback", "x"]) | json_values,
        "sdp": st.text(max_size=30) | json_values,
    },
)
candidate = st.fixed_dictionaries(
    {},
    optional={
        "candidate": st.text(max_size=30) | json_values,
        "sdpMid": st.none() | st.text(max_size=3) | json_values,
        "sdpMLineIndex": st.integers(-2, 2000) | json_values,
    },
)
signal_data = st.fixed_dictionaries(
    {},
    optional={
        "description": description | json_values,
        "candidate": st.none() | candidate | json_values,
    },
)
# Near-valid messages: a real type (or not) with fields that may be right, wrong or missing.
shaped = st.builds(
    lambda version, kind, fields, data: {
        **({"v": version} if version is not None else {}),
        "type": kind,
        **fields,
        **({"data": data} if kind == "signal" else {}),
    },
    st.sampled_from([1, 1, 1, 2, 0, "1", True, 1.5, None]),
    st.sampled_from([*CLIENT_TYPES, "welcome", "", "SIGNAL"]) | json_values,
    st.dictionaries(field_names, json_values | st.integers(1, 10**6), max_size=5),
    signal_data,
)
frames = st.one_of(
    st.builds(json.dumps, shaped),
    st.builds(json.dumps, json_values),
    # The test communicator cannot send an empty frame (a real client can; see test_protocol).
    st.text(min_size=1, max_size=200),
    st.binary(min_size=1, max_size=64),
    st.just("x" * 70_000),
    st.builds(lambda n: "[" * n + "]" * n, st.integers(1, 40_000)),
)


def _closes_or_leaves(frame: str | bytes) -> bool:
    """Valid `leave` and `end` frames end the session; they are tested elsewhere."""
    if isinstance(frame, bytes):
        return False
    try:
        return message_read(frame, None, max_bytes=65_536).type in ("leave", "end")
    except ProtocolError:
        return False


async def _session(call: Call, cookie: tuple[bytes, bytes], batch: list[Any]) -> int:
    socket = Socket(call.room.pk, cookie)
    welcome = await socket.open()
    assert welcome["type"] == "welcome"
    answered = 0
    for frame in batch:
        if isinstance(frame, bytes):
            await socket.communicator.send_to(bytes_data=frame)
        else:
            await socket.send_raw(frame)
        reply = await socket.receive()
        if reply["type"] == "error":
            assert reply["code"] in ERROR_CODES, reply
            assert isinstance(reply["message"], str) and reply["message"]
        else:
            assert reply["type"] == "heartbeat_ack", reply
        answered += 1
    # Still open and still working after all of it.
    await socket.send(type="heartbeat")
    assert (await socket.receive())["type"] == "heartbeat_ack"
    await socket.close()
    return answered


# Each example reconnects the same participant: over the per-room join limit on purpose.
@override_settings(SIGNALING_MAX_MESSAGES_PER_SECOND=1_000_000, SIGNALING_JOINS_MAX=1_000_000)
def test_ten_thousand_random_frames_are_each_answered_and_never_crash_the_consumer() -> None:
    call = call_create()
    cookie = session_cookie(call.client)
    answered: list[int] = []

    @settings(
        max_examples=SOCKETS,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(frames, min_size=FRAMES_PER_SOCKET, max_size=FRAMES_PER_SOCKET))
    def one_socket(batch: list[Any]) -> None:
        batch = [frame for frame in batch if not _closes_or_leaves(frame)]
        sent.append(len(batch))
        answered.append(async_to_sync(_session)(call, cookie, batch))

    sent: list[int] = []
    one_socket()
    assert answered == sent
    # A valid `leave` or `end` would close the socket, so those few are not sent (about 1 %).
    assert sum(answered) >= SOCKETS * FRAMES_PER_SOCKET * 0.97
