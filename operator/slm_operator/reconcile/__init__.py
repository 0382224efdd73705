"""Reconciliation: the pure plan and status computation, the reconcile itself, and kopf wiring."""
