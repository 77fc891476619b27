"""A finished study applied to new cohorts: ``cohortnet export`` and ``cohortnet predict``.

- :mod:`pipeline.predict.model` -- the study's model as one set of files (resolved config, fold
  state_dicts, the locked threshold, the leakage sets), read from a run folder or from an archive
  through the same code, so both predict alike
- :mod:`pipeline.predict.archive` -- ``model.zip``: written with a hash of every file, verified
  before anything in it is read; nothing executable is loaded (``weights_only=True``, safe YAML)
- :mod:`pipeline.predict.ledger` -- the append-only ledger of finished and failed images and the
  part files that hold their scores, so a rerun resumes and a crash loses at most one chunk
- :mod:`pipeline.predict.run` -- a cohort streamed through the study's preprocessing and the fold
  ensemble in chunks of bounded memory; per-image and per-patient tables, exclusions, provenance
"""
