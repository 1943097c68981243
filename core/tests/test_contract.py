"""Contract ranges: parsing, membership and the fix each mismatch names."""

from __future__ import annotations

import pytest

from bridge_core import CONTRACT_VERSION
from bridge_core.plugins.contract import (
    ContractRangeError,
    contract_satisfies,
    incompatibility_fix,
    parse_contract_range,
)


def test_contract_version_is_major_minor():
    major, minor = CONTRACT_VERSION.split(".")
    assert major.isdigit() and minor.isdigit()


@pytest.mark.parametrize(
    "value,ok",
    [(">=1.0,<2", True), (">=1.0", True), (">=2.0", False), ("<1.0", False), ("==1.0", True), (">=1.0,<1.0", False)],
)
def test_membership(value, ok):
    assert contract_satisfies(parse_contract_range(value, where="m"), "1.0") is ok


@pytest.mark.parametrize(
    "value,fragment",
    [
        (None, "declares no BRIDGE_CONTRACT"),
        (2, "must be a non-empty string"),
        ("", "must be a non-empty string"),
        ("one", "is not a version range"),
    ],
)
def test_invalid_ranges_name_the_module(value, fragment):
    with pytest.raises(ContractRangeError) as err:
        parse_contract_range(value, where="plugin 'x' (x.plugin)")
    assert fragment in str(err.value) and "plugin 'x' (x.plugin)" in str(err.value)


def test_fix_for_a_plugin_that_needs_a_newer_core():
    spec = parse_contract_range(">=2.0", where="m")
    msg = incompatibility_fix(spec, distribution="bridge-qwen", dist_version="0.4.0", core_version="1.3.0")
    assert msg == (
        f"bridge-qwen 0.4.0 needs contract >=2.0; bridge-core 1.3.0 provides {CONTRACT_VERSION}: "
        "upgrade bridge-core, or pip install 'bridge-qwen<0.4'"
    )


def test_fix_for_a_plugin_older_than_the_core():
    spec = parse_contract_range(">=0.5,<1.0", where="m")
    msg = incompatibility_fix(spec, distribution="bridge-old", dist_version="2.3.1", core_version="1.0.0")
    assert msg.endswith("upgrade bridge-old (pip install -U bridge-old), or pip install 'bridge-core<1.0'")
