"""Broken variants of the example plugin (tests/example_plugin/topup_acme.py), each with
exactly one mistake that costs money, marked ``# MISTAKE``. tests/test_conformance.py runs
the conformance suite against each and checks that it fails: the suite's own power, tested.

Each module defines ``Plugin``, a subclass of ``topup_acme.Acme`` that overrides only the
method holding its mistake. Import them after the example plugin is installed.
"""
