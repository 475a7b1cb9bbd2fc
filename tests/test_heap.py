"""A process that serves until it stops settles its heap once started
(service/wiring.py: ``settle_heap``): what start-up built is frozen out of the garbage
collector's full passes, which had walked it all and set the acceptance p99, and the
young generation is collected only past what requests and orders in flight hold."""

from __future__ import annotations

import gc
from pathlib import Path

from service.wiring import YOUNG_COLLECTION_THRESHOLD
from tests.conftest import new_partner
from tests.inprocess import InProcessService
from tests.support import fresh_order_no, sandbox_config


def test_a_started_service_has_frozen_what_start_up_built(tmp_path: Path) -> None:
    service = InProcessService(tmp_path, sandbox_config(), settle=True)
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    try:
        service.start()
        frozen = gc.get_freeze_count()
        young_threshold = gc.get_threshold()[0]
        partner = new_partner(service)
        cstm_order_no = fresh_order_no()
        assert partner.order(cstm_order_no)["code"] == "0"
        assert partner.status(cstm_order_no)["code"] == "0"
    finally:
        service.stop()
        service.drop_database()
        gc.unfreeze()  # this test process builds many apps: leave its heap as it was
        gc.set_threshold(*thresholds)
    # Litestar, SQLAlchemy and the plugins: tens of thousands of objects.
    assert frozen > 20_000, frozen
    assert young_threshold == YOUNG_COLLECTION_THRESHOLD


def test_an_app_built_for_tests_leaves_the_heap_alone(in_process: InProcessService) -> None:
    assert in_process.settle is False
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[0] < YOUNG_COLLECTION_THRESHOLD
