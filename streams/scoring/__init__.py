"""The stages that turn a fetched chunk into scores, read top to bottom in ``agent``:
decode → features (state walk, the pipeline's features) → batcher → inference (ladder, router)
→ emit in order; dead letters at every stage, profiles kept current by ``profiles``.
"""
