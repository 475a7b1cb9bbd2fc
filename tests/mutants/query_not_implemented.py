"""Submits, but never got round to query."""

from __future__ import annotations

import topup_acme

import topup


class Plugin(topup_acme.Acme):
    async def query(self, order: topup.UpstreamOrder) -> topup.SupplierResult:
        raise NotImplementedError  # MISTAKE: the core queries every open outcome
