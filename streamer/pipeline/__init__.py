"""ZeroMQ streaming pipeline: publisher -> sink (ingest + dispatcher) -> N workers -> sink output.

Modules: :mod:`.defaults` (all defaults), :mod:`.security` (endpoint policy, CurveZMQ),
:mod:`.dispatcher` (credit-based job bookkeeping and re-send), :mod:`.tracker` (per-stream gaps and
duplicates), :mod:`.writer` (results persisted as .npz chunks), :mod:`.sink`, :mod:`.worker`,
:mod:`.publisher` (replay / simulate live), :mod:`.launcher` (local pipeline; :func:`run_local_pipeline`).
"""
