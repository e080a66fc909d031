from nodehost.testing import host, make_node, tmp_out

__all__ = ["host", "make_node", "tmp_out"]
