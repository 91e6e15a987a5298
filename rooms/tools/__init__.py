"""Tools that drive Parley from outside, as a person's browser would: not production code.

`participant.Participant` is a scripted call participant (aiortc): it signs in over HTTP, joins
a room over the signaling socket (docs/SIGNALING.md) and sends and receives synthetic audio and
video. The call tests use it (rooms/tests/e2e_harness.py, rooms/tests/test_participant.py, the
browser tests' media checks), and it is what benchmarks of whole calls and the canary call
(two server-side peers through the real signaling and TURN) are to join with. Those are not
tests, so it lives here and not under tests/.

Nothing in the request path imports this package: no view, consumer, service, task or admin,
and a deployment never runs it inside Daphne or a worker. The connectivity test's server peer
is a different thing: it answers users' browsers, so it is production and stays in
rooms/probe.py.
"""
