"""Deployment: `semalign run`/`ap`/`user`, the local process launcher, the Flower App."""
