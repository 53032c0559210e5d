"""The cutover: move the public IP from the legacy host to the instance, reversibly.

``spec`` (the host spec), ``steps`` (do / undo / check commands on targets, and what they
need), ``plan`` (the fast default and the seed's procedure), ``transport`` (local or ssh),
``preflight`` (what every host needs, checked before any change), ``journal`` (on-disk record
and lock), ``runner`` (run, resume, rollback, status), ``render`` (shell scripts).
"""
