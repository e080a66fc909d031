from nodehost.testing import host, tmp_out

__all__ = ["host", "tmp_out"]
