"""Report files: per-patient tables, figures, HTML. Never imports torch or MONAI."""
