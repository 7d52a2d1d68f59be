"""Past one machine: bulk prediction and embedding on Ray Data (``python -m classifier predict --engine ray``).

Ray is imported only inside :mod:`scale.ray_engine`; everything else here runs without it.
"""
