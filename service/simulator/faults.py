"""Faults injected per phone number or for the whole run, and how they bend a submit's answer."""

from __future__ import annotations

import msgspec

EVERY_NUMBER = "*"

# Fault name -> default seconds (only the faults that hold an answer use them).
FAULT_DEFAULT_SECONDS: dict[str, float | None] = {
    "slow": 2.0,
    "timeout": 3600.0,
    "error_after_topup": None,
    "garbage": None,
    # The top-up is made, then the submit answers the protocol's "system busy" code,
    # or an error code its documentation does not list (answers.py).
    "busy": None,
    "undocumented_error": None,
    "reject": None,
    # The first submit of each reference never arrives: nothing is recorded, and the
    # answer is held this long (then the connection fails) as a lost request would be.
    "lose_submit": 5.0,
    "lose_callback": None,
    "duplicate_callback": None,
    "early_callback": None,
    # A callback saying "still processing" is sent as soon as the top-up is accepted.
    "processing_callback": None,
    "bad_signature_callback": None,
    # A carrier lookup (juhe telquery) answers only after this long.
    "slow_lookup": 2.0,
}
FAULT_NAMES = tuple(FAULT_DEFAULT_SECONDS)


class UnknownFault(ValueError):
    pass


class Fault(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    phone_no: str
    fault: str
    seconds: float | None = None

    def validated(self) -> Fault:
        if self.fault not in FAULT_DEFAULT_SECONDS:
            raise UnknownFault(f"unknown fault {self.fault!r}; known: {', '.join(FAULT_NAMES)}")
        if not self.phone_no:
            raise UnknownFault("phone_no is required (a number, or * for every number)")
        if self.seconds is not None and self.seconds < 0:
            raise UnknownFault("seconds must not be negative")
        return self

    @property
    def effective_seconds(self) -> float:
        default = FAULT_DEFAULT_SECONDS[self.fault] or 0.0
        return default if self.seconds is None else self.seconds


def parse_cli_fault(text: str) -> Fault:
    """``NAME`` or ``NAME:SECONDS`` from ``--fault``: a fault for every number."""
    name, _, seconds = text.partition(":")
    try:
        value = float(seconds) if seconds else None
    except ValueError as exc:
        raise UnknownFault(f"bad seconds in --fault {text!r}") from exc
    return Fault(EVERY_NUMBER, name.strip(), value).validated()


class ActiveFaults:
    """The faults that apply to one phone number at one moment, by name."""

    def __init__(self, faults: dict[str, Fault]) -> None:
        self._faults = faults

    def __contains__(self, name: object) -> bool:
        return name in self._faults

    def seconds(self, name: str) -> float:
        return self._faults[name].effective_seconds


class FaultBook:
    def __init__(self, faults: tuple[Fault, ...] = ()) -> None:
        self._faults: dict[tuple[str, str], Fault] = {}
        for fault in faults:
            self.add(fault)

    def add(self, fault: Fault) -> None:
        fault.validated()
        self._faults[(fault.phone_no, fault.fault)] = fault

    def clear(self, phone_no: str | None = None) -> None:
        if phone_no is None:
            self._faults.clear()
        else:
            self._faults = {key: f for key, f in self._faults.items() if key[0] != phone_no}

    def all(self) -> list[Fault]:
        return list(self._faults.values())

    def for_phone(self, phone_no: str) -> ActiveFaults:
        # A fault set on the number itself wins over the run-wide one (its seconds count).
        active = {f.fault: f for f in self._faults.values() if f.phone_no == EVERY_NUMBER}
        active |= {f.fault: f for f in self._faults.values() if f.phone_no == phone_no}
        return ActiveFaults(active)
