"""rtcpool's server side, by plane: ``front`` (HTTP routes, signalling, placement), ``media``
(aiortc peer connections and codecs), ``control`` (the scheduler over Ray), ``guard`` (input
checks and credentials), ``ops`` (metrics, logs, drain), ``clients`` (Python WebRTC and
WebSocket clients); beside them ``stream``, ``config``, ``cli``, ``errors`` and ``constants``.

Imports point one way: front -> media -> control, guards import none of the planes, and
nothing here is imported by ``workers/`` (tests/test_import_rules.py). Importing this package
imports nothing heavy; each module loads what it needs.
"""
