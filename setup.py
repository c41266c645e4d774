"""Builds the optional C accelerators (:mod:`drasyl.native`); everything else is in pyproject.toml.

Each extension is ``optional``: where no C compiler or no Python headers are found, the build
prints a warning, skips it, and ``pip install .`` still succeeds; drasyl then runs its pure
Python code, which behaves the same (the tests run against both).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("drasyl.superpeer._fast", ["drasyl/superpeer/_fast.c"], optional=True,
                  extra_compile_args=["-O2", "-std=c11", "-Wall"]),
        Extension("drasyl.agent._fast", ["drasyl/agent/_fast.c"], optional=True,
                  extra_compile_args=["-O2", "-std=c11", "-Wall"]),
    ],
)
