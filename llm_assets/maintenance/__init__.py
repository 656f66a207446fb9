"""Store upkeep, free of Dagster: the garbage collector (``gc``) that the ``store_gc_job`` and ``python -m llm_assets.gc`` run."""
