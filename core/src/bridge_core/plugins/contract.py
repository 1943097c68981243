"""The plugin contract's version and the range checks made against it.

The contract is versioned MAJOR.MINOR: additions are minor, anything that can break a plugin
written against an earlier minor of the same major is a new major (see docs/contract.md).
"""

from __future__ import annotations

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

CONTRACT_VERSION = "1.1"


class ContractRangeError(ValueError):
    """A plugin's ``BRIDGE_CONTRACT`` is missing or is not a valid version range."""


def parse_contract_range(value: object, *, where: str) -> SpecifierSet:
    """Parse a plugin's ``BRIDGE_CONTRACT`` (e.g. ``">=1.0,<2"``); ``where`` names its module."""
    if value is None:
        raise ContractRangeError(f'{where} declares no BRIDGE_CONTRACT; add BRIDGE_CONTRACT = ">=1.0,<2" to it')
    if not isinstance(value, str) or not value.strip():
        raise ContractRangeError(f"{where}: BRIDGE_CONTRACT must be a non-empty string, got {value!r}")
    try:
        spec = SpecifierSet(value)
    except InvalidSpecifier as exc:
        raise ContractRangeError(f"{where}: BRIDGE_CONTRACT {value!r} is not a version range ({exc})") from None
    if not list(spec):
        raise ContractRangeError(f"{where}: BRIDGE_CONTRACT {value!r} is empty")
    return spec


def contract_satisfies(spec: SpecifierSet, version: str = CONTRACT_VERSION) -> bool:
    """True when the contract ``version`` lies inside ``spec``."""
    return spec.contains(Version(version), prereleases=True)


def incompatibility_fix(spec: SpecifierSet, *, distribution: str, dist_version: str, core_version: str) -> str:
    """A one-line explanation of why a plugin does not fit this core, naming the fix."""
    provided = CONTRACT_VERSION
    head = f"{distribution} {dist_version} needs contract {spec}; bridge-core {core_version} provides {provided}"
    too_new_core = [s for s in spec if s.operator in ("<", "<=") and not s.contains(provided)]
    if too_new_core:
        bound = too_new_core[0]
        return (
            f"{head}: upgrade {distribution} (pip install -U {distribution}), "
            f"or pip install 'bridge-core{bound.operator}{bound.version}'"
        )
    release = Version(dist_version).release
    older = ".".join(str(p) for p in (release + (0,))[:2])
    return f"{head}: upgrade bridge-core, or pip install '{distribution}<{older}'"
