"""Deployment of Xception Explorer beyond one process: Ray Serve (``deploy.serve_app``).

Docker images and compose live at the repository root (``Dockerfile.api``,
``Dockerfile.ui``, ``docker-compose.yml``); the README's section "Deployment" explains all of it.
"""
