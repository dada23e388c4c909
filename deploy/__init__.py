"""The course hub: JupyterHub + nbgrader's exchange + a PostgreSQL gradebook + a Dask cluster.

``python -m deploy.hub up`` (``make hub``) brings it up on this machine, loopback only;
``python -m deploy.hub down`` (``make hub-down``) takes it down.  :mod:`deploy.config` writes
the configuration files (pure functions, unit-tested), :mod:`deploy.hub` does the system work.
See ``deploy/README.md``.
"""
