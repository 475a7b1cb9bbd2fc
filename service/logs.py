"""Process-wide logging for the service and the simulator."""

from __future__ import annotations

import logging


def configure_logging() -> None:
    """Plain timestamped lines on stderr, unless the host already set logging up."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
