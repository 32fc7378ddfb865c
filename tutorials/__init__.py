"""Not a library package: this file makes pytest import the tutorials' conftest as
``tutorials.conftest``, so that the module name ``conftest`` stays with ``tests/``
(whose test modules import helpers from it)."""
