from lfm2_sessions import host, tmp_out

__all__ = ["host", "tmp_out"]
