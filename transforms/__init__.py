"""Pipeline stages: one module per stage (pure functions, a thin DoFn, one public PTransform)."""
