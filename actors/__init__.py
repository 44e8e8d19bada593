"""The Ray actors of dualsync: coordinator, partitions, readers and writers.

The only package that imports Ray. Each actor is a plain class; `actors.ray_api` applies
``ray.remote`` and makes every Ray call.
"""
