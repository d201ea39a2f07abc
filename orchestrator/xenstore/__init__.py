"""The only code in Ballast that talks xenstore.

``wire``, ``paths`` and ``perms`` are the sans-I/O codec; ``store`` and
``server`` are the xenstored-compatible daemon used for simulation, demos and
tests; ``client`` is the async wrapper over pyxs that the controller and the
guest agent use. Importing this package imports nothing else, so that
``orchestrator.xenstore.client`` stays cheap to import.
"""
