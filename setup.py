"""Builds the optional C accelerators (:mod:`drasyl.native`); everything else is in pyproject.toml.

Each extension is ``optional``: where no C compiler or no Python headers are found, the build
prints a warning, skips it, and ``pip install .`` still succeeds; drasyl then runs its pure
Python code, which behaves the same (the tests run against both).
"""

from setuptools import Extension, setup

#: The accelerators' sources; each builds the module of its path (drasyl/agent/_fast.c: drasyl.agent._fast).
ACCELERATORS = ["drasyl/superpeer/_fast.c", "drasyl/agent/_fast.c"]

setup(
    ext_modules=[
        Extension(source[:-2].replace("/", "."), [source], depends=["drasyl/native.h"], optional=True,
                  extra_compile_args=["-O2", "-std=c11", "-Wall"])
        for source in ACCELERATORS
    ],
)
