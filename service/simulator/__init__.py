"""The supplier simulator behind ``topup simulate``.

One loopback HTTP server that speaks the juhe, reloadly and acme protocols of
docs/supplier-protocols.md, keeps its transactions in memory, decides outcomes by the
phone number's last digit and injects faults on demand, so that every supplier plugin
can be run end to end without a real supplier.

``app.create_simulator_app`` builds the app; ``cli.simulate`` is the command. Nothing is
imported here, so that loading the ``topup`` command line stays cheap.
"""
