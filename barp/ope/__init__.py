"""Off-policy evaluation: estimate a router's score, cost and reward from served-request logs (bandit feedback).

:mod:`.simulate` turns a full-information table into a log under a logging policy (it stands in for traffic);
:mod:`.estimators` gives IPS, self-normalised IPS and doubly robust estimates with bootstrap intervals and the
effective sample size; :mod:`.cli` is ``barp ope``. The log format is :mod:`barp.data.sources.logs`.
"""
