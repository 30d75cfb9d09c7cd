"""The package version, in a leaf module: reports and studies record it, and the modules that write
them sit below the package facade (`onnxslim_compress/__init__.py`), which imports half the package."""

__version__ = "0.1.0"
