"""The signaling protocol's message checks, one refusal at a time, and the rate limit."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from rooms.protocol import Message, ProtocolError, RateLimit, message_read

LIMIT = 65_536


def _read(message: Any) -> Message:
    return message_read(json.dumps(message), None, max_bytes=LIMIT)


def _code(text: str | None, data: bytes | None = None) -> tuple[str, str | None]:
    with pytest.raises(ProtocolError) as refused:
        message_read(text, data, max_bytes=LIMIT)
    assert refused.value.message
    return refused.value.code, refused.value.ref


def test_a_heartbeat_is_read() -> None:
    assert _read({"v": 1, "type": "heartbeat"}) == Message("heartbeat", {})


def test_an_offer_and_a_candidate_are_read_as_the_browser_sends_them() -> None:
    offer = {"description": {"type": "offer", "sdp": "v=0\r\n"}}
    assert _read({"v": 1, "type": "signal", "to": 7, "data": offer}).fields == {
        "to": 7,
        "data": offer,
    }
    candidate = {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0"}
    read = _read({"v": 1, "type": "signal", "to": 7, "data": {"candidate": candidate}})
    assert read.fields["data"]["candidate"] == {
        **candidate,
        "sdpMLineIndex": None,
        "usernameFragment": None,
    }
    end = _read({"v": 1, "type": "signal", "to": 7, "data": {"candidate": None}})
    assert end.fields["data"] == {"candidate": None}


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{", "bad_json"),
        ("NaN", "bad_json"),
        ("[" * 60_000, "bad_json"),
        ("[1]", "not_an_object"),
        ('"hi"', "not_an_object"),
        ('{"type": "heartbeat"}', "bad_version"),
        ('{"v": 2, "type": "heartbeat"}', "bad_version"),
        ('{"v": true, "type": "heartbeat"}', "bad_version"),
        ('{"v": 1}', "unknown_type"),
        ('{"v": 1, "type": "welcome"}', "unknown_type"),
        ('{"v": 1, "type": ["signal"]}', "unknown_type"),
    ],
)
def test_what_is_not_a_message_is_refused_with_its_code(text: str, code: str) -> None:
    assert _code(text)[0] == code


def test_binary_frames_and_oversized_messages_are_refused() -> None:
    assert _code(None, b"{}") == ("binary_unsupported", None)
    big = json.dumps({"v": 1, "type": "heartbeat", "pad": "x" * LIMIT})
    assert _code(big) == ("too_large", None)
    # Bytes, not characters, are counted.
    wide = json.dumps({"v": 1, "type": "heartbeat", "pad": "é" * (LIMIT // 2)}, ensure_ascii=False)
    assert len(wide) < LIMIT
    assert _code(wide) == ("too_large", None)


@pytest.mark.parametrize(
    "message",
    [
        {"type": "signal", "data": {"candidate": None}},
        {"type": "signal", "to": "7", "data": {"candidate": None}},
        {"type": "signal", "to": True, "data": {"candidate": None}},
        {"type": "signal", "to": 0, "data": {"candidate": None}},
        {"type": "signal", "to": 7},
        {"type": "signal", "to": 7, "data": {}},
        {"type": "signal", "to": 7, "data": {"candidate": None, "description": None}},
        {"type": "signal", "to": 7, "data": {"sdp": "v=0"}},
        {"type": "signal", "to": 7, "data": {"description": {"type": "bogus", "sdp": "v=0"}}},
        {"type": "signal", "to": 7, "data": {"description": {"type": "offer"}}},
        {"type": "signal", "to": 7, "data": {"description": {"type": "offer", "sdp": 5}}},
        {"type": "signal", "to": 7, "data": {"description": {"type": "offer", "x": 1, "sdp": "a"}}},
        {"type": "signal", "to": 7, "data": {"candidate": "candidate:1"}},
        {"type": "signal", "to": 7, "data": {"candidate": {"sdpMid": "0"}}},
        {"type": "signal", "to": 7, "data": {"candidate": {"candidate": "c", "sdpMLineIndex": -1}}},
        {"type": "signal", "to": 7, "data": {"candidate": {"candidate": "c", "sdpMid": 0}}},
        {"type": "signal", "to": 7, "data": {"candidate": {"candidate": "c", "evil": 1}}},
        {"type": "media_state", "peer": 7, "state": "up"},
        {"type": "media_state", "peer": 7, "state": "connected", "candidate_type": "tcp"},
        {"type": "media_state", "state": "connected"},
        {"type": "media_state", "peer": 7, "state": "connected", "since": "now"},
        {"type": "media_state", "peer": 7, "state": "disconnected", "since": "yesterday"},
        {"type": "media_state", "peer": 7, "state": "disconnected", "since": "2026-11-21T10:00"},
        {"type": "media_state", "peer": 7, "state": "disconnected", "since": 1795000000},
        {"type": "stats", "peer": 7, "rtt_ms": 1, "packet_loss": 2, "bitrate_in_kbps": 1,
         "bitrate_out_kbps": 1},
        {"type": "stats", "peer": 7, "rtt_ms": -1, "packet_loss": 0, "bitrate_in_kbps": 1,
         "bitrate_out_kbps": 1},
        {"type": "stats", "peer": 7, "rtt_ms": "1", "packet_loss": 0, "bitrate_in_kbps": 1,
         "bitrate_out_kbps": 1},
        {"type": "stats", "peer": 7, "rtt_ms": 1, "packet_loss": 0, "bitrate_in_kbps": 1},
    ],
)  # fmt: skip
def test_a_malformed_message_says_which_field_is_wrong(message: dict[str, Any]) -> None:
    text = json.dumps({"v": 1, **message})
    assert _code(text) == ("bad_message", message["type"])


def test_a_disconnected_report_may_say_since_when() -> None:
    read = _read(
        {"v": 1, "type": "media_state", "peer": 7, "state": "disconnected",
         "since": "2026-11-21T10:00:00.250+00:00"}
    )  # fmt: skip
    assert read.fields["since"] == dt.datetime(2026, 11, 21, 10, 0, 0, 250_000, tzinfo=dt.UTC)


def test_a_connected_report_may_say_since_when_too() -> None:
    read = _read(
        {"v": 1, "type": "media_state", "peer": 7, "state": "connected",
         "candidate_type": "host", "since": "2026-11-21T10:00:00+00:00"}
    )  # fmt: skip
    assert read.fields["since"] == dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)


def test_a_number_too_big_for_a_float_is_not_a_statistic() -> None:
    text = (
        '{"v": 1, "type": "stats", "peer": 7, "rtt_ms": 1e400, "packet_loss": 0,'
        ' "bitrate_in_kbps": 1, "bitrate_out_kbps": 1}'
    )
    assert _code(text) == ("bad_message", "stats")


def test_the_rate_limit_allows_a_burst_then_refills_with_time() -> None:
    now = [0.0]
    limit = RateLimit(50, clock=lambda: now[0])
    assert sum(limit.allow() for _ in range(60)) == 50
    now[0] += 0.1
    assert sum(limit.allow() for _ in range(60)) == 5
    now[0] += 10
    assert sum(limit.allow() for _ in range(60)) == 50
