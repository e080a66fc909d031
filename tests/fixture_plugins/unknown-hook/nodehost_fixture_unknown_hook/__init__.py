"""A plugin implementing a hook nodehost does not have."""

import nodehost


@nodehost.hookimpl
def nodehost_frobnicate() -> None:
    pass
