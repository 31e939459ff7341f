"""Ray Serve applications (``serve run serve.app:build_app ...`` from the repository root)."""
