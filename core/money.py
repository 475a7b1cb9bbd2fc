"""Money is held in integer fen (分) everywhere; yuan strings exist only at the edges."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation


def yuan_to_fen(value: Decimal | str | int) -> int:
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not an amount of yuan: {value!r}") from exc
    if not amount.is_finite():
        raise ValueError(f"not an amount of yuan: {value!r}")
    fen = amount * 100
    if fen != fen.to_integral_value():
        raise ValueError(f"more than two decimals (分) in {value!r}")
    return int(fen)


def fen_to_yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"
