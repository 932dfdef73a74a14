"""Model families: each a folder with `modeling.py` (config, backbone, heads)."""
