"""JupyterLab in the compose stack's jupyter service, found through JUPYTER_CONFIG_PATH=/app/docker/jupyter.

The server listens on 0.0.0.0 inside its container, which would switch Jupyter's host check off: keep it on, so only
requests whose Host header is localhost, a loopback address or a name in JUPYTER_ALLOWED_HOSTS (comma-separated, for
BIND_ADDRESS=0.0.0.0) are served (DNS-rebinding protection). The token comes from JUPYTER_TOKEN as before.
"""

import os

c = get_config()  # noqa: F821 (Jupyter defines it when it loads this file)
c.ServerApp.allow_remote_access = False
c.ServerApp.local_hostnames = ["localhost", *(h.strip() for h in os.environ.get("JUPYTER_ALLOWED_HOSTS", "").split(",")
                                              if h.strip())]
