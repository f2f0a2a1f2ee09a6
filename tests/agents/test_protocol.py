"""The agent protocol's pure parts: the signed shard, the handshake's proofs and nonces, the
clock arithmetic, the hello's checks, the coordinator's URL, and the record's agent fields
through both codecs (the records file, which anyone can write, and the worker wire, moved by a
clock offset)."""

from __future__ import annotations

import re

import orjson
import pytest

from latbench import RecordsError, __version__
from latbench.agents.protocol import (
    MAC_SIZE,
    NONCE_HEADER,
    ClockSample,
    Nonces,
    ProtocolError,
    auth_headers,
    best_sample,
    check_token,
    coordinator_proof,
    coordinator_proven,
    coordinator_url,
    hello,
    make_nonce,
    parse_hello,
    parse_listen,
    sign,
    verify,
)
from latbench.load.wire import Origin, pack_record, shift_instants, unpack_record
from latbench.records import Record
from latbench.records.record import encode_record, iter_lines

TOKEN = "a-token-of-enough-length-0123456789"


NONCE = "1700000000000-" + "ab" * 16


def test_a_signed_shard_verifies_only_for_its_token_nonce_and_slot() -> None:
    shard = b"\x80\x05pickled shard bytes"
    signed = sign(TOKEN, NONCE, 1, shard)
    assert len(signed) == MAC_SIZE + len(shard) and verify(TOKEN, NONCE, 1, signed) == shard
    other_nonce = "1700000000000-" + "cd" * 16
    # Another token, another connection's nonce, another slot: all refused.
    for token, nonce, slot in ((TOKEN + "x", NONCE, 1), (TOKEN, other_nonce, 1), (TOKEN, NONCE, 0)):
        with pytest.raises(ProtocolError, match="not the token's for this connection and slot"):
            verify(token, nonce, slot, signed)
    flipped = bytearray(signed)
    flipped[-1] ^= 1
    with pytest.raises(ProtocolError, match="not the token's"):
        verify(TOKEN, NONCE, 1, bytes(flipped))
    with pytest.raises(ProtocolError, match="shorter than its signature"):
        verify(TOKEN, NONCE, 1, signed[:MAC_SIZE])


def test_the_handshake_proves_the_token_without_carrying_it() -> None:
    now = 1_700_000_000_000
    nonce = make_nonce(now)
    assert re.fullmatch(r"1700000000000-[0-9a-f]{32}", nonce) and make_nonce(now) != nonce
    headers = auth_headers(TOKEN, nonce)
    assert headers[NONCE_HEADER] == nonce and TOKEN not in str(headers)
    nonces = Nonces()
    assert nonces.check(headers["Authorization"], nonce, TOKEN, now) is None
    # The same headers again: a replay, refused while the nonce's age still lets it pass.
    assert "replay" in str(nonces.check(headers["Authorization"], nonce, TOKEN, now + 1000))
    wrong = "the agent token is missing or wrong"
    fresh = make_nonce(now)
    for auth, n in (
        (None, fresh),
        (f"Bearer {TOKEN}", fresh),  # the token itself is not the proof
        (auth_headers(TOKEN + "x", fresh)["Authorization"], fresh),
        (auth_headers(TOKEN, fresh)["Authorization"], make_nonce(now)),  # another nonce's proof
        (auth_headers(TOKEN, "not-a-nonce")["Authorization"], "not-a-nonce"),
        (auth_headers(TOKEN, fresh)["Authorization"], None),
    ):
        assert nonces.check(auth, n, TOKEN, now) == wrong
    # A nonce over two minutes from the coordinator's wall clock, either way.
    for skew_ms in (-121_000, 121_000):
        old = make_nonce(now + skew_ms)
        why = nonces.check(auth_headers(TOKEN, old)["Authorization"], old, TOKEN, now)
        assert why is not None and "wall clock is" in why and "over 120 s" in why
    edge = make_nonce(now - 120_000)
    assert nonces.check(auth_headers(TOKEN, edge)["Authorization"], edge, TOKEN, now) is None
    with pytest.raises(ValueError, match="at least 16"):
        check_token("short", "--token-file t")


def test_the_coordinators_proof_is_the_tokens_for_the_nonce() -> None:
    proof = coordinator_proof(TOKEN, NONCE)
    assert coordinator_proven(proof, TOKEN, NONCE)
    assert proof != auth_headers(TOKEN, NONCE)["Authorization"].removeprefix("Bearer ")
    for bad in (None, 1, "", coordinator_proof(TOKEN + "x", NONCE), coordinator_proof(TOKEN, "x")):
        assert not coordinator_proven(bad, TOKEN, NONCE)


def test_the_offset_is_the_agents_reading_against_the_midpoint_of_the_round_trip() -> None:
    # The agent's clock runs 5 ms ahead; the answer took 30 us out and 10 us back.
    t1, skew = 1_000_000, 5_000_000
    s = ClockSample(t1, t1 + 30_000 + skew, t1 + 40_000)
    assert s.rtt_ns == 40_000 and s.uncertainty_ns == 20_000
    assert s.offset_ns == skew + 10_000  # off by the asymmetry, within the bound
    assert abs(s.offset_ns - skew) <= s.uncertainty_ns
    slow = ClockSample(t1, t1 + 900_000 + skew, t1 + 1_000_000)
    assert best_sample([slow, s, slow]) is s
    with pytest.raises(ValueError):
        best_sample([])


def test_a_hello_must_name_this_version_and_a_good_location() -> None:
    good = ["hello", hello(2, "eu-west", 3).to_dict()]
    h = parse_hello(good)
    assert (h.index, h.location, h.workers, h.version) == (2, "eu-west", 3, __version__)
    d = dict(good[1])
    for change, named in [
        ({"version": "0.0.1"}, f"runs latbench '0.0.1', the coordinator {__version__}"),
        ({"protocol": 9}, "protocol 9"),
        ({"location": " eu"}, "location"),
        ({"location": "x" * 65}, "location"),
        # The label values for load no single location sent: an agent may not pose as them.
        ({"location": "local"}, "location 'local' is reserved: local, mixed, other, remote"),
        ({"location": "other"}, "location 'other' is reserved"),
        ({"workers": 0}, "workers"),
        ({"workers": 256}, "workers"),
        ({"index": -1}, "index"),
        ({"index": "1"}, "index"),
    ]:
        with pytest.raises(ProtocolError, match=named):
            parse_hello(["hello", {**d, **change}])
    with pytest.raises(ProtocolError, match="hello first"):
        parse_hello(["pong", 1, 2])


def test_the_coordinator_is_given_as_a_person_writes_it() -> None:
    assert coordinator_url("10.0.0.5") == "ws://10.0.0.5:8790/v1/agents"
    assert coordinator_url("http://c:9000") == "ws://c:9000/v1/agents"
    assert coordinator_url("https://c.example") == "wss://c.example:8790/v1/agents"
    assert coordinator_url("ws://c:1/custom/") == "ws://c:1/custom"
    for bad in ("ftp://c", "ws://", "ws://c:port"):
        with pytest.raises(ValueError, match="--coordinator"):
            coordinator_url(bad)
    assert parse_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen("8790") == ("0.0.0.0", 8790)
    assert parse_listen("[::1]:5") == ("::1", 5)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("h:99999")


def record(**changes: object) -> Record:
    base: dict[str, object] = dict(
        run_id="r", seq=4, phase="measure", api="chat", t_intended=10_000, t_sent=11_000,
        t_headers=12_000, t_end=20_000, ev_t=(13_000, 15_000), ev_kind="cc", ev_n=(1, 1),
        t_first_end=11_500, t_last_sent=11_700,
    )  # fmt: skip
    base.update(changes)
    return Record(**base)  # type: ignore[arg-type]


def test_an_agents_record_comes_off_the_wire_on_the_coordinators_clock_and_stamped() -> None:
    # As the agent's worker packed it: its own clock, 7 s ahead, and no word of where it ran
    # (whatever a frame says of that, the channel's origin wins).
    skew = 7_000_000_000
    m = orjson.loads(orjson.dumps(pack_record(record(agent=99, location="forged"))))
    shift_instants(m, skew)
    got = unpack_record("r", m, Origin(agent=2, location="eu", offset_ns=skew, uncertainty_ns=40))
    want = record()
    for name in ("t_intended", "t_sent", "t_headers", "t_end", "t_first_end", "t_last_sent"):
        assert getattr(got, name) == getattr(want, name), name
    assert list(got.ev_t) == [13_000, 15_000]
    assert (got.agent, got.location, got.clock_offset_ns, got.clock_uncertainty_ns) == (
        2, "eu", skew, 40,
    )  # fmt: skip
    # The control frames' instants move the same way.
    s, h, go = ["s", 4, 1, 2, "measure"], ["h", 0, [5, 6], [1, 1]], ["go", 100]
    for frame in (s, h, go):
        shift_instants(frame, -10)
    assert s[2:4] == [-9, -8] and h[2] == [-5, -4] and go[1] == 90


def test_the_records_file_keeps_the_agent_fields_and_checks_them() -> None:
    local = encode_record(record())
    assert b"agent" not in local and b"clock_offset" not in local  # a local run's line as before
    stamped = record(agent=1, location="us-east", clock_offset_ns=-5, clock_uncertainty_ns=30)
    (back,) = list(iter_lines([encode_record(stamped)]))
    assert isinstance(back, Record)
    assert (back.agent, back.location, back.clock_offset_ns, back.clock_uncertainty_ns) == (
        1, "us-east", -5, 30,
    )  # fmt: skip
    d = orjson.loads(encode_record(stamped))
    for change, named in [
        ({"agent": -1}, "agent is -1"),
        ({"agent": 1.5}, "agent is 1.5"),
        ({"clock_uncertainty_ns": -1}, "clock_uncertainty_ns"),
        ({"clock_offset_ns": "5"}, "clock_offset_ns"),
        ({"location": ""}, "location"),
        ({"location": "a\nb"}, "location"),
    ]:
        with pytest.raises(RecordsError, match=named):
            list(iter_lines([orjson.dumps({**d, **change})]))
