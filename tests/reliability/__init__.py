"""The reliability suite (issue #7): crash storm, soak, concurrency, backpressure under load,
fuzzing, sandbox escapes, broken plugins. A package, so that its conftest and helpers do not
shadow the ``conftest`` module of tests/ (whose helpers it imports)."""
