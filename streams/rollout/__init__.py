"""Models in production: the plan on the control topic (``control``), following it and
swapping models between batches (``plans``), the canary watch and automatic rollback
(``canary``)."""
