"""Kubernetes API clients for every netplane agent and the CLI.

- ``kubeconfig``: where the server is and how to authenticate (``load_config``).
- ``rest``: ``APIClient``, an asyncio client for the REST API (verbs, Status errors, watch streams).
- ``informer``: ``Informer``, list+watch with a local cache, resume, relist on 410, backoff.
- ``apply``: client-side apply as kubectl does it (``apply_objects``).
- ``fake``: ``FakeAPIServer``, an in-memory API server for tests of API clients.

Nothing is imported here, so ``import netplane.client.kubeconfig`` stays cheap.
"""
