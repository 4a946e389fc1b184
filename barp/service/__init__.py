"""Deploying a trained router: the HTTP routing service with its feedback log, calibration of the preference to
an operator's target (dollars per 1k queries, traffic shares, a share of the best model's score), and the online
budget controller.

- :mod:`barp.service.app`: the ASGI app (FastAPI) of ``barp serve``;
- :mod:`barp.service.routing`: preferences, greedy or exploring choices, decisions and feedback;
- :mod:`barp.service.feedback_log`: the append-only, fsync'd, crash-safe request log (off-policy log format);
- :mod:`barp.service.curve`, :mod:`barp.service.calibrate`: ``barp calibrate``;
- :mod:`barp.service.budget`: the online budget controller;
- :mod:`barp.service.cli`: the ``barp serve`` and ``barp calibrate`` command lines.
"""
