"""The package's one compiled part: the in-process window store's per-series loop.

Everything else about the package is declared in pyproject.toml; setuptools reads
both. `engine/windows/_series.c` needs a C compiler and the Python headers
(`make install` builds it); `engine/windows/memory.py` says what it does.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "engine.windows._series",
            sources=["engine/windows/_series.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
        )
    ]
)
