"""The serving API: `create_app()` in src.serving.app, settings in src.serving.settings, dependencies for other
routers in src.serving.deps."""
