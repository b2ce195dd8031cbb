"""Pure billing domain: models, money, MRR/LTV metrics, lifecycle, the context builder, matching.

Nothing here does I/O."""
