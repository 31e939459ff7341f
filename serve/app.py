"""The personalized-reward application of CONTRACT section 4.

    serve run serve.app:build_app gnn_dir=G reward_dir=R store_path=S [adapt_dir=A] [dataset=D]
    serve deploy configs/serve/default.yaml

The builder and its args model live in the library (`copl_ray.serving.app`), so replicas import
them from the installed package wherever they run.
"""

from copl_ray.serving.app import AppArgs, build_app

__all__ = ["AppArgs", "build_app"]
