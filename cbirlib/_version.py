"""The package version, written once (read by hatchling for the wheel and by ``cbirlib``)."""

__version__ = "0.1.0"
