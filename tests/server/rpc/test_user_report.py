"""GetUser's reply written by the wire kernel equals the one set field by field."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.kernels import jit
from nudge.kernels import user_state as u
from nudge.kernels.user_state_wire import (
    get_user_reply,
    get_user_reply_from_profile,
    get_user_reply_trusted,
)
from nudge.server.rpc.user_report import (
    TypeNames,
    fill_user_state,
    reply_bytes,
    user_prefix,
    user_reply,
)
from nudge.server.storage.tables.codecs import encode_sparse
from nudge.server.storage.tables.users import UserProfile
from nudge.v1 import decision_service_pb2 as pb


def _random_user(rng: np.random.Generator) -> tuple[np.ndarray, UserProfile]:
    record = np.zeros(u.RECORD_LEN)
    record[: u.N_SCALARS] = rng.normal(size=u.N_SCALARS) * 10.0 ** rng.integers(0, 10)
    record[u.S_EVENT_COUNT] = rng.integers(0, 10**6)
    record[u.S_FIRST_SEEN] = rng.uniform(-1e9, 2e9)
    record[u.S_LAST_SEEN] = rng.choice([0.0, rng.uniform(1e9, 2e9), 1.5e9])
    record[u.S_AMOUNT_COUNT] = rng.choice([0, 1, 2, rng.integers(3, 10**5)])
    record[u.S_AMOUNT_M2] = rng.choice([-1.0, 0.0, rng.uniform(0, 1e6)])
    used = rng.choice(u.N_TYPES, size=rng.integers(0, u.N_TYPES + 1), replace=False)
    record[u.TOTALS + used] = rng.integers(1, 10**9, size=used.size)
    record[u.COUNTS + used] = rng.exponential(5.0, size=used.size)
    # Ties in the last time (the order then is slot order) and fractional seconds.
    record[u.TYPE_LAST + used] = rng.choice([1.7e9, 1.7e9 + 0.25, -3.5], size=used.size) + (
        rng.integers(0, 2, size=used.size) * rng.uniform(0, 1e6, size=used.size))
    if rng.random() < 0.5:
        record[u.HOURS:] = rng.exponential(1.0, size=u.N_HOURS)
    channels = ["push", "sms", "email", "whatsapp", "café"]
    consents = {c: (bool(rng.integers(0, 2)), 1.0) for c in channels[: rng.integers(0, 6)]}
    profile = UserProfile(tz=str(rng.choice(["UTC", "America/Sao_Paulo", ""])),
                          consents=consents)
    return record, profile


def _names(rng: np.random.Generator) -> dict[int, str]:
    slots = rng.choice(u.N_TYPES, size=rng.integers(0, u.N_TYPES), replace=False)
    names = {int(s): f"type_{s}" + "é" * int(rng.integers(0, 3)) for s in slots}
    names[u.OTHER_TYPE_SLOT] = "(other)"
    return names


@pytest.mark.parametrize("seed", range(40))
def test_reply_matches_field_by_field(seed: int) -> None:
    rng = np.random.default_rng([17, seed, np.random.SeedSequence().entropy % 2**32])
    record, profile = _random_user(rng)
    type_names = _names(rng)
    expected = pb.GetUserResponse()
    fill_user_state(expected.user, f"user-{seed}", record.tolist(), profile, type_names,
                    86_400.0 * (seed + 1))
    names = TypeNames().arrays(type_names)
    for stored in (encode_sparse(record), record.tobytes()):  # sparse, and dense (v1)
        got = pb.GetUserResponse.FromString(user_reply(
            stored, profile.to_bytes(), f"user-{seed}", names, 86_400.0 * (seed + 1)))
        assert got == expected
        # Field order and presence as well as values: the same bytes once re-serialised.
        assert got.SerializeToString(deterministic=True) == expected.SerializeToString(
            deterministic=True)


def test_no_profile_reads_as_the_default() -> None:
    record = np.zeros(u.RECORD_LEN)
    record[u.S_EVENT_COUNT] = 1
    expected = pb.GetUserResponse()
    fill_user_state(expected.user, "x", record.tolist(), UserProfile(), {}, 10.0)
    got = user_reply(encode_sparse(record), None, "x", TypeNames().arrays({}), 10.0)
    assert pb.GetUserResponse.FromString(got) == expected


def test_bytes_that_are_not_a_record_are_refused() -> None:
    names = TypeNames().arrays({})
    empty = np.zeros(0, np.uint8)
    for raw in (b"", b"\x01" * 29, b"\xff" * 29 + b"\0" * 8, b"\0" * 30):
        with pytest.raises(ValueError, match="record"):
            get_user_reply(np.frombuffer(raw, np.uint8), empty, *names, 1.0)
    with pytest.raises(ValueError, match="name_offsets"):
        get_user_reply(np.zeros(8 * u.RECORD_LEN, np.uint8), empty, names[0],
                       np.zeros(3, np.int64), 1.0)


_TEXT = ["", "UTC", "push", "café", "日本", 'a"b', "back\\slash", "tab\t", "\x01", "/",
         "x" * 200, "Ω" * 70]


def _random_profile(rng: np.random.Generator) -> UserProfile:
    channels = [str(rng.choice(_TEXT)) + str(k) * int(rng.integers(0, 2))
                for k in range(int(rng.integers(0, 7)))]
    return UserProfile(
        tz=str(rng.choice(_TEXT)),
        tz_time=float(rng.choice([float("-inf"), 0.0, -1.5, 1.7e9 + 0.125, 3e300])),
        consents={c: (bool(rng.integers(0, 2)), float(rng.choice([0.0, -2.5, 1.7e9, 1e-7])))
                  for c in channels},
        last_properties={"login": (1.0, {"n": 2.0}, {"s": str(rng.choice(_TEXT))})}
        if rng.random() < 0.5 else {},
    )


@pytest.mark.parametrize("seed", range(20))
def test_kernel_reads_the_profile_as_python_does(seed: int) -> None:
    """The reply kernel writes the user id, time zone and consents from the stored JSON:
    byte for byte what the JSON parsed in Python gives (``user_prefix``), or, for a
    string it does not decode itself (an escape), nothing, and the slow path answers."""
    rng = np.random.default_rng([1717, seed, np.random.SeedSequence().entropy % 2**32])
    names = TypeNames().arrays({0: "login"})
    record = np.zeros(u.RECORD_LEN)
    record[u.S_EVENT_COUNT] = 3
    raw = jit.readonly(np.frombuffer(encode_sparse(record), np.uint8))
    fast = 0
    for _ in range(50):
        profile = _random_profile(rng)
        stored = profile.to_bytes()
        user_id = str(rng.choice(["u", "usér", "x" * 300]))
        uid = jit.readonly(np.frombuffer(user_id.encode(), np.uint8))
        got = get_user_reply_from_profile(raw, uid, jit.readonly(np.frombuffer(stored, np.uint8)),
                                          *names, 5.0)
        reference = get_user_reply_trusted(
            raw, jit.readonly(np.frombuffer(user_prefix(stored, user_id), np.uint8)),
            *names, 5.0)
        if got.shape[0]:
            fast += 1
            assert got.tobytes() == reference.tobytes()
        else:
            assert b"\\" in stored  # only an escape sends it to the slow path
        assert user_reply(raw, stored, user_id, names, 5.0) == reference.tobytes()
    assert fast > 0


def test_profiles_not_laid_out_as_stored_take_the_slow_path() -> None:
    names = TypeNames().arrays({})
    raw = jit.readonly(np.frombuffer(encode_sparse(np.zeros(u.RECORD_LEN)), np.uint8))
    uid = jit.readonly(np.frombuffer(b"u", np.uint8))
    for stored in (b"", b"{", b'{"tz":"UTC"', b'{"tz":"UTC","tz_time":null}',
                   b'{"tz":"UTC","tz_time":null,"consents":{"a":[1,2.0]}}',
                   b'{"tz":"UTC","tz_time":null,"consents":{"a":[true,2.0]',
                   b'{"tz":"UTC","tz_time":null,"consents":{"a":[true,2.0]x',
                   b'{"tz":"UTC","tz_time":null,"consents":{"a":true}}',
                   b'{"tz": "UTC","tz_time":null,"consents":{}}'):
        got = get_user_reply_from_profile(raw, uid, jit.readonly(np.frombuffer(stored, np.uint8)),
                                          *names, 1.0)
        assert got.shape[0] == 0, stored


def test_reply_bytes_passes_bytes_and_serialises_messages() -> None:
    message = pb.GetUserResponse(user=pb.UserState(user_id="u", event_count=2))
    assert reply_bytes(b"\x0a\x00") == b"\x0a\x00"
    assert reply_bytes(message) == message.SerializeToString()
