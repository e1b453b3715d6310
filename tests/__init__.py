"""The test suite (a package, so modules import tests.helpers)."""
