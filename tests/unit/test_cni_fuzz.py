"""Fuzzing the CNI input path: whatever a runtime (or anyone on the socket) sends, the
parser answers a CniRequest or a CniError of the spec. (flock-cni itself, the C shim, is
fuzzed by exec in tests/cni/test_shim.py.)"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flock.core.cnispec import (
    CONTAINER_UNKNOWN,
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENV,
    IO_FAILURE,
    NETWORK_STATE_DIFFERS,
    NO_ADDRESS_LEFT,
    PLUGIN_NOT_AVAILABLE,
    TRY_AGAIN_LATER,
    UNSUPPORTED_FIELD,
    CniRequest,
    parse_request,
)
from flock.errors import CniError

SPEC_CODES = {INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, CONTAINER_UNKNOWN, INVALID_ENV, IO_FAILURE,
              DECODE_FAILURE, INVALID_CONFIG, TRY_AGAIN_LATER, PLUGIN_NOT_AVAILABLE, NETWORK_STATE_DIFFERS,
              NO_ADDRESS_LEFT}
VARIABLES = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values near the valid ones as well as anything at all: mostly-valid requests reach the
# later checks.
env_values = st.one_of(
    st.text(),
    st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "eth0", "..", ".", "abc123", "/var/run/netns/x",
                     "K8S_POD_NAME=a;K8S_POD_NAMESPACE=b", "a=b;;c", "=x", "x" * 300]),
    st.text(alphabet="abcXYZ019_.-/: \t\n\x00é", max_size=40),
)
environments = st.dictionaries(st.one_of(st.sampled_from(VARIABLES), st.text(max_size=10)), env_values,
                               max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
configs = st.fixed_dictionaries(
    {}, optional={"cniVersion": st.one_of(st.sampled_from(["1.0.0", "1.1.0"]), json_values), "name": json_values,
                  "type": json_values, "prevResult": json_values,
                  "cni.dev/valid-attachments": st.one_of(
                      json_values, st.lists(st.fixed_dictionaries({"containerID": json_values},
                                                                  optional={"ifname": json_values}), max_size=3)),
                  "gcGraceSeconds": json_values})
stdins = st.one_of(
    st.text(),
    configs.map(json.dumps),
    st.just(json.dumps({"cniVersion": "1.0.0", "name": "flock", "type": "flock"})),
    st.just(json.dumps({"cniVersion": "1.1.0", "name": "flock", "type": "flock",
                        "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}]})),
    st.integers(min_value=1, max_value=3000).map(lambda depth: "[" * depth + "]" * depth),
)


@FUZZ
@given(environments, stdins)
def test_any_request_gives_a_request_or_a_spec_error(env: dict[str, str], stdin: str) -> None:
    try:
        request = parse_request(env, stdin)
    except CniError as error:
        assert error.code in SPEC_CODES
        assert error.msg
        assert len(error.msg) < 1000, "a message never embeds a whole input"
        return
    assert isinstance(request, CniRequest)
    assert request.command in ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
