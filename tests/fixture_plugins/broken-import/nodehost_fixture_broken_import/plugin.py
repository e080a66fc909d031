"""A plugin whose module cannot be imported."""

import nodehost_fixture_no_such_dependency  # noqa: F401
