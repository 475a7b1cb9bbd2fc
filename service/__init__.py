"""The HTTP service (Litestar) and the ``topup`` command line."""
