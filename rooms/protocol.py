"""The signaling protocol's messages from a participant: parsed, checked and normalised, or
refused with an error code and a message that names what was wrong (docs/SIGNALING.md).

Pure functions, no database and no I/O: the consumer calls `message_read` on every frame and
hands the result to one small handler; whatever comes in, the answer is a message or a
`ProtocolError`, never a crash.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

VERSION = 1
CLIENT_TYPES = ("join", "heartbeat", "signal", "media_state", "stats", "end", "leave")
MEDIA_STATES = ("connected", "disconnected")
CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")
DESCRIPTION_TYPES = ("offer", "answer", "pranswer", "rollback")
# Generous bounds on what a getStats summary can honestly say.
STATS_BOUNDS = {
    "rtt_ms": 600_000.0,
    "packet_loss": 1.0,
    "bitrate_in_kbps": 1_000_000.0,
    "bitrate_out_kbps": 1_000_000.0,
}


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, ref: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref


@dataclass(frozen=True)
class Message:
    type: str
    fields: dict[str, Any]


def message_read(text: str | None, data: bytes | None, *, max_bytes: int) -> Message:
    """One WebSocket frame → a checked message of one of CLIENT_TYPES."""
    if text is None:
        raise ProtocolError("binary_unsupported", "Send JSON text frames, not binary ones.")
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError("too_large", f"A message may be at most {max_bytes} bytes.")
    try:
        raw = _DECODER.decode(text)
    except (ValueError, RecursionError) as error:
        raise ProtocolError("bad_json", f"The message is not valid JSON ({error}).") from None
    if not isinstance(raw, dict):
        raise ProtocolError("not_an_object", "A message is a JSON object.")
    kind = raw.get("type")
    ref = kind if isinstance(kind, str) and kind in CLIENT_TYPES else None
    if raw.get("v") != VERSION or isinstance(raw.get("v"), bool):
        raise ProtocolError("bad_version", f'Say "v": {VERSION} (the protocol version).', ref)
    if ref is None:
        raise ProtocolError(
            "unknown_type", f"type must be one of: {', '.join(CLIENT_TYPES)}.", None
        )
    return Message(ref, _CHECKS[ref](raw))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every frame: `json.loads` with an option builds a new decoder per call, which
# cost four times the parse of a relayed ICE candidate.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _nothing(raw: dict[str, Any]) -> dict[str, Any]:
    return {}


def _signal(raw: dict[str, Any]) -> dict[str, Any]:
    to = _participant_id(raw, "to", "signal")
    data = raw.get("data")
    if not isinstance(data, dict) or len(data) != 1:
        raise _bad("signal", 'data is an object with exactly one of "description" or "candidate".')
    if "description" in data:
        return {"to": to, "data": {"description": _description(data["description"])}}
    if "candidate" in data:
        return {"to": to, "data": {"candidate": _candidate(data["candidate"])}}
    raise _bad("signal", 'data is an object with exactly one of "description" or "candidate".')


def _description(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - {"type", "sdp"}:
        raise _bad("signal", 'description is {"type": …, "sdp": …}.')
    kind = value.get("type")
    if kind not in DESCRIPTION_TYPES:
        raise _bad("signal", f"description.type must be one of: {', '.join(DESCRIPTION_TYPES)}.")
    sdp = value.get("sdp", "")
    if not isinstance(sdp, str) or (kind != "rollback" and not sdp):
        raise _bad("signal", "description.sdp must be the session description text.")
    return {"type": kind, "sdp": sdp}


def _candidate(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None  # the end of candidates
    allowed = {"candidate", "sdpMid", "sdpMLineIndex", "usernameFragment"}
    if not isinstance(value, dict) or set(value) - allowed:
        raise _bad("signal", "candidate is an RTCIceCandidateInit object (or null).")
    text = value.get("candidate")
    if not isinstance(text, str):
        raise _bad("signal", "candidate.candidate must be the candidate line.")
    mid = value.get("sdpMid")
    index = value.get("sdpMLineIndex")
    fragment = value.get("usernameFragment")
    if mid is not None and not isinstance(mid, str):
        raise _bad("signal", "candidate.sdpMid must be a string or null.")
    if index is not None and (type(index) is not int or not 0 <= index < 1024):
        raise _bad("signal", "candidate.sdpMLineIndex must be a small whole number or null.")
    if fragment is not None and not isinstance(fragment, str):
        raise _bad("signal", "candidate.usernameFragment must be a string or null.")
    return {"candidate": text, "sdpMid": mid, "sdpMLineIndex": index, "usernameFragment": fragment}


def _media_state(raw: dict[str, Any]) -> dict[str, Any]:
    peer = _participant_id(raw, "peer", "media_state")
    state = raw.get("state")
    if state not in MEDIA_STATES:
        raise _bad("media_state", f"state must be one of: {', '.join(MEDIA_STATES)}.")
    fields = {"peer": peer, "state": state, "candidate_type": _candidate_type(raw, "media_state")}
    if raw.get("since") is not None:
        fields["since"] = _moment(raw["since"], "since", "media_state")
    return fields


def _moment(value: Any, name: str, ref: str) -> datetime:
    """An ISO 8601 time with its offset (naive times mean nothing across time zones)."""
    if not isinstance(value, str) or len(value) > 40:
        raise _bad(ref, f"{name} must be an ISO 8601 time with a UTC offset.")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _bad(ref, f"{name} must be an ISO 8601 time with a UTC offset.") from None
    if moment.tzinfo is None:
        raise _bad(ref, f"{name} must be an ISO 8601 time with a UTC offset.")
    return moment


def _stats(raw: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"peer": _participant_id(raw, "peer", "stats")}
    for name, bound in STATS_BOUNDS.items():
        value = raw.get(name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and 0 <= value <= bound)
        ):
            raise _bad("stats", f"{name} must be a number from 0 to {bound:g}.")
        fields[name] = float(value)
    fields["candidate_type"] = _candidate_type(raw, "stats")
    return fields


def _candidate_type(raw: dict[str, Any], ref: str) -> str:
    value = raw.get("candidate_type", "")
    if value != "" and value not in CANDIDATE_TYPES:
        raise _bad(ref, f"candidate_type must be one of: {', '.join(CANDIDATE_TYPES)}.")
    return str(value)


def _participant_id(raw: dict[str, Any], name: str, ref: str) -> int:
    value = raw.get(name)
    if type(value) is not int or value <= 0:
        raise _bad(ref, f"{name} must be a participant id (a positive whole number).")
    return value


def _bad(ref: str, message: str) -> ProtocolError:
    return ProtocolError("bad_message", message, ref)


_CHECKS = {
    "join": _nothing,
    "heartbeat": _nothing,
    "signal": _signal,
    "media_state": _media_state,
    "stats": _stats,
    "end": _nothing,
    "leave": _nothing,
}


class RateLimit:
    """A token bucket: `rate` messages a second on average, bursts up to `rate`."""

    def __init__(self, rate: int, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.tokens = float(rate)
        self.last = clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
