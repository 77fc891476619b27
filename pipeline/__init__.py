"""cohortnet: imaging classification studies from cohort manifest to study report."""

__version__ = "0.1.0"
