"""Which carrier a phone number most likely belongs to, and how we know.

The number-segment table (core/numbering.py) says which carrier issued the number; a
supplier plugin that overrides ``Supplier.lookup_carrier`` can say which one serves it
now (携号转网). This asks the first such enabled supplier, under a short timeout, and
falls back to the table on any failure. It serves ``/sign/api/products?phoneNo=``; the
order path consults only the table (``core.numbering.carrier_of``), never a supplier.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec

from core.numbering import CARRIERS, carrier_of
from core.runtime import Runtime
from core.suppliers import Supplier

log = logging.getLogger("topup.carriers")

# Seconds a supplier's lookup may take before the table answers instead: a partner
# waits on it. Plugins bound their own HTTP calls tighter (juhe: lookup_timeout).
LOOKUP_TIMEOUT = 3.0
SEGMENT = "segment"
SUPPLIER_PREFIX = "supplier:"


class CarrierAnswer(msgspec.Struct, frozen=True):
    carrier: str
    source: str
    """``segment`` (the number-segment table) or ``supplier:NAME`` (that plugin's lookup)."""


def looks_up_carriers(supplier: Supplier) -> bool:
    return type(supplier).lookup_carrier is not Supplier.lookup_carrier


def carrier_supplier(runtime: Runtime) -> Supplier | None:
    """The first enabled supplier (in ``enabled`` order) that can look numbers up."""
    return next((s for s in runtime.suppliers.values() if looks_up_carriers(s)), None)


async def find_carrier(phone_no: str, runtime: Runtime) -> CarrierAnswer | None:
    """The carrier of ``phone_no`` and where the answer came from; None when its segment
    is allocated to no carrier (then no supplier is asked)."""
    segment = carrier_of(phone_no)
    if segment is None:
        return None
    supplier = carrier_supplier(runtime)
    if supplier is not None:
        found = await _ask(supplier, phone_no, runtime)
        if found is not None:
            return CarrierAnswer(found, SUPPLIER_PREFIX + supplier.name)
    return CarrierAnswer(segment, SEGMENT)


async def _ask(supplier: Supplier, phone_no: str, runtime: Runtime) -> str | None:
    masked = f"{phone_no[:3]}****{phone_no[-4:]}"
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT):
            found = await supplier.lookup_carrier(phone_no)
    except TimeoutError:
        log.warning("%s: carrier lookup of %s took over %gs", supplier.name, masked, LOOKUP_TIMEOUT)
        return None
    except Exception as exc:  # a plugin's failure must cost only the better answer
        log.warning("%s: carrier lookup of %s failed: %r", supplier.name, masked, exc)
        return None
    if found is None:
        return None
    if found not in CARRIERS and not runtime.catalog.has_carrier(found):
        log.warning("%s: carrier lookup of %s answered %r", supplier.name, masked, found)
        return None
    return found
